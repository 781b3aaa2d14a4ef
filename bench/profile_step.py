"""Where one decode step's time goes: torch's profiler over the engine's own decoder, stepped alone in this
thread (a stream runs the same Decoder in the batch's thread, where this thread's profiler would not see it).

The prompt is read and a few tokens written before the profiler starts, so the table holds decode steps
only: forward, sampling, memory reading and the Step itself. Times are per token.

    python -m bench.profile_step bench/models/gpt2-xl int8 --tokens 10
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import bench
import gpt2_engine


def main() -> None:
    parser = argparse.ArgumentParser(description="Profile the engine's decode steps.")
    parser.add_argument("model", help="a model folder or name")
    parser.add_argument("precision", help="auto, fp32, bf16, fp16 or int8")
    parser.add_argument("--tokens", type=int, default=10, help="decode steps profiled")
    parser.add_argument("--rows", type=int, default=12, help="operators listed")
    args = parser.parse_args()
    engine = gpt2_engine.load(args.model, dtype=args.precision)
    settings = engine.settings_for(max_new_tokens=args.tokens + 5, seed=0, stop_at_eos=False)
    decoder = engine.decoder("The quick brown fox jumps over the lazy dog. " * 2, settings)
    for _ in range(5):  # the prompt is read; a warm-up
        decoder.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.tokens):
            decoder.step()
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    total_ms = seconds * 1e3 / args.tokens
    print(f"{engine.name}, {engine.precision}, {torch.get_num_threads()} threads: {total_ms:.1f} ms a token")
    print("| operator | ms / token | share |\n|---|---|---|")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]:
        ms = event.self_cpu_time_total / 1e3 / args.tokens
        print(f"| {event.key} | {ms:.2f} | {ms / total_ms:.0%} |")


if __name__ == "__main__":
    bench.run(main)
