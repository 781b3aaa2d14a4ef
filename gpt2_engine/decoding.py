"""One run's decoding: the state it needs, held explicitly, and the one step that turns logits into a `Step`.

As gpt-fast's `prefill` and `decode_one_token`, with the run's state in one object: the context (a row of
tokens and its KV cache), every id so far, the sampler's generator, the text stream, the window and the
memory guard. A step is three plain calls: `reads()` says what must be read before the next token (the prompt;
the newest token; a window's reset), whoever does the forward pass gives `took(logits)` its logits, and `step()`
samples. Alone, `read_newest()` does the pass itself; `Engine.stream()` hands its decoders to the batch
(batching.py), which reads every run's reads in one pass. Step mode (stepping.py) is a Decoder plus undo and
retune. Nothing here knows of `Engine`: a decoder needs a model and its tokenizer only (and, shared with other
users of the model, the lock that keeps its forward passes one at a time).

Window N: when the run resets and what it keeps is window.Window's to say. A reset drops the cache and reads the
last N ids of prompt + generated in one batched pass, or, with the shadow row (window_mode "shadow"), from a
second cache row that read them on the way (fast.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from . import fast
from .context import Context, KVCacheContext
from .detokenize import REPLACEMENT, TextStream, byte_decoder
from .fast import SHADOW_CHUNK, FastContext, Progress, Read
from .memory import available_bytes, read_process_memory, release_freed_memory
from .sampling import PICKERS, Distribution, distribution, draw, new_generator
from .settings import GenerationSettings
from .threads import policy_for
from .window import Window

Backend = Literal["fast", "reference"]  # fast.py's forward and static cache, or transformers' own (the reference)
WindowMode = Literal["reprime", "shadow"]  # how a window reset reads the last N tokens (see the module's note)

SENTENCE_ENDS = (".", "!", "?")
STOP_REASONS = {  # why a run ended, in the words the page and the command line show
    "length": "reached the length",
    "eos": "the model wrote <|endoftext|>",
    "sentence_end": "reached the end of a sentence",
    "memory": "the memory guard stopped it before the machine ran short",
}  # the tutorial stopped on a token holding "."; ! and ? end sentences too


@dataclass(frozen=True)
class Candidate:
    """One possible next token, as the sampler saw it."""

    token_id: int
    text: str  # its text (a piece of a split character shows as bytes, e.g. <0xE6>)
    probability: float  # after temperature and top-k
    in_top_p: bool  # inside the top-p set the sampler picks from


@dataclass(frozen=True)
class Step:
    """One generated token and everything a chart or a table needs about the moment it was made."""

    index: int  # 0 for the first generated token
    token_id: int
    text: str  # the text this token completes; "" while a character is still incomplete
    logprob: float  # the model's own log-probability of this token (temperature 1, before top-k/top-p)
    reset: bool  # the window dropped the cache and re-primed just before this token
    context_tokens: int  # tokens the model held when it predicted this token
    kv_bytes: int  # KV-cache size at that moment: the window's context, and the next window read ahead
    rss_bytes: int  # process resident memory after this token
    anon_bytes: int  # ... of which not file-backed
    elapsed_s: float  # since the run started, prefill included
    seed: int  # the seed of this run: the same seed and settings repeat it exactly
    stop_reason: str | None  # on the last step: a key of STOP_REASONS
    prompt_tokens: int  # prompt tokens the model was given
    prompt_tokens_dropped: int  # prompt tokens dropped from the start to fit the model
    nucleus_size: int = 0  # tokens in the top-p set this token was drawn from
    nucleus_mass: float = 0.0  # their probability mass (>= top_p)
    candidates: tuple[Candidate, ...] = ()  # the most likely tokens at this step, if asked for
    memory_limit_bytes: int = 0  # the memory guard's limit for this run
    start_rss_bytes: int = 0  # the process's resident memory just before this run (before its prompt was read)
    server_kv_usage: float | None = (
        None  # a remote backend's KV cache in use, as a share, where it says (gpt2_engine/remote)
    )
    threads: int = 0  # the thread count this process decoded with at this token (threads.policy_for); 0: not here
    read_ahead_bytes: int = 0  # of kv_bytes: the next window, read ahead of a reset near (fast.FastContext's shadow)


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model will see it."""

    ids: list[int]
    dropped: int  # tokens cut from the start because the prompt was longer than the model allows
    text: str  # the prompt text as given (after replacing characters that cannot be encoded)

    @classmethod
    def fit(cls, prompt: str, tokenize: Callable[[str], list[int]], eos_token_id: int, window: Window) -> Prompt:
        """Token ids for a prompt: an empty prompt starts a fresh document (<|endoftext|>), and a prompt
        longer than the window's room (Window.prompt_room) keeps its most recent tokens."""
        text = str(prompt).encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> "?"
        ids = tokenize(text) if text else []
        if not ids:
            ids = [eos_token_id]
        dropped = max(0, len(ids) - window.prompt_room())
        return cls(ids[dropped:], dropped, text)


