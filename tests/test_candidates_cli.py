"""`python -m gpt2_engine --show-candidates K`: the K most likely tokens at each step, on stderr, beside the text."""

from __future__ import annotations

import json
import re

import pytest
from test_settings_and_cli import run_cli

import gpt2_engine

QUOTED = r'"(?:[^"\\]|\\.)*"'  # a token as json.dumps writes it
TAKEN = re.compile(
    rf"^#(\d+) ({QUOTED}) (\d+\.\d%|\(not in the top \d+\)) \(top-p set: (\d+) tokens?, (\d+\.\d)%\) \| (.*)$"
)
RANKED = re.compile(rf"(\*?)({QUOTED}) (\d+\.\d)%")


def test_show_candidates_prints_the_engines_top_k_at_each_step(tiny_model_dir, engine) -> None:
    args = ("The cat", "--model", str(tiny_model_dir), "--precision", "fp32", "--length", "8", "--seed", "3")
    out = run_cli(*args, "--window", "off", "--top-p", "0.3", "--temperature", "0.9", "--show-candidates", "4")
    assert out.returncode == 0, out.stderr
    expected = list(
        engine.stream("The cat", max_new_tokens=8, seed=3, window=None, top_p=0.3, temperature=0.9, candidates=4)
    )
    assert out.stdout.rstrip("\n") == "The cat" + "".join(s.text for s in expected)  # the text is unchanged
    lines = [m for m in map(TAKEN.match, out.stderr.splitlines()) if m]
    assert len(lines) == len(expected)
    for line, step in zip(lines, expected):
        index, token, chance, set_size, set_mass, ranked = line.groups()
        assert int(index) == step.index + 1 and json.loads(token) == engine.token_text(step.token_id)
        assert (int(set_size), float(set_mass)) == (
            step.nucleus_size,
            pytest.approx(100 * step.nucleus_mass, abs=0.051),
        )
        shown = RANKED.findall(ranked)
        assert [json.loads(text) for _, text, _ in shown] == [c.text for c in step.candidates]
        assert [float(p) for _, _, p in shown] == [
            pytest.approx(100 * c.probability, abs=0.051) for c in step.candidates
        ]
        assert [star == "*" for star, _, _ in shown] == [c.in_top_p for c in step.candidates]
        taken = next((c for c in step.candidates if c.token_id == step.token_id), None)
        if taken is not None:  # the token drawn is among the four shown: its probability is theirs
            assert float(chance.rstrip("%")) == pytest.approx(100 * taken.probability, abs=0.051)
        else:
            assert chance == "(not in the top 4)"


def test_without_the_flag_there_are_no_candidate_lines(tiny_model_dir) -> None:
    out = run_cli("The cat", "--model", str(tiny_model_dir), "--length", "5", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert not any(TAKEN.match(line) for line in out.stderr.splitlines())


def test_too_many_candidates_is_a_message(tiny_model_dir) -> None:
    out = run_cli("Hi", "--model", str(tiny_model_dir), "--show-candidates", "101")
    assert out.returncode != 0
    assert "--show-candidates 101 is not allowed" in out.stderr and "Traceback" not in out.stderr


def test_help_says_where_the_candidates_go() -> None:
    from gpt2_engine.__main__ import build_parser

    text = build_parser().format_help()
    assert "--show-candidates K" in text and "stderr" in text


def test_candidates_are_asked_for_only_with_the_flag() -> None:
    from gpt2_engine.__main__ import build_parser, settings_from

    parser = build_parser()
    assert settings_from(parser.parse_args(["Hi"])).candidates == 0  # plain generation pays nothing
    assert settings_from(parser.parse_args(["Hi", "--show-candidates", "7"])).candidates == 7
    assert gpt2_engine.GenerationSettings().candidates == 0
