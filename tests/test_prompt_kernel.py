"""q8's prompt kernel (q8.PromptKernel): oneDNN's int8 kernel reads a prompt's many rows where it is measured
faster, and gives fbgemm's results bit for bit, so no text depends on which kernel read it. Both answers of the
decision are tried here, whatever this CPU would decide (q8.PROMPT_KERNEL forces one)."""

from __future__ import annotations

import pytest
import torch
import two_runs

import gpt2_engine
from gpt2_engine import capabilities, fast, q8
from gpt2_engine.q8 import PromptKernel, Q8Linear, Scratch
from gpt2_engine.quantize import quantize_rows
from gpt2_engine.window import Window

pytestmark = pytest.mark.skipif(not capabilities.supported("cpu")["q8"].runs, reason="q8 does not run here")


def prompt_kernel_agrees_here() -> bool:
    """Whether the engine would ever keep a prompt kernel on this CPU: oneDNN's int8 ops run here and give fbgemm's
    results bit for bit (elsewhere the engine never uses it, and these tests of it skip, saying why)."""
    weight, scales = quantize_rows(torch.randn(384, 256) * 0.02)
    return q8.prompt_kernel_agrees(weight, scales)


needs_onednn = pytest.mark.skipif(
    not prompt_kernel_agrees_here(), reason="oneDNN's int8 kernel does not run here, or not as fbgemm does"
)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 12, 16, 40, 320, 333])
def test_the_prompt_kernel_gives_fbgemms_results_bit_for_bit(rows) -> None:
    """From PROMPT_ROWS rows through oneDNN, below through fbgemm (where oneDNN's few-row path may round otherwise):
    the results are fbgemm's either way, and a row's own."""
    torch.manual_seed(rows)
    weight, scales = quantize_rows(torch.randn(384, 256) * 0.02)
    bias = torch.randn(384) * 0.01
    fbgemm = Q8Linear(weight, scales, bias, Scratch(prompt_kernel=False))
    onednn = Q8Linear(weight, scales, bias, Scratch(prompt_kernel=True))
    x = torch.randn(rows, 256) * torch.rand(rows, 1) * 10  # rows of every scale
    with torch.inference_mode():
        assert torch.equal(onednn(x), fbgemm(x))
        assert torch.equal(onednn(x[-1:]), onednn(x)[-1:])  # a row's result is its own
        assert torch.equal(onednn(x[-q8.PROMPT_ROWS :]), onednn(x)[-q8.PROMPT_ROWS :])


@needs_onednn
def test_the_prompt_kernel_runs_few_row_counts_so_onednn_keeps_few_primitives(monkeypatch) -> None:
    """oneDNN keeps a primitive (about 0.4 MB) for each shape it has run: calls of every row count from 9 to 320
    held 400 MB more over gpt2-xl's 4 shapes. The rows are rounded up to a multiple of ROW_STEP, and each result is
    still its own row's, bit for bit."""
    weight, scales = quantize_rows(torch.randn(96, 64) * 0.02)
    kernel, scratch = PromptKernel(weight, scales), Scratch()
    reference = Q8Linear(weight, scales, None, Scratch(prompt_kernel=False))
    seen: set[int] = set()
    linear = kernel.linear
    monkeypatch.setattr(kernel, "linear", lambda unit: seen.add(unit.shape[0]) or linear(unit))
    x = torch.randn(q8.SCRATCH_ROWS + 5, 64)
    with torch.inference_mode():
        for n in range(1, q8.SCRATCH_ROWS + 1):
            y = kernel(x[:n], q8._peaks(x[:n]), scratch)
            assert y.shape == (n, 96)
            if n in (1, 9, 17, 100, q8.SCRATCH_ROWS):
                assert torch.equal(torch.addcmul(torch.zeros(96), y, q8._peaks(x[:n])), reference(x[:n]))
        assert seen == set(range(q8.ROW_STEP, q8.SCRATCH_ROWS + 1, q8.ROW_STEP))  # 20 row counts, not 320
        assert kernel(x, q8._peaks(x), scratch).shape == (q8.SCRATCH_ROWS + 5, 96)  # beyond the buffers: as is
    assert q8.SCRATCH_ROWS % q8.ROW_STEP == 0


@needs_onednn
def test_the_prompt_kernel_is_kept_only_where_it_pays(monkeypatch) -> None:
    monkeypatch.setattr(q8, "PROMPT_KERNEL", None)  # measured, as at a user's load (conftest turns it off)
    weight, scales = quantize_rows(torch.randn(512, 256))
    monkeypatch.setattr(q8, "PROMPT_FASTER", 1e9)  # no kernel is a billion times faster
    assert not q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())
    monkeypatch.setattr(q8, "PROMPT_FASTER", 0.0)
    assert q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())
    monkeypatch.setattr(q8, "available_bytes", lambda: weight.numel())  # no room for the second copy
    assert not q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())


