"""Speed beside a busy neighbour: the engine's thread policy against all cores and one thread, in one run.

A presenter's laptop always runs something else (the browser that shows the page, slides, a call). This decodes
the same text through `engine.stream()` (the batch, as the page and the command line do) in phases: quiet, beside
one busy process (a pure-Python loop, pinned nowhere), quiet again, and beside two; each phase under each policy:
the engine's own (`adaptive`: gpt2_engine.threads), every core pinned (what torch does by default) and one thread
pinned. Each row: tokens/s, its ratio to the same policy's first quiet phase, and the thread counts its passes ran
with; and beside it what a plain read of memory reaches in the same phase on one thread and on every core, and
the better of the two against quiet's better, the most a decode step (which reads every weight once) could keep
there. The machine's CPU and flags are printed first.

    python -m bench.busy --model bench/models/gpt2-xl                 # auto's precision, 48 tokens a phase
    python -m bench.busy --model bench/models/gpt2-xl --tokens 96 --policies adaptive
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import bench
import gpt2_engine
from bench.kernels import read_bandwidth
from gpt2_engine import capabilities
from gpt2_engine.threads import cores, passing, policy_for

PHRASE = "The old lighthouse keeper climbed the stairs every evening, and"
PHASES = (("quiet", 0), ("1 busy", 1), ("quiet again", 0), ("2 busy", 2))
POLICIES = {"adaptive": None, "all cores": -1, "one thread": 1}  # pinned count (-1: every core)


@contextmanager
def busy(processes: int) -> Iterator[None]:
    """`processes` pure-Python busy loops beside this one, for as long as the block runs."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5 if loops else 0)  # the scheduler has seen them
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def reads() -> tuple[float, float]:
    """GB/s of a plain read of memory on one thread and on every core, each in a thread that ends with it (so
    that no OpenMP pool it makes lives on beside the batch's: gpt2_engine.threads.passing)."""

    def read(threads: int) -> float:
        torch.set_num_threads(threads)
        return read_bandwidth(1.0, 7)

    return passing(read, 1), passing(read, cores())


def tokens_per_s(engine: gpt2_engine.Engine, tokens: int) -> float:
    steps = list(engine.stream(PHRASE, max_new_tokens=tokens, seed=1, stop_at_eos=False, window=50))
    first, last = steps[0].elapsed_s, steps[-1].elapsed_s
    return (len(steps) - 1) / (last - first)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-xl", help="a known name, hub id or folder (a stand-in works)")
    parser.add_argument("--precision", default="auto", help="auto (what the page would pick), fp32, q8, ...")
    parser.add_argument("--tokens", type=int, default=48, help="tokens written in each phase")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"of: {', '.join(POLICIES)}")
    args = parser.parse_args(argv)
    flags = " ".join(sorted(capabilities.cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}))
    print(f"{capabilities.cpu_name()} ({flags}), {cores()} cores")
    engine = gpt2_engine.load(args.model, dtype=args.precision)
    print(f"{args.model} at {engine.precision}; {args.tokens} tokens a phase, window 50")
    list(engine.stream(PHRASE, max_new_tokens=8, seed=0))  # warm-up
    rows, threads = [], policy_for(engine.model)
    for policy in args.policies.split(","):
        pinned = POLICIES[policy]
        threads.pin(threads.most if pinned == -1 else pinned)
        quiet = quiet_read = None
        for phase, processes in PHASES:
            with busy(processes):
                one, every = reads()
                threads.passes_by_count.clear()
                speed = tokens_per_s(engine, args.tokens)
            better = max(one, every)
            quiet, quiet_read = quiet or speed, quiet_read or better
            counts = ", ".join(f"{n}: {c}" for n, c in sorted(threads.passes_by_count.items()))
            rows.append((policy, phase, speed, speed / quiet, counts, one, every, better / quiet_read))
            print(
                f"{policy:10} {phase:12} {speed:6.2f} tok/s  x{speed / quiet:.2f}  passes by threads {counts}; "
                f"a read {one:.1f} / {every:.1f} GB/s, x{better / quiet_read:.2f}"
            )
    threads.pin(None)
    print(
        "\n| policy | phase | tok/s | x its quiet | passes by thread count | a read, 1 thread / every core (GB/s) "
        "| the better read x quiet's |\n|---|---|---:|---:|---|---|---:|"
    )
    for policy, phase, speed, ratio, counts, one, every, read_ratio in rows:
        print(
            f"| {policy} | {phase} | {speed:.2f} | {ratio:.2f} | {counts} | {one:.1f} / {every:.1f} | {read_ratio:.2f} |"
        )


if __name__ == "__main__":
    bench.run(main)
