"""Generation: prefill, decode with a KV cache, re-prime for the window, stop -> a stream of Steps.

`Engine.stream(prompt, settings)` is a plain generator. It yields one `Step` per token as soon as
the token is sampled, and does the next forward pass only when asked for the next step, so
closing the generator (or breaking out of the loop) stops the work at once.

Window N (see README, "Window N"): at every N-th generated token the cache is dropped and the
model re-primed from the last N token ids of prompt + generated: in one batched forward pass, or,
with the shadow row (`window_mode = "shadow"`), from a second cache row that read them on the way.
The model then holds at most max(prompt, N) + N - 1 tokens. With the window off the whole context
is kept until it reaches the model's limit, then re-primed from the most recent half.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .autotune import Choice
from .context import Context, KVCacheContext
from .detokenize import REPLACEMENT, TextStream, byte_decoder
from .errors import SettingsError
from .fast import FastContext, Progress
from .memory import available_bytes, read_process_memory, release_freed_memory
from .sampling import Distribution, choose, draw, new_generator
from .settings import MAX_SEED, GenerationSettings
from .shapes import ModelShape

SENTENCE_ENDS = (".", "!", "?")
STOP_REASONS = {  # why a run ended, in the words the page and the command line show
    "length": "reached the length",
    "eos": "the model wrote <|endoftext|>",
    "sentence_end": "reached the end of a sentence",
    "memory": "the memory guard stopped it before the machine ran short",
}  # the tutorial stopped on a token holding "."; ! and ? end sentences too


class MemoryGuard:
    """Stops a run before the process holds more than `share` of the memory that was available when it
    started (plus what it held then), one step ahead: the next step is assumed to grow as the last did."""

    def __init__(self, share: float):
        self.limit_bytes = read_process_memory().rss_bytes + int(share * available_bytes())
        self.last_rss = 0

    def check(self, rss_bytes: int) -> str | None:
        growth = max(0, rss_bytes - self.last_rss) if self.last_rss else 0
        self.last_rss = rss_bytes
        return "memory" if rss_bytes + 2 * growth > self.limit_bytes else None


@dataclass(frozen=True)
class Step:
    """One generated token and everything a chart or a table needs about the moment it was made."""

    index: int  # 0 for the first generated token
    token_id: int
    text: str  # the text this token completes; "" while a character is still incomplete
    logprob: float  # the model's own log-probability of this token (temperature 1, before top-k/top-p)
    reset: bool  # the window dropped the cache and re-primed just before this token
    context_tokens: int  # tokens the model held when it predicted this token
    kv_bytes: int  # KV-cache size at that moment
    rss_bytes: int  # process resident memory after this token
    anon_bytes: int  # ... of which not file-backed
    elapsed_s: float  # since the stream started, prefill included
    seed: int  # the seed of this run: the same seed and settings repeat it exactly
    stop_reason: str | None  # on the last step: "length", "eos" or "sentence_end"
    prompt_tokens: int  # prompt tokens the model was given
    prompt_tokens_dropped: int  # prompt tokens dropped from the start to fit the model
    nucleus_size: int = 0  # tokens in the top-p set this token was drawn from
    nucleus_mass: float = 0.0  # their probability mass (>= top_p)
    candidates: tuple[Candidate, ...] = ()  # the most likely tokens at this step, if asked for
    memory_limit_bytes: int = 0  # the memory guard's limit for this run


@dataclass(frozen=True)
class Candidate:
    """One possible next token, as the sampler saw it."""

    token_id: int
    text: str  # its text (a piece of a split character shows as bytes, e.g. <0xE6>)
    probability: float  # after temperature and top-k
    in_top_p: bool  # inside the top-p set the sampler picks from


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model will see it."""

    ids: list[int]
    dropped: int  # tokens cut from the start because the prompt was longer than the model allows
    text: str  # the prompt text as given (after replacing characters that cannot be encoded)


