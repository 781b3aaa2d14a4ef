"""The fast path: GPT-2's forward pass written over the model's own modules, with a pre-allocated KV cache.

Why: at batch 1 a token costs one read of every weight; Hugging Face's `DynamicCache` adds a
`torch.cat` of the whole cache per layer per token, a cost that grows with the context (the benchmark's
generate() rows show it). Here keys and values are written in place into a cache made
once, and each layer is a handful of torch calls. The modules are the model's own (so int8 or
prepacked weights, swapped in by `quantize.py`, work here and in the reference path alike).

Rows: a cache can hold two rows. With a window N, the second row is a *shadow* context: near a reset that the
run will reach, it reads the tokens since the last reset, a few at a time, in the same forward passes as the
main row; at the reset it holds the last N tokens at positions 0..N-1 but a few, reads those, and becomes the
main row, so a reset costs one ordinary step instead of an N-token prefill. It starts as late as its pace allows
(at 3/4 of the window when it reads 4 tokens a step) and not at all when the run ends before the next reset, so
the cache holds what the run needs: a window as long as the run holds what off holds. What the extra rows cost
depends on the kernel (almost nothing with q8's integer one on AVX-512), so `auto` measures how many tokens
the shadow reads a step (autotune.Choice.shadow_chunk).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Generator
from typing import Any, Literal, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .threads import policy_for

SHADOW_CHUNK = 4  # tokens the shadow row reads at a time, beside a main-row step, unless `auto` measured a
# better number here (autotune.Choice.shadow_chunk): 5 rows cost about 1 in q8's integer kernel on AVX-512
Progress = Callable[[int, int], None]  # (prompt tokens read so far, of how many)


class StaticKVCache:
    """Keys and values of `rows` contexts, each row allocated once as its own block: (layer, head, position, head_dim).

    `positions`: the most tokens a row will hold (the model's limit by default; a window's bound is smaller), for
    every row or one per row. Pages are touched only as positions are written, but a row's positions are contiguous
    per head, so a row sized to what it can hold turns every page it touches into keys and values; and a row can be
    made again smaller (`resize`) once it holds less, which hands its pages back (a block of 1 MB or more is mapped
    on its own: memory.MMAP_FROM_BYTES). So the process's memory follows the KV cache the window allows."""

    def __init__(self, model: Any, rows: int, positions: int | list[int] | None = None):
        config = model.config
        self.dtype = model.transformer.wte.weight.dtype
        self.device = model.transformer.wte.weight.device
        self.n_positions = config.n_positions
        self.head_dim = config.n_embd // config.n_head
        self.layout = (config.n_layer, config.n_head)
        sizes = positions if isinstance(positions, list) else [positions or config.n_positions] * rows
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        for size in sizes:
            self.keys.append(self._block(size))
            self.values.append(self._block(size))
        self.lengths = [0] * rows  # tokens held by each row

    def _block(self, positions: int) -> Tensor:
        layers, heads = self.layout
        shape = (layers, heads, min(positions, self.n_positions), self.head_dim)
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def capacity(self, row: int) -> int:
        return self.keys[row].shape[2]

    def resize(self, row: int, positions: int) -> None:
        """Makes an empty row's block anew for `positions` tokens (the old block is freed first)."""
        assert self.lengths[row] == 0, "only an empty row is made anew"
        self.keys[row] = self.values[row] = torch.empty(0)
        self.keys[row], self.values[row] = self._block(positions), self._block(positions)

    def bytes_per_token(self) -> int:
        layers, heads = self.layout
        return 2 * layers * heads * self.head_dim * self.keys[0].element_size()


def unsupported_reason(config: Any) -> str | None:
    """The fast forward implements GPT-2's standard attention only: what in `config` would change it, or None."""
    if not config.scale_attn_weights:
        return "scale_attn_weights is off"
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if getattr(config, flag, False):
            return f"{flag} is on"
    return None


def supports(config: Any) -> bool:
    return unsupported_reason(config) is None


