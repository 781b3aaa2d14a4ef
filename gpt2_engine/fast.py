"""The fast path: GPT-2's forward pass written over the model's own modules, with a pre-allocated KV cache.

Why: at batch 1 a token costs one read of every weight; Hugging Face's `DynamicCache` adds a
`torch.cat` of the whole cache per layer per token (measured: 48 ms of a 248 ms gpt2-xl token on
2 cores, growing with the context). Here keys and values are written in place into a cache made
once, and each layer is a handful of torch calls. The modules are the model's own (so int8 or
prepacked weights, swapped in by `quantize.py`, work here and in the reference path alike).

Rows: a cache can hold two rows. With a window N, the second row is a *shadow* context that starts
empty at each reset and takes every new token in the same batched step as the main row; at the
next reset it already holds the last N tokens at positions 0..N-1 and becomes the main row, so a
reset costs one ordinary decode step instead of an N-token prefill. The second row is not free,
though: on this project's CPU it cost more than the prefills it saves (README, Performance), so the
engine uses it only when asked (`engine.window_mode = "shadow"`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

PROMPT_CHUNK = 256  # tokens read in one forward pass: a 1024-token prompt reports progress 4 times
Progress = Callable[[int, int], None]  # (prompt tokens read so far, of how many)


class StaticKVCache:
    """Keys and values of `rows` contexts, allocated once: (layer, row, head, position, head_dim)."""

    def __init__(self, model: Any, rows: int):
        config = model.config
        dtype = model.transformer.wte.weight.dtype
        device = model.transformer.wte.weight.device
        self.head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, rows, config.n_head, config.n_positions, self.head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.lengths = [0] * rows  # tokens held by each row

    def bytes_per_token(self) -> int:
        layers, _, heads, _, head_dim = self.keys.shape
        return 2 * layers * heads * head_dim * self.keys.element_size()


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


def forward(model: Any, cache: StaticKVCache, rows: list[int], tokens: Tensor) -> Tensor:
    """Reads `tokens` (len(rows), T) into the given cache rows, each after what the row holds already,
    and returns the next-token logits of each row: (len(rows), vocab).

    Either one row and any T (a prefill, or a chunk of one after what the row holds), or any rows and
    T = 1 (a decode step)."""
    transformer = model.transformer
    n_rows, T = tokens.shape
    starts = [cache.lengths[r] for r in rows]
    assert T == 1 or n_rows == 1, "a prefill (chunk) is one row; several rows decode one token each"
    mask = None
    if T > 1 and starts[0] > 0:  # a later chunk: token t sees what the row held and the chunk up to t
        mask = torch.ones(T, starts[0] + T, dtype=torch.bool, device=tokens.device).tril(diagonal=starts[0])
    positions = torch.tensor([[s + t for t in range(T)] for s in starts], device=tokens.device)  # (R, T)
    x = transformer.wte(tokens) + transformer.wpe(positions)  # (R, T, E)
    n_head, head_dim = cache.keys.shape[2], cache.head_dim
    ends = [s + T for s in starts]
    for layer, block in enumerate(transformer.h):
        qkv = block.attn.c_attn(block.ln_1(x))  # (R, T, 3E): the weights are read once for all rows
        q, k, v = (
            t.view(n_rows, T, n_head, head_dim).transpose(1, 2) for t in qkv.split(x.shape[-1], dim=2)
        )  # (R, H, T, D)
        ys = []
        for i, (row, start, end) in enumerate(zip(rows, starts, ends)):
            cache.keys[layer, row, :, start:end] = k[i]
            cache.values[layer, row, :, start:end] = v[i]
            # attention per row, over exactly the positions it holds: never a read of unwritten cache
            keys, values = (
                cache.keys[layer, row, None, :, :end],
                cache.values[layer, row, None, :, :end],
            )  # (1, H, end, D)
            ys.append(
                F.scaled_dot_product_attention(q[i : i + 1], keys, values, attn_mask=mask, is_causal=T > 1 and mask is None)
            )  # (1, H, T, D)
        y = ys[0] if n_rows == 1 else torch.cat(ys)  # (R, H, T, D)
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(n_rows, T, -1))
        x = x + block.mlp(block.ln_2(x))
    for row, end in zip(rows, ends):
        cache.lengths[row] = end
    return model.lm_head(transformer.ln_f(x[:, -1]))  # (R, vocab)


class FastContext:
    """The `Context` of generation.py on the fast forward; with `window`, a shadow row spares each reset its prefill."""

    def __init__(self, model: Any, window: int | None = None):
        assert supports(model.config), unsupported_reason(model.config)  # load() refuses such models
        self.model = model
        self.device = model.transformer.wte.weight.device
        self.shadowed = window is not None
        self.cache = StaticKVCache(model, rows=2 if self.shadowed else 1)
        self.main, self.shadow = 0, 1
        self.shadow_ids: list[int] = []  # what the shadow row holds: every token since the last reset
        self.length = 0
        self.resets_by_shadow = 0  # how many primes the shadow row answered without a prefill

    def _ids(self, ids: list[int]) -> Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def prime(self, ids: list[int], progress: Progress | None = None) -> Tensor:
        if self.shadowed and self.shadow_ids == ids[:-1]:
            # the shadow holds all but the newest token: one decode step of both rows, then swap roles
            logits = forward(self.model, self.cache, [self.main, self.shadow], self._ids([ids[-1], ids[-1]]).T)[1]
            self.main, self.shadow = self.shadow, self.main
            self.resets_by_shadow += 1
        else:
            self.cache.lengths[self.main] = 0
            for start in range(0, len(ids), PROMPT_CHUNK):  # a long prompt in chunks, so progress can be told
                chunk = ids[start : start + PROMPT_CHUNK]
                logits = forward(self.model, self.cache, [self.main], self._ids(chunk))[0]
                if progress is not None:
                    progress(start + len(chunk), len(ids))
        if self.shadowed:
            self.cache.lengths[self.shadow], self.shadow_ids = 0, []
        self.length = self.cache.lengths[self.main]
        return logits

    def append(self, token_id: int) -> Tensor:
        assert self.length < self.model.config.n_positions, "position ids beyond the model's limit"
        if self.shadowed:
            logits = forward(self.model, self.cache, [self.main, self.shadow], self._ids([token_id, token_id]).T)[0]
            self.shadow_ids.append(token_id)
        else:
            logits = forward(self.model, self.cache, [self.main], self._ids([token_id]))[0]
        self.length = self.cache.lengths[self.main]
        return logits

    def truncate(self, tokens: int) -> None:
        """Forgets the last `tokens` tokens of the main row (step mode's undo); the cache keeps no shadow then."""
        assert not self.shadowed and 0 <= tokens <= self.length
        self.cache.lengths[self.main] -= tokens
        self.length = self.cache.lengths[self.main]

    def kv_bytes(self) -> int:
        """Bytes of keys and values held: the main row and, with a window, the shadow row."""
        held = self.length + (self.cache.lengths[self.shadow] if self.shadowed else 0)
        return held * self.cache.bytes_per_token()
