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
(at 3/4 of the window when it reads 4 tokens a step, in the last few steps when it reads 15) and not at all when
the run ends before the next reset, so the cache holds what the run needs: a window as long as the run holds what
off holds. What the extra rows cost depends on the kernel (with q8 on gpt2-xl's shape: 4 tokens beside a step add
a third of it, 15 add half, through the prompt kernel), so `auto` measures how many tokens the shadow reads a step
(autotune.Choice.shadow_chunk).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fused_step
from .threads import policy_for
from .window import Window

SHADOW_CHUNK = 4  # tokens the shadow row reads at a time, beside a main-row step, unless `auto` measured a
# better number here (autotune.Choice.shadow_chunk) or q8 keeps its prompt kernel (generation.Engine.shadow_chunk)
LONG_CHUNK = 15  # the longest chunk measured: gpt2-xl's shape at q8, a step took 101 ms alone, 141 with 5 tokens
# beside it and 142 with 15 through the prompt kernel (183 through fbgemm): 3 ms a token read ahead against 8
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
    seven element-wise operations, each a launch per layer and token (the same function, to float rounding).
    GELU's runs in place: its input is the MLP's own intermediate, and a prompt's is megabytes that would
    otherwise be mapped afresh (memory.MMAP_FROM_BYTES) at every layer."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return functools.partial(torch.ops.aten.gelu_, approximate="tanh")
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
    with policy_for(model).run_pass(sum(len(read.ids) for read in reads), may_try=steps_only(reads)):
        return _forward_reads(model, reads)


def steps_only(reads: list[Read]) -> bool:
    """Whether a pass reads decode steps only: the thread policy may try another count on it. Beside a phrase's or
    a shadow's tokens, arithmetic that one thread fewer slows by half, it keeps its count (tried on three writers'
    steps and their shadows' 6 tokens while a phrase was read, one thread stretched their gap to 4.5x its median)."""
    return all(read.kind == "step" for read in reads)


def _forward_reads(model: Any, reads: list[Read]) -> Tensor:
    transformer = model.transformer
    device = transformer.wte.weight.device
    starts = [read.cache.lengths[read.row] for read in reads]
    sizes = [len(read.ids) for read in reads]
    tokens = torch.tensor([t for read in reads for t in read.ids], device=device)  # (N,)
    positions = torch.tensor([start + t for start, n in zip(starts, sizes) for t in range(n)], device=device)
    x = transformer.wte(tokens) + transformer.wpe(positions)  # (N, E)
    fused = fused_step.for_pass(model, sizes)
    if fused is not None:  # the loop below, in one call: the same bits, without Python between the operators
        keys, values = [read.cache.keys[read.row] for read in reads], [read.cache.values[read.row] for read in reads]
        x = fused(x, keys, values, starts, sizes)
    else:
        _layers(model, reads, starts, sizes, x)
    for (cache, row, *_), start, n in zip(reads, starts, sizes):
        cache.lengths[row] = start + n
    last = torch.tensor(list(itertools.accumulate(sizes)), device=device) - 1
    return model.lm_head(transformer.ln_f(x[last]))  # (reads, vocab)


def _layers(model: Any, reads: list[Read], starts: list[int], sizes: list[int], x: Tensor) -> None:
    """Every layer over the pass's tokens x (N, E), in place, each read's keys and values written into its row."""
    act = activation(model.config.activation_function)
    n_head, head_dim = model.config.n_head, model.config.n_embd // model.config.n_head
    masks = [_causal_mask(start, n, x.device) for start, n in zip(starts, sizes)]
    for layer, block in enumerate(model.transformer.h):
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
        x += block.attn.c_proj(y.transpose(0, 1).reshape(x.shape))  # in place: x is this pass's own
        x += block.mlp.c_proj(act(block.mlp.c_fc(block.ln_2(x))))


def _causal_mask(start: int, n: int, device: torch.device) -> Tensor | None:
    """None where SDPA's own is_causal is right (one token, or a row read from position 0); else token t of
    the segment sees what the row held and the segment up to t."""
    if n == 1 or start == 0:
        return None
    return torch.ones(n, start + n, dtype=torch.bool, device=device).tril(diagonal=start)


