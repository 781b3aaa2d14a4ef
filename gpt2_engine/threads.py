"""How many threads torch computes with: as many as the machine can give now, measured as it goes.

torch's OpenMP splits each operator over its threads and waits at the end for the slowest one. With a thread per
core and one busy neighbour (the browser that shows the page, slides, a call), every operator waits for the thread
the neighbour pushed off its core: decoding ran 4-6x slower beside one busy process on a 2-core machine, where
giving up that core costs ~20%. No reading of the machine says in advance which is faster (load averages lag,
a neighbour may be a browser that sleeps between frames), so the policy measures: every forward pass is timed
under the thread count it ran with, and now and then a few passes try one thread fewer (or one more). A count
that decodes faster is taken, and kept until a later try says otherwise; steps that suddenly run long (a neighbour
has started: a few a little long, or one far too long) trigger a try at once. A try that runs much slower than the
current count ends after one pass, so a busy machine pays little for looking; one that runs much faster is taken
after one pass. Below every core, the policy also watches the machine's idle time (/proc/stat): a core left idle
(the neighbour has gone) makes it try one thread more at once, rather than at its next scheduled try, and while no
core is idle it does not try one more at all (that thread would wait for a core at every operator: one such pass
beside two busy processes cost about a second, where a step takes a tenth).

`GPT2_STUDIO_THREADS=N` pins N threads (no tries). One policy serves each model (`policy_for`): every thread that
runs it (the batch's, step mode's, scoring's) applies its count before a pass; OpenMP keeps a count per thread. Two
models in one process (a second visitor's pick) learn apart: their passes cost a thousand times apart.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")

THREADS_ENV = "GPT2_STUDIO_THREADS"
RECENT = 5  # passes of one kind remembered per thread count: their median is that count's speed now
TRY_PASSES = 3  # passes a try runs when it is not clearly worse
CLEARLY_WORSE = 1.5  # a try pass this much slower than the current count's median ends the try at once
CLEARLY_BETTER = 0.75  # ... this much faster: the try is taken at once
BETTER = 0.93  # a try is taken when its median is at most this share of the current count's
SLOWED = 1.6  # the current count's median this much above its best: the machine got busier, try at once
SUDDEN = 2.5  # ... or one pass this much above it: a neighbour has just started (gpt2-xl's shape at q8 beside busy
# processes: the first steps of two threads took 250-330 ms, quiet ones 80, one thread's 150-250)
FIRST_TRY_AFTER = 16  # passes between tries, doubling after each try that changed nothing ...
LONGEST_WAIT = 128  # ... up to this many
IDLE_EVERY = 8  # passes between two looks at the machine's idle time, below every core
IDLE_CORE = 0.75  # this much of a core idle since the last look: try one thread more now


def cores() -> int:
    """The cores this process may run on."""
    return len(allowed_cpus() or ()) or os.cpu_count() or 1


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on, by number (None where the system cannot say)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None


class IdleCores:
    """Cores left idle since the last call, among those this process may run on (`allowed_cpus`), from /proc/stat's
    per-CPU lines (Linux); None elsewhere, or when too little time has passed to tell (under 20 ticks of the clock,
    summed over those cores). A container pinned to 2 of 16 cores sees its own 2: the machine's 14 others, idle or
    not, are no core it could take."""

    def __init__(self, path: str = "/proc/stat"):
        self.path = path
        self._last: tuple[int, int] | None = None

    def _ticks(self) -> tuple[int, int]:
        """(idle, total) ticks, summed over the allowed CPUs (all of them, where the lines or the set are missing)."""
        allowed = allowed_cpus()
        with open(self.path) as stat:
            lines = [line.split() for line in stat if line.startswith("cpu")]
        per_cpu = [(int(f[0][3:]), [int(v) for v in f[1:]]) for f in lines if f[0][3:].isdigit()]
        chosen = [ticks for cpu, ticks in per_cpu if allowed is None or cpu in allowed] or [
            [int(v) for v in lines[0][1:]]
        ]
        idle = sum(t[3] + (t[4] if len(t) > 4 else 0) for t in chosen)  # idle + iowait
        return idle, sum(sum(t[:8]) for t in chosen)  # no guests: they are counted in user time already

    def __call__(self) -> float | None:
        try:
            idle, total = self._ticks()
        except (OSError, ValueError, IndexError):
            return None
        last, self._last = self._last, (idle, total)
        if last is None or total - last[1] < 20:
            self._last = last or self._last
            return None
        cores = len(allowed_cpus() or ()) or os.cpu_count() or 1
        return (idle - last[0]) / (total - last[1]) * cores


def pinned_threads() -> int | None:
    """GPT2_STUDIO_THREADS as a count (at least 1), or None when unset or not a number."""
    value = os.environ.get(THREADS_ENV, "").strip()
    return max(1, int(value)) if value.isdigit() else None


class ThreadPolicy:
    """The thread count for each forward pass (see the module's note). Thread-safe; one per process."""

    def __init__(
        self, most: int | None = None, pinned: int | None = None, idle: Callable[[], float | None] | None = None
    ):
        self.most = max(1, most or cores())
        self._idle = idle or IdleCores()  # cores idle since its last call (None: cannot tell)
        self._idle_seen: float | None = None  # its latest answer, below every core
        self.pinned = pinned
        self.current = pinned or self.most
        self._lock = threading.Lock()
        self._local = threading.local()  # the count this OS thread last gave OpenMP
        self._recent: dict[tuple[int, int], deque[float]] = {}  # (threads, rows) -> recent pass seconds
        self._best: dict[tuple[int, int], float] = {}  # (threads, rows) -> best median seen
        self._trying: int | None = None  # the count under try, if any
        self._last_try = 0  # the count tried last: tries alternate between fewer and more
        self._blind = 0  # passes of the try with nothing of the current count's to compare with
        self._tried: list[float] = []  # its passes' seconds
        self._passes = 0
        self._ended_at = 0  # the pass at which the last try ended
        self._next_try = FIRST_TRY_AFTER
        self._wait = FIRST_TRY_AFTER
        self._held = 0  # > 0: no tries (autotune's timings)
        self.changes = 0  # how often the count changed: for tests and benchmarks
        self.passes_by_count: dict[int, int] = {}  # passes run with each count: for benchmarks

    # ---- what a pass runs with --------------------------------------------------------------------------------

    def apply(self, threads: int | None = None) -> int:
        """Gives this OS thread's OpenMP `threads` (default: the current count); returns it."""
        threads = threads or self.current
        if getattr(self._local, "threads", None) != threads:
            torch.set_num_threads(threads)
            self._local.threads = threads
        return threads

    @contextmanager
    def run_pass(self, rows: int, may_try: bool = True) -> Iterator[int]:
        """Around one forward pass of `rows` tokens: applies the count for it (the current one, or one under try),
        times the pass, and learns from it. Yields the count. `may_try=False` (a pass that reads a prompt's or a
        shadow's tokens, whose arithmetic one thread fewer would slow by half, where a step's memory reads lose a
        fifth) keeps the current count: a try happens on steps only, so that it never stretches another visitor's
        wait much."""
        threads = self.apply(self.threads_for(rows) if may_try else self.current)
        started = time.perf_counter()
        yield threads
        self.learn(threads, rows, time.perf_counter() - started)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """No tries while inside (timings that compare other things, such as autotune's, at a steady count)."""
        with self._lock:
            self._held += 1
            self._trying, self._tried = None, []
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    def pin(self, threads: int | None) -> None:
        """Pins `threads` (None: measure again, from every core): what GPT2_STUDIO_THREADS does at start."""
        with self._lock:
            self.pinned = threads
            self.current = threads or self.most
            self._trying, self._tried, self._next_try, self._wait = None, [], FIRST_TRY_AFTER, FIRST_TRY_AFTER
            self._passes = self._ended_at = 0
            self._recent.clear()
            self._best.clear()

    def describe(self) -> str:
        """In words: "2 threads", "1 of 2 threads (measured faster: the machine is busy)", "1 of 2 threads
        (measured faster for this model)" where the cores it leaves stand idle (a small model, whose passes are too
        short to share), "1 thread (GPT2_STUDIO_THREADS)"."""
        count = f"{self.current} thread{'s' if self.current != 1 else ''}"
        if self.pinned:
            return f"{count} ({THREADS_ENV})"
        if self.current < self.most:
            idle = self._idle_seen
            why = " for this model" if idle is not None and idle >= IDLE_CORE else ": the machine is busy"
            return f"{self.current} of {self.most} threads (measured faster{why})"
        return count

    # ---- measuring -------------------------------------------------------------------------------------------

    def threads_for(self, rows: int) -> int:
        """The count the next pass of `rows` tokens runs with: the current one, or one under try."""
        with self._lock:
            if self.pinned or self._held:
                return self.current
            if self._trying is None and self._passes >= self._next_try:
                self._start_try()
            return self._trying or self.current

    def _start_try(self, up_only: bool = False) -> None:
        """Tries one thread fewer, or, at one thread or after a try of fewer (or `up_only`), one more."""
        down, up = self.current - 1, self.current + 1
        if down >= 1 and not up_only and (up > self.most or self._last_try != down):
            self._trying = down
        elif up <= self.most and self._idle_seen is not None and self._idle_seen < IDLE_CORE:
            self._end_try(taken=False)  # no core is free: a thread more would wait for one at every operator
            return
        elif up <= self.most:
            self._trying = up
        else:
            self._next_try = self._passes + LONGEST_WAIT  # one core: nothing to try
            return
        self._last_try, self._tried, self._blind = self._trying, [], 0

    def learn(self, threads: int, rows: int, seconds: float) -> None:
        """What a pass of `rows` tokens cost with `threads`: may end a try, or start one (the machine got busier)."""
        with self._lock:
            self._passes += 1
            self.passes_by_count[threads] = self.passes_by_count.get(threads, 0) + 1
            recent = self._recent.setdefault((threads, rows), deque(maxlen=RECENT))
            recent.append(seconds)
            known = self._best.get((threads, rows))
            if known is not None and seconds > SUDDEN * known and threads == self.current:
                recent.extend([seconds] * (RECENT - 1))  # it speaks for the machine now, and a try is measured on it
            if len(recent) >= 3:
                median = statistics.median(recent)
                best = self._best.get((threads, rows), median)
                self._best[(threads, rows)] = min(best, median)
                slowed = threads == self.current and median > SLOWED * best
                if slowed and self._trying is None and not self.pinned and not self._held:
                    self._best[(threads, rows)] = median  # the busy machine is the one to beat from now on
                    self._wait = FIRST_TRY_AFTER
                    self._next_try = self._passes  # the next pass tries
            if self._passes % IDLE_EVERY == 0 and self.current < self.most and not self.pinned and not self._held:
                self._idle_seen = self._idle()
                looked_since = self._passes - self._ended_at >= max(IDLE_EVERY, self._wait // 4)  # fewer after misses
                free = self._idle_seen is not None and self._idle_seen >= IDLE_CORE
                if free and self._trying is None and looked_since:  # a core the policy does not use is free: try it
                    self._start_try(up_only=True)
            if self._trying is None or threads != self._trying:
                return
            current = self._recent.get((self.current, rows))
            if current is None or len(current) < 3:  # nothing to compare this kind of pass with: wait for another
                self._blind += 1
                if self._blind > 2 * TRY_PASSES:
                    self._end_try(taken=False)
                return
            reference = statistics.median(current)
            self._tried.append(seconds)
            if seconds > CLEARLY_WORSE * reference:
                self._end_try(taken=False)
            elif seconds < CLEARLY_BETTER * reference:
                self._end_try(taken=True)
            elif len(self._tried) >= TRY_PASSES:
                self._end_try(taken=statistics.median(self._tried) < BETTER * reference)

    def _end_try(self, taken: bool) -> None:
        if taken:
            self.current = self._trying or self.current
            self.changes += 1
            self._wait = FIRST_TRY_AFTER
        else:
            self._wait = min(LONGEST_WAIT, 2 * self._wait)
        self._trying, self._tried = None, []
        self._next_try = self._passes + self._wait
        self._ended_at = self._passes


_POLICIES: weakref.WeakKeyDictionary[Any, ThreadPolicy] = weakref.WeakKeyDictionary()
_POLICIES_LOCK = threading.Lock()


def policy_for(model: Any) -> ThreadPolicy:
    """The thread policy of one model (a module), made at its first pass: each model learns its own pass times,
    since a pass of gpt2-shakespeare and one of gpt2-xl with as many rows cost a thousand times apart, and one
    thread may be fastest for the one and two for the other. Pinned by GPT2_STUDIO_THREADS, as read then. It goes
    with its model."""
    with _POLICIES_LOCK:
        policy = _POLICIES.get(model)
        if policy is None:
            policy = _POLICIES[model] = ThreadPolicy(pinned=pinned_threads())
        return policy


def passing(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a thread that ends with it, for torch work outside the batch's thread (scoring a text):
    torch's OpenMP (libgomp) keeps a pool of workers for every thread that ever ran a parallel operator, for as
    long as that thread lives, and with more pooled threads than cores it stops spinning between operators, so
    the batch's every pass slows: after one scoring in a thread that went on living (a page's script thread
    lives through a whole sweep), decoding gpt2-xl's shape at q8 took 164 against 121 ms a token. `load` works
    in a thread of its own for the same reason (loading.py)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="passing") as alone:
        return alone.submit(work, *args).result()
