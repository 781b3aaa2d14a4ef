"""Pure functions that turn one row of next-token logits into a choice of token.

Order of operations, as in transformers' own logits processors: temperature, then top-k, then top-p.
Each pick consumes exactly one uniform draw `u` in [0, 1) (inverse-CDF sampling), so two runs with
the same seed use the same draw at the same step: where their distributions agree, so do their tokens.
This file knows nothing of models or caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# The top-p set is nearly always far smaller than the vocabulary, so the most likely tokens are found with
# topk and only they are sorted: far cheaper than sorting all 50,257 at every token.
# When the set is larger than this prefix, the whole vocabulary is sorted after all.
SORTED_PREFIX = 1024


@dataclass(frozen=True)
class Distribution:
    """The next-token distribution after temperature and top-k, most likely first: the `size` tokens it
    covers, of which `probs` holds the likeliest (all of them, or a prefix that holds the whole top-p set)."""

    probs: Tensor  # (n,) float32, descending
    token_ids: Tensor  # (n,) int64, the vocabulary id of each entry of probs
    nucleus_size: int  # how many of the first entries form the top-p set
    size: int  # how many tokens the distribution covers: the vocabulary, or top_k

    @property
    def nucleus_mass(self) -> float:
        """Probability mass of the top-p set (>= top_p, by construction)."""
        return float(self.probs[: self.nucleus_size].sum())


def distribution(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> Distribution:
    """Softmax of `logits / temperature` over the `top_k` most likely tokens, sorted, with its top-p set."""
    logits = logits.detach().reshape(-1).float().cpu()  # (V,) sampling is CPU work, whatever the device
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None and top_k < probs.numel():
        probs, token_ids = torch.topk(probs, top_k)  # sorted descending
        probs = probs / probs.sum()  # top-p then works on the renormalised top-k, as in transformers
        return Distribution(probs, token_ids, nucleus_size(probs, top_p), top_k)
    if probs.numel() > SORTED_PREFIX:
        head, head_ids = torch.topk(probs, SORTED_PREFIX)  # sorted descending
        kept = nucleus_size(head, top_p)
        if kept < SORTED_PREFIX:  # the mass before the prefix's last token reached top_p: the set ends inside
            return Distribution(head, head_ids, kept, probs.numel())
    probs, token_ids = sort_descending(probs)
    return Distribution(probs, token_ids, nucleus_size(probs, top_p), probs.numel())


def sort_descending(probs: Tensor) -> tuple[Tensor, Tensor]:
    """`probs` (non-negative, 1-D) sorted descending, ties by token id, with the ids. The bits of a non-negative
    float32 rise with its value, so one sort of int64 keys (value's bits, then id) does it: half the time of
    torch.sort's (values, indices) on the whole vocabulary, where a flat distribution's top-p set needs it
    (a random-weights model's nearly always)."""
    bits = probs.contiguous().view(torch.int32).numpy().astype(np.int64)
    keys = ((np.int64(0x7FFFFFFF) - bits) << 32) | np.arange(bits.size, dtype=np.int64)
    keys.sort()
    token_ids = torch.from_numpy(keys & 0xFFFFFFFF)
    return probs[token_ids], token_ids


def nucleus_size(sorted_probs: Tensor, top_p: float) -> int:
    """Size of the smallest prefix of `sorted_probs` whose mass reaches `top_p` (crossing token included)."""
    mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # mass of the tokens ahead of each
    return max(1, int((mass_before < top_p).sum()))


def pick_nucleus(dist: Distribution, u: float) -> int:
    """Standard top-p: one token of the set, drawn in proportion to its probability."""
    kept = torch.cumsum(dist.probs[: dist.nucleus_size].double(), dim=0)
    index = int(torch.searchsorted(kept, torch.tensor([u * float(kept[-1])], dtype=kept.dtype), right=True))
    return int(dist.token_ids[min(index, dist.nucleus_size - 1)])


def pick_tutorial(dist: Distribution, u: float) -> int:
    """The tutorial's sampler: one token of the top-p set, each equally likely whatever its weight."""
    return int(dist.token_ids[min(int(u * dist.nucleus_size), dist.nucleus_size - 1)])


def pick_greedy(dist: Distribution, u: float) -> int:
    """The most likely token; `u` is unused but still drawn, so seeds line up across samplers."""
    return int(dist.token_ids[0])


PICKERS = {"nucleus": pick_nucleus, "tutorial": pick_tutorial, "greedy": pick_greedy}


def choose(
    logits: Tensor, sampler: str, u: float, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> tuple[int, Distribution]:
    """Picks the next token from one row of logits; returns it with the distribution it came from."""
    dist = distribution(logits, temperature, top_k, top_p)
    return PICKERS[sampler](dist, u), dist


def new_generator(seed: int) -> torch.Generator:
    """A private CPU generator: a run's draws never touch (or depend on) torch's global RNG."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def draw(generator: torch.Generator) -> float:
    """One uniform number in [0, 1) from the run's own generator."""
    return float(torch.rand((), generator=generator, dtype=torch.float64))
