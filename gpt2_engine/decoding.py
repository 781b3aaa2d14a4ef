"""One run's decoding: the state it needs, held explicitly, and the one step that turns logits into a `Step`.

As gpt-fast's `prefill` and `decode_one_token`, with the run's state in one object: the context (a row of
tokens and its KV cache), every id so far, the sampler's generator, the text stream, the window and the
memory guard. Step mode (stepping.py) is a Decoder plus undo and retune; `Engine.stream()` hands its decoders
to the batch (batching.py), which reads every run's pending tokens in one forward pass: `reads()` says what a
decoder needs read before its next step, as passes a batch can do beside other runs', and `step()` samples.
Alone, `step()` does those passes itself. Nothing here knows of `Engine`: a decoder needs a model and its
tokenizer only (and, shared with other users of the model, the lock that keeps its forward passes one at a time).

Window N (see docs/engine.md, "Window N"): after every N-th generated token the decoder re-primes: it drops the
cache and reads the last N ids of prompt + generated, in one batched forward pass, or, with the shadow row
(window_mode "shadow"), from a second cache row that read them on the way (fast.py). The model then holds at
most max(prompt, N) + N - 1 tokens. With the window off the whole context is kept until it reaches the
model's limit, then re-primed from the most recent half.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .context import Context, KVCacheContext
from .detokenize import REPLACEMENT, TextStream, byte_decoder
from .fast import SHADOW_CHUNK, FastContext, Progress, Read, run_passes
from .memory import available_bytes, read_process_memory, release_freed_memory
from .sampling import PICKERS, Distribution, distribution, draw, new_generator
from .settings import GenerationSettings
from .threads import policy_for

Reads = Generator[list[Read], Tensor, None]  # a decoder's passes before its next step (fast.Passes)
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
    def fit(
        cls, prompt: str, tokenize: Callable[[str], list[int]], eos_token_id: int, n_positions: int, window: int | None
    ) -> Prompt:
        """Token ids for a prompt: an empty prompt starts a fresh document (<|endoftext|>), and a prompt
        longer than the model allows keeps its most recent tokens (limit - N with window N on)."""
        text = str(prompt).encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> "?"
        ids = tokenize(text) if text else []
        if not ids:
            ids = [eos_token_id]
        dropped = max(0, len(ids) - (n_positions - (window or 0)))
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
    The fast path's cache is sized to what the run can hold: with window N, max(prompt, N) + N tokens a row."""
    if backend == "reference" or settings.autograd:
        return KVCacheContext(model)
    window = settings.window
    positions = max(prompt_tokens, window) + window if window is not None else None
    return FastContext(model, window if window_mode == "shadow" else None, positions, shadow_chunk, keep=window)


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
        self.n_positions: int = model.config.n_positions
        self.start = time.perf_counter()
        self.generator = new_generator(seed)
        self.text = TextStream(tokenizer)
        self.ids = list(prompt.ids)  # prompt + generated: the window re-primes from the tail of this
        self.held_from = 0  # the model holds ids[held_from:]
        self.reset = False  # the last read was a re-prime: the next Step says so
        self.unread = False  # the newest id is not read yet (step() reads it first)
        self.prompt_read = False
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
        """Reads what is not read yet (the prompt, or the newest token), alone: see `reads`."""
        if self.prompt_read and not self.unread:
            return
        with self.lock or nullcontext(), self._grad_mode():
            run_passes(self.model, self.reads())

    def reads(self) -> Reads:
        """The forward passes the next step needs first, as fast.Passes: the prompt (in chunks), or the newest
        token against the cache, or, when the window (or the model's limit) says so, a re-prime. None once read.
        A batch (batching.py) does them beside other runs'; a context without passes (transformers' own cache,
        tutorial mode) reads here, alone, with no pass to yield."""
        if not self.prompt_read:
            self.prompt_read = True
            self.logits = yield from self._read("prime", self.ids, self.on_prompt)
            return
        if not self.unread:
            return
        self.unread = False
        window = self.settings.window
        if window is not None and self.generated % window == 0:
            yield from self._reprime_reads(window)
        elif self.context.length + 1 > self.n_positions:  # window off and the context is full
            yield from self._reprime_reads(self.n_positions // 2)
        else:
            self.logits = yield from self._read("append", self.ids[-1], reset_in=self._reset_in())
            self.reset = False

    def _reset_in(self) -> int | None:
        """How many tokens are read after the newest before the window's next reset; None when the run ends first
        (it reads nothing ahead for a reset it will not reach), or when reading ahead would hold more than the
        window off ever holds in this run (the reset then reads the window in one pass, as a re-prime does)."""
        window, settings = self.settings.window, self.settings
        if window is None or not self.stops:
            return None if window is None else 0
        reset_at = (self.generated // window + 1) * window  # the reset is read once this many tokens are written
        last = settings.max_new_tokens + (settings.sentence_end_max_extra if settings.stop_at_sentence_end else 0)
        held = (len(self.prompt.ids) if reset_at == window else window) + window - 1  # the context, just before it
        off_holds = min(len(self.prompt.ids) + last, self.n_positions)  # the most the window off holds
        if reset_at >= last or held + window > off_holds:
            return None
        return reset_at - self.generated - 1

    def reprime(self, keep: int) -> None:
        """The window's reset: drops the cache and reads the last `keep` ids again."""
        with self.lock or nullcontext(), self._grad_mode():
            run_passes(self.model, self._reprime_reads(keep))

    def _reprime_reads(self, keep: int) -> Reads:
        self.logits = yield from self._read("prime", self.ids[-keep:])
        self.held_from, self.reset, self.unread = len(self.ids) - keep, True, False
        if self.settings.autograd:
            release_freed_memory()  # the dropped cache's graph is gone: let the chart show the drop

    def _read(self, operation: str, *args: Any, **fast: Any) -> Generator[list[Read], Tensor, Tensor]:
        """The context's `prime` or `append`, as passes where it has them (fast.FastContext, which is also told
        `fast`), else done here."""
        passes = getattr(self.context, f"{operation}_passes", None)
        if passes is None:
            with self._grad_mode():
                return getattr(self.context, operation)(*args)
        return (yield from passes(*args, **fast))

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
