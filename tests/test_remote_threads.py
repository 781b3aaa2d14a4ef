"""One RemoteEngine, several visitors at once: each run keeps its own state (its requests, the context it found),
so runs streamed from several threads do not touch each other's. Against an in-process OpenAI-compatible server
on 127.0.0.1 (tests/fake_server.py): no model, no llama.cpp needed."""

from __future__ import annotations

import threading

import pytest
from fake_server import FakeServer, next_token

from gpt2_engine import RemoteEngine
from gpt2_engine.remote.tokens import PieceIds

DEADLINE_S = 60.0  # generous: two cores shared with other work


@pytest.fixture
def server():
    served = FakeServer()
    yield served
    served.stop()


RUNS = {  # two visitors' runs: other phrases, windows, lengths and seeds
    "a": ("The cat", {"max_new_tokens": 18, "window": 4, "seed": 3}),
    "b": ("Once upon a time", {"max_new_tokens": 23, "window": 5, "seed": 11}),
}


def test_two_threads_stream_from_one_remote_engine_at_once(server: FakeServer) -> None:
    engine = RemoteEngine(server.url)
    alone = {}
    for name, (prompt, settings) in RUNS.items():
        run = engine.run(prompt, **settings)
        alone[name] = ([(s.index, s.token_id, s.text, s.reset) for s in run.steps()], run.requests)
    both_started = threading.Barrier(len(RUNS), timeout=DEADLINE_S)
    together: dict[str, tuple] = {}
    errors: list[BaseException] = []

    def visit(name: str) -> None:
        prompt, settings = RUNS[name]
        run = engine.run(prompt, **settings)
        steps = []
        try:
            for step in run.steps():
                steps.append((step.index, step.token_id, step.text, step.reset))
                if len(steps) == 1:
                    both_started.wait()  # each run has a request in flight before either goes on
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)
        together[name] = (steps, run.requests)

    threads = [threading.Thread(target=visit, args=(name,)) for name in RUNS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert together == alone  # the same steps and the same requests as each run alone
    steps_a, requests_a = together["a"]
    assert [r.first_index for r in requests_a] == [0, 4, 8, 12, 16] and len(steps_a) == 18
    assert [index for index, _, _, reset in steps_a if reset] == [4, 8, 12, 16]
    assert steps_a[0][2] == chr(next_token(ord("t"), 3)) and steps_a[0][1] < 0  # by its text: no id named
    assert [r.first_index for r in together["b"][1]] == [0, 5, 10, 15, 20]
    assert not hasattr(engine, "requests")  # nothing of a run is kept on the engine every visitor shares


def test_a_context_smaller_than_the_server_says_is_the_runs_own(server: FakeServer) -> None:
    server.context, server.says = 40, 128  # says 128, holds 40
    engine = RemoteEngine(server.url)
    assert engine.n_positions == 128
    run = engine.run("The cat", max_new_tokens=60, window=None, seed=1)
    steps = list(run.steps())
    assert len(steps) == 60 and steps[-1].stop_reason == "length"
    assert run.n_positions == 40  # found out in this run: 7 + 33 tokens, then the server stopped at its limit
    assert [r.max_tokens for r in run.requests][:1] == [60] and run.requests[1].prompt_tokens == 20  # half of 40
    assert engine.n_positions == 128  # the engine every visitor shares is not rewritten mid-run
    assert engine.run("The cat", max_new_tokens=5, window=None, seed=1).n_positions == 128


def test_a_server_that_names_ids_takes_them_as_the_prompt() -> None:
    served = FakeServer(names_ids=True)
    try:
        engine = RemoteEngine(served.url)
        run = engine.run("The cat", max_new_tokens=9, window=4, seed=2, candidates=2)
        steps = list(run.steps())
        assert engine.prompt_as_ids and all(r.as_ids for r in run.requests)
        assert [s.token_id for s in steps] == [ord(s.text) for s in steps]  # the server's own ids
        written = "The cat" + "".join(s.text for s in steps[:4])
        assert run.requests[1].prompt_ids == tuple(ord(c) for c in written[-4:])  # the last 4 ids, sent as ids
        assert [c.token_id for c in steps[0].candidates][0] == steps[0].token_id
    finally:
        served.stop()


def test_pieces_named_by_text_get_one_id_each_from_any_thread() -> None:
    pieces = PieceIds()
    texts = [f"piece {i}" for i in range(400)]
    seen: list[dict[str, int]] = []
    start = threading.Barrier(8, timeout=DEADLINE_S)

    def name(order: list[str]) -> None:
        start.wait()
        seen.append({text: pieces.id_of(text) for text in order})

    threads = [threading.Thread(target=name, args=(texts[k:] + texts[:k],)) for k in range(0, 400, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(seen) == 8 and all(ids == seen[0] for ids in seen)  # the same id for the same text, in every thread
    assert sorted(seen[0].values()) == list(range(-400, 0))  # one id per text: none taken twice
    assert all(pieces.piece(token_id) == text for text, token_id in seen[0].items())


def test_the_page_asks_the_engine_what_it_can_do(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model on a server (runs_here False): the tabs that need the model here say so, a Write run streams, its
    chart is the server's note in words, and no coherence button is offered."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GPT2_STUDIO_BACKEND", server.url)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    notes = " ".join(i.value for i in at.info)
    for why in ("Step by step needs the model on this machine", "Comparing windows compares memory", "A sweep"):
        assert why in notes
    at.text_area(key="prompt").set_value("The cat")
    at.slider(key="length").set_value(6)
    at.text_input(key="seed").set_value("3")
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    run = at.session_state["run"]
    assert len(run.steps) == 6 and run.error is None and run.remote and "reports no memory" in run.memory_note
    assert not any(button.key == "score" for button in at.button)  # scoring needs the model on this machine
