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
from .threads import passing, policy_for


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
    while True:
        end = min(begin + limit, len(ids))
        targets = range(max(done_until, begin + 1), end)  # positions scored in this window
        if len(targets):
            # one forward pass at a time on the model (the batch's streams go on between); in a passing thread, so
            # that this one keeps no OpenMP pool
            with engine.lock:
                total += passing(_summed_logprob, engine, ids[begin:end], targets.start - begin)
            count += len(targets)
            done_until = end
        if progress is not None:
            progress(count, max(0, len(ids) - first))
        if end == len(ids):
            break
        begin += stride
    mean = total / count if count else 0.0
    return Coherence(tokens=count, mean_logprob=mean, perplexity=math.exp(-mean) if count else float("nan"))


def _summed_logprob(engine: Engine, ids: Sequence[int], first: int) -> float:
    """The summed log-probability of `ids[first:]`, each read after those before it in one forward pass."""
    with torch.inference_mode():
        policy_for(engine.model).apply()  # this thread computes with the count the engine measured fastest now
        logits = engine.model(input_ids=torch.tensor([list(ids)], device=engine.device)).logits[0].float()  # (T, V)
        logprobs = torch.log_softmax(logits[first - 1 : len(ids) - 1], dim=-1)  # the logits at t-1 predict t
        wanted = torch.tensor(list(ids[first:]), device=logits.device)
        return float(logprobs.gather(1, wanted[:, None]).sum())


def window_logprobs(engine: Engine, ids: Sequence[int], window: int, prompt_tokens: int = 1) -> list[float]:
    """The log-probability of each of `ids[prompt_tokens:]` as a run with this window reads it: teacher-forced,
    with the window's resets (DESIGN.md, Window N). Before the first reset a token sees the prompt and every token
    since; a reset after each `window` tokens keeps the last `window` ids, so a token then sees `window` to
    `2 * window - 1` tokens, at positions counted from 0 again. The same numbers as `Step.logprob` in a run that
    wrote these tokens (tests/test_shipped_model.py checks it), computed many blocks to a forward pass."""
    n, p, total = window, prompt_tokens, len(ids)
    if n < 1 or p < 1 or p + n - 1 > engine.n_positions:
        raise ValueError(f"window {n} with a prompt of {p} tokens does not fit {engine.n_positions} positions")
    # (first input, first target, end of targets): targets t read ids[first input : t]
    blocks = [(0, p, min(p + n, total))]
    blocks += [(t0 - n, t0, min(t0 + n, total)) for t0 in range(p + n, total, n)]
    out = [0.0] * total
    rows_per_pass = max(1, 8192 // (2 * n))
    for group in _same_length(blocks, rows_per_pass):
        with engine.lock:  # in a passing thread, so that this one keeps no OpenMP pool (threads.passing)
            for t, value in passing(_block_logprobs, engine, ids, group):
                out[t] = value
    return out[p:]


def _block_logprobs(engine: Engine, ids: Sequence[int], group: list[tuple[int, int, int]]) -> list[tuple[int, float]]:
    """(t, log-probability of ids[t]) for each block (first input, first target, end of targets) of one length,
    read in one forward pass."""
    with torch.inference_mode():
        inputs = torch.tensor([list(ids[s : t1 - 1]) for s, _, t1 in group], device=engine.device)
        policy_for(engine.model).apply()
        logprobs = torch.log_softmax(engine.model(input_ids=inputs).logits.float(), dim=-1)  # (blocks, length, V)
        values: list[tuple[int, float]] = []
        for row, (s, t0, t1) in enumerate(group):
            at = torch.arange(t0, t1)
            wanted = torch.tensor([ids[t] for t in range(t0, t1)], device=logprobs.device)
            picked = logprobs[row, at - 1 - s].gather(1, wanted[:, None])[:, 0]
            values.extend(zip(range(t0, t1), picked.tolist(), strict=True))
        return values


def _same_length(blocks: list[tuple[int, int, int]], most: int):
    """The blocks in groups of at most `most` whose inputs have one length (one tensor each)."""
    group: list[tuple[int, int, int]] = []
    for block in blocks:
        if group and (len(group) == most or block[2] - block[0] != group[0][2] - group[0][0]):
            yield group
            group = []
        group.append(block)
    if group:
        yield group


def read_with_window(engine: Engine, ids: Sequence[int], window: int | None, prompt_tokens: int = 1) -> Coherence:
    """How well the model predicts `ids[prompt_tokens:]` reading them with this window (None: the whole context,
    as `coherence` reads a text): the held-out perplexity per window that bench.window_coherence prints."""
    if window is None:
        return coherence(engine, ids[:prompt_tokens], ids[prompt_tokens:])
    values = window_logprobs(engine, ids, window, prompt_tokens)
    mean = sum(values) / len(values) if values else 0.0
    return Coherence(tokens=len(values), mean_logprob=mean, perplexity=math.exp(-mean) if values else float("nan"))
