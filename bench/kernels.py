"""Which matmul kernel reads gpt2-xl's weights fastest at batch 1 on this CPU? Measured, not assumed.

For each candidate it allocates all 48 layers' matrices (plus the LM head) in that kernel's layout,
runs one "decode pass" of matmuls over them (x: 1 or 2 rows), and reports the median time and the
bandwidth achieved (weight bytes / time), beside a plain memory-read probe taken in the same run.

    python -m bench.kernels --size gpt2-xl --repeats 7

The ONNX Runtime row needs `pip install onnx onnxruntime` (not among the project's requirements: it was
measured and not adopted; docs/measurements.md, "Tried and not adopted", says why); without them it says it is unavailable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import bench
from gpt2_engine.shapes import KNOWN_MODELS


def read_bandwidth(gb: float = 2.0, repeats: int = 7, device: str | torch.device = "cpu") -> float:
    """GB/s of reading a buffer far larger than the caches (median of several sums), on a device."""
    buf = torch.ones(int(gb * 1e9 / 4), device=device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        float(buf.sum())  # float(): waits for a GPU to finish
        times.append(time.perf_counter() - t)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def matrices(size: str) -> list[tuple[int, int]]:
    s = KNOWN_MODELS[size].shape
    e = s.n_embd
    per_layer = [(e, 3 * e), (e, e), (e, 4 * e), (4 * e, e)]  # (in, out): qkv, attn proj, fc, mlp proj
    return per_layer * s.n_layer + [(e, s.vocab_size)]  # + the LM head


def timed(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up (and first-touch of the weights)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


Shapes = list[tuple[int, int]]  # (in, out) of each matrix
Built = tuple[int, Callable[[], object]]  # (weight bytes, one decode pass over every matrix)


def _inputs(shapes: Shapes, rows: int, dtype: torch.dtype = torch.float32) -> dict[int, Tensor]:
    return {i: torch.randn(rows, i, dtype=dtype) for i, _ in shapes}


def conv1d_addmm(shapes: Shapes, rows: int) -> Built:
    """What transformers' GPT-2 does: x @ W with W stored (in, out)."""
    ws = [(torch.randn(i, o) * 0.02, torch.zeros(o)) for i, o in shapes]
    xs = _inputs(shapes, rows)
    return sum(w.numel() * 4 for w, _ in ws), lambda: [torch.addmm(b, xs[w.shape[0]], w) for w, b in ws]


def linear(shapes: Shapes, rows: int, dtype: torch.dtype) -> Built:
    ws = [((torch.randn(o, i) * 0.02).to(dtype), torch.zeros(o, dtype=dtype)) for i, o in shapes]
    xs = _inputs(shapes, rows, dtype)
    return sum(w.numel() * w.element_size() for w, _ in ws), lambda: [F.linear(xs[w.shape[1]], w, b) for w, b in ws]


def mkldnn_packed(shapes: Shapes, rows: int, dtype: torch.dtype) -> Built:
    """oneDNN's prepacked layout (the engine's bf16)."""
    ws = []
    for i, o in shapes:
        w = (torch.randn(o, i) * 0.02).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        ws.append((packed, torch.zeros(o, dtype=dtype), i))
    xs = _inputs(shapes, rows, dtype)

    def run() -> None:
        for packed, b, i in ws:
            torch.ops.mkldnn._linear_pointwise(xs[i], packed, b, "none", [], "")

    return sum(i * o for i, o in shapes) * torch.tensor([], dtype=dtype).element_size(), run


