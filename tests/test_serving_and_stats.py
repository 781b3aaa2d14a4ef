"""Sharing a model among visitors (plan, load once, turns) and the numbers a run's steps add up to."""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from pathlib import Path

import pytest

import gpt2_engine
from gpt2_engine import capabilities, decoding
from gpt2_engine.memory import MemoryReading
from gpt2_engine.serving import SharedModel, TurnQueue, plan_load
from gpt2_engine.stats import RunStats, generated_text, memory_rows


@pytest.fixture(autouse=True)
def no_models_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test counts only the models it loads: the page tests' models, which the page's cache keeps alive in this
    process, would otherwise count against the bound of two (serving.MOST_MODELS)."""
    monkeypatch.setattr(gpt2_engine.serving, "_ALIVE", weakref.WeakSet())


def test_stats_add_up_the_steps(engine: gpt2_engine.Engine) -> None:
    steps = list(engine.stream("The cat sat", max_new_tokens=30, window=7, seed=5))
    stats = RunStats.from_steps(steps)
    assert stats.tokens == 30 and stats.seed == 5 and stats.stop_reason == "length"
    assert stats.resets == (7, 14, 21, 28)
    assert stats.words == len(generated_text(steps).split())
    assert stats.peak_rss_bytes == max(s.rss_bytes for s in steps) > 0
    assert stats.peak_kv_bytes == max(s.kv_bytes for s in steps) > 0
    assert stats.tokens_per_s > 0 and stats.elapsed_s == steps[-1].elapsed_s
    assert "The cat sat" + generated_text(steps) == engine.speak("The cat sat", max_new_tokens=30, window=7, seed=5)
    rows = memory_rows(steps)
    assert [row["tokens"] for row in rows] == list(range(1, 31))
    assert [row["tokens"] - 1 for row in rows if row["reset"]] == [7, 14, 21, 28]


def test_a_runs_memory_is_measured_from_what_the_process_held_just_before_it(
    engine: gpt2_engine.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder reads the process's memory once before it reads the prompt (the run's start), then after each
    token; the steps carry the start, and the chart's rows are the memory above it."""
    readings = iter(range(1_000_000_000, 2_000_000_000, 1_000_000))  # 1 GB at the start, then 1 MB more each time

    def reading() -> MemoryReading:
        rss = next(readings)
        return MemoryReading(rss_bytes=rss, anon_bytes=rss // 2)

    monkeypatch.setattr(decoding, "read_process_memory", reading)
    steps = list(engine.stream("The cat sat", max_new_tokens=5, seed=1))
    assert [s.start_rss_bytes for s in steps] == [1_000_000_000] * 5
    assert [s.rss_bytes for s in steps] == [1_001_000_000 + n * 1_000_000 for n in range(5)]
    stats = RunStats.from_steps(steps)
    assert stats.start_rss_bytes == 1_000_000_000 and stats.peak_added_bytes == 5_000_000
    assert [row["added_bytes"] for row in memory_rows(steps)] == [1_000_000 * (n + 1) for n in range(5)]
    assert steps[0].memory_limit_bytes > 1_000_000_000  # the memory guard counts from the same start
    unread = [dataclasses.replace(s, start_rss_bytes=0) for s in steps]  # steps made without that reading
    assert RunStats.from_steps(unread).start_rss_bytes == steps[0].rss_bytes - steps[0].kv_bytes


def test_stats_of_no_steps_and_one_step(engine: gpt2_engine.Engine) -> None:
    assert RunStats.from_steps([]).tokens == 0 and RunStats.from_steps([]).seed is None
    one = RunStats.from_steps(list(engine.stream("Hi", max_new_tokens=1, seed=1)))
    assert one.tokens == 1 and one.tokens_per_s == 0.0 and one.resets == ()


def test_plan_of_a_known_name_reads_nothing_and_of_a_folder_reads_its_config(tiny_model_dir: Path) -> None:
    plan = plan_load("gpt2-xl", "fp32", "cpu")
    assert plan.precision == "fp32" and plan.device == "cpu" and plan.shape.n_layer == 48
    assert plan.memory_needed_bytes > plan.weight_bytes > 6e9
    low = capabilities.runnable("cpu")[-1]  # a precision other than fp32 that runs on this CPU
    folder = plan_load(str(tiny_model_dir), low, "cpu")
    assert folder.is_local and folder.shape.n_positions == 128 and folder.precision == low


def test_plan_of_a_missing_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(gpt2_engine.ModelLoadError, match="does not exist"):
        plan_load(str(tmp_path / "nothing"))


def test_a_shared_model_loads_once_however_many_ask_at_once() -> None:
    calls = []

    def slow_loader(name, dtype, device, progress):
        calls.append(name)
        progress("loading")
        time.sleep(0.2)
        return f"engine of {name}"

    shared = SharedModel("m", loader=slow_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(shared.get())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == ["engine of m"] * 4 and calls == ["m"] and shared.loaded
    assert shared.progress == ["loading"]


def test_a_failed_load_is_reported_then_tried_again() -> None:
    attempts = []

    def flaky_loader(name, dtype, device, progress):
        attempts.append(name)
        if len(attempts) == 1:
            raise gpt2_engine.ModelLoadError("not downloaded yet")
        return "engine"

    shared = SharedModel("m", loader=flaky_loader)
    shared.start()
    with pytest.raises(gpt2_engine.ModelLoadError, match="not downloaded"):
        while shared.wait(timeout_s=1) is None:
            pass
    with pytest.raises(gpt2_engine.ModelLoadError):  # still the same failure until someone starts again
        shared.wait(timeout_s=1)
    assert shared.get() == "engine" and len(attempts) == 2


def test_turns_are_one_at_a_time_first_come_first_served() -> None:
    queue = TurnQueue()
    first = queue.join()
    second = queue.join()
    assert queue.ahead(first) == 0 and queue.ahead(second) == 1
    assert not queue.wait(second, timeout_s=0.01)
    queue.leave(first)
    assert queue.wait(second, timeout_s=0.01) and len(queue) == 1
    queue.leave(second)
    queue.leave(second)  # harmless
    assert len(queue) == 0


def test_a_waiting_run_hears_how_many_are_ahead_and_gets_its_turn() -> None:
    queue = TurnQueue()
    heard: list[int] = []
    order: list[str] = []
    holding, told = threading.Event(), threading.Event()

    def first_run() -> None:
        with queue.turn():
            holding.set()
            told.wait(30)  # holds its turn until the second has heard it waits: an event, not a time
            order.append("first")

    def hear(ahead: int) -> None:
        heard.append(ahead)
        told.set()

    thread = threading.Thread(target=first_run)
    thread.start()
    holding.wait(30)
    with queue.turn(waiting=hear, poll_s=0.05):
        order.append("second")
    thread.join(5)
    assert order == ["first", "second"] and heard and set(heard) == {1}
    assert len(queue) == 0


def test_a_turn_is_given_back_when_the_run_raises_or_gives_up() -> None:
    queue = TurnQueue()
    with pytest.raises(RuntimeError), queue.turn():
        raise RuntimeError("boom")
    assert len(queue) == 0

    class Interrupted(BaseException):  # what Streamlit raises in a script it stops
        pass

    blocker = queue.join()

    def give_up(ahead: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted), queue.turn(waiting=give_up, poll_s=0.01):
        pass
    assert len(queue) == 1  # only the blocker is left
    queue.leave(blocker)


def test_a_third_model_waits_until_one_of_two_in_use_is_let_go(tiny_model_dir, tmp_path) -> None:
    """Issue 30: "at most two models in memory" held only for the page's cache, not for the engines visitors still
    held. A load that would make a third alive fails, naming the two; once one is let go, it loads."""
    import shutil

    folders = [str(shutil.copytree(tiny_model_dir, tmp_path / f"model-{n}")) for n in range(3)]
    first = SharedModel(folders[0], "fp32").get()
    second = SharedModel(folders[1], "fp32").get()
    third = SharedModel(folders[2], "fp32")
    with pytest.raises(gpt2_engine.ModelLoadError, match="in memory already.*at most 2 models") as said:
        third.wait(timeout_s=60)
    assert folders[0] in str(said.value) and folders[1] in str(said.value)
    assert SharedModel(folders[1], "fp32").get().name == folders[1]  # one of the two again: no third
    del first, said  # (the error's traceback holds this frame, and so the first engine)
    assert len(gpt2_engine.serving.models_alive()) == 1  # the failed load's error holds no engine
    assert third.get().name == folders[2]
    assert second.name == folders[1]
