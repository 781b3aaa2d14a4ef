"""The engine: a loaded GPT-2 and its tokenizer, and `stream()`, a plain generator of `Step`s.

`Engine.stream(prompt, settings)` yields one `Step` per token as soon as the token is sampled. Streams asked for
from several threads at once are decoded together, one forward pass per step over all of them (batching.py:
the engine's `batcher` owns the model while runs are active); each decodes at most a couple of tokens ahead of
its reader, and closing the generator (or breaking out of the loop) takes the run out of the batch at once.
Each run is a `decoding.Decoder`; the engine itself holds no run's state, so one engine serves every visitor,
and nothing on it is switched for one run: the backend and the window mode are arguments of the run (`auto`
measured the shadow row's chunk at load, autotune.Choice.shadow_chunk). Whatever else runs the model (step mode, scoring)
holds `engine.lock` for each forward pass, as the batcher does.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch

from . import step_kernel
from .autotune import Choice
from .batching import Batcher, ModelLock
from .decoding import Backend, Candidate, Decoder, Prompt, Step, WindowMode, candidates, shadowed, token_text
from .errors import SettingsError
from .fast import LONG_CHUNK, SHADOW_CHUNK, Progress
from .sampling import Distribution
from .settings import MAX_SEED, GenerationSettings
from .shapes import ModelShape, Precision
from .window import Window


class Engine:
    """A loaded GPT-2 and its tokenizer, ready to stream text (a `TextEngine`). Made by `gpt2_engine.load()`."""

    runs_here = True  # the model is in this process: step mode, the comparisons and scoring can read it
    memory_note = ""  # the memory chart is this process's own

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        shape: ModelShape,
        precision: Precision = "fp32",
        choice: Choice | None = None,
    ):
        self.model, self.tokenizer, self.name, self.shape, self.precision = model, tokenizer, name, shape, precision
        self.choice = choice  # how `auto` picked the precision (measured here), or None when it was asked for
        self.n_positions = shape.n_positions
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self.lock = ModelLock()  # one forward pass at a time on this model: the batch's, a step mode's, a score's
        self.batcher = Batcher(model, self.lock)

    @property
    def window_mode(self) -> WindowMode:
        """How this engine's runs read the window at a reset, unless a run asks otherwise: through the shadow row,
        a few tokens beside each step (`shadow_chunk`), so that a reset never pauses the stream."""
        return "shadow"

    @property
    def shadow_chunk(self) -> int:
        """Tokens the shadow row reads at a time beside a step. Where q8 reads steps with its step kernel, as many
        as keep a step and its chunk one call of that kernel (3): one run pays what a chunk of 15 costs (gpt2-xl's
        shape, window 50: +4.8% a token against +4.6%), and a batch reads fewer where its runs' shadows would pass
        the kernel's rows together (scheduler.Scheduler.shadow_chunk). Else what
        `auto` measured cheapest for one run here; else, where q8 keeps its prompt kernel, fast.LONG_CHUNK, which
        it reads cheapest; else fast's."""
        if self.step_kernel:
            return step_kernel.ROWS - 1
        if self.choice:
            return self.choice.shadow_chunk
        return LONG_CHUNK if self.prompt_kernel else SHADOW_CHUNK

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights in memory (shared tensors, like the tied embedding, counted once)."""
        return self._tensor_bytes(skip=set()) + sum(getattr(m, "packed_bytes", 0) for m in self.model.modules())

    @property
    def step_bytes(self) -> int:
        """Bytes of weights one decode step reads, the numerator of the bandwidth ceiling: every matrix once (q8:
        the step kernel's copy or fbgemm's, not the prompt kernel's), and not the embedding tables, of which a step looks up one row,
        unless the LM head reads the token table itself (tied weights)."""
        transformer, head = self.model.transformer, getattr(self.model.lm_head, "weight", None)
        tables = {id(transformer.wte.weight), id(transformer.wpe.weight)} - {id(head)}
        return self._tensor_bytes(skip=tables) + sum(getattr(m, "step_bytes", 0) for m in self.model.modules())

    def _tensor_bytes(self, skip: set[int]) -> int:
        tensors = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}  # tied: counted once
        return sum(
            t.numel() * t.element_size()
            for key, t in tensors.items()
            if key not in skip and (t.is_floating_point() or t.dtype == torch.int8)
        )

    @property
    def step_kernel(self) -> bool:
        """Whether q8 reads decode steps with its own kernel, built for this CPU (step_kernel.py)."""
        scratch = getattr(self.model, "q8_scratch", None)
        return bool(scratch is not None and scratch.step_kernel)

    @property
    def prompt_kernel(self) -> bool:
        """Whether q8 reads phrases with its own kernel and copy of the weights (q8.PromptKernel): counted in
        `weight_bytes`."""
        scratch = getattr(self.model, "q8_scratch", None)
        return bool(scratch is not None and scratch.prompt_kernel)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.shape.kv_bytes_per_token(self.precision)

    def prepare_prompt(self, prompt: str, window: int | None) -> Prompt:
        """Token ids for a prompt (Prompt.fit), by this model's tokenizer."""
        eos = self.eos_token_id if self.eos_token_id is not None else 0
        return Prompt.fit(prompt, self.tokenizer.encode, eos, Window(window, self.n_positions))

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        on_prompt: Progress | None = None,
        *,
        backend: Backend = "fast",
        window_mode: WindowMode | None = None,
        on_wait: Callable[[int], None] | None = None,
        **changes: Any,
    ) -> Generator[Step, None, None]:
        """Yields one Step per generated token. `changes` override fields of `settings`.
        `on_prompt(read, total)` is told how many prompt tokens the model has read, chunk by chunk, before
        the first Step (a long phrase takes seconds to read). While the batch is full, `on_wait(runs ahead)` is
        told the run's place, every fraction of a second. `backend` and `window_mode` choose how this run computes
        (the reference path, the other window mode: tests and benchmarks); the text is the same. Calls from several
        threads are decoded together (batching.py); the prompt is read at the first step asked for. Tutorial mode
        and the reference backend run alone, in the caller's thread (a generator started there)."""
        settings = self.settings_for(settings, **changes)  # here, so that a bad value raises at the call
        window_mode = window_mode or self.window_mode
        if backend != "fast" or settings.autograd:  # transformers' own cache: no passes to share; alone, here
            return self._alone(prompt, settings, backend, window_mode, on_prompt)
        make = functools.partial(
            self.decoder, prompt, settings, backend=backend, window_mode=window_mode, read_prompt=False
        )
        rows = self.cache_rows(settings, backend, window_mode)
        cache_bytes = rows * self.n_positions * self.kv_bytes_per_token
        return self.batcher.stream(lambda reading: make(on_prompt=reading), cache_bytes, on_prompt, on_wait)

    def _alone(
        self, prompt: str, settings: GenerationSettings, backend: Backend, window_mode: WindowMode, on_prompt
    ) -> Generator[Step, None, None]:
        """A run outside the batch (tutorial mode, the reference backend), in the caller's thread: its forward
        passes hold `self.lock`, between the batch's; the next one is done only when the next step is asked for."""
        run = self.decoder(prompt, settings, backend=backend, window_mode=window_mode, on_prompt=on_prompt)
        while not run.finished:
            yield run.step()

    @staticmethod
    def cache_rows(settings: GenerationSettings, backend: Backend, window_mode: WindowMode) -> int:
        """Cache rows a run takes: two with the shadow row (fast.FastContext), else one."""
        return 2 if shadowed(settings, backend, window_mode) else 1

    def decoder(
        self,
        prompt: str,
        settings: GenerationSettings,
        *,
        backend: Backend = "fast",
        window_mode: WindowMode | None = None,
        stops: bool = True,
        on_prompt: Progress | None = None,
        read_prompt: bool = True,
    ) -> Decoder:
        """One run's decoder, its prompt read (unless `read_prompt` is False: the batch reads it). Settings already
        checked (settings_for); a seed of None draws one. Its own forward passes hold `self.lock`."""
        seed = settings.seed if settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return Decoder(
            self.model,
            self.tokenizer,
            self.prepare_prompt(prompt, settings.window),
            settings,
            seed,
            backend=backend,
            window_mode=window_mode or self.window_mode,
            shadow_chunk=self.shadow_chunk,
            stops=stops,
            on_prompt=on_prompt,
            read_prompt=read_prompt,
            lock=self.lock,
        )

    def settings_for(self, settings: GenerationSettings | None = None, **changes: Any) -> GenerationSettings:
        """`settings` with `changes`, checked against this model (raises SettingsError)."""
        settings = settings or GenerationSettings()
        settings = settings.with_(**changes) if changes else settings
        settings.check_for(self.n_positions)
        if settings.autograd and not any(p.requires_grad for p in self.model.parameters()):
            raise SettingsError(
                "autograd", True, f"tutorial mode needs fp32 or fp16 weights; this model is {self.precision}"
            )
        return settings

    def candidates(self, dist: Distribution, k: int) -> tuple[Candidate, ...]:
        """The k most likely next tokens of a distribution, with their text and top-p membership."""
        return candidates(self.tokenizer, dist, k)

    def token_text(self, token_id: int) -> str:
        """A token as text; a piece of a character split over tokens shows as its bytes, e.g. <0xE6>."""
        return token_text(self.tokenizer, token_id)

    def xspeak(self, prompt: str, settings: GenerationSettings | None = None, **changes: Any) -> Iterator[str]:
        """The tutorial's API: yields the prompt, then the text of each new token."""
        steps = self.stream(prompt, settings, **changes)
        yield prompt
        for step in steps:
            yield step.text

    def speak(self, prompt: str, settings: GenerationSettings | None = None, **changes: Any) -> str:
        """The tutorial's API: the prompt and its continuation, as one string."""
        return "".join(self.xspeak(prompt, settings, **changes))
