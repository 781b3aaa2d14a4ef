"""q8's decode-step kernel: step_kernel.cpp, built here for this CPU at the first q8 load, and used only where it
gives fbgemm's results bit for bit and reads a matrix faster.

A decode step reads every weight once for one row of activations (a few with a batch), so its time is the weights'
bytes over the memory's bandwidth. fbgemm's dynamic linear, q8's kernel for steps, read gpt2-xl's matrices on one
row in 84-100 ms on this project's Xeon, 52-64% of a read probe; this kernel, which lays each four rows of a matrix
out in the order it reads them and prefetches ahead, in 78-81 ms through Q8Linear, 67-75 alone (docs/measurements.md,
"The step kernel"). It makes each row 8-bit exactly as Q8Linear has fbgemm do, so a text never depends on which
kernel read it.

It needs a C++ compiler, ninja (a requirement) and a CPU with VNNI (AVX-512 or AVX); without them, or where the
build or the check fails, fbgemm reads the steps as before, and `why_not()` says why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .capabilities import cpu_flags
from .memory import available_bytes
from .weights_cache import remove_abandoned, user_cache

SOURCE = Path(__file__).with_name("step_kernel.cpp")
BLOCK, WIDTH = 4, 64  # step_kernel.cpp reads 4 rows of a matrix together, 64 values at a time
ROWS = 4  # the activation rows it reads each weight once for from memory: a call of more reads each block again,
# a group of ROWS at a time, while it is still in the core's cache
MOST = 8  # the most rows a call reads through it (gpt2-xl's 193 matrices, the dev VM: 5 rows 93 ms, 8 rows 105 ms,
# against 118-122 ms through the prompt kernel; 12 rows 125 against 127, 16 rows 146 against 134)
X_SCALE = float(torch.tensor(2.0 / 255.0))  # Q8Linear's pinned range [-1, 1] made 8-bit, as fbgemm makes it
X_INVERSE = float(torch.tensor([1.0 / X_SCALE]))  # fbgemm multiplies by this fp32 inverse, in a fused multiply-add
X_ZERO = 128
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]  # for this CPU; its fp32 rounded as written
FORCED: bool | None = None  # None: decided at each q8 load (`pays`); tests force an answer
FASTER = 1.05  # the step kernel is kept only where a step's row reads at least this much faster than fbgemm's
LOG = logging.getLogger("gpt2_studio")


_BUILDING = threading.Lock()  # two models loading at once build and load it once


def why_not() -> str:
    """Empty where the kernel is built and loaded in this process, else a sentence saying why not. The build (8-30
    s) is kept in ~/.cache/gpt2-studio/kernels (whatever GPT2_STUDIO_CACHE says of converted weights), under a name
    that carries the source, torch's version, the flags and the CPU's flags (-march=native builds for this CPU: a
    home folder shared by two machines never loads the other's build); later processes load it in a moment, with
    no compiler."""
    with _BUILDING:
        return _build()


@functools.cache
def _build() -> str:
    if not {"avx512_vnni", "avx_vnni"} & cpu_flags():
        return "this CPU has no VNNI"
    said = " ".join([torch.__version__, *sorted(cpu_flags()), *FLAGS])  # a build links one torch's libraries
    key = hashlib.sha1(SOURCE.read_bytes() + said.encode()).hexdigest()[:12]
    built = user_cache() / "kernels" / f"step_kernel_{key}.so"
    try:
        if built.exists():
            torch.ops.load_library(str(built))
            return ""
        with contextlib.suppress(ImportError):  # the build tool torch's builder calls: its wheel's, else PATH's
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
        from torch.utils.cpp_extension import load

        # a folder of its own: torch's shared one has a lock that a killed build leaves, and the next waits on it
        with tempfile.TemporaryDirectory(prefix="gpt2-studio-build-") as work:
            name = f"step_kernel_{key}"
            load(
                name,
                [str(SOURCE)],
                extra_cflags=FLAGS,
                extra_ldflags=["-fopenmp"],  # at::parallel_for's threads: torch's own OpenMP pool
                build_directory=work,
                is_python_module=False,  # loaded into torch.ops, and needs no Python headers
                verbose=False,
            )
            with contextlib.suppress(OSError):  # kept for later processes, renamed into place whole
                built.parent.mkdir(parents=True, exist_ok=True)
                remove_abandoned(built.parent)
                partial = built.with_name(f".{built.name}.{os.getpid()}.tmp")  # what remove_abandoned looks for
                shutil.copyfile(Path(work) / f"{name}.so", partial)
                os.replace(partial, built)
    except Exception as error:  # noqa: BLE001 - no compiler, no ninja, a build that fails: fbgemm reads the steps
        LOG.info("the step kernel is not built: %s", error)
        lines = str(error).strip().splitlines() or [""]
        said = next((line for line in lines if "error:" in line), lines[-1]).strip()  # the compiler's, if it spoke
        return f"it could not be built here ({type(error).__name__}: {said[:160]})"
    return ""


def agrees(fbgemm: Any, weight: Tensor, scales: Tensor) -> bool:
    """Whether the kernel is built here and gives the results of `fbgemm` (a q8.Q8Linear of `weight`, `scales` and a
    bias, with no other kernel; q8 imports this module, so it is passed in) bit for bit, for every row count
    Q8Linear gives it (1 to MOST) and one more. Never where fbgemm keeps 7 bits (`reduce_range`: CPUs without
    VNNI)."""
    if fbgemm.reduce_range or why_not():
        return False
    step = StepKernel(weight, scales)
    rows = torch.randn(MOST + 1, weight.shape[1]) * torch.rand(MOST + 1, 1) * 10
    with torch.inference_mode():
        for n in range(1, MOST + 2):
            if not torch.equal(step(rows[:n], fbgemm.bias), fbgemm(rows[:n])):
                LOG.warning("the step kernel differs from fbgemm at %d rows here: fbgemm reads the steps", n)
                return False
    return True


def pays(fbgemm: Any, weight: Tensor, scales: Tensor, copy_bytes: int) -> bool:
    """Whether the kernel reads the steps: it agrees with `fbgemm` (`agrees`), one row through `weight` takes fbgemm
    FASTER times as long, and `copy_bytes` more (its copy where fbgemm's stays, for prompts, or 0) leave as much
    memory free again. FORCED, where set, answers instead. Where it says no, `declined` says why."""
    global declined
    declined = ""
    if FORCED is not None:
        declined = "" if FORCED else "turned off (step_kernel.FORCED)"
        return FORCED
    if fbgemm.reduce_range:
        declined = "fbgemm keeps 7 bits on this CPU (no VNNI)"
    elif why_not():
        declined = why_not()
    elif available_bytes() < 2 * copy_bytes:
        declined = f"{available_bytes() / 1e9:.1f} GB free, and its copy needs {2 * copy_bytes / 1e9:.1f}"
    elif not agrees(fbgemm, weight, scales):
        declined = "its results differ from fbgemm's here"
    else:
        step, row = StepKernel(weight, scales), torch.randn(1, weight.shape[1])
        with torch.inference_mode():
            theirs, ours = best_of(5, lambda: fbgemm(row)), best_of(5, lambda: step(row, fbgemm.bias))
        if theirs < FASTER * ours:
            declined = f"a row took {ours * 1e3:.3f} ms, fbgemm's {theirs * 1e3:.3f} ms ({FASTER}x faster needed)"
    if declined:
        LOG.info("q8's step kernel is not used: %s", declined)
    return not declined


declined = ""  # why the last `pays` said no ("" where it said yes): `bench.soak` prints it


def best_of(repeats: int, call: Callable[[], object]) -> float:
    """The shortest of `repeats` timed calls, after one untimed (which packs and warms)."""
    call()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


class StepKernel:
    """A Q8Linear's int8 matrix laid out for step_kernel.cpp: padded to whole blocks of 4 rows and 64 columns, each
    block's rows interleaved 64 bytes at a time, with the scale and zero-point offset of each row."""

    def __init__(self, weight: Tensor, scales: Tensor):
        if why_not():
            raise RuntimeError(f"the step kernel does not run here: {why_not()}")
        out, width = weight.shape
        rows, columns = -(-out // BLOCK) * BLOCK, -(-width // WIDTH) * WIDTH
        padded = weight.new_zeros(rows, columns)
        padded[:out, :width] = weight
        self.weight = padded.view(rows // BLOCK, BLOCK, columns // WIDTH, WIDTH).transpose(1, 2).contiguous()
        self.scales = torch.zeros(rows)
        self.scales[:out] = torch.tensor(X_SCALE) * scales.float()  # in fp32, as fbgemm multiplies them
        self.offsets = torch.zeros(rows, dtype=torch.int32)
        self.offsets[:out] = X_ZERO * weight.sum(dim=1, dtype=torch.int32)
        self.out_features = out
        self.nbytes = self.weight.numel() + 8 * rows  # what a step reads: the matrix, the scales and the offsets

    def __call__(self, rows: Tensor, bias: Tensor) -> Tensor:
        """(R, out): `rows` (R, in) through the matrix, plus `bias`, as Q8Linear's fbgemm call gives them."""
        return torch.ops.gpt2_studio.q8_step(
            rows.contiguous(), self.weight.view(self.scales.shape[0], -1), self.scales, self.offsets, bias,
            self.out_features, X_INVERSE, X_ZERO,
        )  # fmt: skip
