"""The remote backend against a real server: llama.cpp's OpenAI-compatible server (llama-cpp-python's) on a GGUF
conversion of the tiny model, started on a free local port and stopped after (tests/llama_server.py). The engine,
the command line and the page; the server killed in the middle of a run. No mock stands in for the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from llama_server import LlamaServer, missing, to_gguf, whole_characters
from streamlit.testing.v1 import AppTest

import gpt2_engine
from gpt2_engine import BackendDroppedError, BackendUnreachableError, NotGPT2Error, RemoteEngine

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"


@pytest.fixture(scope="module")
def gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote")
    return to_gguf(whole_characters(tiny_model_dir, folder / "whole"), folder / "gguf")


@pytest.fixture(scope="module")
def server(gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    served = LlamaServer(gguf, tmp_path_factory.mktemp("server-log") / "server.log")
    yield served
    served.stop()


@pytest.fixture
def doomed_server(gguf: Path, tmp_path: Path):
    """A server of this test's own, to be killed by it."""
    served = LlamaServer(gguf, tmp_path / "server.log")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def remote(server: LlamaServer) -> RemoteEngine:
    return RemoteEngine(server.url)


def text(steps) -> str:
    return "".join(step.text for step in steps)


def test_streams_with_candidates_and_repeats_with_a_seed(remote: RemoteEngine) -> None:
    assert remote.model_id == "tiny-gpt2" and not remote.prompt_as_ids  # llama-cpp-python's server takes text
    steps = list(remote.stream("The cat sat", max_new_tokens=12, window=None, seed=5, candidates=3))
    assert [s.index for s in steps] == list(range(12)) and steps[-1].stop_reason == "length"
    assert text(steps) and all(s.stop_reason is None for s in steps[:-1])
    for step in steps:
        assert len(step.candidates) == 3 and step.candidates[0].in_top_p
        assert [c.probability for c in step.candidates] == sorted(
            (c.probability for c in step.candidates), reverse=True
        )
        assert step.logprob <= 0 and step.rss_bytes == 0  # the server's memory is not this process's
    again = list(remote.stream("The cat sat", max_new_tokens=12, window=None, seed=5, candidates=3))
    assert text(again) == text(steps)  # the same seed repeats the same text on this server


def test_window_resets_at_the_right_tokens(remote: RemoteEngine) -> None:
    run = remote.run("Once upon a time", max_new_tokens=23, window=8, seed=2)
    steps = list(run.steps())
    assert [s.index for s in steps if s.reset] == [8, 16]
    requests = run.requests  # this run's own requests (tests/test_remote_threads.py: runs at once)
    assert [(r.first_index, r.max_tokens) for r in requests] == [(0, 8), (8, 8), (16, 7)]
    assert requests[0].prompt_ids == tuple(remote.tokenize("Once upon a time"))
    for request in requests[1:]:  # each reset's request starts from the last 8 tokens of prompt + generated
        assert request.prompt_tokens == 8
        written = remote.tokenize("Once upon a time" + text(s for s in steps if s.index < request.first_index))
        assert request.prompt_ids == tuple(written[-8:])
    assert [s.context_tokens for s in steps[8:11]] == [8, 9, 10]


def test_closing_the_generator_closes_the_request(remote: RemoteEngine) -> None:
    run = remote.run("The cat", max_new_tokens=60, window=None, seed=1)
    steps = run.steps()
    first = [next(steps) for _ in range(3)]
    steps.close()  # Stop
    assert len(first) == 3 and len(run.requests) == 1  # no request after the close
    # the server is free at once for the next run, which streams whole
    assert len(list(remote.stream("The cat", max_new_tokens=5, seed=1))) == 5


def test_bad_addresses_and_a_model_that_is_not_gpt2(server: LlamaServer, gguf: Path) -> None:
    with pytest.raises(BackendUnreachableError, match="not a server's address"):
        RemoteEngine("ftp://nowhere")
    with pytest.raises(BackendUnreachableError, match="connection refused. Is it running"):
        RemoteEngine("http://127.0.0.1:9/v1")
    with pytest.raises(gpt2_engine.StudioError, match="has no /nothing/v1/models"):
        RemoteEngine(server.url.removesuffix("/v1") + "/nothing/v1")
    with pytest.raises(gpt2_engine.SettingsError, match="sampler"):
        RemoteEngine(server.url).stream("x", sampler="tutorial")
    assert issubclass(NotGPT2Error, gpt2_engine.StudioError)


