"""Coherence: how likely the model finds a generated text when it reads all of it with its full context.

A run with a small window wrote each token seeing only the last few dozen; scoring the same tokens
with the whole text in view shows what that cost. The score is the mean log-likelihood of the
generated tokens (nats per token; closer to 0 is better) and its perplexity, exp(-mean). A text
longer than the model's positions is read in overlapping windows (stride = half the positions), so
every token is scored with at least half the model's context, as transformers' perplexity guide does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .generation import Engine
from .threads import POLICY


@dataclass(frozen=True)
class Coherence:
    tokens: int  # generated tokens scored
    mean_logprob: float  # nats per token, <= 0
    perplexity: float  # exp(-mean_logprob): "as unsure as a fair choice among this many tokens"


def coherence(
    engine: Engine,
    prompt_ids: Sequence[int],
    generated_ids: Sequence[int],
    stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Coherence:
    """Scores `generated_ids` after `prompt_ids` (the prompt gives context but is not scored)."""
    ids = list(prompt_ids) + list(generated_ids)
    first = max(len(prompt_ids), 1)  # the very first token has no context to be predicted from
    limit = engine.n_positions
    stride = stride or limit // 2
    total, count, done_until, begin = 0.0, 0, first, 0
    with torch.inference_mode():
        while True:
            end = min(begin + limit, len(ids))
            targets = range(max(done_until, begin + 1), end)  # positions scored in this window
            if len(targets):
                chunk = torch.tensor([ids[begin:end]], device=engine.device)
                with engine.lock:  # one forward pass at a time on the model: the batch's streams go on between
                    POLICY.apply()  # this thread computes with the count the engine measured fastest now
                    logits = engine.model(input_ids=chunk).logits[0].float()  # (T, vocab)
                rows = torch.tensor([t - begin - 1 for t in targets], device=logits.device)  # logits at t-1 predict t
                logprobs = torch.log_softmax(logits[rows], dim=-1)
                wanted = torch.tensor([ids[t] for t in targets], device=logits.device)
                total += float(logprobs.gather(1, wanted[:, None]).sum())
                count += len(targets)
                done_until = end
            if progress is not None:
                progress(count, max(0, len(ids) - first))
            if end == len(ids):
                break
            begin += stride
    mean = total / count if count else 0.0
    return Coherence(tokens=count, mean_logprob=mean, perplexity=math.exp(-mean) if count else float("nan"))
