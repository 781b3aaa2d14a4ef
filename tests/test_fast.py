"""Every fast path against the plain one: the static-cache forward, the shadow window, int8 and bf16 weights."""

from __future__ import annotations

import pytest
import torch
from conftest import runs_here

import gpt2_engine
from gpt2_engine.context import KVCacheContext
from gpt2_engine.fast import FastContext
from gpt2_engine.window import Window


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def run(engine, backend: str, window_mode: str = "shadow", **settings) -> list:
    return list(engine.stream("The cat sat on the mat", backend=backend, window_mode=window_mode, **settings))


def test_fast_forward_logits_equal_transformers(engine) -> None:
    ids = engine.tokenizer.encode("The cat sat on the mat. Hello world!")
    with torch.inference_mode():
        context = FastContext(engine.model)
        torch.testing.assert_close(context.prime(ids[:5]), full_logits(engine.model, ids[:5]), rtol=1e-4, atol=1e-4)
        for n in range(6, len(ids) + 1):
            torch.testing.assert_close(
                context.append(ids[n - 1]), full_logits(engine.model, ids[:n]), rtol=1e-4, atol=1e-4
            )


@pytest.mark.parametrize("name", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_the_activation_is_transformers_own_in_one_kernel(name) -> None:
    """GPT-2's activation as fast.py runs it: transformers' function to float rounding; GELU's in place (the MLP's
    own intermediate), any other as transformers runs it."""
    from transformers.activations import ACT2FN

    from gpt2_engine.fast import activation

    x = torch.randn(64, 256) * 4
    expected = ACT2FN[name](x.clone())
    given = x.clone()
    got = activation(name)(given)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got.data_ptr() == given.data_ptr()) == name.startswith("gelu")


@pytest.mark.parametrize("sampler", ["nucleus", "tutorial", "greedy"])
@pytest.mark.parametrize("window", [None, 1, 7, 32])
def test_fast_and_reference_backends_make_the_same_tokens(engine, sampler, window) -> None:
    settings = dict(max_new_tokens=150, window=window, seed=21, sampler=sampler, stop_at_eos=False)
    fast = [s.token_id for s in run(engine, "fast", **settings)]
    assert fast == [s.token_id for s in run(engine, "reference", **settings)]
    assert fast == [s.token_id for s in run(engine, "fast", "reprime", **settings)]


@pytest.mark.parametrize("window", [1, 4, 16])
def test_shadow_reset_equals_a_fresh_prime_of_the_last_n_ids(engine, window) -> None:
    prompt_ids = engine.tokenizer.encode("The cat sat on the mat")
    generated = engine.tokenizer.encode(" Hello world! Is it raining? Yes, it is. Once upon a time") * 3
    with torch.inference_mode():
        context = FastContext(engine.model, Window(window, engine.n_positions), shadow=True)
        context.prime(prompt_ids)
        ids = list(prompt_ids)
        for k, token in enumerate(generated, start=1):
            ids.append(token)
            if k % window == 0:
                logits = context.prime(ids[-window:])
                torch.testing.assert_close(logits, full_logits(engine.model, ids[-window:]), rtol=1e-4, atol=1e-4)
            else:
                context.append(token)
    assert context.resets_by_shadow == len(generated) // window  # no reset needed a prefill


def test_shadow_kv_bytes_count_both_rows(engine) -> None:
    steps = run(engine, "fast", max_new_tokens=40, window=8, seed=0, stop_at_eos=False)
    per_token = engine.kv_bytes_per_token
    for step in steps:
        shadow_tokens = step.kv_bytes // per_token - step.context_tokens
        assert step.kv_bytes % per_token == 0 and 0 <= shadow_tokens <= 8 - 1


def agreement(model_a, model_b, ids: list[int]) -> tuple[float, float]:
    """Teacher-forced over `ids`: top-1 agreement and mean KL(a || b) of the next-token distributions."""
    with torch.inference_mode():
        a = model_a(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        b = model_b(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    kl = float((a.exp() * (a - b)).sum(-1).mean())
    return top1, kl


# Stated tolerances on the tiny model: a broken kernel (wrong scale, transposed weight) fails these by far.
PRECISION_BOUNDS = {"bf16": (0.95, 0.01), "int8": (0.90, 0.03), "q8": (0.90, 0.03)}


@pytest.mark.parametrize("precision", runs_here("bf16", "int8", "q8"))
def test_low_precisions_agree_with_fp32(tiny_model_dir, engine, precision) -> None:
    low = gpt2_engine.load(str(tiny_model_dir), dtype=precision, device="cpu")
    assert low.precision == precision
    ids = engine.tokenizer.encode(" ".join(["The cat sat on the mat. Hello world! Once upon a time"] * 4))
    top1, kl = agreement(engine.model, low.model, ids)
    min_top1, max_kl = PRECISION_BOUNDS[precision]
    assert top1 >= min_top1 and kl <= max_kl, (top1, kl)
    # and its fast path matches its own reference path
    prompt = ids[:10]
    with torch.inference_mode():
        fast = FastContext(low.model).prime(prompt).float()
        reference = KVCacheContext(low.model).prime(prompt).float()
    torch.testing.assert_close(fast, reference, rtol=0.05, atol=0.05)
    assert len(list(low.stream("Hi", max_new_tokens=20, window=4, seed=0, stop_at_eos=False))) == 20


def test_int8_holds_a_quarter_of_the_fp32_matrices(tiny_model_dir, engine) -> None:
    low = gpt2_engine.load(str(tiny_model_dir), dtype="int8", device="cpu")
    expected = low.shape.weight_bytes("int8")
    assert abs(low.weight_bytes - expected) / expected < 0.02
    assert low.weight_bytes < engine.weight_bytes * 0.7
