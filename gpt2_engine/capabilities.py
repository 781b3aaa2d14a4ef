"""Which precisions run on this machine, and why not the others: probed by running each kernel once.

CPUs differ: oneDNN packs bf16 weights only on CPUs with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, int8
weights need torch's `_weight_int8pack_mm`, q8 needs fbgemm (or qnnpack), and a GPU has neither here. Reading CPU flags is how the
kernels decide, but their rules change between releases, so each precision is probed by calling the very
operation the engine will call, on a small tensor, and a refusal is kept as the reason. The page offers
only what runs; the command line refuses the rest with that sentence.

    support = capabilities.supported(torch.device("cpu"))
    support["bf16"].runs, support["bf16"].why   # False, "bf16 needs a CPU with AVX-512 ...; this one has AVX2"
"""

from __future__ import annotations

import functools
import logging
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .threads import passing

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "q8")
LOG = logging.getLogger("gpt2_studio")


@dataclass(frozen=True)
class Support:
    """Whether a precision runs on a device, and if not, a sentence that says why."""

    precision: str
    runs: bool
    why: str = ""  # empty when it runs; a sentence for the page and the command line
    detail: str = ""  # the kernel's own refusal, for the log


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_units(flags: frozenset[str] | None = None) -> str:
    """What this CPU has, in the words the reasons use: "AVX-512 with BF16 and AMX", "AVX2", "ARM (aarch64)"."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64") or "asimd" in flags:
        return f"ARM ({machine})" + (" with BF16" if "bf16" in flags else "")
    if "avx512f" in flags:
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"):  # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA
            return "AVX-512, limited to AVX2 for torch here"
        extras = [name for flag, name in (("avx512_bf16", "BF16"), ("amx_bf16", "AMX")) if flag in flags]
        return "AVX-512" + (f" with {' and '.join(extras)}" if extras else " without BF16")
    if "avx2" in flags:
        return "AVX2"
    return "no AVX2" if flags else machine or "an unknown CPU"


def _probe_fp32() -> None:
    F.linear(torch.ones(2, 16), torch.ones(8, 16))


def _probe_bf16() -> None:
    """What quantize.PackedLinear does: oneDNN's reorder into its blocked layout, then its linear."""
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 16, dtype=torch.bfloat16), 1)
    torch.ops.mkldnn._linear_pointwise(torch.ones(1, 16, dtype=torch.bfloat16), packed, None, "none", [], "")


def _probe_fp16() -> None:
    F.linear(torch.ones(2, 16, dtype=torch.float16), torch.ones(8, 16, dtype=torch.float16))


def _probe_int8() -> None:
    """What quantize.Int8Linear does for a decode step (activations in bf16)."""
    torch.ops.aten._weight_int8pack_mm(
        torch.ones(1, 64, dtype=torch.bfloat16),
        torch.ones(32, 64, dtype=torch.int8),
        torch.ones(32, dtype=torch.bfloat16),
    )


def _probe_q8() -> None:
    """What q8.Q8Linear does: fbgemm's packed int8 weights, activations made 8-bit at the call."""
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch: the probe notices removal
        warnings.simplefilter("ignore", UserWarning)
        weight = torch._make_per_channel_quantized_tensor(
            torch.ones(32, 64, dtype=torch.int8),
            torch.ones(32, dtype=torch.double),
            torch.zeros(32, dtype=torch.long),
            0,
        )
    torch.ops.quantized.linear_dynamic(torch.ones(1, 64), torch.ops.quantized.linear_prepack(weight, None), True)


# each raises where its kernel refuses this CPU; tests swap one for a refusal to see the other branch
CPU_PROBES: dict[str, Callable[[], None]] = {
    "fp32": _probe_fp32,
    "bf16": _probe_bf16,
    "fp16": _probe_fp16,
    "int8": _probe_int8,
    "q8": _probe_q8,
}

NEEDS = {  # what each precision needs on a CPU, said when the probe is refused
    "fp32": "fp32 needs nothing special",
    "bf16": "bf16 needs a CPU with AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or ARM's BF16",
    "fp16": "fp16 needs a CPU whose torch build can multiply half-precision matrices",
    "int8": "int8 needs torch's int8 weight kernel (torch 2.3 or newer) on an x86 or ARM CPU",
    "q8": "q8 needs torch's quantized engine (fbgemm on x86, qnnpack on ARM)",
}


def _probe(precision: str) -> Support:
    try:
        with torch.inference_mode():
            CPU_PROBES[precision]()
    except Exception as error:  # noqa: BLE001 - any refusal by the kernel means "not here"
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        LOG.info("%s does not run here: %s", precision, detail)
        return Support(precision, False, f"{NEEDS[precision]}; this one has {vector_units()}", detail)
    return Support(precision, True)


@functools.cache
def _cpu_support() -> dict[str, Support]:
    # in a passing thread: a probe's kernels would leave the caller's thread an OpenMP pool (threads.passing),
    # and a command line that probed in its main thread decoded a third slower in the batch's
    return passing(lambda: {precision: _probe(precision) for precision in PRECISIONS})


def supported(device: torch.device | str = "cpu") -> dict[str, Support]:
    """Every precision, and whether it runs on `device` (probed once per process for the CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_support()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return {
        "fp32": Support("fp32", True),
        "bf16": Support("bf16", bf16, "" if bf16 else "bf16 needs a GPU with bfloat16 (Ampere or newer); use fp16"),
        "fp16": Support("fp16", True),
        "int8": Support("int8", False, "int8 runs on the CPU only: use bf16 or fp16 on a GPU"),
        "q8": Support("q8", False, "q8 runs on the CPU only: use bf16 or fp16 on a GPU"),
    }


def runnable(device: torch.device | str = "cpu") -> list[str]:
    """The precisions that run on `device`, in PRECISIONS' order."""
    return [p for p, support in supported(device).items() if support.runs]


def forget() -> None:
    """Probe again at the next question (tests, after swapping a probe)."""
    _cpu_support.cache_clear()
