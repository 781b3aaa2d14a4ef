"""What the model holds: a row of tokens and their key/value cache, behind two calls.

`prime(ids)` drops whatever was held and reads `ids` in one batched forward pass; `append(token)`
reads one more token against the cache. Both return the logits for the next token. The window
logic in `decoding.py` is written against this interface (and the fast path's `FastContext`, which adds
the same two calls as reads a batch can share).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch
from torch import Tensor

from .threads import policy_for


class Context(Protocol):
    length: int  # tokens held (the positions the next token's key/value will follow)

    def prime(self, ids: list[int]) -> Tensor: ...  # (vocab,) logits after the last id; drops what was held

    def append(self, token_id: int) -> Tensor: ...  # (vocab,) logits after this token

    def kv_bytes(self) -> int: ...  # bytes held by the key/value cache


class KVCacheContext:
    """Hugging Face's model with its own `DynamicCache`: the reference path every other one must match."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.length = 0
        # transformers renamed `past_key_values` to `cache` during 5.x; speak whichever this one knows
        self.cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _forward(self, ids: list[int]) -> Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        policy_for(
            self.model
        ).apply()  # the count the engine measured fastest now, in this thread (tutorial mode, the reference)
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_name: self.cache})
        self.cache = getattr(out, self.cache_name)
        self.length += len(ids)
        return out.logits[0, -1]  # (vocab,)

    def prime(self, ids: list[int]) -> Tensor:
        from transformers import DynamicCache

        assert 0 < len(ids) <= self.model.config.n_positions, "the window logic keeps the context under the limit"
        self.cache, self.length = DynamicCache(config=self.model.config), 0
        return self._forward(ids)  # in one pass, as the tutorial did

    def append(self, token_id: int) -> Tensor:
        assert self.length < self.model.config.n_positions, "position ids beyond the model's limit"
        return self._forward([token_id])

    def kv_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(
            t.numel() * t.element_size()
            for layer in self.cache.layers
            for t in (layer.keys, layer.values)
            if t is not None
        )
