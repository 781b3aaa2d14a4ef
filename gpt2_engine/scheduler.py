"""What each forward pass of a batch does, decided in one place (as llama.cpp's slots and vLLM's scheduler do):
which waiting runs join the batch (`admit`), and what the pass reads (`plan`): every run's step, and of a prompt or
a window's re-prime (a read of kind fast.PIECED) a piece, shortest first (`turn`), as many tokens as keep the pass
within its share of time beside others' steps (as llama.cpp's n_ubatch and vLLM's chunked prefill: the share is
measured on the writers' own passes of steps alone, the piece learned from the passes' times), so that a 1,000-token
phrase does not freeze the room; near their resets, two to four writers' shadows read as few tokens a step as keep
them all within the step kernel (`shadow_chunk`); with no steps to read, PIECE tokens a pass in all. Each read says
its kind where it is made (fast.Read), so nothing here is guessed from a read's length; the pass's kind (`Plan.kind`)
is what the thread policy is told (fast.forward_reads)."""

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
    """What a pass costs by its rows, learned from the batch's own passes' times: whether a pass's own rows (many
    writers' shadows) already cost its target (`Scheduler.budget`). Rows are a pass's tokens in all (steps, shadows'
    and prompts' alike: they go through the same matrices), and a pass costs a straight line of them, one through the
    recent passes of up to FEW rows (q8's step kernel: the weights once from memory) and one through larger ones (its
    prompt kernel or fbgemm: a jump, then each row's arithmetic, on gpt2-xl's shape 13-15 ms a row without AMX, 5-7
    with it). A model without the step kernel has two lines alike.

    Each line is the median of the slopes between pairs of its passes, weighed by how far apart their rows are,
    through the median of their starts (Theil-Sen), so a few passes a busy neighbour stretched do not move it. A
    range whose passes all read the same rows takes the other's slope; the slope beyond FEW is never under half
    the slope up to FEW (three writers' 12-row shadow passes once drew it flat)."""

    FEW = step_kernel.MOST
    RECENT = 15  # passes each line is fitted through

    def __init__(self) -> None:
        self._passes: dict[bool, deque[tuple[int, float]]] = {many: deque(maxlen=self.RECENT) for many in (False, True)}

    def forget(self) -> None:
        """Back to knowing nothing, as at a server's start."""
        for passes in self._passes.values():
            passes.clear()

    def timed(self, rows: int, seconds: float) -> None:
        """Learns from a pass of `rows` rows that took `seconds`."""
        self._passes[rows > self.FEW].append((rows, seconds))

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
    target: float | None = None  # the seconds the budget kept it within, where it sized a piece beside steps
    shares: int = 0  # the phrases the budget gave a share to (at most Scheduler.READERS)
    writers: int = 0  # the runs in the batch that write (this pass's steps, and those waiting for their readers)

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
    FIRST = 8  # a share's piece until the passes' times teach another (`timed`)
    STALE = 40  # passes after which the writers' usual pass is measured again (a pass of their steps alone)
    LEAST = 4  # what a phrase gets when it has waited PATIENCE passes
    PATIENCE = 8  # passes in a row the phrases wait where the writers' shadows take all of a pass's time. Three
    # writers started together read their shadows in the same 12 of every 50 passes at window 50 (before
    # `shadow_chunk`; five or more writers still do); at 1, every other one of those passes read both, and a
    # writer's longest gap was 4.9x its median (no AMX, gpt2-xl's shape)

    def __init__(self, max_runs: int):
        self.max_runs = max_runs
        self.kv_budget_bytes = 0  # set when a batch starts (batching.Batcher)
        self.costs = PassCost()
        self.forget()

    def forget(self) -> None:
        """Back to knowing nothing of what passes cost, as at a server's start."""
        self.costs.forget()
        self._waited = 0  # passes in a row the phrases being read got nothing
        self._piece = self.FIRST  # a share's tokens of a pass beside steps, as the passes' times teach (`timed`)
        self._over = PIECE  # the piece the last pass over its target was cut to: it grows by one from there
        self._usual: dict[int, deque[tuple[int, float]]] = {}  # by writers: their recent passes with no phrase,
        # each (the pass's number, its seconds)
        self._passes = 0  # passes timed

    def admit(self, waiting: list[Run], active: list[Run]) -> list[Run]:
        """The waiting runs that join now, first come first served, while the batch's runs and cache bytes stay
        within the bound (a run alone is always let in). They are taken off `waiting`. A run counts once, window or
        not: its shadow row reads a few tokens beside its step (near a reset, or all through the window as 1 token
        a step: `shadow_chunk`), so counting it as a second run kept half the room waiting for rows that cost
        little."""
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

    def shadow_chunk(self, runs: int) -> int | None:
        """The most tokens a run's shadow row reads beside its step while `runs` runs are in the batch: as many as
        keep all their steps and shadows within the step kernel's FEW rows where their resets come together, down
        to 1 (a token a step, from the window's first step); None (each run's own chunk) for a run alone, or where
        not even 1 fits: the shadows then go through the larger kernels whatever their chunk, and fewer, larger
        passes pay those kernels' start fewer times. Three writers started together at window 50 read 3 steps and 9
        shadow tokens in 12 of every 50 passes, through fbgemm (no AMX, gpt2-xl's shape): 2.0x their steps alone,
        and their longest gap 4-5x its median; 3 steps and 3 shadow tokens cost 1.4x, in every pass (5% more over
        the window)."""
        fits = self.costs.FEW // max(1, runs) - 1
        return fits if runs > 1 and fits >= 1 else None

    def target(self, writers: int, readers: int = 1) -> float | None:
        """The seconds a pass for `writers` writers is kept within while `readers` phrases (or re-primes) are read:
        (1 + STEP_SHARE x readers, up to READERS) times the writers' usual pass, so that the writers, who share one
        step, and each visitor waiting for a first word get about a step's time of a pass. The usual pass is the
        median of the recent passes (up to RECENT, none over 3 x STALE passes old) of as many writers' steps with no
        phrase, alone or with shadows the step kernel reads beside them (`timed`), while the newest of them is under
        STALE passes old; else None, and the next pass reads no phrase, to measure it (`budget`).

        Measured, not drawn from `costs`: in a room where phrases always wait (eight visitors, most of the machine
        their phrases'), no pass of up to FEW rows came, no line was drawn, and every pass read 16 tokens of a
        phrase for good. Not this pass's own rows: a writer whose reader lags is not in it, and three writers' usual
        gap was measured against one's step and shadow, their piece cut to LEAST. Nor eight writers' passes with
        their shadows (32 rows, 0.5 s), which a pass four times as long would then have let through. And not for
        long: the VM this was tuned on moves 20-40% (at times 2x) from one minute to the next, and a usual pass
        from before such a move would hold every pass over (or far under) what it means."""
        usual = self._usual.get(writers)
        if not usual or self._passes - usual[-1][0] >= self.STALE:
            return None
        recent = [seconds for number, seconds in usual if self._passes - number < 3 * self.STALE]
        return (1 + self.STEP_SHARE * self.shares(readers)) * statistics.median(recent)

    def shares(self, readers: int) -> int:
        """The phrases being read that get a step's share of a pass: 1 to READERS."""
        return max(1, min(readers, self.READERS))

    def budget(self, writers: int, rows: int, readers: int = 1) -> int:
        """The prompt tokens, in all, of a pass that reads `rows` rows anyway while `writers` runs write and
        `readers` phrases are read: the piece the passes' own times have taught (`timed`) for each share, at most
        PIECE a phrase; 0 where the pass's own rows already cost its `target` (the writers' shadows, beyond the
        step kernel), or where the writers' usual pass is not known (or stale): this pass, their steps alone,
        measures it (unless it has none: their readers lag).

        The piece is learned, not read off the cost's line: beyond the step kernel a pass's cost is a jump, a
        plateau and then a slope (three writers' steps and shadows, 6 rows, beside 4 to 15 of a phrase's tokens:
        all about 235 ms; 16: 303 ms; no AMX), and the budget's own pieces, all sized to about its target, bunch
        where a line's slope is their noise. Lines drawn that way read 4 tokens a pass where 15 fitted, or a
        73-token piece that took 1.9 s."""
        target = self.target(writers, readers)
        if target is None and rows:
            return 0  # the writers' steps alone: their usual pass
        anyway = self.costs.seconds(rows)
        if target is not None and anyway is not None and anyway >= target:
            return 0
        return min(PIECE * readers, self._piece * self.shares(readers))

    def plan(self, batch: list[Run], active: int = 0, now: float | None = None) -> Plan:
        """The pass over `batch` (runs with reads pending): every run's steps and shadows whole, and of the pieced
        reads (prompts, re-primes) a piece each, in `turn` order, `budget` tokens in all beside other runs' steps;
        where that is under LEAST (the writers' shadows took the pass's time), none, up to PATIENCE passes in a row,
        then LEAST. PIECE in all when no run writes (a pass reading eight phrases and re-primes whole, 2,000
        tokens, read them no faster than passes of 256, and kept a writer's reset behind it). `active`: the runs in
        the batch, this pass's and those waiting for their readers (whose next step must not wait behind a whole
        piece either)."""
        plan = Plan()
        pieced = [run for run in batch if any(read.kind in PIECED for read in run.pending or ())]
        writers = plan.writers = max(len(batch), active) - len(pieced)
        reads = [read for run in batch if run not in pieced for read in run.pending or ()]
        if not writers or not pieced:
            left = PIECE
        else:
            rows = sum(len(read.ids) for read in reads)
            left = self.budget(writers, rows, len(pieced))
            if left < self.LEAST:
                left = self.LEAST if self._waited >= self.PATIENCE else 0
            if left:  # a piece beside steps: its time teaches the next (`timed`)
                plan.target, plan.shares = self.target(writers, len(pieced)), self.shares(len(pieced))
        self._waited = self._waited + 1 if pieced and left == 0 else 0
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
        """Learns from a pass as planned: its rows and how long it took; and, where the budget sized its piece,
        the next piece, as TCP's congestion window is: after a pass within its target a quarter more (at least
        LEAST), or one more once a piece has gone over; after one over it, cut to three quarters of its share of the
        target, and never under LEAST. The pieces then hover under where the passes cost their target, whatever the
        shape of the cost, and go over about once in as many passes as the cut took off: on a cost with a jump (no
        AMX, the writers' shadows beside), a cut in proportion went over every 4th pass, 2.4x the writers' usual gap."""
        self._passes += 1
        steps, rows = sum(read.kind == "step" for read in plan.reads), sum(len(read.ids) for read in plan.reads)
        self.costs.timed(rows, seconds)
        if steps and rows <= max(steps, self.costs.FEW) and not any(read.kind in PIECED for read in plan.reads):
            usual = self._usual.setdefault(plan.writers or steps, deque(maxlen=PassCost.RECENT))
            usual.append((self._passes, seconds))  # as many writers as `target` is asked for
        if plan.target is None or not plan.shares:
            return
        share = sum(len(read.ids) for read in plan.reads if read.kind in PIECED) / plan.shares
        if seconds <= plan.target:
            grown = share + (max(self.LEAST, share / 4) if share < self._over else 1)
            self._piece = max(self._piece, min(PIECE, int(grown)))
        else:
            self._piece = self._over = max(self.LEAST, int(0.75 * share * plan.target / seconds))