def _int8_rows(shapes: Shapes, scale_dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
    """Random matrices as int8 with one scale per output row."""
    ws = []
    for i, o in shapes:
        w = torch.randn(o, i) * 0.02
        scale = w.abs().amax(dim=1) / 127
        ws.append((torch.round(w / scale[:, None]).to(torch.int8), scale.to(scale_dtype)))
    return ws


def int8_weight_only(shapes: Shapes, rows: int, act_dtype: torch.dtype) -> Built:
    """_weight_int8pack_mm: int8 weights, activations as they are (the engine's int8)."""
    ws = _int8_rows(shapes, act_dtype)
    xs = _inputs(shapes, rows, act_dtype)
    return sum(w.numel() for w, _ in ws), lambda: [
        torch.ops.aten._weight_int8pack_mm(xs[w.shape[1]], w, s) for w, s in ws
    ]


def int8_dequantized(shapes: Shapes, rows: int) -> Built:
    """What Int8Linear does for a prompt: int8 -> bf16, one matmul, then the scales."""
    ws = _int8_rows(shapes, torch.bfloat16)
    xs = _inputs(shapes, rows, torch.bfloat16)
    return sum(w.numel() for w, _ in ws), lambda: [F.linear(xs[w.shape[1]], w.to(torch.bfloat16)) * s for w, s in ws]


def fp16_fbgemm(shapes: Shapes, rows: int) -> Built:
    """fp16 weights packed by fbgemm, fp32 activations (packing gpt2-xl's takes a while)."""
    ws = [(i, torch.ops.quantized.linear_prepack_fp16(torch.randn(o, i) * 0.02, torch.zeros(o))) for i, o in shapes]
    xs = _inputs(shapes, rows)
    return sum(i * o * 2 for i, o in shapes), lambda: [torch.ops.quantized.linear_dynamic_fp16(xs[i], p) for i, p in ws]


def int8_dynamic_fbgemm(shapes: Shapes, rows: int) -> Built:
    """int8 weights and int8 activations, quantized per call with one scale (torch.ao, fbgemm)."""
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    ws = []
    for i, o in shapes:
        w = torch.randn(o, i) * 0.02
        module = DynamicLinear(i, o, dtype=torch.qint8)
        scales = (w.abs().amax(dim=1) / 127).double()
        module.set_weight_bias(
            torch.quantize_per_channel(w, scales, torch.zeros(o, dtype=torch.long), 0, torch.qint8), torch.zeros(o)
        )
        ws.append((i, module))
    xs = _inputs(shapes, rows)
    return sum(i * o for i, o in shapes), lambda: [module(xs[i]) for i, module in ws]


def q8_engine(shapes: Shapes, rows: int) -> Built:
    """The engine's q8 (q8.Q8Linear): fbgemm's dynamic linear, each row scaled apart."""
    from gpt2_engine.q8 import Q8Linear
    from gpt2_engine.quantize import quantize_rows

    ws = [(i, Q8Linear(*quantize_rows(torch.randn(o, i) * 0.02), torch.zeros(o))) for i, o in shapes]
    xs = _inputs(shapes, rows)
    return sum(i * o for i, o in shapes), lambda: [module(xs[i]) for i, module in ws]


def q8_prompt_kernel(shapes: Shapes, rows: int) -> Built:
    """The engine's q8 with its prompt kernel (q8.PromptKernel: oneDNN, AMX where the CPU has it; from
    PROMPT_ROWS rows, fbgemm below)."""
    from gpt2_engine.q8 import Q8Linear, Scratch
    from gpt2_engine.quantize import quantize_rows

    scratch = Scratch(prompt_kernel=True)
    ws = [(i, Q8Linear(*quantize_rows(torch.randn(o, i) * 0.02), torch.zeros(o), scratch)) for i, o in shapes]
    xs = _inputs(shapes, rows)
    return sum(i * o for i, o in shapes), lambda: [module(xs[i]) for i, module in ws]


def q8_step_kernel(shapes: Shapes, rows: int) -> Built:
    """The engine's q8 with its step kernel (gpt2_engine/step_kernel.py), for calls of up to step_kernel.MOST rows."""
    from gpt2_engine.q8 import Q8Linear, Scratch
    from gpt2_engine.quantize import quantize_rows
    from gpt2_engine.step_kernel import why_not

    if why_not():
        raise RuntimeError(why_not())
    scratch = Scratch(step_kernel=True)
    ws = [(i, Q8Linear(*quantize_rows(torch.randn(o, i) * 0.02), torch.zeros(o), scratch)) for i, o in shapes]
    for _, module in ws:
        module.packed = None  # fbgemm's copy is not read: every call here is a step's (the prompt kernel's place)
    xs = _inputs(shapes, rows)
    return sum(module.step_bytes for _, module in ws), lambda: [module(xs[i]) for i, module in ws]


def int4_groups(shapes: Shapes, rows: int, group: int = 32) -> Built:
    """4-bit weights, a bf16 scale and zero for each `group` of a row (torch's _weight_int4pack_mm_for_cpu, bf16
    activations; gpt-fast's int4). Measured and not adopted: docs/measurements.md, "Tried and not adopted"."""
    ws = []
    for i, o in shapes:
        out = o + (-o) % 16  # the packing takes a multiple of 16 rows: the LM head is padded
        q = torch.randint(0, 16, (out, i), dtype=torch.int32)
        scales_and_zeros = (torch.randn(i // group, out, 2) * 0.01).to(torch.bfloat16)
        ws.append((i, torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8), scales_and_zeros))
    xs = _inputs(shapes, rows, torch.bfloat16)
    nbytes = sum(packed.numel() * packed.element_size() + sz.numel() * 2 for _, packed, sz in ws)
    return nbytes, lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xs[i], p, group, sz) for i, p, sz in ws]


