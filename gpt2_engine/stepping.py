"""Step mode: advance one token at a time, sampled or chosen by a person, look at the candidates, undo.

A step-mode run is a `decoding.Decoder`, the one `Engine.stream()` loops over, plus two things only a
person at the keyboard needs: undo, and retune (new sampler settings for the same context). The decoder
keeps the next-token logits, so changing top-p, top-k or temperature redraws the candidates without a
forward pass. Undo cuts the last token from the cache, or re-primes when that token caused a reset.

    stepper = StepMode(engine, "The cat sat", GenerationSettings(top_p=0.7, window=50, seed=1))
    stepper.candidates(10)          # the ten most likely next tokens, with top-p flags
    stepper.step()                  # sample one, as the sampler would
    stepper.step(choice=464)        # take this one
    stepper.undo()
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .decoding import Candidate, Decoder, Step
from .errors import SettingsError
from .fast import FastContext
from .generation import Engine
from .sampling import Distribution
from .settings import GenerationSettings

SHOWN_CANDIDATES = 10  # each Step keeps at least this many: the page's bars and its notes read them


UNDO_LOGITS_BYTES = 32 * 2**20  # the logits kept for undo: 166 steps of gpt2-xl's 201 kB, the newest; an older
# step's undo reads its window's context again instead (one forward pass)


@dataclass
class _Before:
    """What to restore on undo: the logits (None once dropped: see UNDO_LOGITS_BYTES), the span of ids the model
    held, the text stream's place."""

    logits: Tensor | None
    held_from: int
    reset: bool
    text: tuple[int, int, int]


class StepMode:
    """One run that a caller advances a token at a time. Not thread-safe: one per visitor."""

    def __init__(self, engine: Engine, prompt: str, settings: GenerationSettings | None = None):
        self.engine = engine
        settings = engine.settings_for(settings)
        if settings.autograd:
            raise SettingsError("autograd", True, "off: step mode runs without autograd (tutorial mode is in Write)")
        settings = settings.with_(candidates=max(settings.candidates, SHOWN_CANDIDATES))
        # the window re-primes (undo cuts a token from one cache row), and a person ends the run, not a rule
        self.decoder: Decoder = engine.decoder(prompt, settings, window_mode="reprime", stops=False)
        self.steps: list[Step] = []
        self._history: list[_Before] = []

    @property
    def settings(self) -> GenerationSettings:
        return self.decoder.settings

    @property
    def seed(self) -> int:
        return self.decoder.seed

    @property
    def prompt(self):
        return self.decoder.prompt

    @property
    def ids(self) -> list[int]:
        """Prompt + generated."""
        return self.decoder.ids

    @property
    def held_from(self) -> int:
        """The model holds ids[held_from:]."""
        return self.decoder.held_from

    @property
    def logits(self) -> Tensor:
        """The next-token logits: (vocab,)."""
        return self.decoder.logits

    @property
    def context(self):
        return self.decoder.context

    def distribution(
        self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None
    ) -> Distribution:
        """The next-token distribution under the run's settings, or under the overrides given (no forward pass)."""
        overrides = {"temperature": temperature, "top_p": top_p}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        if top_k is not None:
            overrides["top_k"] = top_k or None
        return self.decoder.distribution(**overrides)

    def candidates(
        self,
        k: int = SHOWN_CANDIDATES,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> tuple[Candidate, ...]:
        return self.engine.candidates(self.distribution(temperature, top_k, top_p), k)

    def retune(self, **changes: object) -> None:
        """Changes the sampler's settings (top-p, temperature, ...) for the steps to come."""
        settings = self.engine.settings_for(self.settings, **changes)
        if settings.window != self.settings.window:
            raise SettingsError("window", settings.window, f"{self.settings.window}: the window is fixed for a run")
        self.decoder.settings = settings

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[len(self.prompt.ids) :]

    @property
    def text(self) -> str:
        """The generated text so far (decoded whole, so split characters are joined)."""
        return self.engine.tokenizer.decode(self.generated_ids, skip_special_tokens=True)

    def step(self, choice: int | None = None) -> Step:
        """Adds one token: `choice`, or one the sampler draws. Returns its Step."""
        vocab = self.engine.model.config.vocab_size
        if choice is not None and not (isinstance(choice, int) and 0 <= choice < vocab):
            raise SettingsError("choice", choice, f"a token id from 0 to {vocab - 1}")
        run = self.decoder
        run.read_newest()
        before = _Before(run.logits, run.held_from, run.reset, run.text.mark())
        step = run.step(choice)
        run.read_newest()  # at once, not at the next step: the page shows the next candidates now
        self._history.append(before)
        self.steps.append(step)
        self._bound_undo()
        return step

    def _bound_undo(self) -> None:
        """Keeps the newest steps' logits within UNDO_LOGITS_BYTES: the older ones' are dropped."""
        kept = 0
        for before in reversed(self._history):
            if before.logits is None:
                break  # older ones were dropped already
            kept += before.logits.numel() * before.logits.element_size()
            if kept > UNDO_LOGITS_BYTES:
                before.logits = None

    @property
    def undo_bytes(self) -> int:
        """The bytes the logits kept for undo take."""
        return sum(b.logits.numel() * b.logits.element_size() for b in self._history if b.logits is not None)

    def undo(self) -> bool:
        """Takes the last token back; False when there is none."""
        if not self.steps:
            return False
        run, before = self.decoder, self._history.pop()
        self.steps.pop()
        run.ids.pop()
        run.text.rewind(before.text)
        if run.reset or before.logits is None:  # that token made the window re-prime, or its logits were dropped:
            run.reprime(len(run.ids) - before.held_from)  # read the context it had again (which gives the logits)
        else:
            assert isinstance(run.context, FastContext)  # step mode's: the fast backend, never autograd's cache
            run.context.truncate(1)
        if before.logits is not None:
            run.logits = before.logits
        run.held_from, run.reset = before.held_from, before.reset
        return True
