"""The batch is fair and race-free: a long phrase is read a budget at a time beside the others' steps, the budget
follows what steps and prompt tokens cost, and readers popping their steps never trip the batcher's thread."""

from __future__ import annotations

import random
import threading

import pytest

import gpt2_engine
from gpt2_engine import fast
from gpt2_engine.batching import PromptBudget, Run

LONG = "The cat sat on the mat. Hello world! Is it raining? Yes, it is. Once upon a time there was a model. " * 3


def run_with(*reads: tuple[str, int]) -> Run:
    run = Run(make=None, rows=1, cache_bytes=0, ready=threading.Condition())  # type: ignore[arg-type]
    run.pending = [(name, 0, list(range(n))) for name, n in reads]  # type: ignore[misc]
    return run


def test_the_budget_follows_what_a_step_and_a_prompt_token_cost() -> None:
    budget = PromptBudget()
    assert budget.tokens() == PromptBudget.FIRST
    budget.timed([("cache", 0, [1])], 0.10)  # a pass of steps only
    budget.timed([("cache", 0, [1]), ("other", 0, list(range(20)))], 0.30)  # 20 prompt tokens added 0.2 s
    assert budget.tokens() == int(PromptBudget.STEP_SHARE * 10)  # 10 of them add about one step
    budget.timed([("cache", 0, [1])], 0.10)
    for _ in range(20):
        budget.timed([("cache", 0, [1]), ("other", 0, list(range(20)))], 0.10 + 20 * 0.1)  # very dear tokens
    assert budget.tokens() == PromptBudget.LEAST  # a prompt always moves


def test_a_prompt_beside_steps_is_cut_to_the_budget_and_the_rest_kept() -> None:
    budget = PromptBudget()
    stepping, prompt, second = run_with(("a", 1), ("a-shadow", 4)), run_with(("b", 100)), run_with(("c", 50))
    taken, reads, partial = budget.split([stepping, prompt, second])
    assert taken == [stepping, prompt] and partial[prompt] == [("b", 0, list(range(PromptBudget.FIRST, 100)))]
    assert sum(len(ids) for name, _, ids in reads if name == "b") == PromptBudget.FIRST
    alone = run_with(("d", 600))
    taken, reads, partial = budget.split([alone])  # nobody else waits: a whole chunk
    assert reads == [("d", 0, list(range(fast.PROMPT_CHUNK)))] and alone in partial


def test_no_pass_reads_more_prompt_than_the_budget_beside_steps(engine, monkeypatch) -> None:
    passes: list[list[int]] = []
    real = fast.forward_reads

    def counting(model, reads):
        passes.append([len(ids) for _, _, ids in reads])
        return real(model, reads)

    monkeypatch.setattr(fast, "forward_reads", counting)
    monkeypatch.setattr(engine.batcher.budget, "tokens", lambda: 12)
    running = engine.stream("The cat", max_new_tokens=500, seed=1, stop_at_eos=False, window=None)
    next(running)
    newcomer = engine.stream(LONG, max_new_tokens=2, seed=2, window=None)
    feeding = threading.Event()

    def keep_reading() -> None:
        while not feeding.is_set():
            next(running)

    reader = threading.Thread(target=keep_reading)
    reader.start()
    steps = list(newcomer)
    feeding.set()
    reader.join(30)
    running.close()
    assert len(steps) == 2
    beside = [p for p in passes if len(p) > 1 and max(p) > fast.STEPS_READ]
    assert beside, "the newcomer's prompt was read beside the other run's steps"
    assert all(sum(n for n in p if n > fast.STEPS_READ) <= 12 for p in beside)


@pytest.mark.timeout(300)
def test_many_short_runs_from_several_readers_all_end_well(engine) -> None:
    """The batcher counts each run's waiting steps under its lock: readers that pop them at any moment (and
    close streams early) never make a run fail (it used to iterate an outbox the reader was popping)."""
    failures: list[BaseException] = []

    def visitor(seed: int) -> None:
        chance = random.Random(seed)
        for k in range(12):
            settings = gpt2_engine.GenerationSettings(
                max_new_tokens=chance.randint(1, 12), seed=seed * 100 + k, window=chance.choice([None, 4, 8])
            )
            try:
                for _ in engine.stream("word " * chance.randint(1, 40), settings):
                    if chance.random() < 0.05:
                        break  # a Stop
            except Exception as error:  # noqa: BLE001 - collected: none is expected
                failures.append(error)

    visitors = [threading.Thread(target=visitor, args=(seed,)) for seed in range(4)]
    for thread in visitors:
        thread.start()
    for thread in visitors:
        thread.join(240)
    assert not failures, failures
    assert engine.batcher.join(30)


def test_a_prompt_waits_its_budget_while_others_write_even_when_they_wait_for_their_readers() -> None:
    """Runs whose readers have not taken their steps yet are not in the pass, but their next step must not wait
    behind a whole chunk of someone's prompt."""
    budget = PromptBudget()
    prompt = run_with(("b", 100))
    _, reads, _ = budget.split([prompt])
    assert len(reads[0][2]) == min(100, fast.PROMPT_CHUNK)  # alone: a chunk
    prompt = run_with(("b", 100))
    _, reads, partial = budget.split([prompt], active=2)
    assert len(reads[0][2]) == PromptBudget.FIRST and prompt in partial