@functools.cache
def activation(name: str) -> Callable[[Tensor], Tensor]:
    """GPT-2's MLP activation (config.activation_function) as one kernel: transformers writes gelu_new as
    seven element-wise operations, each a launch per layer and token (the same function, to float rounding)."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return functools.partial(F.gelu, approximate="tanh")
    from transformers.activations import ACT2FN

    return ACT2FN[name]


Segment = tuple[int, list[int]]  # (a cache row, token ids to read into it after what it holds)
Kind = Literal["step", "shadow", "prompt", "reprime"]
PIECED: tuple[Kind, ...] = ("prompt", "reprime")  # the kinds a batch reads a piece at a time (batching.plan)


class Read(NamedTuple):
    """Token ids to read into `row` of `cache`, after what the row holds; one pass can read many runs' caches.
    `kind` says what they are, where they are made: "step" (a decode step's newest token), "shadow" (the window's
    shadow row reading ahead, beside a step), "prompt" (a run's phrase) or "reprime" (a window's reset read in one
    go). A batch cuts only the PIECED kinds into pieces, and the thread policy tries counts on passes without them."""

    cache: StaticKVCache
    row: int
    ids: list[int]
    kind: Kind = "step"


Passes = Generator[list[Read], Tensor, Tensor]  # the forward passes an operation needs: it yields each pass's
# reads, is sent their logits ((reads, vocab)), and returns the next-token logits it was after
Done = TypeVar("Done")  # what an operation's passes return (Passes: the logits; a decoder's reads: None)


def forward(model: Any, cache: StaticKVCache, segments: list[Segment]) -> Tensor:
    """Reads each segment's tokens into its row of `cache`, after what the row holds already, and returns the
    next-token logits after each segment's last token: (len(segments), vocab). See `forward_reads`."""
    return forward_reads(model, [Read(cache, row, ids, "prompt") for row, ids in segments])


def forward_reads(model: Any, reads: list[Read]) -> Tensor:
    """Reads each read's tokens into its cache row, after what the row holds already, and returns the
    next-token logits after each read's last token: (len(reads), vocab).

    All the reads' tokens go through each matrix together, so the weights are read once for all of them:
    a prompt, a chunk of one, a decode step, a decode step with the shadow row's pending tokens beside it, or
    the decode steps (and a newcomer's prompt) of every run in a batch (batching.py), each in its own cache.
    Attention is per read, over its own row only: a row never sees another's tokens. The pass runs with the
    thread count the model's thread policy gives it (threads.policy_for; and teaches it what that count cost)."""
    steps_only = not any(read.kind in PIECED for read in reads)  # a pass of steps (and shadows) only
    with policy_for(model).run_pass(sum(len(read.ids) for read in reads), may_try=steps_only):
        return _forward_reads(model, reads)


def _forward_reads(model: Any, reads: list[Read]) -> Tensor:
    transformer = model.transformer
    act = activation(model.config.activation_function)
    device = transformer.wte.weight.device
    starts = [read.cache.lengths[read.row] for read in reads]
    sizes = [len(read.ids) for read in reads]
    tokens = torch.tensor([t for read in reads for t in read.ids], device=device)  # (N,)
    positions = torch.tensor([start + t for start, n in zip(starts, sizes) for t in range(n)], device=device)
    x = transformer.wte(tokens) + transformer.wpe(positions)  # (N, E)
    n_head, head_dim = model.config.n_head, model.config.n_embd // model.config.n_head
    masks = [_causal_mask(start, n, device) for start, n in zip(starts, sizes)]
    for layer, block in enumerate(transformer.h):
        qkv = block.attn.c_attn(block.ln_1(x))  # (N, 3E): the weights are read once for every token
        q, k, v = (t.view(-1, n_head, head_dim).transpose(0, 1) for t in qkv.split(x.shape[-1], dim=1))  # (H, N, D)
        ys, offset = [], 0
        for (cache, row, *_), start, n, mask in zip(reads, starts, sizes, masks):
            end = start + n
            cache.keys[row][layer, :, start:end] = k[:, offset : offset + n]
            cache.values[row][layer, :, start:end] = v[:, offset : offset + n]
            # attention per read, over exactly the positions its row holds: never a read of unwritten cache
            ys.append(
                F.scaled_dot_product_attention(
                    q[None, :, offset : offset + n],
                    cache.keys[row][layer, None, :, :end],
                    cache.values[row][layer, None, :, :end],
                    attn_mask=mask,
                    is_causal=mask is None and n > 1,
                )[0]
            )  # (H, n, D)
            offset += n
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)  # (H, N, D)
        x = x + block.attn.c_proj(y.transpose(0, 1).reshape(x.shape))
        x = x + block.mlp.c_proj(act(block.mlp.c_fc(block.ln_2(x))))
    for (cache, row, *_), start, n in zip(reads, starts, sizes):
        cache.lengths[row] = start + n
    last = torch.tensor(list(itertools.accumulate(sizes)), device=device) - 1
    return model.lm_head(transformer.ln_f(x[last]))  # (reads, vocab)


