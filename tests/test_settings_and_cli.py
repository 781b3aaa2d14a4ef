"""Settings validation (one place, clear messages) and the command line."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpt2_engine
from gpt2_engine import GenerationSettings, SettingsError, parse_seed

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    ("max_new_tokens", 0, "whole number from 1"),
    ("max_new_tokens", -5, "whole number from 1"),
    ("max_new_tokens", 10**9, "to 100000"),
    ("max_new_tokens", 2.5, "whole number"),
    ("top_p", 0.0, "greater than 0 and at most 1"),
    ("top_p", -0.1, "greater than 0"),
    ("top_p", 1.5, "at most 1"),
    ("top_p", math.nan, "greater than 0"),
    ("temperature", 0.0, "greater than 0"),
    ("temperature", -1.0, "greater than 0"),
    ("window", 0, "off, or a whole number of tokens from 1"),
    ("sampler", "beam", "nucleus, tutorial, greedy"),
    ("top_k", 0, "off, or a whole number from 1"),
    ("seed", -1, "from 0"),
    ("stop_at_eos", "yes", "True or False"),
]


@pytest.mark.parametrize("field,value,allowed", BAD)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(field, value, allowed) -> None:
    with pytest.raises(SettingsError) as caught:
        GenerationSettings(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} = ") and allowed in str(caught.value)


def test_window_must_leave_room_under_the_model_limit(engine) -> None:
    with pytest.raises(SettingsError, match=r"window = 65 .* 1 to 64 tokens"):
        list(engine.stream("Hi", window=65))
    GenerationSettings(window=512).check_for(1024)
    with pytest.raises(SettingsError):
        GenerationSettings(window=513).check_for(1024)


@pytest.mark.parametrize("text,seed", [("", None), ("  ", None), ("42", 42), (" 7 ", 7), (None, None)])
def test_parse_seed_accepts_whole_numbers_and_empty(text, seed) -> None:
    assert parse_seed(text) == seed


@pytest.mark.parametrize("text", ["abc", "1.5", "-3", "1e400", str(2**64)])
def test_parse_seed_refuses_the_rest(text) -> None:
    with pytest.raises(SettingsError, match="seed"):
        parse_seed(text)


@given(
    max_new_tokens=st.one_of(st.integers(), st.floats(), st.none()),
    top_p=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()),
    temperature=st.floats(allow_nan=True, allow_infinity=True),
    window=st.one_of(st.none(), st.integers(min_value=-10, max_value=2000)),
)
def test_any_values_either_validate_or_raise_a_settings_error(max_new_tokens, top_p, temperature, window) -> None:
    try:
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature, window=window
        )
    except SettingsError as error:
        assert error.field in ("max_new_tokens", "top_p", "temperature", "window")
        return
    assert settings.max_new_tokens >= 1 and 0 < settings.top_p <= 1 and settings.temperature > 0


CLI = [  # python -m gpt2_engine, offline
    sys.executable,
    "-c",
    "import os; os.environ['HF_HUB_OFFLINE']='1'; import runpy, sys; sys.argv[0]='gpt2_engine'; "
    "runpy.run_module('gpt2_engine', run_name='__main__')",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_streams_from_a_local_folder(tiny_model_dir) -> None:
    out = run_cli(
        "The cat", "--model", str(tiny_model_dir), "--length", "15", "--seed", "3", "--window", "off", "--no-eos-stop"
    )
    assert out.returncode == 0, out.stderr
    engine = gpt2_engine.load(str(tiny_model_dir))
    expected = engine.speak("The cat", max_new_tokens=15, seed=3, window=None, stop_at_eos=False)
    assert out.stdout.rstrip("\n") == expected
    assert (
        "15 tokens in" in out.stderr
        and "tokens/s" in out.stderr
        and "peak memory" in out.stderr
        and "seed 3" in out.stderr
    )


def test_cli_piped_into_a_reader_that_stops_early_ends_quietly(tiny_model_dir) -> None:
    """`python -m gpt2_engine ... | head -c 5`: the reader goes away mid-run; no traceback, exit status 1."""
    command = [*CLI, "The cat", "--model", str(tiny_model_dir), "--length", "1000", "--no-eos-stop"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(5) == b"The c"
        process.stdout.close()  # as `head -c 5` does: every later write of the text fails
        errors = process.stderr.read().decode()
        assert process.wait(120) == 1, errors
    assert "Traceback" not in errors and "Error" not in errors, errors


def test_cli_long_mode_is_the_tutorials_long_paragraph(tiny_model_dir) -> None:
    out = run_cli("The cat", "--model", str(tiny_model_dir), "--long", "--seed", "1", "--no-eos-stop")
    assert out.returncode == 0, out.stderr
    tokens = int(out.stderr.split("[")[-1].split(" tokens")[0])
    assert 500 <= tokens <= 564


@pytest.mark.parametrize(
    "args,message",
    [
        (["--top-p", "1.5"], "--top-p 1.5 is not allowed: use a number greater than 0 and at most 1."),
        (["--window", "abc"], "abc is not a window: use off or a whole number of tokens"),
        (["--length", "0"], "--length 0 is not allowed: use a whole number from 1 to 100000."),
        (["--top-k", "0"], "--top-k 0 is not allowed: use off, or a whole number from 1."),
        (["--window", "0"], "--window 0 is not allowed: use off, or a whole number of tokens from 1."),
        (["--window", "-5"], "--window -5 is not allowed: use off, or a whole number of tokens from 1."),
        (["--sampler", "beam"], "invalid choice"),
        (["--model", "no-such-org/none"], "Could not find a model"),
    ],
)
def test_cli_bad_flags_exit_non_zero_with_the_message(args, message) -> None:
    out = run_cli("Hi", *args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "None" not in out.stderr and "max_new_tokens" not in out.stderr and "top_p" not in out.stderr  # its words


def test_cli_refuses_a_window_too_large_for_the_model_before_loading_it(tiny_model_dir) -> None:
    """gpt2-xl's 1,024 positions are known from its name, a folder's from its config.json: no weights read, no
    download (gpt2-xl is not on this machine: a load would fail otherwise)."""
    for model, allowed in (
        ("gpt2-xl", "1 to 512 tokens for a model of 1024 positions"),
        (str(tiny_model_dir), "1 to 64"),
    ):
        out = run_cli("Hi", "--model", model, "--window", "600")
        assert out.returncode == 2, out.stderr
        assert f"--window 600 is not allowed: use off, or {allowed}" in out.stderr, out.stderr
        assert "Loading" not in out.stderr and "Could not" not in out.stderr


def test_cli_says_an_empty_phrase_starts_a_fresh_document(tiny_model_dir) -> None:
    out = run_cli("", "--model", str(tiny_model_dir), "--precision", "fp32", "--length", "3", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "an empty phrase: GPT-2 starts from a fresh document" in out.stderr


def test_cli_says_when_the_start_of_a_long_phrase_was_dropped(tiny_model_dir) -> None:
    """Issue 30: a phrase longer than the model holds kept its last tokens, and the command line said nothing."""
    phrase = "The cat sat on the mat. " * 20  # 480 bytes: far more than the tiny model's 128 positions
    out = run_cli(phrase, "--model", str(tiny_model_dir), "--precision", "fp32", "--length", "3", "--window", "8")
    assert out.returncode == 0, out.stderr
    said = re.search(
        r"your phrase is ([\d,]+) tokens, .* it reads the last (\d+); the first ([\d,]+) were dropped", out.stderr
    )
    assert said, out.stderr
    total, kept, dropped = (int(group.replace(",", "")) for group in said.groups())
    assert kept == 128 - 8 and total == kept + dropped  # the tiny model holds 128 positions, less the window


def test_cli_every_flag_has_help() -> None:
    from gpt2_engine.__main__ import build_parser

    for action in build_parser()._actions:
        assert action.help, action.dest