def int8_compiled(shapes: Shapes, rows: int) -> Built:
    """_weight_int8pack_mm through torch.compile (inductor, frozen weights)."""
    import torch._inductor.config as inductor

    class Matrices(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ws, self.ss = torch.nn.ParameterList(), torch.nn.ParameterList()
            for w, s in _int8_rows(shapes, torch.bfloat16):
                self.ws.append(torch.nn.Parameter(w, False))
                self.ss.append(torch.nn.Parameter(s, False))

        def forward(self, xs: dict[int, Tensor]) -> list[Tensor]:
            return [torch.ops.aten._weight_int8pack_mm(xs[w.shape[1]], w, s) for w, s in zip(self.ws, self.ss)]

    inductor.freezing = True
    module = Matrices().eval()
    compiled = torch.compile(module)
    xs = _inputs(shapes, rows, torch.bfloat16)
    return sum(w.numel() for w in module.ws), lambda: compiled(xs)


def int8_onnx_runtime(shapes: Shapes, rows: int, block: int = 32) -> Built:
    """ONNX Runtime's MatMulNBits, 8 bits: activations quantized per block too (like llama.cpp's q8_0)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    with contextlib.suppress(RuntimeError):  # raised when it was set already in this process
        ort.capi._pybind_state.set_global_thread_pool_sizes(torch.get_num_threads(), 1)  # one pool for all
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    sessions, nbytes = [], 0
    for i, o in shapes:
        w = (torch.randn(o, i) * 0.02).numpy().reshape(o, i // block, block)
        scales = np.abs(w).max(axis=2) / 127
        q = (np.rint(w / scales[..., None]) + 128).astype(np.uint8)  # symmetric: the zero point is 128
        node = helper.make_node(
            "MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft",
            K=i, N=o, bits=8, block_size=block, accuracy_level=4,
        )  # fmt: skip
        graph = helper.make_graph(
            [node], "matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, i])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, o])],
            [numpy_helper.from_array(q, "B"), numpy_helper.from_array(scales.astype(np.float32).reshape(-1), "scales")],
        )  # fmt: skip
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        )
        sessions.append(
            (i, ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]))
        )
        nbytes += q.nbytes
    xs = {i: np.random.default_rng(0).standard_normal((rows, i), dtype=np.float32) for i, _ in shapes}
    return nbytes, lambda: [session.run(None, {"x": xs[i]}) for i, session in sessions]


KERNELS: list[tuple[str, Callable[[Shapes, int], Built]]] = [  # weights are built one kernel at a time
    ("fp32 addmm (Conv1D layout)", conv1d_addmm),
    ("fp32 F.linear", functools.partial(linear, dtype=torch.float32)),
    ("bf16 F.linear", functools.partial(linear, dtype=torch.bfloat16)),
    ("fp16 F.linear", functools.partial(linear, dtype=torch.float16)),
    ("fp16 weights, fp32 act (fbgemm)", fp16_fbgemm),
    ("fp32 mkldnn packed", functools.partial(mkldnn_packed, dtype=torch.float32)),
    ("bf16 mkldnn packed", functools.partial(mkldnn_packed, dtype=torch.bfloat16)),
    ("int8 weights, bf16 act (_weight_int8pack_mm)", functools.partial(int8_weight_only, act_dtype=torch.bfloat16)),
    ("int8 weights, fp32 act (_weight_int8pack_mm)", functools.partial(int8_weight_only, act_dtype=torch.float32)),
    ("int8 weights dequantized to bf16, F.linear", int8_dequantized),
    ("int8 weights and activations (fbgemm dynamic)", int8_dynamic_fbgemm),
    ("int8 weights, activations 8-bit per row (the engine's q8, fbgemm)", q8_engine),
    ("the engine's q8 with its step kernel (step_kernel.cpp)", q8_step_kernel),
    ("the engine's q8 reading a prompt (its prompt kernel, oneDNN)", q8_prompt_kernel),
    ("int4 weights per 32, bf16 act (_weight_int4pack_mm_for_cpu)", int4_groups),
    ("int8 weights, bf16 act, torch.compile (inductor, freezing)", int8_compiled),
    ("int8 weights and activations per 32 (ONNX Runtime MatMulNBits)", int8_onnx_runtime),
]


def main() -> None:
    parser = argparse.ArgumentParser(description="Time batch-1 matmul kernels over a GPT-2's weights.")
    parser.add_argument(
        "--size", default="gpt2-xl", choices=list(KNOWN_MODELS), help="whose matrices (default gpt2-xl)"
    )
    parser.add_argument(
        "--rows", type=int, default=1, help="rows of x: 1 = plain decode, 2 = with the shadow context, 20+ = a prompt"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per kernel (median reported)")
    parser.add_argument("--only", default="", help="run only kernels whose name contains this")
    args = parser.parse_args()
    shapes = matrices(args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}, rows={args.rows}")
    print("| kernel | weight GB | ms / pass | GB/s | % of read probe |\n|---|---|---|---|---|")
    for name, build in KERNELS:
        if args.only not in name:
            continue
        try:
            nbytes, run = build(shapes, args.rows)
            with torch.inference_mode():
                seconds = timed(run, args.repeats)
        except Exception as error:  # noqa: BLE001 - a kernel this torch lacks is a row that says so
            first = (str(error).splitlines() or [""])[0]  # an assert says nothing
            print(f"| {name} | - | unavailable: {type(error).__name__}: {first[:80]} | | |")
            continue
        finally:
            run = build = None  # free this layout before the next
        probe = read_bandwidth()
        print(
            f"| {name} | {nbytes / 1e9:.2f} | {seconds * 1e3:.0f} | {nbytes / seconds / 1e9:.1f} | {nbytes / seconds / 1e9 / probe:.0%} (probe {probe:.1f}) |",
            flush=True,
        )


if __name__ == "__main__":
    bench.run(main)
