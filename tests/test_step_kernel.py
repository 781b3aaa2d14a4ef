"""q8's step kernel (step_kernel.py): built here for this CPU, it reads a decode step's few rows and gives fbgemm's
results bit for bit, so no text depends on which kernel read it. Both answers of the decision are tried here,
whatever this CPU would decide (step_kernel.FORCED forces one); where it cannot be built, the tests of it skip, saying
why, and fbgemm reads the steps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import two_runs

import gpt2_engine
from gpt2_engine import capabilities, q8, step_kernel
from gpt2_engine.q8 import Q8Linear, Scratch
from gpt2_engine.quantize import quantize_rows

pytestmark = pytest.mark.skipif(not capabilities.supported("cpu")["q8"].runs, reason="q8 does not run here")
needs_the_kernel = pytest.mark.skipif(bool(step_kernel.why_not()), reason=f"no step kernel: {step_kernel.why_not()}")


@needs_the_kernel
@pytest.mark.parametrize("rows", [*range(1, step_kernel.MOST + 2), 2 * step_kernel.MOST + 3])
@pytest.mark.parametrize("shape", [(384, 256), (10, 70), (201, 1600)])  # whole blocks, and padded ones
def test_the_step_kernel_gives_fbgemms_results_bit_for_bit(rows, shape) -> None:
    torch.manual_seed(rows)
    weight, scales = quantize_rows(torch.randn(*shape) * 0.02)
    bias = torch.randn(shape[0]) * 0.01
    fbgemm = Q8Linear(weight, scales, bias, Scratch())
    step = Q8Linear(weight, scales, bias, Scratch(step_kernel=True, prompt_kernel=False))
    x = torch.randn(rows, shape[1]) * torch.rand(rows, 1) * 10  # rows of every scale
    x[0, 0] = -x[0].abs().max() * 2  # a row whose peak is negative
    with torch.inference_mode():
        assert torch.equal(step.step(x, bias), fbgemm(x))  # the kernel itself, at every row count
        assert torch.equal(step(x), fbgemm(x))  # and the matrix, which reads more than MOST rows with fbgemm
        assert torch.equal(step(x[-1:]), step(x)[-1:])  # a row's result is its own


@needs_the_kernel
@pytest.mark.parametrize("prompt_kernel", [True, False])
def test_the_step_kernel_takes_fbgemms_place_only_beside_the_prompt_kernel(prompt_kernel) -> None:
    """The step kernel reads every call of up to MOST rows. With a prompt kernel, which then reads every call of
    more, fbgemm's copy is not kept; without one, fbgemm's copy stays, for the calls of more."""
    weight, scales = quantize_rows(torch.randn(384, 256) * 0.02)
    plain = Q8Linear(weight, scales, None, Scratch())
    both = Q8Linear(weight, scales, None, Scratch(step_kernel=True, prompt_kernel=prompt_kernel))
    assert (both.packed is None) is prompt_kernel
    assert both.step_bytes == both.step.nbytes and both.step_bytes >= weight.numel()
    copies = (weight.numel() if prompt_kernel else plain.packed_bytes) + both.step.nbytes
    assert both.packed_bytes == copies
    calls: list[str] = []
    both.step = counting(both.step, "step", calls)
    if prompt_kernel:
        both.prompt = counting(both.prompt, "prompt", calls)
    with torch.inference_mode():
        for rows in (1, step_kernel.MOST, step_kernel.MOST + 1, 40):
            both(torch.randn(rows, 256))
    assert calls == (["step", "step", "prompt", "prompt"] if prompt_kernel else ["step", "step"])  # else fbgemm


def counting(kernel, name: str, calls: list[str]):
    def call(*args):
        calls.append(name)
        return kernel(*args)

    return call


@needs_the_kernel
def test_the_step_kernel_is_kept_only_where_it_pays(monkeypatch) -> None:
    monkeypatch.setattr(step_kernel, "FORCED", None)  # measured, as at a user's load (conftest turns it off)
    weight, scales = quantize_rows(torch.randn(512, 256))
    monkeypatch.setattr(step_kernel, "FASTER", 1e9)  # no kernel is a billion times faster
    assert not step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)
    assert "fbgemm's" in step_kernel.declined and "1000000000.0x faster needed" in step_kernel.declined
    monkeypatch.setattr(step_kernel, "FASTER", 0.0)
    assert step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)
    assert step_kernel.declined == ""
    monkeypatch.setattr(step_kernel, "available_bytes", lambda: weight.numel())  # no room for a copy beside fbgemm's
    assert not step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=weight.numel())
    assert "GB free, and its copy needs" in step_kernel.declined
    assert step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)  # in fbgemm's place, it needs no room


def test_where_it_is_not_built_or_disagrees_fbgemm_reads_the_steps(monkeypatch) -> None:
    monkeypatch.setattr(step_kernel, "FORCED", None)
    monkeypatch.setattr(step_kernel, "FASTER", 0.0)
    weight, scales = quantize_rows(torch.randn(512, 256))
    with monkeypatch.context() as patched:
        patched.setattr(step_kernel, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
        assert step_kernel._build.__wrapped__() == "this CPU has no VNNI"
    with monkeypatch.context() as patched:
        patched.setattr(step_kernel, "why_not", lambda: "it could not be built here (no compiler)")
        assert not step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)
        assert step_kernel.declined == "it could not be built here (no compiler)"
    if not step_kernel.why_not():
        with monkeypatch.context() as patched:  # one value off: a text could then depend on the kernel
            patched.setattr(step_kernel, "X_INVERSE", 127.0)  # not 127.49999
            assert not step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)
            assert step_kernel.declined == "its results differ from fbgemm's here"
    monkeypatch.setattr(q8, "REDUCE_RANGE", True)  # fbgemm keeps 7 bits on CPUs without VNNI: no match
    assert not step_kernel.pays(fbgemm(weight, scales), weight, scales, copy_bytes=0)
    assert step_kernel.declined == "fbgemm keeps 7 bits on this CPU (no VNNI)"


def fbgemm(weight, scales) -> Q8Linear:
    """The reference the step kernel must match: a Q8Linear with a bias, read by fbgemm alone."""
    return Q8Linear(weight, scales, torch.randn(weight.shape[0]) * 0.1, Scratch())


@pytest.mark.parametrize("kept", [pytest.param(True, marks=needs_the_kernel), False])
def test_a_q8_engine_writes_the_same_texts_with_or_without_the_step_kernel(tiny_model_dir, monkeypatch, kept) -> None:
    """The tiny model at q8, the decision forced each way: two runs decoded together (two rows a pass), a window
    that resets, and a long phrase read beside the steps write what fbgemm alone writes."""
    monkeypatch.setattr(step_kernel, "FORCED", False)
    plain = gpt2_engine.load(str(tiny_model_dir), dtype="q8")
    monkeypatch.setattr(step_kernel, "FORCED", kept)
    fast = gpt2_engine.load(str(tiny_model_dir), dtype="q8")
    assert fast.model.q8_scratch.step_kernel is kept
    assert fast.shadow_chunk == (step_kernel.ROWS - 1 if kept else plain.shadow_chunk)  # a step and its chunk: one call
    assert two_runs.together(fast) == two_runs.alone(plain)


@needs_the_kernel
def test_a_later_process_loads_the_kept_build_with_no_compiler(tmp_path) -> None:
    """The build is kept (in the user's cache, whatever GPT2_STUDIO_CACHE says): a process whose PATH has no
    compiler and no ninja still has the kernel, in a moment."""
    code = "from gpt2_engine import step_kernel; print(repr(step_kernel.why_not()))"
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on it
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "''", done.stderr[-2000:]
