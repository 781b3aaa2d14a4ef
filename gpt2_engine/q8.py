"""q8: int8 weights read by integer kernels, each row of activations made 8-bit with its own scale.

`Q8Linear` reads a decode step's few rows (up to step_kernel.MOST, 8) through step_kernel.py's kernel where it is
built and pays here (`step_kernel.pays`), else through fbgemm's dynamic linear. Where it pays (`prompt_kernel_pays`),
a second copy of each matrix in oneDNN's layout (`PromptKernel`, AMX where the CPU has it) reads every call of
PROMPT_ROWS rows or more (9 beside the step kernel: a prompt's piece, many writers' steps and their shadows' chunks),
bit for bit as fbgemm would. The matrices of a model share one `Scratch`, their work buffers. The int8 matrices themselves come from
quantize.py's conversion (and its weights cache).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from . import step_kernel
from .memory import available_bytes, drop_file_pages
from .quantize import Converted, matrices, quantize_rows, to_int8
from .step_kernel import StepKernel, best_of

PINS = 2  # the values 1 and -1 after each row of a Q8Linear's input (see there)
SCRATCH_ROWS = 320  # q8's work buffers hold this many rows: a prompt chunk (scheduler.PIECE, 256) and the
# decode steps of a full batch beside it (8 runs, each its token and a shadow row's few); larger passes slice
ROW_STEP = 16  # the prompt kernel reads a call's rows rounded up to a multiple of this (within SCRATCH_ROWS): oneDNN
# keeps a primitive (about 0.4 MB) for each shape it has run, up to 1,024 of them, so gpt2-xl's 4 matrix shapes at
# every row count from 9 to 320 held 400 MB more by the end of a day (the 30-minute soak kept 0.5 GB); at 20 row
# counts a shape they held 35 MB. A call of 9 rows costs what one of 16 does: over gpt2-xl's 193 matrices, 8 rows
# took 122 ms through oneDNN, 16 rows 134


class Q8Linear(nn.Module):
    """y = x W^T + b with W in int8 per channel and x made 8-bit at each call, by fbgemm's dynamic linear:
    integer products, which read the int8 weights faster than any kernel that keeps x in floating point
    (docs/measurements.md, Performance). Like llama.cpp's q8_0, which scales x per 32 values, x is scaled per row here:
    fbgemm quantizes a whole call with one scale, so each row is divided by its own largest value first, and
    carries two more values, 1 and -1, that pin the call's range to [-1, 1] (the matrix has two columns of zeros
    for them, so they add nothing). So a row's result does not depend on the other rows of its call (the shadow
    row, a prompt's other tokens), and a decode step reads one row, not a pin row beside it (10 ms a token on
    gpt2-xl's shape). On CPUs without VNNI, fbgemm's 8-bit
    products can saturate, so x keeps 7 bits there (`reduce_range`), as torch's dynamic quantization does."""

    bias: Tensor  # a buffer: typed here, as torch types a module's attributes Tensor | Module

    def __init__(self, weight: Tensor, scales: Tensor, bias: Tensor | None, scratch: Scratch | None = None):
        """weight: int8 (out, in); scales and bias: fp32; scratch: the model's work buffers (one per model), which
        also says whether prompts have their own kernel (`Scratch.prompt_kernel`, see PromptKernel)."""
        super().__init__()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated in torch: the probe notices removal
            warnings.simplefilter("ignore", UserWarning)
            pinned = torch.cat([weight, weight.new_zeros(weight.shape[0], PINS)], dim=1)
            quantized = torch._make_per_channel_quantized_tensor(pinned, scales.double(), zero, 0)
        self.scratch = scratch or Scratch()
        self.prompt = PromptKernel(weight, scales) if self.scratch.prompt_kernel else None  # a copy, for prompts
        self.step = StepKernel(weight, scales) if self.scratch.step_kernel else None  # a copy, for steps
        # fbgemm's copy, with the pins' two columns of zeros: for whatever the other two do not read
        self.packed = None if self.prompt and self.step else torch.ops.quantized.linear_prepack(quantized, None)
        drop_file_pages(weight)  # the int8 matrix, when it is mapped from the weights cache, is not read again
        self.register_buffer("bias", torch.zeros(weight.shape[0]) if bias is None else bias.float())
        self.out_features = weight.shape[0]
        fbgemm_bytes = weight.numel() + (PINS + 4) * self.out_features  # the int8 matrix, the pins' zeros and
        # fbgemm's column offsets
        self.step_bytes = self.step.nbytes if self.step else fbgemm_bytes  # what a decode step reads
        self.packed_bytes = (  # what is held: each kernel's copy
            (fbgemm_bytes if self.packed is not None else 0)
            + (self.step.nbytes if self.step else 0)
            + (weight.numel() if self.prompt else 0)
        )
        self.reduce_range = REDUCE_RANGE
        self.scratch.unit(weight.shape[1])  # made now, at load: part of what the process holds before any run
        if self.prompt is not None:
            self.scratch.bytes(weight.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (R, in)
        if self.step is not None and rows.shape[0] <= step_kernel.MOST:
            return self.step(rows, self.bias).view(*x.shape[:-1], self.out_features)
        peak = _peaks(rows)
        if self.prompt is not None and rows.shape[0] >= (step_kernel.MOST + 1 if self.step else PROMPT_ROWS):
            y = self.prompt(rows, peak, self.scratch)
            return torch.addcmul(self.bias, y, peak, out=y).view(*x.shape[:-1], self.out_features)
        assert self.packed is not None  # kept wherever a call can come here
        unit = self.scratch.unit(rows.shape[1])  # each row's last two values pin the range to [-1, 1]
        capacity = unit.shape[0]
        if rows.shape[0] <= capacity:
            return self._rows(rows, peak, unit).view(*x.shape[:-1], self.out_features)
        out = torch.empty(rows.shape[0], self.out_features)  # a pass larger than the scratch (scoring a long
        for start in range(0, rows.shape[0], capacity):  # text): in slices, each row's result is its own anyway
            part = slice(start, start + capacity)
            out[part] = self._rows(rows[part], peak[part], unit)
        return out.view(*x.shape[:-1], self.out_features)

    def _rows(self, rows: Tensor, peak: Tensor, unit: Tensor) -> Tensor:
        n, width = rows.shape
        torch.div(rows, peak, out=unit[:n, :width])  # every row within [-1, 1], its pins spanning it
        y = torch.ops.quantized.linear_dynamic(unit[:n], self.packed, self.reduce_range)
        return torch.addcmul(self.bias, y, peak, out=y)  # bias + y * peak, into fbgemm's result


class PromptKernel:
    """A second copy of a Q8Linear's int8 matrix, packed for oneDNN's int8 kernel, for the passes that read a prompt.

    fbgemm reads a matrix fastest for the few rows of decode steps; for a prompt's many rows, oneDNN's kernel
    uses AMX where the CPU has it: over gpt2-xl's 1600x6400 matrix, 256 rows took 1.7 ms against fbgemm's 6.6 on
    this project's Xeon (`python -m bench.kernels --rows 256 --only q8`). It costs the matrix's bytes again, so it is made only
    where it is measured that much faster and the memory is there (`prompt_kernel_pays`). Each row is made 8-bit
    exactly as fbgemm makes the pinned rows (scale 2/255, zero point 128 over [-1, 1], one fused multiply-add), so
    its results are fbgemm's bit for bit: `prompt_kernel_pays` checks that on the model's own matrix before it is
    used, so a row's result never depends on the kernel nor on the rows beside it. Every call of PROMPT_ROWS rows or
    more goes through it: a prompt's piece, and as well a pass of steps with the shadow rows' chunks beside them
    (over gpt2-xl's 193 matrices, 16 rows took 142 ms against fbgemm's 183, 8 rows 130 against 150, one row 119
    against 101: docs/measurements.md, "Rows through each kernel")."""

    X_SCALE = float(torch.tensor(2.0 / 255.0))  # fbgemm's quantization of [-1, 1], Q8Linear's pinned range
    X_ZERO = 128

    def __init__(self, weight: Tensor, scales: Tensor):
        self.packed = torch.ops.onednn.qlinear_prepack(weight, [SCRATCH_ROWS, weight.shape[1]])
        self.scales = scales.float().contiguous()
        self.zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        self.inverse = torch.tensor([1.0 / self.X_SCALE])  # as fbgemm: x * (1 / scale) + zero point, fused
        self.zero = torch.tensor([float(self.X_ZERO)])

    def __call__(self, rows: Tensor, peak: Tensor, scratch: Scratch | None = None) -> Tensor:
        """(R, out) products of `rows` divided by their `peak` (R, 1), before the peak and the bias go back on.
        `scratch`: the model's work buffers, so that a pass allocates only its result."""
        n, width = rows.shape
        reuse = scratch is not None and n <= scratch.rows
        work = scratch.unit(width)[:n, :width] if reuse else torch.empty_like(rows)  # type: ignore[union-attr]
        torch.div(rows, peak, out=work)
        # fbgemm rounds x * (1 / scale) + zero point computed as one fused multiply-add: addcmul is one here (a
        # separate multiply and add round twice, and a value near a half then lands on the other integer)
        torch.addcmul(self.zero, work, self.inverse, out=work).round_().clamp_(0, 255)
        if reuse:  # the rows beyond n are whatever the buffer holds: each row's result is its own (ROW_STEP)
            unit = scratch.bytes(width)[: min(-(-n // ROW_STEP) * ROW_STEP, scratch.rows)]  # type: ignore[union-attr]
        else:
            unit = torch.empty_like(rows, dtype=torch.uint8)
        unit[:n].copy_(work)
        return self.linear(unit)[:n]

    def linear(self, unit: Tensor) -> Tensor:
        """oneDNN's int8 product of `unit`, rows already made 8-bit."""
        return torch.ops.onednn.qlinear_pointwise(
            unit,
            self.X_SCALE,
            self.X_ZERO,
            self.packed,
            self.scales,
            self.zeros,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )


PROMPT_FASTER = 1.5  # the prompt kernel is kept only where a prompt piece reads at least this much faster
PROMPT_ROWS = 6  # a call of this many rows or more uses it (gpt2-xl's 193 matrices, the dev VM: 1 row 101 ms
# through fbgemm against 119 through oneDNN, 4 rows 126 against 125, 6 rows 141 against 132, 8 rows 150 against
# 130, 16 rows 183 against 142): a batch of six writers and more, a prompt's piece, the shadow's chunk beside a step
CHECKED_ROWS = (*range(5, 18), 64, SCRATCH_ROWS)  # row counts the kernels must agree on at load (from 5 rows: a
# prompt kernel beside no step kernel reads from PROMPT_ROWS, beside one every call over step_kernel.MOST)
PROMPT_KERNEL: bool | None = None  # None: measured at each q8 load (`prompt_kernel_pays`); tests force an answer


def prompt_kernel_agrees(weight: Tensor, scales: Tensor) -> bool:
    """Whether a PromptKernel runs here and gives fbgemm's results bit for bit over `weight` at CHECKED_ROWS rows,
    so that a text never depends on the kernel that read it: oneDNN's int8 ops exist in this torch, work on this
    CPU, and fbgemm keeps all 8 bits here (not on CPUs without VNNI: REDUCE_RANGE)."""
    if REDUCE_RANGE:
        return False
    try:
        fbgemm, onednn = Q8Linear(weight, scales, None, Scratch(prompt_kernel=False)), PromptKernel(weight, scales)
        rows = torch.randn(SCRATCH_ROWS, weight.shape[1]) * torch.rand(SCRATCH_ROWS, 1) * 10
        with torch.inference_mode():
            for n in CHECKED_ROWS:
                peak = _peaks(rows[:n])
                if not torch.equal(torch.addcmul(fbgemm.bias, onednn(rows[:n], peak), peak), fbgemm(rows[:n])):
                    return False
    except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN int8 in this torch, or not on this CPU
        return False
    return True


def prompt_kernel_pays(weight: Tensor, scales: Tensor, model_bytes: int) -> bool:
    """Whether a PromptKernel is worth its copy: it agrees with fbgemm here (`prompt_kernel_agrees`), a
    SCRATCH_ROWS-row call over `weight` is at least PROMPT_FASTER times faster than fbgemm's, and the copy of the
    model's `model_bytes` int8 matrices leaves as much memory free again. Measured on one of the model's own
    matrices at load (a few hundred ms); PROMPT_KERNEL, where set, answers instead."""
    if PROMPT_KERNEL is not None:
        return PROMPT_KERNEL
    if available_bytes() < 2 * model_bytes or not prompt_kernel_agrees(weight, scales):
        return False
    fbgemm, onednn = Q8Linear(weight, scales, None, Scratch(prompt_kernel=False)), PromptKernel(weight, scales)
    rows = torch.randn(SCRATCH_ROWS, weight.shape[1])
    peak = _peaks(rows)
    with torch.inference_mode():
        fbgemm_s, onednn_s = best_of(3, lambda: fbgemm(rows)), best_of(3, lambda: onednn(rows, peak))
    return fbgemm_s >= PROMPT_FASTER * onednn_s


def _peaks(rows: Tensor) -> Tensor:
    """(R, 1): each row's largest magnitude (at least 1e-30). For a few rows abs().amax() is the fastest (a seventh
    of vector_norm's cost for 8 rows); for a prompt's many rows amax and amin, which make no (R, in) temporary
    (a quarter of abs().amax()'s time over 256 rows of 1600, and a third of aminmax's)."""
    if rows.shape[0] <= 16:
        peak = rows.abs().amax(dim=1, keepdim=True)
    else:
        peak = torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())
    return peak.clamp_(min=1e-30)


class Scratch:
    """A model's work buffers for Q8Linear, one per input width, made at load and reused by every matrix and
    every pass (one forward at a time per model: engine.lock), so that what a pass allocates does not depend on
    its number of rows: a day of phrases of every length adds nothing. A pass of more rows than `rows` is done
    in slices. Each buffer's rows end in the pins [1, -1] that fix fbgemm's range for the call (Q8Linear).
    `prompt_kernel`: the model's matrices keep a PromptKernel too, for their calls of PROMPT_ROWS rows or more;
    `step_kernel`: a StepKernel, for the calls of step_kernel.MOST rows at most (the prompt kernel then reads
    every call of more, and fbgemm none)."""

    def __init__(self, rows: int = SCRATCH_ROWS, prompt_kernel: bool = False, step_kernel: bool = False):
        self.rows = rows
        self._units: dict[int, Tensor] = {}
        self.prompt_kernel, self.step_kernel = prompt_kernel, step_kernel
        self._bytes: dict[int, Tensor] = {}

    def bytes(self, width: int) -> Tensor:
        """The (rows, width) uint8 buffer a PromptKernel's rows are made 8-bit into."""
        made = self._bytes.get(width)
        if made is None:
            made = self._bytes.setdefault(width, torch.zeros(self.rows, width, dtype=torch.uint8))
        return made

    def unit(self, width: int) -> Tensor:
        """The (rows, width + PINS) buffer for matrices that read `width` values a row."""
        unit = self._units.get(width)
        if unit is None:
            made = torch.zeros(self.rows, width + PINS)
            made[:, width:] = torch.tensor([1.0, -1.0])
            unit = self._units.setdefault(width, made)  # two matrices converted at once: one buffer still
        return unit

    @property
    def nbytes(self) -> int:
        buffers = [*self._units.values(), *self._bytes.values()]
        return sum(buffer.numel() * buffer.element_size() for buffer in buffers)


def _has_vnni() -> bool:
    from .capabilities import cpu_flags

    return bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & cpu_flags())


REDUCE_RANGE = not _has_vnni()


def to_q8(model: Any, saved: dict[str, Tensor] | None = None, progress: Converted | None = None) -> dict:
    """int8 weights packed for fbgemm, activations fp32 between the matrices and 8-bit inside them; the
    matrices share one Scratch (`model.q8_scratch`), and keep a PromptKernel too where it pays here (measured on
    the first layer's largest matrix), and a StepKernel for steps where that pays."""
    first = model.transformer.h[0].mlp.c_fc  # layer 0's largest matrix, as (in, out): transformers' Conv1D
    sample = (saved["0.mlp.c_fc.weight"], saved["0.mlp.c_fc.scales"]) if saved else quantize_rows(first.weight.T)
    model_bytes = sum(w.numel() for _, _, w, _ in matrices(model))
    prompt = prompt_kernel_pays(*sample, model_bytes)
    fbgemm = Q8Linear(*sample, torch.randn(sample[0].shape[0]) * 0.1, Scratch())  # what it must give, bit for bit
    step = step_kernel.pays(fbgemm, *sample, 0 if prompt else model_bytes)  # with a prompt kernel: fbgemm's place
    del fbgemm
    scratch = Scratch(prompt_kernel=prompt, step_kernel=step)
    del sample
    converted = to_int8(model, torch.float32, saved, functools.partial(Q8Linear, scratch=scratch), progress)
    model.q8_scratch = scratch
    return converted
