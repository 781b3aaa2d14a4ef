"""Continuous batching: every run active at the same moment advances in one forward pass per step.

Decoding a token reads every weight once, whether for one run or eight; on a CPU (and more so on a GPU) a pass
over 4-8 rows costs little more than over one. So `Engine.stream()` does not decode alone: it hands its run to
the engine's `Batcher`, a thread that owns the model while runs are active. At each pass the batcher gathers
what every run needs read (its newest token; a newcomer's prompt, or a chunk of it; a window's re-prime; the
shadow row's catch-up) into ONE call of `fast.forward_reads`, each run in its own KV cache, then hands each
run its logits: sampling stays per run, with its own settings, seed and stop (decoding.Decoder). The caller
still gets a plain generator of Steps, fed from the batcher's thread.

- Runs join between passes: a newcomer's prompt is read in the same passes as the others' next tokens, a piece a
  pass. Who joins and what each pass reads is the scheduler's (scheduler.py: `admit`, `plan`); this thread does
  the passes and hands out their logits.
- A run leaves at once: the stream closed (Stop, a closed tab), finished, or raised. Its cache is dropped at the
  end of the pass under way; a run that raises ends only itself (a batched pass that raises is done again run
  by run: a failed pass changes no cache, since a row's length moves only once every layer is written).
- A bound: `max_runs` runs at once (GPT2_STUDIO_MAX_RUNS, default 8: a pass reads a row for each run's step, and a
  window's shadow row a few tokens beside it, near a reset or, in a batch of 2-4, all through the window), and their caches within KV_SHARE of the memory
  available when the batch started, each counted
  full (n_positions tokens, ModelShape.kv_bytes_per_token). Beyond it runs wait, first come first served,
  and their streams report how many runs are ahead (`on_wait`).
- The batcher decodes at most LOOKAHEAD tokens ahead of a run's reader, so a slow reader does not hold the
  batch back, and a run nobody reads does no more work.
- The model is used by one thing at a time: each pass holds `ModelLock`, which step mode and scoring take too,
  in the order asked (a busy batch cannot starve them, nor they it).

Tutorial mode (autograd with transformers' own cache) and the reference backend have no passes to share: they
do not join the batch; `Engine.stream` decodes them alone in the caller's thread (autograd's state is per
thread), each forward pass holding the model lock between the batch's. (A decoder whose context has no passes,
handed to the batch all the same, reads by itself between two passes.)

Exactness: a row's arithmetic is the same batched or alone (its own cache, its own attention, per-row layer
norms and activations); only the matrix products see more rows. In fp32 on the tests' tiny model the texts are
identical, greedy or sampled. A BLAS may pick another kernel (another order of the sums) for another number of
rows, so logits can differ in the last bits, and at bf16/fp16 (whose products round per block) a sampled token
whose draw falls right at a boundary could differ. q8 (q8.Q8Linear) scales each row by its own peak, so
rows stay independent: the integer products are exact and identical batched or not.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import fast
from .decoding import Decoder, Step
from .fast import Progress, Read
from .memory import available_bytes, release_freed_memory
from .scheduler import Plan, Scheduler

MAX_RUNS = 8  # beyond 8 rows a CPU's pass costs about as much more as the rows it adds
MAX_RUNS_ENV = "GPT2_STUDIO_MAX_RUNS"
KV_SHARE = 0.5  # of the memory available when a batch starts, what its KV caches may take
LOOKAHEAD = 2  # steps a run may have decoded that its reader has not taken yet
IDLE_WAIT_S = 0.5  # longest wait for a reader to take a step when no run can advance
TRIM_EVERY_S = 60.0  # freed heap handed back to the system this often while runs go on, and when the last ends: a
# busy day's small allocations (sampling, Steps, pieces of prompts) otherwise leave the heap where its peak was


_BATCHERS: weakref.WeakSet[Batcher] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At exit, ends every batcher's thread: a thread still inside torch when the interpreter goes aborts it."""
    for batcher in list(_BATCHERS):
        batcher.close()


def max_runs_setting() -> int:
    """The bound on runs decoded together: GPT2_STUDIO_MAX_RUNS if set (at least 1), else MAX_RUNS."""
    value = os.environ.get(MAX_RUNS_ENV, "").strip()
    return max(1, int(value)) if value.isdigit() else MAX_RUNS


