"""Step mode: advance one token at a time, sampled or chosen by a person, look at the candidates, undo.

The next-token logits are kept, so changing top-p, top-k or temperature redraws the candidates
for the same context without another forward pass. A chosen token is read against the KV cache
(the same logits as a fresh forward over the whole context); the window re-primes exactly as in
`Engine.stream`. Undo cuts the last token from the cache, or re-primes when that token caused a reset.

    stepper = StepMode(engine, "The cat sat", GenerationSettings(top_p=0.7, window=50, seed=1))
    stepper.candidates(10)          # the ten most likely next tokens, with top-p flags
    stepper.step()                  # sample one, as the sampler would
    stepper.step(choice=464)        # take this one
    stepper.undo()
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .fast import FastContext
from .generation import Candidate, Engine, Step
from .memory import read_process_memory
from .sampling import PICKERS, Distribution, distribution, draw, new_generator
from .settings import MAX_SEED, GenerationSettings


@dataclass(frozen=True)
class _Before:
    """What to restore on undo: the logits and the span of ids the model held before a step."""

    logits: Tensor
    held_from: int
    reset: bool


class StepMode:
    """One context that a caller advances a token at a time. Not thread-safe: one per visitor."""

    def __init__(self, engine: Engine, prompt: str, settings: GenerationSettings | None = None):
        self.engine = engine
        self.settings = engine.settings_for(settings)
        self.seed = self.settings.seed if self.settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
        self.generator = new_generator(self.seed)
        self.prompt = engine.prepare_prompt(prompt, self.settings.window)
        self.ids = list(self.prompt.ids)  # prompt + generated
        self.held_from = 0  # the model holds ids[held_from:]
        self.steps: list[Step] = []
        self._history: list[_Before] = []
        self._reset_pending = False
        self._start = time.perf_counter()
        self.context = FastContext(engine.model)
        with torch.inference_mode():
            self.logits = self.context.prime(self.ids)  # (vocab,) for the next token

    def distribution(
        self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None
    ) -> Distribution:
        """The next-token distribution under the run's settings, or under the overrides given (no forward pass)."""
        settings = self.settings
        return distribution(
            self.logits,
            settings.temperature if temperature is None else temperature,
            settings.top_k if top_k is None else (top_k or None),
            settings.top_p if top_p is None else top_p,
        )

    def candidates(self, k: int = 10, **overrides: float | int | None) -> tuple[Candidate, ...]:
        return self.engine.candidates(self.distribution(**overrides), k)

    def retune(self, **changes: object) -> None:
        """Changes the sampler's settings (top-p, temperature, ...) for the steps to come."""
        window = self.settings.window
        self.settings = self.engine.settings_for(self.settings, **changes)
        assert self.settings.window == window, "the window is fixed for a step-mode run"

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[len(self.prompt.ids) :]

    @property
    def text(self) -> str:
        """The generated text so far (decoded whole, so split characters are joined)."""
        return self.engine.tokenizer.decode(self.generated_ids, skip_special_tokens=True)

    def step(self, choice: int | None = None) -> Step:
        """Adds one token: `choice`, or one the sampler draws. Returns its Step."""
        settings = self.settings
        dist = self.distribution()
        vocab = self.engine.model.config.vocab_size
        if choice is not None and not 0 <= choice < vocab:
            raise ValueError(f"choice = {choice} is not a token id: use 0 to {vocab - 1}")
        u = draw(self.generator)  # drawn either way, so a later sampled step does not depend on the choices
        token = int(choice) if choice is not None else PICKERS[settings.sampler](dist, u)
        before = _Before(self.logits, self.held_from, self._reset_pending)
        memory = read_process_memory()
        step = Step(
            index=len(self.steps),
            token_id=token,
            text=self.engine.token_text(token),
            logprob=float(torch.log_softmax(self.logits.float(), dim=-1)[token]),
            reset=self._reset_pending,
            context_tokens=self.context.length,
            kv_bytes=self.context.kv_bytes(),
            rss_bytes=memory.rss_bytes,
            anon_bytes=memory.anon_bytes,
            elapsed_s=time.perf_counter() - self._start,
            seed=self.seed,
            stop_reason=None,
            prompt_tokens=len(self.prompt.ids),
            prompt_tokens_dropped=self.prompt.dropped,
            nucleus_size=dist.nucleus_size,
            nucleus_mass=dist.nucleus_mass,
            candidates=self.engine.candidates(dist, max(settings.candidates, 10)),
        )
        self.ids.append(token)
        with torch.inference_mode():
            self.logits, self._reset_pending = self.engine._advance(
                self.context, self.ids, len(self.generated_ids), settings.window
            )
        if self._reset_pending:
            self.held_from = len(self.ids) - self.context.length
        self._history.append(before)
        self.steps.append(step)
        return step

    def undo(self) -> bool:
        """Takes the last token back; False when there is none."""
        if not self.steps:
            return False
        before = self._history.pop()
        self.steps.pop()
        self.ids.pop()
        if self._reset_pending:  # that token made the window re-prime: read the context it had again
            with torch.inference_mode():
                self.context.prime(self.ids[before.held_from :])
        else:
            self.context.truncate(1)
        self.logits, self.held_from, self._reset_pending = before.logits, before.held_from, before.reset
        return True
