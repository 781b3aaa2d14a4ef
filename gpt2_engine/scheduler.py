"""What each forward pass of a batch does, decided in one place (as llama.cpp's slots and vLLM's scheduler do):
which waiting runs join the batch (`admit`), and what the pass reads (`plan`): every run's step, and of a prompt or
a window's re-prime (a read of kind fast.PIECED) a piece, shortest first (`turn`), as many tokens as keep the pass
within its share of time beside others' steps (`PassCost`, as llama.cpp's n_ubatch and vLLM's chunked prefill), so
that a 1,000-token phrase does not freeze the room; with no steps to read, PIECE tokens a pass in all. Each read
says its kind where it is made (fast.Read), so nothing here is guessed from a read's length; the pass's kind
(`Plan.kind`) is what the thread policy is told (fast.forward_reads)."""

from __future__ import annotations

import bisect
import itertools
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from . import step_kernel
from .fast import PIECED, Read, steps_only

Run = Any  # batching.Run (its `pending`, `cache_bytes`, `joined`): named here without importing batching
AGED_S = 60.0  # a phrase read for this long goes ahead of shorter ones (`turn`); 20 s left the median time to
# first token of eight busy visitors where it was: nearly every phrase had waited that long
PIECE = 256  # the most tokens of one prompt a pass reads: alone, a 1,024-token phrase takes 4 passes (its progress
# told at each), and a q8 model's work buffers hold them (q8.SCRATCH_ROWS)

Line = tuple[float, float]  # a pass's seconds as (start, each row's): start + each * rows


class PassCost:
    """What a pass costs, learned as the batch goes from its own passes' times: a straight line of seconds against
    rows (the pass's tokens in all: steps, shadows' and prompts' alike, since they go through the same matrices),
    one through the recent passes of up to FEW rows and one through those of more. Two lines, since q8 reads a pass
    of FEW rows or fewer through its step kernel (the weights once from memory) and a larger one through its prompt
    kernel or fbgemm, which costs more at first, then each row's arithmetic (on gpt2-xl's shape 13-15 ms a row
    without AMX, 5-7 ms with it). A model without the step kernel simply has two lines alike.

    Each line is the median of the slopes between pairs of its passes (weighed by how far apart their rows are),
    through the median of their starts (Theil-Sen), so a few passes a busy neighbour or a thread count's try
    stretched do not move it. A range whose passes all read the same rows takes its slope from the other range;
    with neither, nothing is known yet. The slope beyond FEW is never under half the slope up to FEW: three
    writers' shadow passes, all 12 rows, filled that range with a few pieces beside them, the slope through them came
    out flat, and a piece of 73 tokens took 1.9 s (no AMX: a row there costs about twice one up to FEW; with AMX's
    prompt kernel, about a third)."""

    FEW = step_kernel.MOST
    RECENT = 15  # passes each line is fitted through

    def __init__(self) -> None:
        self._passes: dict[bool, deque[tuple[int, float]]] = {many: deque(maxlen=self.RECENT) for many in (False, True)}
        self._sized: deque[int] = deque(maxlen=self.RECENT)

    def forget(self) -> None:
        """Back to knowing nothing, as at a server's start."""
        for passes in self._passes.values():
            passes.clear()
        self._sized.clear()

    def timed(self, rows: int, seconds: float, sized: bool = False) -> None:
        """Learns from a pass of `rows` rows that took `seconds`; `sized`: one whose piece the budget chose."""
        self._passes[rows > self.FEW].append((rows, seconds))
        if sized:
            self._sized.append(rows)

    def lines(self) -> tuple[Line | None, Line | None]:
        """The lines of passes of up to FEW rows and of more; each None until it can be drawn."""
        few, many = self._slope(self._passes[False]), self._slope(self._passes[True])
        if few is not None and many is not None:
            many = max(many, few / 2)  # (see the class's docstring)

        def drawn(passes: deque[tuple[int, float]], slope: float | None) -> Line | None:
            if slope is None or not passes:
                return None
            return statistics.median(seconds - slope * rows for rows, seconds in passes), slope

        return (
            drawn(self._passes[False], few if few is not None else many),
            drawn(self._passes[True], many if many is not None else few),
        )

    def line(self, many: bool) -> Line | None:
        """The line of passes of more than FEW rows (`many`) or of up to FEW; None until it can be drawn."""
        return self.lines()[many]

    def largest(self) -> int:
        """The most rows of a recent pass whose piece the budget sized (0 if none): passes reading a phrase alone,
        256 tokens, do not count, as their times say little of a pass beside steps."""
        return max(self._sized, default=0)

    def seconds(self, rows: int, lines: tuple[Line | None, Line | None] | None = None) -> float | None:
        """What a pass of `rows` rows costs now (None until its range's line can be drawn); `lines`: `lines()`, if
        the caller has them already."""
        line = (lines or self.lines())[rows > self.FEW]
        return None if line is None else line[0] + line[1] * rows

    @staticmethod
    def _slope(passes: deque[tuple[int, float]]) -> float | None:
        """The median of the slopes between pairs of passes, each weighed by how far apart their rows are: pairs a
        few rows apart say little against the noise, and passes the budget sized all cost about its target, so the
        plain median of slopes came out near flat (a soak's passes of 20-60 rows beside steps) and a pass read 518
        tokens in 5.5 s."""
        pairs = sorted(
            ((s2 - s1) / (r2 - r1), abs(r2 - r1))
            for (r1, s1), (r2, s2) in itertools.combinations(passes, 2)
            if r1 != r2
        )
        if not pairs:
            return None
        weights = list(itertools.accumulate(apart for _, apart in pairs))
        return max(0.0, pairs[bisect.bisect_left(weights, weights[-1] / 2)][0])


