"""The samplers against transformers' own logits processors, and against statistics that can fail."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from gpt2_engine import sampling
from gpt2_engine.sampling import (
    choose,
    distribution,
    draw,
    new_generator,
    nucleus_size,
    pick_tutorial,
    sort_descending,
)


def hf_kept_set(logits: torch.Tensor, top_p: float, top_k: int | None = None, temperature: float = 1.0) -> set[int]:
    scores = logits[None].float() / temperature
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    scores = TopPLogitsWarper(top_p)(None, scores)
    return set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())


@pytest.mark.parametrize("prefix", [16, 1024])  # 16: the set is found in a sorted prefix, or (larger) by a full sort
@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.7, 0.9, 0.99])
def test_nucleus_set_equals_transformers_top_p(top_p: float, prefix: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "SORTED_PREFIX", prefix)
    torch.manual_seed(0)
    for trial in range(200):
        logits = torch.randn(500) * (0.5 + trial % 5)  # flat to peaked distributions
        dist = distribution(logits, top_p=top_p)
        ours = set(dist.token_ids[: dist.nucleus_size].tolist())
        assert ours == hf_kept_set(logits, top_p), f"trial {trial}"
        assert dist.nucleus_mass >= top_p - 1e-6


def test_the_sorted_prefix_gives_what_a_full_sort_gives_over_gpt2s_vocabulary() -> None:
    """Same top-p set, same probabilities, same picks for the same draws, whether the set fits the prefix or not."""
    torch.manual_seed(2)
    generator = new_generator(2)
    in_prefix = 0
    for trial in range(60):
        logits = torch.randn(50257) * (1 + trial % 6)  # flat (the set spills past the prefix) to peaked
        top_p = (0.3, 0.7, 0.9, 0.95)[trial % 4]
        dist = distribution(logits, top_p=top_p)
        full, full_ids = torch.sort(torch.softmax(logits, dim=-1), descending=True, stable=True)
        kept = nucleus_size(full, top_p)
        assert dist.nucleus_size == kept and dist.size == 50257, f"trial {trial}"
        assert torch.equal(dist.token_ids[:kept], full_ids[:kept]) and torch.equal(dist.probs[:kept], full[:kept])
        for _ in range(5):
            u = draw(generator)
            whole = sampling.Distribution(full, full_ids, kept, 50257)
            assert sampling.pick_nucleus(dist, u) == sampling.pick_nucleus(whole, u)
            assert pick_tutorial(dist, u) == pick_tutorial(whole, u)
        in_prefix += len(dist.probs) == sampling.SORTED_PREFIX
    assert 10 < in_prefix < 60  # both ways were taken


def test_top_k_and_temperature_match_transformers() -> None:
    torch.manual_seed(1)
    for trial in range(100):
        logits = torch.randn(300) * 3
        dist = distribution(logits, temperature=0.7, top_k=20, top_p=0.8)
        ours = set(dist.token_ids[: dist.nucleus_size].tolist())
        assert ours == hf_kept_set(logits, 0.8, top_k=20, temperature=0.7), f"trial {trial}"
        assert torch.allclose(dist.probs.sum(), torch.tensor(1.0))


def test_nucleus_keeps_the_crossing_token() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    assert nucleus_size(probs, 0.5) == 1  # 0.5 reaches 0.5
    assert nucleus_size(probs, 0.7) == 2  # 0.5 < 0.7, 0.8 crosses it: the crossing token is kept
    assert nucleus_size(probs, 1.0) == 3
    assert nucleus_size(probs, 1e-9) == 1  # never empty


def test_nucleus_samples_by_weight() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    generator = new_generator(0)
    n = 20_000
    counts = [0, 0, 0]
    for _ in range(n):
        token, _ = choose(logits, "nucleus", draw(generator), top_p=0.85)  # keeps {0, 1}
        counts[token] += 1
    assert counts[2] == 0
    # expected 2/3 and 1/3 of the draws; 5 standard deviations is a bound that a wrong sampler fails
    sd = math.sqrt(n * (2 / 3) * (1 / 3))
    assert abs(counts[0] - n * 2 / 3) < 5 * sd


def test_tutorial_sampler_is_uniform_over_the_top_p_set() -> None:
    """Chi-square against uniform: a sampler that weights by probability fails this."""
    logits = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.05]))
    dist = distribution(logits, top_p=0.85)  # 0.4+0.25+0.15 = 0.80 < 0.85, + 0.1 crosses: 4 tokens
    assert dist.nucleus_size == 4
    generator = new_generator(1)
    n = 8_000
    counts = torch.zeros(6)
    for _ in range(n):
        counts[pick_tutorial(dist, draw(generator))] += 1
    assert counts[4:].sum() == 0
    expected = n / 4
    chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    # weighted sampling would give token 0 about 0.4/0.9 of the draws, far from 1/4
    assert abs(counts[0] / n - 0.25) < 0.03


def test_seeded_draws_repeat_and_leave_the_global_generator_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [draw(new_generator(42)) for _ in range(3)]
    a, b = new_generator(42), new_generator(42)
    assert [draw(a) for _ in range(5)] == [draw(b) for _ in range(5)]
    assert first[0] == first[1] == first[2]
    assert torch.equal(before, torch.get_rng_state())


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert choose(logits, "greedy", 0.999)[0] == 1


def test_the_vocabulary_sort_is_torchs_stable_sort_with_ties_by_token_id() -> None:
    flat = torch.softmax(torch.randn(50_257, generator=torch.Generator().manual_seed(3)) * 0.01, dim=-1)
    tied = torch.tensor([0.0, 0.25, 0.125, 0.25, 0.375, 0.0])
    for probs in (flat, tied, torch.tensor([1.0])):
        values, ids = sort_descending(probs)
        expected_values, expected_ids = torch.sort(probs, descending=True, stable=True)
        assert torch.equal(values, expected_values) and torch.equal(ids, expected_ids)
    assert sort_descending(tied)[1].tolist() == [4, 1, 3, 2, 0, 5]
    # a flat distribution's top-p set is beyond the sorted prefix: the whole vocabulary is sorted
    dist = distribution(torch.log(flat), top_p=0.9)
    assert dist.size == dist.probs.numel() == 50_257 and dist.nucleus_size > 1024