def test_without_onednn_or_where_it_disagrees_the_prompt_kernel_is_not_kept(monkeypatch) -> None:
    monkeypatch.setattr(q8, "PROMPT_KERNEL", None)
    weight, scales = quantize_rows(torch.randn(512, 256))

    def missing(*args, **kwargs):
        raise RuntimeError("onednn::qlinear_prepack: no kernel for this CPU")

    monkeypatch.setattr(q8, "PROMPT_FASTER", 0.0)
    with monkeypatch.context() as patched:
        patched.setattr(q8.PromptKernel, "__init__", missing)
        assert not q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())
    with monkeypatch.context() as patched:  # one value off: a text could then depend on the kernel
        patched.setattr(q8.PromptKernel, "X_ZERO", 127)
        assert not q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())
    monkeypatch.setattr(q8, "REDUCE_RANGE", True)  # fbgemm keeps 7 bits on CPUs without VNNI
    assert not q8.prompt_kernel_pays(weight, scales, model_bytes=weight.numel())


def q8_engines(model_dir, monkeypatch, kept: bool) -> tuple[gpt2_engine.Engine, gpt2_engine.Engine]:
    """The model at q8 twice: without the prompt kernel, and with the decision forced to `kept`."""
    monkeypatch.setattr(q8, "PROMPT_KERNEL", False)
    plain = gpt2_engine.load(str(model_dir), dtype="q8")
    monkeypatch.setattr(q8, "PROMPT_KERNEL", kept)
    return plain, gpt2_engine.load(str(model_dir), dtype="q8")


def rows_through_the_prompt_kernel(monkeypatch) -> list[int]:
    """From now on, the row count of every call the prompt kernel reads."""
    rows_seen: list[int] = []
    real_call = PromptKernel.__call__

    def counting(self, rows, peak, scratch=None):
        rows_seen.append(rows.shape[0])
        return real_call(self, rows, peak, scratch)

    monkeypatch.setattr(PromptKernel, "__call__", counting)
    return rows_seen


@pytest.mark.parametrize("kept", [pytest.param(True, marks=needs_onednn), False])
def test_a_q8_engine_writes_the_same_texts_with_or_without_the_prompt_kernel(tiny_model_dir, monkeypatch, kept) -> None:
    """The tiny model at q8, the decision forced each way: a run alone, and one joining another's steps (its prompt
    read beside them: every row of those passes through the prompt kernel), write what fbgemm alone writes."""
    plain, low = q8_engines(tiny_model_dir, monkeypatch, kept)
    assert low.prompt_kernel is kept and not plain.prompt_kernel
    assert low.weight_bytes > plain.weight_bytes if kept else low.weight_bytes == plain.weight_bytes  # its copy
    assert low.step_bytes == plain.step_bytes  # ... which a decode step never reads (the bandwidth ceiling's bytes)
    through_onednn = rows_through_the_prompt_kernel(monkeypatch)
    expected = two_runs.alone(plain)
    # pieces of 24 beside the steps: one pass's rows reach PROMPT_ROWS (the budget the tiny model learns may not)
    monkeypatch.setattr(low.batcher.scheduler, "budget", lambda writers, rows, readers=1: 24)
    assert two_runs.together(low) == expected
    assert bool(through_onednn) is kept and min(through_onednn, default=q8.PROMPT_ROWS) >= q8.PROMPT_ROWS


@needs_onednn
def test_steps_with_a_shadow_chunk_beside_them_read_through_the_prompt_kernel_bit_for_bit(
    tiny_model_dir, monkeypatch
) -> None:
    """A window's shadow row reading LONG_CHUNK tokens beside a step makes a call of more than PROMPT_ROWS rows,
    which the prompt kernel reads (it is cheaper there than fbgemm): the logits are fbgemm's, bit for bit."""
    plain, low = q8_engines(tiny_model_dir, monkeypatch, kept=True)
    through_onednn = rows_through_the_prompt_kernel(monkeypatch)
    ids = [(7 * i) % 200 + 10 for i in range(q8.PROMPT_ROWS + 2 * fast.LONG_CHUNK)]
    PRIME = q8.PROMPT_ROWS  # through the prompt kernel too
    logits = []
    for engine in (plain, low):
        window = Window(20, engine.model.config.n_positions)
        context = fast.FastContext(engine.model, window, shadow=True, shadow_chunk=fast.LONG_CHUNK)
        with torch.inference_mode():
            logits.append([context.prime(ids[:PRIME]), *(context.append(token) for token in ids[PRIME:])])
        assert context.cache.lengths[context.shadow] == 2 * fast.LONG_CHUNK  # it read two chunks ahead
    assert all(torch.equal(a, b) for a, b in zip(*logits))
    assert set(through_onednn) == {q8.PROMPT_ROWS, fast.LONG_CHUNK + 1}  # the prompt; steps with a chunk beside