class ModelLock:
    """One user of a model at a time, first come first served, re-entrant for its holder.

    A plain lock lets a busy loop (the batcher) take it again before a waiting thread wakes; here a thread that
    asks queues behind those already waiting."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._line: deque[object] = deque()
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> ModelLock:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                self._depth += 1
                return self
            ticket = object()
            self._line.append(ticket)
            self._changed.wait_for(lambda: self._owner is None and self._line[0] is ticket)
            self._line.popleft()
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._depth -= 1
            if not self._depth:
                self._owner = None
                self._changed.notify_all()


@dataclass(eq=False)
class Run:
    """One stream's run as the batcher keeps it."""

    make: Callable[[Progress], Decoder]  # builds its decoder (prompt not read yet), given where to report reading
    cache_bytes: int  # its caches, counted full
    ready: threading.Condition  # its reader waits on this (the batcher's lock): a step wakes its reader only
    outbox: deque = field(default_factory=deque)  # ("step", Step) | ("prompt", read, total) | ("error", exception);
    # appended and popped under the batcher's lock only
    steps_waiting: int = 0  # steps in the outbox: counted under that lock, read by the batcher's thread without it
    decoder: Decoder | None = None
    pending: list[Read] | None = None  # what its next pass reads
    prompt_total: int = 0  # the tokens of the prompt being read a piece at a time (0: none), for its progress
    joined: float = field(default_factory=time.monotonic)  # when its stream asked to join (the scheduler's turns)
    left: bool = False  # its reader closed the stream
    done: bool = False  # finished or failed: nothing more to decode


