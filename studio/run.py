"""A run as the page keeps it (`Run`): what was asked, the steps so far, how it ended, and its place in History.

Plain data over the engine's Steps: no Streamlit, no runner. runner.py writes it, every view and status.py read it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import gpt2_engine
from gpt2_engine import RunStats, generated_text, run_record


def step_bytes(step: gpt2_engine.Step) -> int:
    """The bytes one Step takes in memory: the object, each of its values, and its candidates with theirs."""
    values = [getattr(step, name) for name in step.__dataclass_fields__]
    size = sys.getsizeof(step) + sum(sys.getsizeof(value) for value in values)
    for candidate in step.candidates:
        size += sys.getsizeof(candidate) + sum(
            sys.getsizeof(getattr(candidate, name)) for name in candidate.__dataclass_fields__
        )
    return size


@dataclass
class Run:
    """A run as the page keeps it: what was asked, and the steps so far."""

    prompt: str
    settings: gpt2_engine.GenerationSettings
    model: str
    weight_bytes: int
    steps: list[gpt2_engine.Step] = field(default_factory=list)
    stopped: bool = False  # ended before the engine finished it (Stop, a page change, a closed tab)
    error: str | None = None  # why it failed, in words
    kind: str = "write"  # "write" (the Write tab, a replay), "compare" (one of a comparison's two runs), "sweep"
    label: str = ""  # what the History tab calls it besides its number, e.g. "window 20 of a comparison"
    precision: str = ""  # the model's precision when it wrote this run
    interrupted: bool = False  # Streamlit stopped it (a click, a reload), and no script run has said so yet
    cancelled: bool = False  # a reload of its visit asked it to stop (its page is gone): it ends at its next token
    stopped_why: str = ""  # said after "Stopped after n of m tokens", when there is more to say
    number: int = 0  # its place in History (1 = the first), given at its first token: a run that wrote nothing has none
    coherence: gpt2_engine.Coherence | None = None  # once scored: its own text, reread with the whole context
    reading: gpt2_engine.Coherence | None = None  # once measured: a real passage, read with this run's window
    reading_of: str = ""  # ... which passage (passages.Passage.name)
    kv_per_token: int = 0  # KV-cache bytes a token of this model takes (charts: what gpt2-xl's would hold)
    vocab_size: int = 0  # the model's tokens: a perplexity near it is a model guessing at random (random weights)
    started_at: float = field(default_factory=time.time)
    memory_note: str = ""  # a remote backend's: what its memory chart can show, in words ("" for a local model)
    _step_size: int = field(default=0, repr=False, compare=False)  # step_bytes of one of its steps, once measured
    tab: str = ""  # the session id of the browser tab that wrote it (visits: a reload, or another tab, stopped it)

    def footprint(self) -> int:
        """About how many bytes its steps take in this process: its step count times what its last step takes
        (a run's steps all carry the same fields and as many candidates). What bounds History (visits)."""
        if not self.steps:
            return 0
        if not self._step_size:  # measured once: History's bound asks at every script run, for every visit
            self._step_size = step_bytes(self.steps[-1])
        return len(self.steps) * self._step_size

    @property
    def remote(self) -> bool:
        return bool(self.memory_note)

    @property
    def finished(self) -> bool:
        return self.stopped or self.error is not None or bool(self.steps and self.steps[-1].stop_reason)

    @property
    def generated(self) -> str:
        return generated_text(self.steps)

    @property
    def stats(self) -> RunStats:
        return RunStats.from_steps(self.steps)

    def record(self) -> dict:
        """Everything about this run as plain data (gpt2_engine.records): the History tab's downloads."""
        return run_record(
            self.prompt,
            self.settings,
            self.steps,
            model=self.model,
            precision=self.precision,
            kind=self.kind,
            label=self.label,
            coherence=self.coherence,
            reading=self.reading,
            reading_of=self.reading_of,
            stopped=self.stopped,
            error=self.error,
            started_at=self.started_at,
        )
