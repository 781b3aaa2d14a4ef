"""Continuous batching: streams asked for at once are decoded together, one forward pass per step, and each
writes what it writes alone; runs join and leave between passes; a bound on rows makes newcomers wait."""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref

import pytest
import torch
from conftest import runs_here

import gpt2_engine
from gpt2_engine import StepMode, batching, fast, scheduler

LONG = "The cat sat on the mat. Hello world! Is it raining? Yes, it is. Once upon a time there was a model. " * 2


def solo(engine, prompt: str, settings, window_mode: str = "reprime") -> list[int]:
    """The run's tokens written alone: a decoder stepped by itself, no batch."""
    decoder = engine.decoder(prompt, engine.settings_for(settings), window_mode=window_mode)
    tokens = []
    while not decoder.finished:
        tokens.append(decoder.step().token_id)
    return tokens


def batcher_thread_ended(engine) -> bool:
    return engine.batcher.join(timeout_s=10) and not any(t.name == "batcher" for t in threading.enumerate())


@pytest.fixture
def counting(monkeypatch):
    """Every forward pass: the number of runs' reads and the tokens of each; fails on two at the same moment."""
    passes: list[list[int]] = []
    in_flight = []
    real = fast.forward_reads

    def forward_reads(model, reads):
        in_flight.append(1)
        try:
            assert len(in_flight) == 1, "two forward passes on one model at the same moment"
            time.sleep(0.001)  # long enough for another thread to try
            passes.append([len(ids) for _, _, ids, _ in reads])
            return real(model, reads)
        finally:
            in_flight.pop()

    monkeypatch.setattr(fast, "forward_reads", forward_reads)
    return passes


