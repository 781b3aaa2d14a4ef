"""Memory readings: the process's resident memory, its anonymous part, and what the machine has free.

RSS counts memory-mapped weight files too (safetensors are mapped, not copied), so the anonymous
part (RSS minus file-backed and shared pages) is what the process really allocated. Each reading
is one small read of /proc, cheap enough to take after every token.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from dataclasses import dataclass

import psutil

_PROCESS = psutil.Process()
GB = 1e9
MB = 1e6


@dataclass(frozen=True)
class MemoryReading:
    rss_bytes: int  # resident set size: every page of this process in RAM
    anon_bytes: int  # the part not backed by a file (heap, tensors made at run time)


def read_process_memory() -> MemoryReading:
    info = _PROCESS.memory_info()
    shared = getattr(info, "shared", 0)  # Linux: file-backed and shared pages (statm's third field)
    return MemoryReading(rss_bytes=info.rss, anon_bytes=max(0, info.rss - shared))


def available_bytes() -> int:
    """Memory the machine can give without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def release_freed_memory() -> None:
    """Hands memory the process has freed back to the system, where the C library can (glibc's
    `malloc_trim`; elsewhere nothing happens). Freed tensors otherwise stay resident for reuse, so a
    run's RSS would start where the last one peaked, and a window reset in tutorial mode would show
    as a plateau instead of a drop. Takes milliseconds."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def page_in(tensor: object) -> None:
    """Makes every page of a tensor resident now, by reading it once. A step reads only one row of the token
    embedding per token, so when the embedding is mapped from the weights file (q8 and int8 keep the fp32 `wte`
    for lookups) its pages came in one new token id at a time: a room's random phrases paged in gpt2-xl's 322 MB
    over hours, which the soak measured as a slope of about 10 MB a minute and the chart as part of "added by
    this run". Read at load, it is part of what the process holds before any run. Milliseconds."""
    import torch

    with torch.inference_mode():
        tensor.sum()  # type: ignore[attr-defined]


MADV_DONTNEED = 4  # Linux: drop these pages from the process; a file's own pages stay in the page cache


def drop_file_pages(tensor: object) -> None:
    """Stops counting a tensor's pages in this process's RSS when they are mapped from a `.safetensors`
    file or the weights cache's `.pt` and no longer needed (a matrix already converted to bf16 or int8, or
    copied into fbgemm's own layout by q8). Without this, converting
    gpt2-xl maps all 6.2 GB of its fp32 file into the process on the way (peak RSS 10 GB for 3.3 GB of
    bf16 weights). Only whole pages inside the tensor's own storage are dropped; memory that is not
    mapped from such a file is left alone, so this can never discard data."""
    if _LIBC is None or not hasattr(_LIBC, "madvise"):
        return
    storage = tensor.untyped_storage()  # type: ignore[attr-defined]
    start, size = storage.data_ptr(), storage.nbytes()
    if not size or not _mapped_from_weights_file(start):
        return
    page = mmap.PAGESIZE
    first, end = -(-start // page) * page, (start + size) // page * page
    if end > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), MADV_DONTNEED)


def _mapped_from_weights_file(address: int) -> bool:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high:
                    return len(fields) == 6 and fields[5].strip().endswith((".safetensors", ".pt"))  # weights cache
    except OSError:  # not Linux
        pass
    return False


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _load_libc()

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_FROM_BYTES = 1 << 20


_large_allocations_mapped = False


def map_large_allocations() -> bool:
    """Every allocation of 1 MB or more gets pages of its own, handed back to the system when freed (glibc's
    M_MMAP_THRESHOLD, fixed: by default it rises to the size of the last large block freed, up to 32 MB, so that a
    run's KV cache could come out of memory an earlier run freed, or stay in the heap after it). So a run's KV
    cache and a prompt's large activations are counted while they live and gone when freed: what the chart draws
    as "added by this run" is the cache its window allows, plus a small heap of small objects. It is set for the
    whole process, so it is done when a model is first loaded (`load`), not when the package is imported: a
    program that only imports gpt2_engine keeps its own malloc. Returns whether it is set (glibc only)."""
    global _large_allocations_mapped
    if not _large_allocations_mapped and _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _large_allocations_mapped = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES))
    return _large_allocations_mapped


def format_bytes(n: float) -> str:
    """1.23 GB / 456 MB / 12 kB: decimal units, as memory is sold."""
    for unit, size in (("GB", GB), ("MB", MB), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"