class MemoryGuard:
    """Stops a run before the process holds more than `share` of the memory that was available when it
    started (plus what it held then), one step ahead: the next step is assumed to grow as the last did."""

    def __init__(self, share: float, start_rss_bytes: int):
        self.limit_bytes = start_rss_bytes + int(share * available_bytes())
        self.last_rss = 0

    def check(self, rss_bytes: int) -> str | None:
        growth = max(0, rss_bytes - self.last_rss) if self.last_rss else 0
        self.last_rss = rss_bytes
        return "memory" if rss_bytes + 2 * growth > self.limit_bytes else None


def new_context(
    model: Any,
    settings: GenerationSettings,
    backend: Backend,
    window_mode: WindowMode,
    prompt_tokens: int = 0,
    shadow_chunk: int = SHADOW_CHUNK,
) -> Context:
    """A fresh context for one run. Tutorial mode runs as the tutorial did: autograd on, transformers' own
    cache, so each step's graph stays reachable from the cache and memory grows with the square of the context.
    The fast path's cache is sized to what the run can hold (Window.row_positions)."""
    if backend == "reference" or settings.autograd:
        return KVCacheContext(model)
    window = Window(settings.window, model.config.n_positions)
    return FastContext(model, window, shadowed(settings, backend, window_mode), shadow_chunk, prompt_tokens)