class FastContext:
    """The `Context` of decoding.py on the fast forward; with a window, a shadow row spares each reset its prefill.

    Each operation is two plain calls: `prime_reads(ids)` or `append_reads(token)` says what a forward pass must
    read (fast.Read), and `took(logits)` finishes it with that pass's logits. Whoever does the pass (`prime` and
    `append` here, alone; or the batch, beside other runs') sits between them.

    Near a reset (`append_reads`' `reset_in`), the shadow row takes the tokens since the last reset a few at a
    time (`shadow_chunk`), beside the main row's token in the same forward pass, so that it holds them when the
    reset comes: the reset is then one ordinary step of the shadow row's last few tokens, and the shadow becomes
    the main row. Until then the shadow row holds nothing, and its block is not allocated."""

    def __init__(
        self,
        model: Any,
        window: Window | None = None,
        shadow: bool = False,
        shadow_chunk: int = SHADOW_CHUNK,
        prompt_tokens: int | None = None,
    ):
        """`window`: the run's window (default off); `shadow`: keep a shadow row for it; `shadow_chunk`: tokens the
        shadow row reads at a time; `prompt_tokens`: the run's prompt, if known, so that the main row is sized to
        what the run can hold (window.Window.row_positions), else to the model's limit."""
        assert supports(model.config), unsupported_reason(model.config)  # load() refuses such models
        assert shadow_chunk >= 1 and not (shadow and (window is None or window.size is None))
        self.model = model
        self.window = window or Window(None, model.config.n_positions)
        self.shadowed = shadow
        self.shadow_chunk = shadow_chunk
        self.primed = False  # the first prime is the prompt's: its row is sized for it already
        # the shadow row's block is made when it starts reading (`_shadow_reads`), and freed when a reset hands it on
        main = self.window.row_positions(prompt_tokens) if prompt_tokens is not None else self.window.n_positions
        self.cache = StaticKVCache(model, rows=2 if shadow else 1, positions=[main, 0][: 1 + shadow])
        self.main, self.shadow = 0, 1
        self.shadow_ids: list[int] = []  # every token since the last reset: those the shadow row holds ...
        self.pending: list[int] = []  # ... followed by these, which it has not read yet
        self.length = 0
        self.resets_by_shadow = 0  # how many primes the shadow row answered without a prefill
        self._reading: Literal["prime", "shadow", "append"] | None = None  # the operation `took` finishes

    def prime(self, ids: list[int]) -> Tensor:
        """Drops what the cache holds and reads `ids` (one pass, alone); the logits after the last of them."""
        return self.took(forward_reads(self.model, self.prime_reads(ids)))

    def append(self, token_id: int) -> Tensor:
        """Reads one more token (one pass, alone); the logits after it."""
        return self.took(forward_reads(self.model, self.append_reads(token_id)))

    def prime_reads(self, ids: list[int]) -> list[Read]:
        """What a `prime` reads: the run's phrase ("prompt") or a window's reset ("reprime") as one read, which a
        batch reads a piece at a time; or, where the shadow row holds all but the newest token, those few
        ("shadow")."""
        assert self._reading is None, "one operation at a time"
        if self.shadowed and self.shadow_ids + self.pending == ids[:-1]:
            # the shadow holds (or is owed) all but the newest token: read those, then swap roles
            self._make_shadow_row()  # if a reset comes that the run did not expect to reach
            self._reading = "shadow"
            return [Read(self.cache, self.shadow, [*self.pending, ids[-1]], "shadow")]
        self.cache.lengths[self.main] = 0
        if self.primed:  # a window's re-prime: what the row holds until the next one
            bound = self.window.row_positions(len(ids))
            if self.cache.capacity(self.main) > bound:  # it held a long prompt: hand the rest back
                self.cache.resize(self.main, bound)
        assert len(ids) <= self.cache.capacity(self.main), "the window logic keeps a prime within the cache"
        self._reading = "prime"
        return [Read(self.cache, self.main, ids, "reprime" if self.primed else "prompt")]

    def append_reads(self, token_id: int, reset_in: int | None = 0, chunk: int | None = None) -> list[Read]:
        """What an `append` reads: the token, and the shadow row's read-ahead beside it where the reset is near.
        `reset_in`: how many appends follow this one before the window's next reset; None when the run ends before
        it, so no shadow is read. `chunk`: the most tokens the shadow reads this time, if fewer than `shadow_chunk`
        (a batch's scheduler says: scheduler.Scheduler.shadow_chunk)."""
        assert self._reading is None, "one operation at a time"
        assert self.length < self.cache.capacity(self.main), "position ids beyond what this cache holds"
        reads: list[Read] = [Read(self.cache, self.main, [token_id], "step")]
        if self.shadowed:
            self.pending.append(token_id)
            reads += self._shadow_reads(reset_in, min(self.shadow_chunk, chunk or self.shadow_chunk))
        self._reading = "append"
        return reads

    def took(self, logits: Tensor) -> Tensor:
        """Finishes the operation begun (`prime_reads`, `append_reads`) with its pass's logits, one row per read;
        returns the main row's next-token logits."""
        reading, self._reading = self._reading, None
        assert reading is not None, "took() follows prime_reads() or append_reads()"
        if reading == "shadow":
            self.main, self.shadow = self.shadow, self.main
            self.resets_by_shadow += 1
        if reading != "append":
            if self.shadowed:  # the other row (the old main one) holds nothing until the next reset is near
                self.cache.lengths[self.shadow], self.shadow_ids, self.pending = 0, [], []
                if self.cache.capacity(self.shadow):
                    self.cache.resize(self.shadow, 0)
            self.primed = True
        self.length = self.cache.lengths[self.main]
        return logits[0]

    def _shadow_reads(self, reset_in: int | None, chunk: int) -> list[Read]:
        """The shadow row's read beside this step, if any: a chunk of its pending tokens, once the reset is near
        enough that reading a chunk a step from now on leaves at most a chunk for the reset's own pass (a chunk of
        1 keeps pace from the window's first step)."""
        pending = self.pending
        if reset_in is None or len(pending) < chunk or (chunk - 1) * reset_in > len(pending):
            return []  # no reset to come, or not yet near: the row stays empty (and unallocated)
        self._make_shadow_row()
        self.shadow_ids, self.pending = self.shadow_ids + pending[:chunk], pending[chunk:]
        return [Read(self.cache, self.shadow, pending[:chunk], "shadow")]

    def _make_shadow_row(self) -> None:
        """Allocates the (empty) shadow row's block if it has none: once it is the main row, it holds the window
        and what follows it."""
        size = self.window.shadow_positions()
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
