"""What each forward pass of a batch does, decided in one place (as llama.cpp's slots and vLLM's scheduler do):
which waiting runs join the batch (`admit`), and what the pass reads (`plan`): every run's step, and of a prompt or
a window's re-prime (a read of kind fast.PIECED) a piece, shortest first (`turn`), as many tokens as the budget
allows beside others' steps (`PromptBudget`, as llama.cpp's n_ubatch and vLLM's chunked prefill), so that a
1,000-token phrase does not freeze the room; with no steps to read, PIECE tokens a pass in all. Each read says its
kind where it is made (fast.Read), so nothing here is guessed from a read's length; the pass's kind (`Plan.kind`)
is what the thread policy is told (fast.forward_reads)."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from .fast import PIECED, Read, steps_only

Run = Any  # batching.Run (its `pending`, `cache_bytes`, `joined`): named here without importing batching
AGED_S = 60.0  # a phrase read for this long goes ahead of shorter ones (`turn`); 20 s left the median time to
# first token of eight busy visitors where it was: nearly every phrase had waited that long
PIECE = 256  # the most tokens of one prompt a pass reads: alone, a 1,024-token phrase takes 4 passes (its progress
# told at each), and a q8 model's work buffers hold them (q8.SCRATCH_ROWS)


class PromptBudget:
    """How many prompt tokens a pass reads beside other runs' steps: enough that the pass costs about STEP_SHARE
    more than a pass of steps alone for each phrase being read (up to READERS of them), so that the writers, who
    share one step, and each visitor waiting for a first word get about a step's time of every pass. Learned as it
    goes, from the passes' own times: a pass of steps alone says what a step costs, and the passes with more tokens
    beside their steps (a prompt's, or a window's shadow reading ahead, through the same kernels) what the first
    of them and each after it add, over the last RECENT such passes (`line`). The shadows' tokens of a pass come
    out of its budget (`Scheduler.plan`)."""

    STEP_SHARE = 1.0  # one phrase beside writers: a pass costs about 2 steps, their gaps stay about 2x a step's
    # (0.6 kept them under 1.6x, but read a phrase beside eight writers at a third of the machine)
    READERS = 3  # phrases beyond this add nothing: writers' gaps stay within about 4x a step's. Counting only one
    # left eight busy visitors a median of 37 s to their first word (a closed room reads ~450 prompt tokens a run)
    FIRST = 8  # tokens a pass takes before anything is measured
    LEAST = 4  # never fewer: a prompt always moves
    RECENT = 7  # passes each figure is the median of. Averaged instead, a few step passes that a busy neighbour
    # stretched (beside one, three writers' steps on gpt2-xl's shape took 1.07 s while the thread policy settled,
    # 0.2 s after) made the prompt passes after them look free, and the budget kept to FIRST

    def __init__(self) -> None:
        self._steps: deque[float] = deque(maxlen=self.RECENT)  # seconds of recent passes of steps only
        self._tokens: deque[float] = deque(maxlen=self.RECENT)  # what a token beside the steps added, recently
        self._passes: deque[tuple[int, float]] = deque(maxlen=self.RECENT)  # (tokens beside the steps, seconds)

    @property
    def step_s(self) -> float | None:
        """What a pass of steps alone costs now (None until one is timed)."""
        return statistics.median(self._steps) if self._steps else None

    @property
    def token_s(self) -> float | None:
        """What each more token beside the steps adds to a pass now (None until one is timed): see `line`."""
        line = self.line
        return line[1] if line else None

    @property
    def line(self) -> tuple[float, float] | None:
        """What a pass of steps with n tokens beside them costs now, as (its cost at n = 0, each token's): a
        straight line through the recent passes' times against their tokens, where they read at least three
        different counts; else from a pass of steps alone, at the median of (time - a step's) / tokens. A pass's
        first tokens can cost more than the rest: over 8 rows q8's prompt kernel reads what its step kernel read
        (gpt2-xl's shape, three writers: their steps 149 ms alone, 188 ms with 4 tokens beside them, 220 with 6, then
        about 4 ms a token), so the line starts above a step. Its slope is never under half that median, so that a few
        noisy passes cannot flatten it; nor its start under a step. None until a pass of each kind is timed."""
        if self.step_s is None or not self._tokens:
            return None
        average = statistics.median(self._tokens)
        counts, seconds = zip(*self._passes)
        if len(set(counts)) < 3:
            return self.step_s, average
        slope = max(statistics.linear_regression(counts, seconds).slope, average / 2)
        start = statistics.fmean(seconds) - slope * statistics.fmean(counts)
        return max(start, self.step_s), slope

    def forget(self) -> None:
        """Back to knowing nothing, as at a server's start."""
        self._steps.clear()
        self._tokens.clear()
        self._passes.clear()

    def tokens(self, readers: int = 1) -> int:
        """The prompt tokens of a pass, in all, beside steps while `readers` phrases (or re-primes) are read."""
        line = self.line
        if self.step_s is None or not line or not line[1]:
            return self.FIRST
        start, token_s = line
        share = self.STEP_SHARE * max(1, min(readers, self.READERS))
        fit = ((1 + share) * self.step_s - start) / token_s  # the tokens that bring the pass to its cost
        return max(self.LEAST, min(PIECE * readers, int(fit + 1e-9)))

    def timed(self, reads: list[Read], seconds: float) -> None:
        """Learns from a pass: its reads and how long it took."""
        extra = sum(len(read.ids) for read in reads if read.kind != "step")  # a prompt's, a re-prime's, shadows'
        step_s = self.step_s
        if not extra:
            self._steps.append(seconds)
        elif step_s is not None and any(read.kind == "step" for read in reads):  # beside steps
            self._tokens.append(max(0.0, seconds - step_s) / extra)
            self._passes.append((extra, seconds))


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
    """The batch's decisions: who joins (`admit`), what each pass reads (`plan`), and what passes cost (`timed`)."""

    def __init__(self, max_runs: int):
        self.max_runs = max_runs
        self.kv_budget_bytes = 0  # set when a batch starts (batching.Batcher)
        self.budget = PromptBudget()
        self._waited = False  # the last pass's shadows left the phrases being read nothing

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

    def plan(self, batch: list[Run], active: int = 0, now: float | None = None) -> Plan:
        """The pass over `batch` (runs with reads pending): every run's steps and shadows whole, and of the pieced
        reads (prompts, re-primes) a piece each, in `turn` order: `budget.tokens(readers)` in all beside other
        runs' steps, less the tokens the writers' shadows read this pass (at least LEAST every second pass); PIECE
        in all when no run steps (a pass reading eight phrases and re-primes whole, 2,000 tokens, read them no
        faster than passes of 256, and kept a writer's reset behind it). `active`: the runs in the batch, this
        pass's and those waiting for their readers (whose next step must not wait behind a whole piece either)."""
        pieced = [run for run in batch if any(read.kind in PIECED for read in run.pending or ())]
        stepping = len(batch) > len(pieced) or active > len(pieced)
        shadows = sum(len(read.ids) for run in batch for read in run.pending or () if read.kind == "shadow")
        # ... which cost what prompt tokens do: beside steps, the budget is what they leave. Where that is under
        # LEAST, the phrases wait a pass (the shadows are few passes before each reset), but never two in a row
        left = self.budget.tokens(len(pieced)) - shadows if stepping else PIECE
        if left < self.budget.LEAST:
            left = self.budget.LEAST if self._waited else 0
        self._waited = bool(pieced) and left == 0
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
        self.budget.timed(plan.reads, seconds)
