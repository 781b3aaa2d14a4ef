"""No network (an unreachable proxy, HF_HUB_OFFLINE not set): a model in the Hugging Face cache loads with no
network call at all, one that is not there fails within seconds naming what the cache holds, in the engine, the
command line and the page. Each run is a fresh process, so the environment is read as a user's would be."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import UNREACHABLE_PROXY, offline_env, place_in_hub_cache

from gpt2_engine import hub

ROOT = Path(__file__).resolve().parents[1]
FIRST_ANSWER_S = 5.0  # the bound on the first answer offline, past the imports

# a process that counts every attempt to open a connection or look up a name, and refuses it
NO_SOCKETS = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("this test allows no network")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
"""


@pytest.fixture(params=["unroutable", "hanging"])
def proxy(request: pytest.FixtureRequest) -> Iterator[str]:
    """No network, two ways: an address nothing answers from (where a machine refuses at once, as here), and a
    proxy that takes the connection and never answers (a venue's wifi that hangs: each request waits it out)."""
    if request.param == "unroutable":
        yield UNREACHABLE_PROXY
        return
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen()  # connections are taken by the kernel; nothing ever reads or answers them
        yield f"http://127.0.0.1:{hole.getsockname()[1]}"


@pytest.fixture
def home(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A Hugging Face home whose cache holds one model, the tiny one, under distilgpt2's hub id."""
    place_in_hub_cache(tiny_model_dir, tmp_path / "hub", "distilbert/distilgpt2")
    return tmp_path


def run_python(code: str, home: Path, proxy: str = UNREACHABLE_PROXY, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=offline_env(home, proxy),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_known_model_not_in_the_cache_fails_within_seconds_naming_the_cached_one(home: Path, proxy: str) -> None:
    code = """
import json, time
import gpt2_engine
start = time.perf_counter()
try:
    gpt2_engine.load("gpt2-xl")
except gpt2_engine.ModelLoadError as error:
    print(json.dumps({"seconds": time.perf_counter() - start, "message": str(error)}))
"""
    out = run_python(code, home, proxy)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-3000:]
    answer = json.loads(out.stdout)
    assert answer["seconds"] < FIRST_ANSWER_S, answer
    message = answer["message"]
    assert "'gpt2-xl' is not on this machine yet" in message and "needs a network connection" in message
    assert (
        "On this machine already: gpt2-shakespeare (ships with the app), distilgpt2 (in the Hugging Face cache"
        in message
    )
    assert "save_pretrained()" in message and "Traceback" not in message


def test_a_cached_model_loads_by_name_and_by_hub_id_with_no_network_call(home: Path, tiny_model_dir: Path) -> None:
    place_in_hub_cache(
        tiny_model_dir, home / "hub", "gpt2"
    )  # an older cache: GPT-2 before it moved to openai-community
    code = (
        NO_SOCKETS
        + """
import json
import gpt2_engine
from gpt2_engine import hub
texts = [gpt2_engine.load(name, dtype="fp32").speak("Hi", max_new_tokens=3, seed=0)
         for name in ("distilgpt2", "distilbert/distilgpt2", "gpt2")]
print(json.dumps({"texts": texts, "attempts": attempts, "cached": hub.cached_models()}))
"""
    )
    out = run_python(code, home)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["attempts"] == []  # not one connection, not one name looked up
    assert len(set(answer["texts"])) == 1 and answer["texts"][0].startswith("Hi")  # the same tiny model each time
    assert answer["cached"] == ["gpt2-shakespeare", "distilgpt2", "gpt2"]  # the shipped one first


def test_the_command_line_answers_offline_within_seconds(home: Path, proxy: str) -> None:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "gpt2_engine", "--model", "gpt2-xl", "--length", "5", "Hi"],
        cwd=ROOT,
        env=offline_env(home, proxy),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 2, out.stderr[-3000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 'gpt2-xl' is not on this machine yet") and "distilgpt2" in error
    assert "Traceback" not in out.stderr
    assert seconds < FIRST_ANSWER_S + 10, seconds  # python, torch and transformers start first (~3 s here)


PAGE = """
import json, sys, time
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=60)
start = time.perf_counter()
at.run()
print(json.dumps({"seconds": time.perf_counter() - start, "errors": [e.value for e in at.error],
                  "infos": [i.value for i in at.info], "exceptions": [str(e.value) for e in at.exception],
                  "model": at.selectbox(key="model").value, "generate": not at.button(key="generate").disabled}))
"""


def test_the_page_starts_at_once_on_what_this_machine_has(home: Path, proxy: str) -> None:
    """The page with its default model, gpt2-xl, not downloaded: within seconds it is ready to write, on the model
    that ships with the app, and says in one line how to get gpt2-xl."""
    out = subprocess.run(
        [sys.executable, "-c", PAGE, str(ROOT / "app.py")],
        cwd=ROOT,
        env=offline_env(home, proxy),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    page = json.loads(out.stdout.splitlines()[-1])
    assert not page["exceptions"] and not page["errors"], page
    # the page's own first run (its imports), the look at the hub and the shipped model's first load included
    assert page["seconds"] < FIRST_ANSWER_S + 20, page  # ~9 s here
    assert page["model"] == "gpt2-shakespeare" and page["generate"], page
    note = page["infos"][0]
    assert "**gpt2-xl** is not on this machine and could not be downloaded now" in note
    assert "`python -m gpt2_engine --model gpt2-xl --length 1 Hello` once while online," in note  # no HF_HUB_OFFLINE


def test_what_counts_as_in_the_cache(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole models only (config, weights and tokenizer); any GPT-2 hub id; a tokenizer alone serves the stand-in."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.cached_models() == ["gpt2-shakespeare"] and hub.cached_tokenizer() is None  # it ships
    partial = place_in_hub_cache(tiny_model_dir, tmp_path, "openai-community/gpt2-xl")
    (partial / "model.safetensors").unlink()  # a download cut off before the weights
    assert hub.cached_snapshot("gpt2-xl") is None and hub.cached_models() == ["gpt2-shakespeare"]
    assert hub.cached_tokenizer() == partial  # its tokenizer is whole, and every GPT-2 has the same one
    place_in_hub_cache(tiny_model_dir, tmp_path, "someone/my-gpt2")
    place_in_hub_cache(tiny_model_dir, tmp_path, "openai-community/gpt2-medium")
    assert hub.cached_models() == ["gpt2-shakespeare", "gpt2-medium", "someone/my-gpt2"]
    assert hub.cached_snapshot("someone/my-gpt2") == tmp_path / "models--someone--my-gpt2" / "snapshots" / partial.name