def run_passes(model: Any, passes: Generator[list[Read], Tensor, Done]) -> Done:
    """Does an operation's passes one by one, alone (no other run beside it); returns what they return (the
    logits of fast.Passes)."""
    try:
        reads = next(passes)
        while True:
            reads = passes.send(forward_reads(model, reads))
    except StopIteration as done:
        return done.value


def _causal_mask(start: int, n: int, device: torch.device) -> Tensor | None:
    """None where SDPA's own is_causal is right (one token, or a row read from position 0); else token t of
    the segment sees what the row held and the segment up to t."""
    if n == 1 or start == 0:
        return None
    return torch.ones(n, start + n, dtype=torch.bool, device=device).tril(diagonal=start)


class FastContext:
    """The `Context` of generation.py on the fast forward; with `window`, a shadow row spares each reset its prefill.

    Near a reset (`append_passes`' `reset_in`), the shadow row takes the tokens since the last reset a few at a
    time (`shadow_chunk`), beside the main row's token in the same forward pass, so that it holds them when the
    reset comes: the reset is then one ordinary step of the shadow row's last few tokens, and the shadow becomes
    the main row. Until then the shadow row holds nothing, and its block is not allocated."""

    def __init__(
        self,
        model: Any,
        window: int | None = None,
        positions: int | None = None,
        shadow_chunk: int = SHADOW_CHUNK,
        keep: int | None = None,
    ):
        """`window`: keep a shadow row for this window; `positions`: the most tokens a row will hold (see
        StaticKVCache); `shadow_chunk`: tokens the shadow row reads at a time; `keep`: the run's window (default
        `window`), so that after a re-prime a row that held a long prompt is made again at the window's size."""
        assert supports(model.config), unsupported_reason(model.config)  # load() refuses such models
        assert shadow_chunk >= 1
        self.model = model
        self.window = window
        self.keep = keep if keep is not None else window
        self.primed = False  # the first prime is the prompt's: its row is sized for it already
        self.shadowed = window is not None
        self.shadow_chunk = shadow_chunk
        main = min(positions or model.config.n_positions, model.config.n_positions)
        # the shadow row's block is made when it starts reading (`_shadow_reads`), and freed when a reset hands it on
        sizes = [main, 0] if window is not None else [main]
        self.cache = StaticKVCache(model, rows=len(sizes), positions=sizes)
        self.main, self.shadow = 0, 1
        self.shadow_ids: list[int] = []  # every token since the last reset: those the shadow row holds ...
        self.pending: list[int] = []  # ... followed by these, which it has not read yet
        self.length = 0
        self.resets_by_shadow = 0  # how many primes the shadow row answered without a prefill

    def prime(self, ids: list[int], progress: Progress | None = None) -> Tensor:
        return run_passes(self.model, self.prime_passes(ids, progress))

    def append(self, token_id: int) -> Tensor:
        return run_passes(self.model, self.append_passes(token_id))

    def prime_passes(self, ids: list[int], progress: Progress | None = None) -> Passes:
        """`prime` as a pass (see `Passes`), so that a batch can read it beside other runs' steps: the run's phrase
        ("prompt") or a window's reset ("reprime") as one read, which the batch (or `run_passes`) reads a piece at a
        time; or, where the shadow row holds all but the newest token, those few ("shadow"). `progress` is told
        once it is read."""
        if self.shadowed and self.shadow_ids + self.pending == ids[:-1]:
            # the shadow holds (or is owed) all but the newest token: read those, then swap roles
            self._make_shadow_row()  # if a reset comes that the run did not expect to reach
            logits = (yield [Read(self.cache, self.shadow, [*self.pending, ids[-1]], "shadow")])[0]
            self.main, self.shadow = self.shadow, self.main
            self.resets_by_shadow += 1
        else:
            self.cache.lengths[self.main] = 0
            if self.primed and self.keep is not None:  # a window's re-prime: what the row holds until the next one
                bound = max(len(ids), self.keep) + self.keep
                if self.cache.capacity(self.main) > bound:  # it held a long prompt: hand the rest back
                    self.cache.resize(self.main, bound)
            assert len(ids) <= self.cache.capacity(self.main), "the window logic keeps a prime within the cache"
            logits = (yield [Read(self.cache, self.main, ids, "reprime" if self.primed else "prompt")])[0]
            if progress is not None:
                progress(len(ids), len(ids))
        if self.window is not None:  # the other row (the old main one) holds nothing until the next reset is near
            self.cache.lengths[self.shadow], self.shadow_ids, self.pending = 0, [], []
            if self.cache.capacity(self.shadow):
                self.cache.resize(self.shadow, 0)
        self.primed = True
        self.length = self.cache.lengths[self.main]
        return logits

    def append_passes(self, token_id: int, reset_in: int | None = 0) -> Passes:
        """`append` as a pass (see `Passes`). `reset_in`: how many appends follow this one before the window's
        next reset (a `prime` of the last `window` ids); None when the run ends before it, so no shadow is read."""
        assert self.length < self.cache.capacity(self.main), "position ids beyond what this cache holds"
        reads: list[Read] = [Read(self.cache, self.main, [token_id], "step")]
        if self.shadowed:
            self.pending.append(token_id)
            reads += self._shadow_reads(reset_in)
        logits = (yield reads)[0]
        self.length = self.cache.lengths[self.main]
        return logits

    def _shadow_reads(self, reset_in: int | None) -> list[Read]:
        """The shadow row's read beside this step, if any: a chunk of its pending tokens, once the reset is near
        enough that reading a chunk a step from now on leaves at most a chunk for the reset's own pass."""
        chunk, pending = self.shadow_chunk, self.pending
        if reset_in is None or len(pending) < chunk or (chunk - 1) * reset_in > len(pending):
            return []  # no reset to come, or not yet near: the row stays empty (and unallocated)
        self._make_shadow_row()
        self.shadow_ids, self.pending = self.shadow_ids + pending[:chunk], pending[chunk:]
        return [Read(self.cache, self.shadow, pending[:chunk], "shadow")]

    def _make_shadow_row(self) -> None:
        """Allocates the (empty) shadow row's block if it has none: once it is the main row, it holds the window
        and what follows it."""
        assert self.window is not None
        size = min(2 * self.window, self.cache.n_positions)
        if self.cache.capacity(self.shadow) < size:
            self.cache.resize(self.shadow, size)

    def truncate(self, tokens: int) -> None:
        """Forgets the last `tokens` tokens of the main row (step mode's undo); the cache keeps no shadow then."""
        assert not self.shadowed and 0 <= tokens <= self.length
        self.cache.lengths[self.main] -= tokens
        self.length = self.cache.lengths[self.main]

    def kv_bytes(self) -> int:
        """Bytes of keys and values held: the main row and, with a window, the shadow row."""
        return self.length * self.cache.bytes_per_token() + self.read_ahead_bytes()

    def read_ahead_bytes(self) -> int:
        """Bytes of keys and values the shadow row holds: the next window, read ahead of its reset."""
        return self.cache.lengths[self.shadow] * self.cache.bytes_per_token() if self.shadowed else 0