def shadowed(settings: GenerationSettings, backend: Backend, window_mode: WindowMode) -> bool:
    """Whether a run keeps the shadow row (fast.FastContext): a window, read ahead, on the fast path."""
    return backend == "fast" and not settings.autograd and settings.window is not None and window_mode == "shadow"


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as text; a piece of a character split over tokens shows as its bytes, e.g. <0xE6>."""
    text = tokenizer.decode([token_id])
    if REPLACEMENT not in text:
        return text
    raw = tokenizer.convert_ids_to_tokens(token_id)
    decoder = byte_decoder()
    if all(ch in decoder for ch in raw):
        return "".join(chr(b) if 32 <= b < 127 else f"<0x{b:02X}>" for b in (decoder[ch] for ch in raw))
    return text


def candidates(tokenizer: Any, dist: Distribution, k: int) -> tuple[Candidate, ...]:
    """The k most likely next tokens of a distribution, with their text and top-p membership."""
    return tuple(
        Candidate(int(token), token_text(tokenizer, int(token)), float(p), rank < dist.nucleus_size)
        for rank, (token, p) in enumerate(zip(dist.token_ids[:k].tolist(), dist.probs[:k].tolist()))
    )


class Decoder:
    """One run: reads the prompt when made, then adds a token per `step()`. Not thread-safe: one per run.

    `stops=False` leaves ending the run to the caller (step mode: a person decides); otherwise the step that
    ends the run (length, <|endoftext|>, a sentence's end, the memory guard) says why in `stop_reason`.
    `read_prompt=False` leaves the prompt to `reads()` (a batch does it beside other runs' steps). `lock`, if
    given, is held around each forward pass this decoder does itself."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt: Prompt,
        settings: GenerationSettings,
        seed: int,
        *,
        backend: Backend = "fast",
        window_mode: WindowMode = "reprime",
        shadow_chunk: int = SHADOW_CHUNK,
        stops: bool = True,
        on_prompt: Progress | None = None,
        read_prompt: bool = True,
        lock: AbstractContextManager | None = None,
    ):
        self.model, self.tokenizer, self.prompt, self.settings, self.seed = model, tokenizer, prompt, settings, seed
        self.stops = stops
        self.window = Window(settings.window, model.config.n_positions)
        self.start = time.perf_counter()
        self.generator = new_generator(seed)
        self.text = TextStream(tokenizer)
        self.ids = list(prompt.ids)  # prompt + generated: the window re-primes from the tail of this
        self.held_from = 0  # the model holds ids[held_from:]
        self.reset = False  # the last read was a re-prime: the next Step says so
        self.unread = False  # the newest id is not read yet (step() reads it first)
        self.prompt_read = False
        self._reading: tuple[str, int] | None = None  # what `took` finishes: ("prompt" | "reset" | "token", ids)
        self.finished = False
        self.on_prompt = on_prompt
        self.lock = lock
        if settings.autograd:  # tutorial mode: start from what the process really holds, so the climb shows whole
            release_freed_memory()
        # otherwise the small heap earlier runs grew (sampling, a prompt's activations) is kept for this one: it is
        # part of what the process held before the run, and large blocks are the system's again as soon as freed
        # (memory.MMAP_FROM_BYTES): what the run adds is its KV cache and little else
        self.start_rss_bytes = read_process_memory().rss_bytes  # what the run's memory is measured from
        self.guard = MemoryGuard(settings.memory_share, self.start_rss_bytes)
        self.context = new_context(model, settings, backend, window_mode, len(prompt.ids), shadow_chunk)
        self.logits: Tensor = torch.empty(0)  # (vocab,) for the next token, once the prompt is read
        if read_prompt:
            self.read_newest()

    @property
    def generated(self) -> int:
        return len(self.ids) - len(self.prompt.ids)

    def distribution(self, **overrides: Any) -> Distribution:
        """The next-token distribution under the run's settings, or under `overrides` of temperature, top_k
        and top_p (no forward pass once the newest token is read: the logits are kept)."""
        self.read_newest()
        settings = self.settings.with_(**overrides) if overrides else self.settings
        return distribution(self.logits, settings.temperature, settings.top_k, settings.top_p)

    def step(self, choice: int | None = None) -> Step:
        """Adds one token, `choice` or one the sampler draws. The token is read (a forward pass) at the start
        of the next step, so a run closed after this one does no work for a token that will not be followed."""
        assert not self.finished, "this run has ended"
        settings = self.settings
        dist = self.distribution()
        u = draw(self.generator)  # drawn either way, so a later sampled step does not depend on the choices
        token = int(choice) if choice is not None else PICKERS[settings.sampler](dist, u)
        self.ids.append(token)
        self.unread = True
        text = self.text.push(token)
        memory = read_process_memory()
        stop = self._stop_reason(token, memory.rss_bytes) if self.stops else None
        if stop:
            text += self.text.flush()
            self.finished = True
        return Step(
            index=self.generated - 1,
            token_id=token,
            text=text,
            logprob=float(torch.log_softmax(self.logits.detach().float(), dim=-1)[token]),
            reset=self.reset,
            context_tokens=self.context.length,
            kv_bytes=self.context.kv_bytes(),
            read_ahead_bytes=self.context.read_ahead_bytes() if isinstance(self.context, FastContext) else 0,
            rss_bytes=memory.rss_bytes,
            anon_bytes=memory.anon_bytes,
            elapsed_s=time.perf_counter() - self.start,
            seed=self.seed,
            stop_reason=stop,
            prompt_tokens=len(self.prompt.ids),
            prompt_tokens_dropped=self.prompt.dropped,
            nucleus_size=dist.nucleus_size,
            nucleus_mass=dist.nucleus_mass,
            candidates=candidates(self.tokenizer, dist, settings.candidates) if settings.candidates else (),
            memory_limit_bytes=self.guard.limit_bytes,
            start_rss_bytes=self.start_rss_bytes,
            threads=policy_for(self.model).current,
        )

    def read_newest(self) -> None:
        """Reads what is not read yet (the prompt, or the newest token), alone: `reads`, one pass, `took`."""
        with self.lock or nullcontext(), self._grad_mode():
            reads = self.reads()
            if reads:
                self.took(fast.forward_reads(self.model, reads))

    def reads(self, shadow_chunk: int | None = None) -> list[Read]:
        """What must be read before the next step (fast.Read): the prompt; or the newest token against the cache,
        with the shadow row's read-ahead beside it (at most `shadow_chunk` tokens, if given); or, when the window
        says so (Window.reset_keep), the ids it keeps, read again. Whoever does the forward pass then calls `took`
        with its logits; [] when nothing is left to read. A context without reads to share (transformers' own
        cache, tutorial mode) reads here, at once, and answers []."""
        assert self._reading is None, "took() finishes the reads given before"
        if not self.prompt_read:
            what, keep = "prompt", len(self.ids)
        elif not self.unread:
            return []
        else:
            reset = self.window.reset_keep(self.generated, self.context.length)
            what, keep = ("token", 1) if reset is None else ("reset", reset)
        self._reading = (what, keep)
        context = self.context
        if isinstance(context, FastContext):
            if what == "token":
                return context.append_reads(self.ids[-1], self._read_ahead_from(), shadow_chunk)
            return context.prime_reads(self.ids[-keep:])
        with self._grad_mode():
            self._took(context.append(self.ids[-1]) if what == "token" else context.prime(self.ids[-keep:]))
        return []

    def took(self, logits: Tensor) -> None:
        """The logits of a forward pass over the reads `reads()` gave, one row per read."""
        assert isinstance(self.context, FastContext)
        self._took(self.context.took(logits))

    def _took(self, logits: Tensor) -> None:
        assert self._reading is not None
        (what, keep), self._reading = self._reading, None
        self.logits = logits
        if what == "prompt":
            self.prompt_read = True
            if self.on_prompt is not None:
                self.on_prompt(keep, keep)
            return
        self.unread, self.reset = False, what == "reset"
        if self.reset:
            self.held_from = len(self.ids) - keep
            if self.settings.autograd:
                release_freed_memory()  # the dropped cache's graph is gone: let the chart show the drop

    def _read_ahead_from(self) -> int | None:
        """Tokens read after the newest before the window's next reset, for the shadow row (Window.read_ahead_from);
        with no stops (step mode: a person ends the run) the run may reach any reset."""
        settings = self.settings
        if not self.stops:
            return None if settings.window is None else 0
        last = settings.max_new_tokens + (settings.sentence_end_max_extra if settings.stop_at_sentence_end else 0)
        return self.window.read_ahead_from(self.generated, len(self.prompt.ids), last)

    def reprime(self, keep: int) -> None:
        """Drops the cache and reads the last `keep` ids again (step mode's undo of a reset)."""
        assert self._reading is None and self.prompt_read
        self._reading = ("reset", keep)
        with self.lock or nullcontext(), self._grad_mode():
            if isinstance(self.context, FastContext):
                self.took(fast.forward_reads(self.model, self.context.prime_reads(self.ids[-keep:])))
            else:
                self._took(self.context.prime(self.ids[-keep:]))

    def _grad_mode(self) -> AbstractContextManager:
        return torch.enable_grad() if self.settings.autograd else torch.inference_mode()

    def _stop_reason(self, token: int, rss_bytes: int) -> str | None:
        settings = self.settings
        if settings.stop_at_eos and token == self.tokenizer.eos_token_id:
            return "eos"
        return length_stop(settings, self.generated, lambda: self.tokenizer.decode([token])) or self.guard.check(
            rss_bytes
        )


def length_stop(settings: GenerationSettings, generated: int, piece: Callable[[], str]) -> str | None:
    """ "length" or "sentence_end" once `generated` tokens reach the length asked (with stop_at_sentence_end, at
    the first token whose text, `piece()`, ends a sentence, or sentence_end_max_extra tokens later), else None.
    The local Decoder and the remote engine stop by this one rule."""
    if generated < settings.max_new_tokens:
        return None
    if not settings.stop_at_sentence_end:
        return "length"
    if any(mark in piece() for mark in SENTENCE_ENDS):
        return "sentence_end"
    if generated >= settings.max_new_tokens + settings.sentence_end_max_extra:
        return "length"
    return None
