"""Does the stream freeze at a window reset? The gaps between tokens of one long run, and where the longest fall.

One run through `engine.stream()` (the batch, as the page does) with a small window, so that it resets often:
its median gap, its longest gaps with their token index and whether a reset came just before, and the longest
over the median, for the engine's window mode (the shadow row, `auto`'s chunk) and, for comparison, a plain
re-prime of the window at each reset.

    python -m bench.gaps --model bench/models/gpt2-xl --window 20 --tokens 300
    python -m bench.gaps --model bench/models/gpt2-xl --cost 50 --tokens 200   # and what window 50 costs a token

With `--cost N`, it also times window N against off over the same tokens, in alternating rounds (3 each), and
prints each side's median time a token and their ratio: the window's cost, its read-ahead included.
"""

from __future__ import annotations

import argparse
import statistics

import bench
import gpt2_engine
from gpt2_engine import capabilities

PHRASE = "The old lighthouse keeper climbed the stairs every evening, and"


def gaps(engine: gpt2_engine.Engine, window: int, tokens: int, mode: str) -> None:
    steps = list(
        engine.stream(PHRASE, max_new_tokens=tokens, seed=3, window=window, stop_at_eos=False, window_mode=mode)
    )
    gaps_s = [(b.elapsed_s - a.elapsed_s, b.index, b.reset) for a, b in zip(steps, steps[1:])]
    median = statistics.median(g for g, _, _ in gaps_s)
    longest = sorted(gaps_s, reverse=True)[:5]
    where = ", ".join(f"{g * 1000:.0f} ms at {i}{' (reset)' if r else ''}" for g, i, r in longest)
    print(
        f"| {mode} | {median * 1000:.0f} | {longest[0][0] * 1000:.0f} | {longest[0][0] / median:.2f} "
        f"| {sum(s.reset for s in steps)} | {where} |"
    )


def cost(engine: gpt2_engine.Engine, window: int, tokens: int, rounds: int = 3) -> None:
    """Window N against off, median seconds a token over `tokens`, alternating rounds."""
    times: dict[int | None, list[float]] = {None: [], window: []}
    for _ in range(rounds):
        for each in (None, window):
            steps = list(engine.stream(PHRASE, max_new_tokens=tokens, seed=3, window=each, stop_at_eos=False))
            times[each] += [b.elapsed_s - a.elapsed_s for a, b in zip(steps, steps[1:])]
    off, windowed = statistics.median(times[None]), statistics.median(times[window])
    mean_off, mean_windowed = statistics.mean(times[None]), statistics.mean(times[window])
    print(
        f"window {window} against off, {tokens} tokens x {rounds} rounds: median {windowed * 1000:.1f} against "
        f"{off * 1000:.1f} ms a token ({windowed / off - 1:+.1%}); mean {mean_windowed * 1000:.1f} against "
        f"{mean_off * 1000:.1f} ({mean_windowed / mean_off - 1:+.1%})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-xl", help="a known name, hub id or folder (a stand-in works)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--modes", default="shadow,reprime")
    parser.add_argument("--cost", type=int, default=0, help="also time this window against off (0: no)")
    args = parser.parse_args(argv)
    engine = gpt2_engine.load(args.model, dtype=args.precision)
    print(
        f"{capabilities.cpu_name()}; torch kernels: {capabilities.vector_units()}; {args.model} at {engine.precision}, "
        f"window {args.window}, {args.tokens} tokens; the shadow row reads {engine.shadow_chunk} a step"
    )
    list(engine.stream(PHRASE, max_new_tokens=8, seed=0))  # warm-up
    print("| resets by | median gap (ms) | longest (ms) | longest / median | resets | five longest |")
    print("|---|---:|---:|---:|---:|---|")
    for mode in args.modes.split(","):
        gaps(engine, args.window, args.tokens, mode)
    if args.cost:
        cost(engine, args.cost, args.tokens)


if __name__ == "__main__":
    bench.run(main)
