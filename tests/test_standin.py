"""The README's stand-in command, run as a new user would: in a fresh copy of the project with no `../shared` beside
it, no network and an empty Hugging Face cache (one clean line, nothing written), then with GPT-2's tokenizer in
that cache (a model). A build that fails half-way leaves no folder either."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import offline_env, place_in_hub_cache, write_tokenizer
from transformers import AutoTokenizer

import gpt2_engine
from bench import standin

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--layers", "2,64,4"]  # gpt2-xl's vocabulary, context and tokenizer, two thin layers: seconds, not a minute


def readme_command() -> list[str]:
    """The stand-in command as README.md gives it (python -m bench.standin SIZE FOLDER), split into arguments."""
    found = re.search(r"^python -m (bench\.standin [^#`\n]*?)\s*$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert found, "README.md gives no `python -m bench.standin ...` line"
    return found.group(1).split()


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """The project's code as a fresh clone has it, in a folder with no `../shared` beside it."""
    project = tmp_path / "clone" / "gpt2-studio"
    for part in ("gpt2_engine", "bench"):
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__", "models", "out"))
    assert not (project.parent / "shared").exists()
    return project


def run_standin(project: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *readme_command(), *extra],
        cwd=project,
        env=offline_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_readme_command_offline_with_an_empty_cache_says_what_it_needs(fresh_copy: Path, tmp_path: Path) -> None:
    out = run_standin(fresh_copy, tmp_path / "hf-home")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: a stand-in of a known GPT-2 needs GPT-2's tokenizer")
    assert "--tokenizer FOLDER" in out.stderr and "Connect once" in out.stderr
    assert not (fresh_copy / "bench" / "models").exists()  # no empty folder left behind
    out = run_standin(fresh_copy, tmp_path / "hf-home", "--tokenizer", "../shared/gpt2-tokenizer")  # the old README's
    assert out.returncode == 2 and "no such folder" in out.stderr and "Traceback" not in out.stderr
    assert not (fresh_copy / "bench" / "models").exists()


def test_the_readme_command_takes_gpt2s_tokenizer_from_the_cache(fresh_copy: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    write_tokenizer(
        tmp_path / "tokenizer"
    )  # the tests' GPT-2-style tokenizer, cached alone, as from_pretrained leaves it
    place_in_hub_cache(tmp_path / "tokenizer", home / "hub", "openai-community/gpt2")
    out = run_standin(fresh_copy, home, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    model = fresh_copy / readme_command()[-1]
    assert json.loads((model / "STANDIN.json").read_text())["standin_of"] == "gpt2-xl"
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]  # no half-written folder beside it
    engine = gpt2_engine.load(str(model), dtype="fp32")
    assert engine.shape.vocab_size == 50257 and engine.shape.n_positions == 1024 and engine.shape.n_layer == 2
    placed = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(engine.tokenizer) == len(placed) == 400 and engine.tokenizer.encode("Hello") == placed.encode("Hello")
    assert engine.speak("Hello", max_new_tokens=3, seed=0).startswith("Hello")


def test_a_build_that_fails_half_way_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from transformers import GPT2LMHeadModel

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GPT2LMHeadModel, "save_pretrained", full_disk)
    out = tmp_path / "new" / "models" / "tiny"
    assert standin.main(["tiny", str(out)]) == 1
    assert (
        capsys.readouterr().err == "error: could not write the stand-in (OSError: [Errno 28] No space left on device)\n"
    )
    assert list(tmp_path.iterdir()) == []  # not the stand-in's folder, nor the two it made above it
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert standin.main(["tiny", str(tmp_path / "notes")]) == 2  # a folder that is not a stand-in is not written over
    assert "holds no stand-in" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