class Batcher:
    """Decodes every active run of one model together, on a thread of its own that ends when no run is left."""

    def __init__(self, model: Any, lock: ModelLock, max_runs: int | None = None):
        self.model, self.lock = model, lock
        self.scheduler = Scheduler(max_runs if max_runs is not None else max_runs_setting())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the batcher's thread (and join) wait on this
        self._waiting: list[Run] = []  # first come first served
        self._active: list[Run] = []
        self._thread: threading.Thread | None = None
        self._last_thread: threading.Thread | None = None
        self.passes = 0  # forward passes done, and how many runs they served: figures for tests and benchmarks
        self.rows_served = 0
        self.largest_batch = 0
        self._closed = False
        self._trimmed = time.monotonic()  # when freed memory was last handed back (TRIM_EVERY_S)
        _BATCHERS.add(self)

    # ---- the reader's side ----------------------------------------------------------------------------------

    def stream(
        self,
        make: Callable[[Progress], Decoder],
        cache_bytes: int,
        on_prompt: Progress | None = None,
        on_wait: Callable[[int], None] | None = None,
        poll_s: float = 0.2,
    ) -> Generator[Step, None, None]:
        """A run's Steps as the batch decodes them. Joins at the first step asked for; while the bound keeps it
        waiting, calls `on_wait(runs ahead)` every `poll_s` (where a caller can give up by raising);
        `on_prompt(read, total)` as its prompt is read. Closing the generator takes the run out of the batch."""
        run = Run(make, cache_bytes, threading.Condition(self._lock))
        self._join(run)
        try:
            while True:
                item, ahead = self._take(run, poll_s)
                if item is None:
                    if ahead and on_wait is not None:
                        on_wait(ahead)
                elif item[0] == "prompt":
                    if on_prompt is not None:
                        on_prompt(item[1], item[2])
                elif item[0] == "error":
                    raise item[1]
                else:
                    yield item[1]
                    if item[1].stop_reason is not None:
                        return
        finally:
            self._leave(run)

    def ahead(self, run: Run) -> int:
        """Runs ahead of a waiting run (those in the batch and those waiting before it); 0 once in the batch."""
        with self._changed:
            return len(self._active) + self._waiting.index(run) if run in self._waiting else 0

    def runs(self) -> tuple[int, int]:
        """(runs in the batch, runs waiting)."""
        with self._changed:
            return len(self._active), len(self._waiting)

    def join(self, timeout_s: float | None = None) -> bool:
        """Waits until no run is active or waiting and the batcher's thread has ended; False on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._thread is None, timeout_s):
                return False
            thread = self._last_thread
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Ends every run (their streams raise) and the thread; later streams raise at once. For the process's exit."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self.join(timeout_s)

    def _join(self, run: Run) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("this engine is closed: the process is ending")
            self._waiting.append(run)
            if self._thread is None:
                self.scheduler.kv_budget_bytes = int(KV_SHARE * available_bytes())
                self._thread = self._last_thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def _take(self, run: Run, timeout_s: float) -> tuple[tuple | None, int]:
        with self._changed:
            if not run.outbox:
                run.ready.wait_for(lambda: bool(run.outbox), timeout_s)
            if run.outbox:
                item = run.outbox.popleft()
                run.steps_waiting -= item[0] == "step"
                self._changed.notify_all()  # the batcher may wait for room in this outbox
                return item, 0
            return None, len(self._active) + self._waiting.index(run) if run in self._waiting else 0

    def _leave(self, run: Run) -> None:
        with self._changed:
            run.left = True
            if run in self._waiting:
                self._waiting.remove(run)
            self._changed.notify_all()

    # ---- the batcher's thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._changed:
                for run in self._active:
                    if run.left or run.done:
                        run.decoder = run.pending = None  # its cache goes now
                self._active = [run for run in self._active if not (run.left or run.done)]
                if self._closed:
                    for run in self._active + self._waiting:
                        run.decoder = run.pending = None
                        run.done = True
                        run.outbox.append(("error", RuntimeError("the process is ending")))
                        run.ready.notify()
                    self._active, self._waiting = [], []
                admitted = self.scheduler.admit(self._waiting, self._active)
                self._active.extend(admitted)
                if not self._active:
                    self._thread = None
                    self._changed.notify_all()
                    release_freed_memory()
                    return
                active = list(self._active)
            with self.lock:
                for run in admitted:
                    self._start(run)
                for run in active:
                    if run.pending is None and not run.done:
                        self._advance(run)
                batch = [run for run in active if run.pending and not run.done and not run.left]
                if batch:
                    self._pass(batch)
                if time.monotonic() - self._trimmed >= TRIM_EVERY_S:
                    release_freed_memory()
                    self._trimmed = time.monotonic()
            if not batch:
                with self._changed:  # every run waits for its reader: wait for one to take a step (or leave)
                    self._changed.wait_for(lambda: self._can_advance(), IDLE_WAIT_S)

    def _can_advance(self) -> bool:
        return (
            self._closed
            or bool(self._waiting)
            or any(run.left or run.done or run.steps_waiting < LOOKAHEAD for run in self._active)
        )

    def _start(self, run: Run) -> None:
        def reading(read: int, total: int) -> None:
            self._put(run, ("prompt", read, total))

        try:
            run.decoder = run.make(reading)
        except Exception as error:  # noqa: BLE001 - handed to its reader
            self._fail(run, error)

    def _advance(self, run: Run, logits: Tensor | None = None) -> None:
        """Gives the run's decoder `logits` (its reads' rows of the pass just done) and takes its step; then steps
        on while it needs nothing read, until it has reads for the next pass, has LOOKAHEAD steps waiting, or ends."""
        decoder = run.decoder
        assert decoder is not None
        try:
            if logits is not None:
                decoder.took(logits)
                if self._stepped(run, decoder):
                    return
            while not run.left and run.steps_waiting < LOOKAHEAD:
                run.pending = decoder.reads(self.scheduler.shadow_chunk(len(self._active))) or None
                if run.pending is not None or self._stepped(run, decoder):
                    return
        except Exception as error:  # noqa: BLE001 - handed to its reader: the run ends, the batch goes on
            self._fail(run, error)

    def _stepped(self, run: Run, decoder: Decoder) -> bool:
        """Takes the decoder's step and hands it to the reader; True when that step ended the run."""
        self._put(run, ("step", decoder.step()))
        run.done = decoder.finished
        return run.done

    def _pass(self, batch: list[Run]) -> None:
        """One forward pass, as the scheduler plans it (every run's steps, a piece of a prompt or a re-prime);
        each run whose reads are done gets its own rows of logits."""
        try:
            plan: Plan = self.scheduler.plan(batch, active=len(self._active))
        except Exception as error:  # noqa: BLE001 - a fault in planning ends these runs, saying why, not the thread
            for run in batch:  # (its readers would otherwise wait for ever)
                self._fail(run, error)
            return
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                logits = fast.forward_reads(self.model, plan.reads)
        except Exception as error:  # noqa: BLE001 - find the run whose reads fail: the others go on
            if len(plan.runs) == 1:
                self._fail(plan.runs[0], error)
            else:
                for run in plan.runs:
                    self._pass([run])
            return
        self.scheduler.timed(plan, time.perf_counter() - started)
        self.passes += 1
        self.rows_served += len(plan.runs)
        self.largest_batch = max(self.largest_batch, len(plan.runs))
        offset = 0
        for run in plan.runs:
            n = len(run.pending or ())
            if run in plan.rest:  # the rest of its prompt goes in the next passes; these logits are not its last
                self._piece_read(run, plan.rest[run])
            else:
                run.pending, run.prompt_total = None, 0
                self._advance(run, logits[offset : offset + n])
            offset += n

    def _piece_read(self, run: Run, rest: list[Read]) -> None:
        """A piece of the run's prompt (or re-prime) is read: the rest is its next pass's; a prompt's reader is
        told how far it is."""
        (read,) = run.pending or rest
        run.prompt_total = run.prompt_total or len(read.ids)
        run.pending = rest
        if read.kind == "prompt":
            self._put(run, ("prompt", run.prompt_total - len(rest[0].ids), run.prompt_total))

    def _put(self, run: Run, item: tuple) -> None:
        with self._lock:
            run.outbox.append(item)
            run.steps_waiting += item[0] == "step"
            run.ready.notify()

    def _fail(self, run: Run, error: BaseException) -> None:
        run.done, run.pending = True, None
        self._put(run, ("error", error))
