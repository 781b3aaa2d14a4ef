"""A pass's layers in one C++ call (fused_step.py): the same bits as fast.py's loop, for one run's step, a window's
step with its shadow's tokens, a batch's steps; used only where the step kernel reads every matrix, whole."""

from __future__ import annotations

import copy

import pytest
import torch
import two_runs

import gpt2_engine
from gpt2_engine import capabilities, fast, fused_step, step_kernel

pytestmark = pytest.mark.skipif(not capabilities.supported("cpu")["q8"].runs, reason="q8 does not run here")
needs_the_kernel = pytest.mark.skipif(bool(step_kernel.why_not()), reason=f"no step kernel: {step_kernel.why_not()}")


@pytest.fixture(scope="module")
def q8_engine(tiny_model_dir) -> gpt2_engine.Engine:
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(step_kernel, "FORCED", True)
        return gpt2_engine.load(str(tiny_model_dir), dtype="q8")


def primed_caches(engine, phrases: list[str]) -> fast.StaticKVCache:
    """One cache row per phrase, each holding its phrase (read by fast.py's loop: a prompt is never fused)."""
    cache = fast.StaticKVCache(engine.model, len(phrases))
    ids = [engine.tokenizer.encode(phrase) for phrase in phrases]
    fast.forward_reads(engine.model, [fast.Read(cache, row, row_ids, "prompt") for row, row_ids in enumerate(ids)])
    return cache


@needs_the_kernel
@pytest.mark.parametrize(
    "sizes",
    [[1], [1, 1, 1], [1] * step_kernel.MOST, [1, 3], [2, 2, 2, 2], [5]],  # steps; a step and a shadow's few tokens
    ids=["a step", "3 steps", "8 steps", "a step and a shadow's 3", "4 reads of 2", "5 tokens"],
)
@pytest.mark.parametrize("primed", [True, False])  # rows that hold a phrase (a mask), or nothing (causal from 0)
def test_a_pass_through_the_fused_layers_gives_the_loops_bits(q8_engine, sizes, primed, monkeypatch) -> None:
    """Reads at different positions (so each attends over its own length) in one pass: the logits, the keys and
    values written, and the rows' lengths are the loop's exactly."""
    phrases = [("Hello there, " * (row + 1)).strip() for row in range(len(sizes))]
    cache = primed_caches(q8_engine, phrases) if primed else fast.StaticKVCache(q8_engine.model, len(sizes))
    twin = copy.deepcopy(cache)
    ids = [[11 + row + t for t in range(n)] for row, n in enumerate(sizes)]
    assert fused_step.for_pass(q8_engine.model, sizes) is not None
    with torch.inference_mode():
        fused = fast.forward_reads(q8_engine.model, [fast.Read(cache, r, i) for r, i in enumerate(ids)])
        monkeypatch.setattr(fused_step, "ENABLED", False)
        loop = fast.forward_reads(q8_engine.model, [fast.Read(twin, r, i) for r, i in enumerate(ids)])
    assert torch.equal(fused, loop)
    assert cache.lengths == twin.lengths
    for row in range(len(sizes)):
        held = cache.lengths[row]
        assert torch.equal(cache.keys[row][:, :, :held], twin.keys[row][:, :, :held])
        assert torch.equal(cache.values[row][:, :, :held], twin.values[row][:, :, :held])


@needs_the_kernel
def test_an_engine_writes_the_same_texts_fused_or_not_and_its_steps_are_fused(q8_engine, monkeypatch) -> None:
    """Two runs decoded together (two rows a pass), a window that resets, a long phrase read beside the steps: the
    texts of the loop, and the decode steps went through the fused layers."""
    calls: list[int] = []
    real = fused_step.FusedStep.__call__

    def counted(self, x, *rest):
        calls.append(x.shape[0])
        return real(self, x, *rest)

    monkeypatch.setattr(fused_step.FusedStep, "__call__", counted)
    fused = two_runs.together(q8_engine)
    assert {1, 2} <= set(calls), calls  # one run's steps, and both runs' in one pass
    monkeypatch.setattr(fused_step, "ENABLED", False)
    assert fused == two_runs.alone(q8_engine) == two_runs.together(q8_engine)


@needs_the_kernel
def test_only_passes_the_step_kernel_reads_whole_are_fused(q8_engine, tiny_model_dir) -> None:
    model = q8_engine.model
    for sizes in ([1], [1] * step_kernel.MOST, [1, 3], [step_kernel.MOST]):
        assert fused_step.for_pass(model, sizes) is not None, sizes
    for sizes in ([1] * (step_kernel.MOST + 1), [4, 5], [12]):  # more rows: fbgemm or the prompt kernel reads them
        assert fused_step.for_pass(model, sizes) is None, sizes
    fp32 = gpt2_engine.load(str(tiny_model_dir), dtype="fp32")
    assert fused_step.for_pass(fp32.model, [1]) is None
    assert not fused_step.fits(fp32.model)
    other = copy.copy(model)  # the same layers, another activation than the C++ applies
    other.config = copy.copy(model.config)
    other.config.activation_function = "relu"
    assert not fused_step.fits(other)


def test_without_the_step_kernel_every_pass_takes_the_loop(tiny_model_dir, monkeypatch) -> None:
    """What a CPU without VNNI (AVX2 only, ARM) or without a compiler loads: q8 read by fbgemm. Nothing is fused, and
    the texts are fbgemm's, whatever this CPU could do (the step kernel's decision forced to no)."""
    monkeypatch.setattr(step_kernel, "FORCED", False)
    engine = gpt2_engine.load(str(tiny_model_dir), dtype="q8")
    assert not engine.model.q8_scratch.step_kernel
    assert not fused_step.fits(engine.model)
    assert fused_step.for_pass(engine.model, [1]) is None
    calls: list[int] = []
    monkeypatch.setattr(fused_step.FusedStep, "__call__", lambda self, x, *rest: calls.append(x.shape[0]))
    monkeypatch.setattr(fused_step, "ENABLED", True)
    written = two_runs.alone(engine)
    assert not calls and all(len(tokens) == 30 for tokens in written)