@dataclass
class Plan:
    """One pass, as `Scheduler.plan` decided it."""

    runs: list[Run] = field(default_factory=list)  # the runs it reads for, in the batch's order
    reads: list[Read] = field(default_factory=list)  # what it reads
    rest: dict[Run, list[Read]] = field(default_factory=dict)  # a pieced read's remainder, for the next passes

    @property
    def kind(self) -> Literal["steps", "tokens"]:
        """ "steps" (decode steps only: the thread policy may try a count on it, fast.steps_only) or "tokens" (a
        phrase's, a re-prime's or a shadow's beside them)."""
        return "steps" if steps_only(self.reads) else "tokens"


def turn(run: Run, now: float) -> tuple[bool, int, float]:
    """Which pieced read gets the budget first: one that has waited AGED_S or more (first come first served among
    them), then the one with the fewest tokens left, as shortest-remaining-first scheduling does: of eight phrases
    being read at once, the short ones start writing in a second or two instead of queueing behind the long ones,
    and a long one waits at most about AGED_S before it goes first."""
    return now - run.joined < AGED_S, len(run.pending[0].ids), run.joined


class Scheduler:
    """The batch's decisions: who joins (`admit`), what each pass reads (`plan`, within `budget`), and what passes
    cost (`timed`, into `costs`)."""

    STEP_SHARE = 1.0  # one phrase beside writers: a pass costs about 2 steps, their gaps stay about 2x a step's
    # (0.6 kept them under 1.6x, but read a phrase beside eight writers at a third of the machine)
    READERS = 3  # phrases beyond this add nothing: writers' gaps stay within about 4x a step's. Counting only one
    # left eight busy visitors a median of 37 s to their first word (a closed room reads ~450 prompt tokens a run)
    FIRST = 8  # tokens a pass takes while what a pass costs is not known (alternately twice as many: see `budget`)
    LEAST = 4  # what a phrase gets when it has waited PATIENCE passes
    PATIENCE = 8  # passes in a row the phrases wait where the writers' shadows take all of a pass's time. Three
    # writers started together read their shadows in the same 12 of every 50 passes at window 50; at 1, every other
    # one of those passes read both, and a writer's longest gap was 4.9x its median (no AMX, gpt2-xl's shape)

    def __init__(self, max_runs: int):
        self.max_runs = max_runs
        self.kv_budget_bytes = 0  # set when a batch starts (batching.Batcher)
        self.costs = PassCost()
        self._waited = 0  # passes in a row the phrases being read got nothing

    def admit(self, waiting: list[Run], active: list[Run]) -> list[Run]:
        """The waiting runs that join now, first come first served, while the batch's runs and cache bytes stay
        within the bound (a run alone is always let in). They are taken off `waiting`. A run counts once, window or
        not: its shadow row reads a few tokens beside its step only near a reset (fast.FastContext), so counting it
        as a second run kept half the room waiting for rows that are idle most of the time."""
        admitted: list[Run] = []
        cache = sum(run.cache_bytes for run in active)
        while waiting:
            run = waiting[0]
            if (active or admitted) and (
                len(active) + len(admitted) >= self.max_runs or cache + run.cache_bytes > self.kv_budget_bytes
            ):
                break
            admitted.append(waiting.pop(0))
            cache += run.cache_bytes
        return admitted

    def budget(self, writers: int, rows: int, readers: int = 1) -> int:
        """The prompt tokens, in all, of a pass that reads `rows` rows anyway (its runs' steps and their shadows'
        tokens) while `writers` runs write and `readers` phrases (or re-primes) are read: the most that keep the
        pass within (1 + STEP_SHARE x readers, up to READERS) times a pass of the writers' steps alone, so that the
        writers, who share one step, and each visitor waiting for a first word get about a step's time of a pass.
        At most PIECE a phrase, and at most twice the rows of the largest recent pass it sized, or 2 x FIRST
        beyond this pass's own rows where that is more (a line is trusted that far: drawn through passes of 9-14 rows whose times a neighbour moved, one slope came out flat, and a
        256-token piece beside three writers took 2.4 s); 0 where not one token fits. While the costs are not
        known, FIRST and then twice FIRST: passes of two sizes draw a line."""
        most = PIECE * readers
        lines = few, many = self.costs.lines()
        step = self.costs.seconds(max(1, writers), lines)
        if few is None or many is None or step is None:  # FIRST, then twice as many once FIRST's pass is timed
            return min(most, self.FIRST * (1 + (self.costs.largest() >= rows + self.FIRST)))
        target = (1 + self.STEP_SHARE * max(1, min(readers, self.READERS))) * step
        fits = 0
        trusted = max(2 * self.costs.largest(), rows + 2 * self.FIRST) - rows
        for (start, each), low, high in ((few, 1, self.costs.FEW - rows), (many, self.costs.FEW + 1 - rows, trusted)):
            low, high = max(1, low), min(most, high)
            if low > high or start + each * (rows + low) > target:
                continue  # no piece of this range keeps the pass within its time
            fits = max(fits, high if each == 0 else min(high, int((target - start) / each + 1e-9) - rows))
        return fits

    def plan(self, batch: list[Run], active: int = 0, now: float | None = None) -> Plan:
        """The pass over `batch` (runs with reads pending): every run's steps and shadows whole, and of the pieced
        reads (prompts, re-primes) a piece each, in `turn` order, `budget` tokens in all beside other runs' steps;
        where that is under LEAST (the writers' shadows took the pass's time), none, up to PATIENCE passes in a row,
        then LEAST. PIECE in all when no run writes (a pass reading eight phrases and re-primes whole, 2,000
        tokens, read them no faster than passes of 256, and kept a writer's reset behind it). `active`: the runs in
        the batch, this pass's and those waiting for their readers (whose next step must not wait behind a whole
        piece either)."""
        pieced = [run for run in batch if any(read.kind in PIECED for read in run.pending or ())]
        writers = max(len(batch), active) - len(pieced)
        reads = [read for run in batch if run not in pieced for read in run.pending or ()]
        if not writers or not pieced:
            left = PIECE
        elif any(read.kind == "shadow" for read in reads):
            left = 0  # the shadows' rows took a pass's time of their own: the phrases take the next
        else:
            left = self.budget(writers, sum(len(read.ids) for read in reads), len(pieced))
        if left < self.LEAST:
            left = self.LEAST if self._waited >= self.PATIENCE else 0
        self._waited = self._waited + 1 if pieced and left == 0 else 0
        plan = Plan()
        now = time.monotonic() if now is None else now
        for run in [run for run in batch if run not in pieced] + sorted(pieced, key=lambda run: turn(run, now)):
            pending: list[Read] = run.pending or []
            if run not in pieced:
                plan.runs.append(run)
                plan.reads.extend(pending)
                continue
            if left <= 0 or len(pending) != 1:  # (a prompt or a re-prime is a single read)
                continue
            (read,) = pending
            size = min(left, PIECE)
            plan.runs.append(run)
            plan.reads.append(read._replace(ids=read.ids[:size]))
            if len(read.ids) > size:
                plan.rest[run] = [read._replace(ids=read.ids[size:])]
            left -= len(read.ids[:size])
        return plan

    def timed(self, plan: Plan, seconds: float) -> None:
        """Learns from a pass as planned: its rows and how long it took."""
        sized = any(read.kind in PIECED for read in plan.reads) and any(read.kind == "step" for read in plan.reads)
        self.costs.timed(sum(len(read.ids) for read in plan.reads), seconds, sized)