def test_the_server_killed_mid_run_says_so_and_keeps_the_text(doomed_server: LlamaServer) -> None:
    remote = RemoteEngine(doomed_server.url)
    kept = []
    with pytest.raises(BackendDroppedError, match=r"after \d+ tokens: the text so far is kept") as caught:
        for step in remote.stream("The cat", max_new_tokens=200, window=8, seed=3):
            kept.append(step)
            if step.index == 4:
                doomed_server.kill()
    assert 5 <= len(kept) < 200 and f"after {len(kept)} tokens" in str(caught.value)


def test_the_command_line_streams(server: LlamaServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpt2_engine", "--backend", server.url, "The cat", "--length", "6", "--seed", "4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The cat") and len(done.stdout.strip()) > len("The cat")
    assert "6 tokens in" in done.stderr and "tiny-gpt2 at http://127.0.0.1" in done.stderr
    down = subprocess.run(
        [sys.executable, "-m", "gpt2_engine", "--backend", "http://127.0.0.1:9/v1", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert down.returncode == 2 and "error: Cannot reach the server" in down.stderr


def page(url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("GPT2_STUDIO_BACKEND", url)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def generate(at: AppTest, **values) -> AppTest:
    for key, value in values.items():
        next(
            w
            for kind in ("text_area", "slider", "select_slider", "text_input")
            for w in getattr(at, kind)
            if w.key == key
        ).set_value(value)
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_page_streams_from_the_server(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(server.url, monkeypatch)
    assert at.text_input(key="backend").value == server.url
    assert not any(w.key == "precision" for w in at.selectbox)  # the model is the server's
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "tiny-gpt2" in sidebar and "reports no memory" in " ".join(c.value for c in at.sidebar.caption)
    generate(at, prompt="The cat sat", length=10, seed="3")
    run = at.session_state["run"]
    assert len(run.steps) == 10 and run.error is None and run.steps[-1].stop_reason == "length"
    assert all(step.candidates for step in run.steps)  # the tooltips' candidates, from the server's logprobs
    assert any("Done: 10 tokens" in s.value for s in at.success)
    html = " ".join(h.proto.body for h in at.get("html"))
    assert run.steps[3].candidates[0].text.replace("<", "&lt;")[:3] in html or "data-tip" in html
    assert any("reports no memory" in c.value for c in at.caption)  # words, not this machine's memory as the model's


def test_the_page_says_when_the_server_dies(doomed_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(doomed_server.url, monkeypatch)
    stream = RemoteEngine.stream

    def killed_at_the_50th_token(self, *args, **kwargs):  # the server dies in the middle of a 1,000-token run
        for step in stream(self, *args, **kwargs):
            yield step
            if step.index == 49:
                doomed_server.kill()

    monkeypatch.setattr(RemoteEngine, "stream", killed_at_the_50th_token)
    generate(at, prompt="The cat", length=1000, window=8, seed="1")
    run = at.session_state["run"]
    assert 0 < len(run.steps) < 1000, "the run was not under way when the server died"
    assert f"after {len(run.steps):,} tokens: the text so far is kept" in run.error
    assert any("the text so far is kept" in e.value for e in at.error) and not at.exception
    assert run.generated  # the text so far, on the page
    generate(at, prompt="The cat", length=5, seed="1")  # the server is gone: the next run says so at once
    assert "Cannot reach the server" in at.session_state["run"].error and not at.exception


def test_load_figures_drive_k_http_clients_of_the_server(server: LlamaServer, tmp_path: Path) -> None:
    import json

    from bench import load

    for pid, report in ((None, tmp_path / "unseen.json"), (server.process.pid, tmp_path / "seen.json")):
        pid_option = ["--server-pid", str(pid)] if pid else []
        load.main(["--backend", server.url, *pid_option, "--tokens", "6", "--visitors", "1", "2", "--out", str(report)])
        rounds = json.loads(report.read_text())["rounds"]
        assert [r["visitors"] for r in rounds] == [1, 2] and rounds[0]["largest_batch"] is None  # the server batches
        for r in rounds:
            assert r["aggregate_tok_s"] > 0 and r["per_visitor_tok_s_slowest"] > 0 and r["ttft_median_s"] > 0
            # the server's memory is not this process's: measured only with its pid
            assert (r["peak_rss_bytes"] or 0) > 10_000_000 if pid else r["peak_rss_bytes"] is None