def test_runs_started_at_different_moments_write_their_solo_texts(engine, counting, monkeypatch) -> None:
    monkeypatch.setattr(scheduler, "PIECE", 16)  # a long prompt is read in chunks, beside the others' steps
    poisoned = "A poisoned prompt"
    poisoned_ids = engine.tokenizer.encode(poisoned)
    real = fast.forward_reads

    def poisoned_piece(read: fast.Read) -> bool:
        n = len(read.ids)
        return read.kind == "prompt" and any(read.ids == poisoned_ids[k : k + n] for k in range(len(poisoned_ids)))

    def forward_reads(model, reads):  # a pass that reads the poisoned prompt (or a piece of it) fails
        if any(poisoned_piece(read) for read in reads):
            raise RuntimeError("injected failure")
        return real(model, reads)

    monkeypatch.setattr(fast, "forward_reads", forward_reads)
    G = gpt2_engine.GenerationSettings
    plans = {  # name: (prompt, settings, window mode, steps to take before closing (None: all))
        "greedy": ("The cat sat", G(max_new_tokens=40, sampler="greedy", stop_at_eos=False), "reprime", None),
        "shadow": ("Once upon a time", G(max_new_tokens=50, window=5, seed=11, stop_at_eos=False), "shadow", None),
        "long": (LONG, G(max_new_tokens=30, window=8, seed=12, temperature=0.8, top_k=50), "reprime", None),
        "stopped": ("Hello world!", G(max_new_tokens=100, seed=13, stop_at_eos=False), "reprime", 7),
        "raises": (poisoned, G(max_new_tokens=20, seed=14), "reprime", None),
        "short": ("Is it raining?", G(max_new_tokens=3, seed=15, top_p=0.5, stop_at_eos=False), "shadow", None),
    }
    expected = {name: solo(engine, prompt, s, mode) for name, (prompt, s, mode, _) in plans.items() if name != "raises"}
    got: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    started = {name: threading.Event() for name in plans}
    engine.batcher.largest_batch = 0

    def visitor(name: str, after: str | None) -> None:
        prompt, settings, mode, stop_after = plans[name]
        if after is not None:
            started[after].wait(10)  # each starts once the one before has its first tokens: a batch under way
        tokens = got.setdefault(name, [])
        steps = engine.stream(prompt, settings, window_mode=mode)
        try:
            for step in steps:
                tokens.append(step.token_id)
                if len(tokens) == 3:
                    started[name].set()
                if stop_after is not None and len(tokens) == stop_after:
                    break
                time.sleep(0.002)  # a reader that draws each token: the batch waits for no one
        except RuntimeError as error:
            errors[name] = str(error)
        finally:
            steps.close()
            started[name].set()

    names = list(plans)
    threads = [threading.Thread(target=visitor, args=(n, names[k - 1] if k else None)) for k, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == {"raises": "injected failure"} and got["raises"] == []
    for name, tokens in expected.items():
        stop_after = plans[name][3]
        assert got[name] == tokens[: stop_after or len(tokens)], name
    assert engine.batcher.largest_batch >= 3  # they were decoded together
    chunked = [p for p in counting if len(p) > 1 and max(p) > 1 and sorted(p)[-2] == 1]
    assert chunked, "a newcomer's prompt (or a shadow's catch-up) is read in the same pass as the others' steps"
    assert batcher_thread_ended(engine)


def test_sampled_runs_batched_equal_their_solo_runs_token_for_token(engine) -> None:
    settings = [
        gpt2_engine.GenerationSettings(max_new_tokens=60, seed=seed, top_p=0.9, window=window, stop_at_eos=False)
        for seed, window in ((1, None), (2, 6), (3, 20), (4, None))
    ]
    prompts = ["The cat", "Hello world!", "Once upon a time, there was a", "Is it raining?"]
    streams = [engine.stream(p, s) for p, s in zip(prompts, settings)]
    batched: list[list[gpt2_engine.Step]] = [[] for _ in streams]
    while any(streams):  # one reader taking a step from each in turn: four runs in one batch
        for k, steps in enumerate(streams):
            if steps is not None:
                step = next(steps, None)
                if step is None:
                    streams[k] = None
                else:
                    batched[k].append(step)
    for prompt, s, steps in zip(prompts, settings, batched):
        decoder = engine.decoder(prompt, engine.settings_for(s))
        alone = [decoder.step() for _ in range(60)]
        assert [x.token_id for x in steps] == [x.token_id for x in alone]
        assert [x.reset for x in steps] == [x.reset for x in alone]
        # the same arithmetic per row; a matrix product over more rows may sum in another order: the last bits
        torch.testing.assert_close([x.logprob for x in steps], [x.logprob for x in alone], rtol=1e-5, atol=1e-5)
    assert batcher_thread_ended(engine)


def test_three_windowed_writers_read_their_shadows_a_token_a_step_and_write_their_solo_texts(
    engine, monkeypatch
) -> None:
    """Three writers started together reset together: their shadows read 3 tokens each beside their steps in the
    same passes, 12 rows, past the step kernel's 8 (2-2.5x their steps alone, no AMX). In a batch of three the
    scheduler has each shadow read one token a step, from the window's first step: every pass keeps within the
    step kernel's rows, and the texts are those written alone."""
    kinds: list[list[tuple[str, int]]] = []
    real = fast.forward_reads

    def recording(model, reads):
        kinds.append([(read.kind, len(read.ids)) for read in reads])
        return real(model, reads)

    monkeypatch.setattr(fast, "forward_reads", recording)
    settings = [
        gpt2_engine.GenerationSettings(max_new_tokens=40, seed=seed, window=10, stop_at_eos=False) for seed in (1, 2, 3)
    ]
    prompts = ["The cat", "Hello world!", "Is it raining?"]
    streams = [engine.stream(p, s, window_mode="shadow") for p, s in zip(prompts, settings)]
    batched: list[list[int]] = [[] for _ in streams]
    for _ in range(40):  # one reader taking a step from each in turn
        for k, steps in enumerate(streams):
            batched[k].append(next(steps).token_id)
    for steps in streams:
        steps.close()
    shadows = [n for reads in kinds for kind, n in reads if kind == "shadow"]
    assert shadows and shadows.count(1) >= 0.8 * len(shadows)  # a token a step (a reset reads what is owed
    # from the steps before all three had joined, alongside its newest token)
    full = [reads for reads in kinds if sum(1 for kind, _ in reads if kind == "step") == 3]
    assert full and all(sum(n for _, n in reads) <= scheduler.PassCost.FEW for reads in full)
    for prompt, s, tokens in zip(prompts, settings, batched):
        assert tokens == solo(engine, prompt, s, "shadow")
    assert batcher_thread_ended(engine)


def test_a_closed_or_finished_run_leaves_no_cache_and_no_thread(engine, monkeypatch) -> None:
    caches: list[weakref.ref] = []
    real_decoder = gpt2_engine.Engine.decoder

    def decoder(self, *args, **kwargs):
        made = real_decoder(self, *args, **kwargs)
        caches.append(weakref.ref(made.context.cache))
        return made

    monkeypatch.setattr(gpt2_engine.Engine, "decoder", decoder)
    finished = list(engine.stream("The cat", max_new_tokens=5, seed=1))
    stopped = engine.stream("The cat", max_new_tokens=500, seed=2, stop_at_eos=False)
    next(stopped)
    never_read = engine.stream("The cat", max_new_tokens=500, seed=3)  # asked for, never started: nothing made
    stopped.close()
    del never_read
    assert len(finished) == 5 and len(caches) == 2
    assert batcher_thread_ended(engine)
    gc.collect()
    assert all(ref() is None for ref in caches)
    assert engine.batcher.runs() == (0, 0)


def test_beyond_the_bound_a_newcomer_waits_and_hears_its_place(engine, monkeypatch) -> None:
    monkeypatch.setattr(engine.batcher.scheduler, "max_runs", 2)
    first = engine.stream("The cat", max_new_tokens=500, seed=1, stop_at_eos=False, window_mode="reprime")
    second = engine.stream(
        "Hello world!", max_new_tokens=500, seed=2, stop_at_eos=False, window=8, window_mode="shadow"
    )  # a run each, window or not
    next(first), next(second)  # both in the batch: the bound is reached
    heard: dict[str, list[int]] = {"third": [], "fourth": []}
    tokens: dict[str, list[int]] = {"third": [], "fourth": []}

    def waiting_visitor(name: str, seed: int) -> None:
        settings = gpt2_engine.GenerationSettings(max_new_tokens=6, seed=seed)
        for step in engine.stream("Is it raining?", settings, on_wait=heard[name].append, window_mode="reprime"):
            tokens[name].append(step.token_id)

    third = threading.Thread(target=waiting_visitor, args=("third", 3))
    third.start()
    deadline = time.monotonic() + 10
    while not heard["third"] and time.monotonic() < deadline:
        time.sleep(0.01)
    fourth = threading.Thread(target=waiting_visitor, args=("fourth", 4))
    fourth.start()
    while not heard["fourth"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.batcher.runs() == (2, 2)
    assert set(heard["third"]) == {2} and set(heard["fourth"]) == {3}  # two in the batch, and the third before it
    assert not tokens["third"] and not tokens["fourth"]
    first.close()  # a row comes free: the third goes in, the fourth is next
    third.join(30)
    assert len(tokens["third"]) >= 1 and not third.is_alive()
    second.close()
    fourth.join(30)
    assert tokens["fourth"] and not fourth.is_alive()
    expected = solo(engine, "Is it raining?", gpt2_engine.GenerationSettings(max_new_tokens=6, seed=3))
    assert tokens["third"] == expected
    assert batcher_thread_ended(engine)


def test_the_memory_bound_counts_every_rows_full_cache(engine, monkeypatch) -> None:
    row = engine.n_positions * engine.kv_bytes_per_token
    monkeypatch.setattr(batching, "available_bytes", lambda: int(3.5 * row / batching.KV_SHARE))  # 3 rows fit
    first = engine.stream("The cat", max_new_tokens=500, seed=1, window=8, stop_at_eos=False, window_mode="shadow")
    second = engine.stream("Hello", max_new_tokens=500, seed=2, stop_at_eos=False, window_mode="reprime")
    next(first), next(second)  # three rows' caches, counted full: the shadow run's counts two
    heard: list[int] = []
    third = engine.stream("Hi", max_new_tokens=2, seed=3, on_wait=heard.append, window_mode="reprime")
    result: list = []
    reader = threading.Thread(target=lambda: result.extend(third))
    reader.start()
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard and heard[-1] == 2 and not result
    second.close()  # one row free: the third fits
    reader.join(30)
    assert len(result) == 2
    first.close()
    assert batcher_thread_ended(engine)


def test_a_newcomer_sees_its_first_token_within_its_prefill_and_two_passes(engine, monkeypatch) -> None:
    monkeypatch.setattr(scheduler, "PIECE", 16)
    monkeypatch.setattr(
        engine.batcher.scheduler, "budget", lambda writers, rows, readers=1: 16
    )  # its prompt beside the others' steps: 16 a pass
    running = [engine.stream(p, max_new_tokens=500, seed=k, stop_at_eos=False) for k, p in enumerate(["A", "B c"])]
    for steps in running:
        next(steps)
    newcomer = engine.stream(LONG, max_new_tokens=3, seed=9)
    sizes: list[int] = []  # the longest read of each pass
    real = fast.forward_reads

    def counting(model, reads):
        sizes.append(max(len(ids) for _, _, ids, _ in reads))
        return real(model, reads)

    monkeypatch.setattr(fast, "forward_reads", counting)
    feeding = threading.Event()

    def keep_reading() -> None:  # the others keep streaming meanwhile, once the newcomer has asked
        while sum(engine.batcher.runs()) < 3:
            time.sleep(0.001)
        while not feeding.is_set():
            for steps in running:
                next(steps)

    reader = threading.Thread(target=keep_reading)
    reader.start()
    first = next(newcomer)
    passes = len(sizes) - next(k for k, n in enumerate(sizes) if n > 1)  # from its first chunk (the others' steps
    # decoded ahead of their readers before it joined do not count)
    feeding.set()
    reader.join(10)
    prompt_tokens = first.prompt_tokens
    assert first.index == 0 and prompt_tokens > 3 * 16  # read in 4 or more passes
    assert passes <= math.ceil(prompt_tokens / 16) + 2, passes
    newcomer.close()
    for steps in running:
        steps.close()
    assert batcher_thread_ended(engine)


def test_step_mode_and_the_batch_never_run_the_model_at_the_same_moment(engine, counting) -> None:
    settings = gpt2_engine.GenerationSettings(max_new_tokens=40, seed=5, window=6, stop_at_eos=False)
    expected = solo(engine, "The cat", settings)
    got: list[int] = []
    writer = threading.Thread(target=lambda: got.extend(s.token_id for s in engine.stream("The cat", settings)))
    writer.start()
    stepper = StepMode(engine, "Hello world!", gpt2_engine.GenerationSettings(window=4, seed=3))
    for _ in range(20):
        stepper.step()
    stepper.undo()
    writer.join(60)
    assert got == expected and len(stepper.steps) == 19  # `counting` fails on two passes at once
    assert batcher_thread_ended(engine)


def test_a_tutorial_mode_run_decodes_beside_the_batch_and_writes_its_solo_text(engine) -> None:
    tutorial = gpt2_engine.GenerationSettings(max_new_tokens=15, seed=7, window=5, autograd=True, stop_at_eos=False)
    fast_run = gpt2_engine.GenerationSettings(max_new_tokens=15, seed=8, window=5, stop_at_eos=False)
    a, b = engine.stream("The cat", tutorial), engine.stream("The cat", fast_run)
    both = [(x.token_id, y.token_id) for x, y in zip(a, b)]
    assert [x for x, _ in both] == solo(engine, "The cat", tutorial)
    assert [y for _, y in both] == solo(engine, "The cat", fast_run)
    assert batcher_thread_ended(engine)


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_q8_rows_stay_independent_batched_or_alone(tiny_model_dir, precision) -> None:
    """q8 scales each row by its own peak (q8.Q8Linear): a batch changes no row's arithmetic."""
    low = gpt2_engine.load(str(tiny_model_dir), dtype=precision)
    settings = [gpt2_engine.GenerationSettings(max_new_tokens=30, seed=s, window=7, stop_at_eos=False) for s in (1, 2)]
    streams = [low.stream(p, s) for p, s in zip(("The cat", "Hello world! Is it"), settings)]
    batched = [[], []]
    for _ in range(30):
        for k, steps in enumerate(streams):
            batched[k].append(next(steps))
    for prompt, s, steps in zip(("The cat", "Hello world! Is it"), settings, batched):
        assert [x.token_id for x in steps] == solo(low, prompt, s, low.window_mode)
    assert low.batcher.largest_batch == 2 and batcher_thread_ended(low)


def test_the_batch_hands_freed_memory_back_while_it_runs_and_when_its_last_run_ends(engine, monkeypatch) -> None:
    """A page left open all day: the heap a day's runs freed goes back to the system (batching.TRIM_EVERY_S), not
    only at a tutorial run's start."""
    trims: list[int] = []
    monkeypatch.setattr(batching, "release_freed_memory", lambda: trims.append(engine.batcher.passes))
    list(engine.stream("The cat", max_new_tokens=3, seed=1, stop_at_eos=False))
    assert batcher_thread_ended(engine) and trims and trims[-1] == engine.batcher.passes  # once the last run ended
    trims.clear()
    monkeypatch.setattr(batching, "TRIM_EVERY_S", 0.0)
    list(engine.stream("The cat", max_new_tokens=6, seed=1, stop_at_eos=False))
    assert batcher_thread_ended(engine) and len(trims) >= 6  # and between passes, as often as TRIM_EVERY_S says


def test_a_fault_in_planning_a_pass_ends_the_runs_saying_why_instead_of_hanging(engine, monkeypatch) -> None:
    """A test that patched the budget with the wrong signature left the batch's thread dead and its reader waiting
    for ever; a pass that cannot be planned now fails its runs with the error, and the batch goes on."""

    def broken(batch, active=0, now=None):
        raise TypeError("plan() broke")

    with monkeypatch.context() as patched:
        patched.setattr(engine.batcher.scheduler, "plan", broken)
        with pytest.raises(TypeError, match="plan\\(\\) broke"):
            list(engine.stream("The cat", max_new_tokens=3, seed=1))
    assert len(list(engine.stream("The cat", max_new_tokens=3, seed=1))) == 3  # the next run is served
