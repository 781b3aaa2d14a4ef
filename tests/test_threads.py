"""The thread policy: it keeps every core on a quiet machine, gives one up beside a busy neighbour, takes it back
when the neighbour leaves, pays little for looking, and does nothing when pinned. Pass times are simulated here
(the real ones are measured by `python -m bench.busy`)."""

from __future__ import annotations

import threading

import torch

from gpt2_engine import threads
from gpt2_engine.threads import ThreadPolicy

QUIET = {2: 1.0, 1: 1.25}  # seconds a pass: two threads beat one by a fifth ...
BUSY = {2: 4.5, 1: 1.3}  # ... and beside a busy process one thread is 3-4x faster (OpenMP's barriers)


def simulate(policy: ThreadPolicy, costs: dict[int, float], passes: int, rows: int = 1) -> list[int]:
    """Runs `passes` passes whose cost depends on the thread count; returns the count of each."""
    used = []
    for _ in range(passes):
        count = policy.threads_for(rows)
        policy.learn(count, rows, costs[count])
        used.append(count)
    return used


def test_a_quiet_machine_keeps_every_core_and_looks_rarely() -> None:
    policy = ThreadPolicy(most=2)
    used = simulate(policy, QUIET, 1000)
    assert policy.current == 2 and policy.changes == 0
    assert used.count(1) <= 0.03 * len(used)  # the tries of one thread fewer: a few passes now and then


def test_beside_a_busy_neighbour_it_gives_up_a_core_soon_and_pays_little_for_looking() -> None:
    policy = ThreadPolicy(most=2)
    simulate(policy, QUIET, 100)
    used = simulate(policy, BUSY, 1000)  # a neighbour starts
    assert policy.current == 1
    assert used.index(1) <= 5  # a step that suddenly runs long makes it try at once
    spent = sum(BUSY[count] for count in used)
    assert spent <= 1.1 * len(used) * BUSY[1]  # tries of two threads, each ended after one slow pass


def test_when_the_neighbour_leaves_it_takes_the_core_back() -> None:
    policy = ThreadPolicy(most=2)
    simulate(policy, BUSY, 300)
    assert policy.current == 1
    used = simulate(policy, QUIET, 400)
    assert policy.current == 2
    assert used.index(2) <= threads.LONGEST_WAIT + threads.TRY_PASSES


def test_pinned_it_never_tries_and_says_why() -> None:
    policy = ThreadPolicy(most=2, pinned=1)
    assert set(simulate(policy, BUSY, 300)) == {1}
    assert policy.describe() == "1 thread (GPT2_STUDIO_THREADS)"
    assert ThreadPolicy(most=2).describe() == "2 threads"


def test_held_it_keeps_its_count() -> None:
    policy = ThreadPolicy(most=2)
    with policy.hold():
        assert set(simulate(policy, BUSY, 200)) == {2}


def test_passes_of_other_sizes_are_compared_only_with_their_own_kind() -> None:
    policy = ThreadPolicy(most=2)
    for k in range(600):  # steps of 1 and 5 rows in turns (the shadow row's catch-up): quiet
        simulate(policy, {2: 1.0 + 0.5 * (k % 2), 1: 1.3 + 0.6 * (k % 2)}, 1, rows=1 + 4 * (k % 2))
    assert policy.current == 2


def test_the_count_is_given_to_each_thread_that_computes(monkeypatch) -> None:
    monkeypatch.setenv("GPT2_STUDIO_THREADS", "1")
    assert threads.pinned_threads() == 1
    policy = ThreadPolicy(most=2)
    seen = []

    def compute() -> None:
        with policy.run_pass(rows=1) as count:
            seen.append((count, torch.get_num_threads()))

    worker = threading.Thread(target=compute)
    worker.start()
    worker.join()
    assert seen == [(2, 2)]