class Engine:
    """A loaded GPT-2 and its tokenizer, ready to stream text. Made by `gpt2_engine.load()`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        shape: ModelShape,
        precision: str = "fp32",
        choice: Choice | None = None,
    ):
        self.model, self.tokenizer, self.name, self.shape, self.precision = model, tokenizer, name, shape, precision
        self.choice = choice  # how `auto` picked the precision (measured here), or None when it was asked for
        self.backend = "fast"  # "fast": fast.py's forward and static cache; "reference": transformers' own
        # With a window: "reprime" (a prefill of the last N tokens at each reset, a pause in the stream) or
        # "shadow" (a second row in every step that holds them already: no pause, but each step reads two
        # rows). `auto` measures which (autotune.Choice.window_mode): the shadow where a second row costs
        # almost nothing, as with q8's integer kernel; an asked-for precision re-primes.
        self.window_mode = choice.window_mode if choice else "reprime"
        self.n_positions = shape.n_positions
        self.eos_token_id: int | None = tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights in memory (shared tensors, like the tied embedding, counted once)."""
        tensors = {
            id(t): t for t in (*self.model.parameters(), *self.model.buffers())
        }  # parameters() skips tied copies
        held = sum(
            t.numel() * t.element_size() for t in tensors.values() if t.is_floating_point() or t.dtype == torch.int8
        )
        return held + sum(getattr(m, "packed_bytes", 0) for m in self.model.modules())  # fbgemm's own (q8)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.shape.kv_bytes_per_token(self.precision)

    def new_context(self, window: int | None = None) -> Context:
        """A fresh context for one run, on the engine's backend."""
        if self.backend == "reference":
            return KVCacheContext(self.model)
        return FastContext(self.model, window if self.window_mode == "shadow" else None)

    def prepare_prompt(self, prompt: str, window: int | None) -> Prompt:
        """Token ids for a prompt: an empty prompt starts a fresh document (<|endoftext|>), and a prompt
        longer than the model allows keeps its most recent tokens (limit - N with window N on)."""
        text = str(prompt).encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> "?"
        ids = self.tokenizer.encode(text) if text else []
        if not ids:
            ids = [self.eos_token_id if self.eos_token_id is not None else 0]
        limit = self.n_positions - (window or 0)
        dropped = max(0, len(ids) - limit)
        return Prompt(ids[dropped:], dropped, text)

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        on_prompt: Progress | None = None,
        **changes: Any,
    ) -> Iterator[Step]:
        """Yields one Step per generated token. `changes` override fields of `settings`.
        `on_prompt(read, total)` is told how many prompt tokens the model has read, chunk by chunk, before
        the first Step (a long phrase takes seconds to read)."""
        settings = self.settings_for(settings, **changes)
        seed = settings.seed if settings.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return self._stream(self.prepare_prompt(prompt, settings.window), settings, seed, on_prompt)

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

    def _stream(
        self, prompt: Prompt, settings: GenerationSettings, seed: int, on_prompt: Progress | None = None
    ) -> Iterator[Step]:
        start = time.perf_counter()
        generator = new_generator(seed)
        text = TextStream(self.tokenizer)
        ids = list(prompt.ids)  # prompt + generated: the window re-primes from the tail of this
        release_freed_memory()  # every run starts from what the process really holds (fair comparisons)
        guard = MemoryGuard(settings.memory_share)
        # Tutorial mode runs as the tutorial did: autograd on, transformers' own cache, so each step's
        # graph stays reachable from the cache and memory grows with the square of the context.
        context = KVCacheContext(self.model) if settings.autograd else self.new_context(settings.window)
        with torch.enable_grad() if settings.autograd else torch.inference_mode():
            logits = context.prime(ids, on_prompt)
            reset = False
            for index in range(settings.max_new_tokens + settings.sentence_end_max_extra):
                logits = logits.detach() if settings.autograd else logits
                token, dist = choose(
                    logits, settings.sampler, draw(generator), settings.temperature, settings.top_k, settings.top_p
                )
                ids.append(token)
                delta = text.push(token)
                memory = read_process_memory()
                stop = self._stop_reason(index, token, settings) or guard.check(memory.rss_bytes)
                if stop:
                    delta += text.flush()
                yield Step(
                    index=index,
                    token_id=token,
                    text=delta,
                    logprob=float(torch.log_softmax(logits.float(), dim=-1)[token]),
                    reset=reset,
                    context_tokens=context.length,
                    kv_bytes=context.kv_bytes(),
                    rss_bytes=memory.rss_bytes,
                    anon_bytes=memory.anon_bytes,
                    elapsed_s=time.perf_counter() - start,
                    seed=seed,
                    stop_reason=stop,
                    prompt_tokens=len(prompt.ids),
                    prompt_tokens_dropped=prompt.dropped,
                    nucleus_size=dist.nucleus_size,
                    nucleus_mass=dist.nucleus_mass,
                    candidates=self.candidates(dist, settings.candidates) if settings.candidates else (),
                    memory_limit_bytes=guard.limit_bytes,
                )
                if stop:
                    return
                logits, reset = self._advance(context, ids, index + 1, settings.window)
                if reset and settings.autograd:
                    release_freed_memory()  # the dropped cache's graph is gone: let the chart show the drop

    def candidates(self, dist: Distribution, k: int) -> tuple[Candidate, ...]:
        """The k most likely next tokens of a distribution, with their text and top-p membership."""
        return tuple(
            Candidate(int(token), self.token_text(int(token)), float(p), rank < dist.nucleus_size)
            for rank, (token, p) in enumerate(zip(dist.token_ids[:k].tolist(), dist.probs[:k].tolist()))
        )

    def token_text(self, token_id: int) -> str:
        """A token as text; a piece of a character split over tokens shows as its bytes, e.g. <0xE6>."""
        text = self.tokenizer.decode([token_id])
        if REPLACEMENT not in text:
            return text
        raw = self.tokenizer.convert_ids_to_tokens(token_id)
        decoder = byte_decoder()
        if all(ch in decoder for ch in raw):
            return "".join(chr(b) if 32 <= b < 127 else f"<0x{b:02X}>" for b in (decoder[ch] for ch in raw))
        return text

    def _advance(self, context: Context, ids: list[int], generated: int, window: int | None) -> tuple[Tensor, bool]:
        """Feeds the newest token, or re-primes when the window (or the model's limit) says so."""
        if window is not None and generated % window == 0:
            return context.prime(ids[-window:]), True
        if context.length + 1 > self.n_positions:  # window off and the context is full
            return context.prime(ids[-(self.n_positions // 2) :]), True
        return context.append(ids[-1]), False

    def _stop_reason(self, index: int, token: int, settings: GenerationSettings) -> str | None:
        if settings.stop_at_eos and token == self.eos_token_id:
            return "eos"
        generated = index + 1
        if generated < settings.max_new_tokens:
            return None
        if not settings.stop_at_sentence_end:
            return "length"
        token_text = self.tokenizer.decode([token])
        if any(mark in token_text for mark in SENTENCE_ENDS):
            return "sentence_end"
        if generated >= settings.max_new_tokens + settings.sentence_end_max_extra:
            return "length"
        return None

    def xspeak(self, prompt: str, settings: GenerationSettings | None = None, **changes: Any) -> Iterator[str]:
        """The tutorial's API: yields the prompt, then the text of each new token."""
        steps = self.stream(prompt, settings, **changes)
        yield prompt
        for step in steps:
            yield step.text

    def speak(self, prompt: str, settings: GenerationSettings | None = None, **changes: Any) -> str:
        """The tutorial's API: the prompt and its continuation, as one string."""
        return "".join(self.xspeak(prompt, settings, **changes))
