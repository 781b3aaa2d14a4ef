"""How many prompt tokens a batched forward pass reads beside other runs' steps (batching.py): a long phrase is read
a budget at a time, so that it does not freeze the room (as llama.cpp's n_ubatch and vLLM's chunked prefill)."""

from __future__ import annotations

from typing import Any

from . import fast
from .fast import Read

Run = Any  # batching.Run (its `pending` reads are all this reads of it): named here without importing batching


class PromptBudget:
    """How many prompt tokens a pass reads beside other runs' steps (as llama.cpp's n_ubatch and vLLM's chunked
    prefill): enough that a pass costs about STEP_SHARE more than a step alone, so that a 1,000-token phrase
    does not freeze the room. Alone, a prompt is read a chunk at a time (fast.PROMPT_CHUNK). Measured as it goes:
    the seconds of a pass of steps alone, and what each prompt token adds."""

    STEP_SHARE = 0.6  # a pass with prompt tokens costs at most about (1 + this) steps: others' gaps stay under 2x
    FIRST = 8  # tokens a pass takes before anything is measured
    LEAST = 4  # never fewer: a prompt always moves

    def __init__(self) -> None:
        self.step_s: float | None = None  # a pass of steps only (recent, smoothed)
        self.token_s: float | None = None  # what a prompt token adds to a pass

    def tokens(self) -> int:
        if self.step_s is None or not self.token_s:
            return self.FIRST
        return max(self.LEAST, min(fast.PROMPT_CHUNK, int(self.STEP_SHARE * self.step_s / self.token_s)))

    def split(self, batch: list[Run], active: int = 0) -> tuple[list[Run], list[Read], dict[Run, list[Read]]]:
        """(the runs in this pass, its reads, the rest of each prompt cut short). `active`: runs in the batch, this
        pass's and those waiting for their readers (whose next step must not wait behind a whole chunk either).
        With no step beside them, prompts take a chunk a pass; otherwise `tokens()` in all, first come first served."""
        reading = [run for run in batch if any(len(ids) > fast.STEPS_READ for _, _, ids in run.pending or ())]
        stepping = len(batch) > len(reading) or active > len(reading)
        left = self.tokens() if stepping else fast.PROMPT_CHUNK
        taken: list[Run] = []
        reads: list[Read] = []
        partial: dict[Run, list[Read]] = {}
        for run in batch:
            pending = run.pending or []
            long = [read for read in pending if len(read[2]) > fast.STEPS_READ]
            if not long:
                taken.append(run)
                reads.extend(pending)
                continue
            if left <= 0 or len(pending) != 1:  # (a prompt or a re-prime is a single read)
                continue
            cache, row, ids = pending[0]
            taken.append(run)
            reads.append((cache, row, ids[:left]))
            if len(ids) > left:
                partial[run] = [(cache, row, ids[left:])]
            left -= len(ids[:left])
        return taken, reads, partial

    def timed(self, reads: list[Read], seconds: float) -> None:
        prompt = sum(len(ids) for _, _, ids in reads if len(ids) > fast.STEPS_READ)
        if not prompt:
            self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds
        elif self.step_s is not None and len(reads) > 1:  # a prompt beside steps: what its tokens added
            per_token = max(0.0, seconds - self.step_s) / prompt
            self.token_s = per_token if self.token_s is None else 0.7 * self.token_s + 0.3 * per_token
