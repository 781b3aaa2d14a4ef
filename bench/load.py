"""Load figures: K simulated visitors stream from one engine at once, decoded together in its batch.

For each K (1, 2, 4, 8 by default) K threads start together, each driving `engine.stream()` with its own phrase
and seed, as K visitors pressing Generate at the same moment; each writes --tokens tokens. Once they are all
writing, one more visitor joins mid-batch and writes a few tokens: its time to first token is set beside what
the target allows (its phrase's prefill alone, plus two of the batch's steps). Reported per K: each visitor's
decode tok/s (median and slowest; after its first token), the aggregate tok/s (every token of the K visitors over
the round's wall time) and its ratio to K = 1, time to first token (median and worst, prefill included), the
joiner's, and the process's peak RSS (sampled every 20 ms).

    python -m bench.load --model bench/models/gpt2-xl                  # the precision `auto` picks
    python -m bench.load --model bench/models/gpt2-xl --precision q8 --tokens 64 --visitors 1 2 4 8
    python -m bench.load --model /path/to/tiny --precision fp32 --tokens 8 --visitors 1 2 --out load.json
    python -m bench.load --backend http://127.0.0.1:8080/v1 --server-pid 1234   # K HTTP clients of a server

Against a remote backend (vLLM, llama.cpp's server: gpt2_engine.remote) each visitor is an HTTP client streaming
from the server, and the peak RSS is the server's (--server-pid), which this process cannot see otherwise.

The batch's bound on runs is raised here to the largest K + 1 (--max-runs to set it), so that the joiner of the
largest K is decoded beside the others rather than queued (the page's default is 8: GPT2_STUDIO_MAX_RUNS); the
memory bound still holds. Beyond the bound visitors queue, which these figures would show as time to first token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

import bench
import gpt2_engine
from gpt2_engine.memory import read_process_memory

PHRASES = (
    "The cat sat on the mat and",
    "Once upon a time, there was a",
    "In the beginning of the year, the council",
    "My favourite recipe for a rainy day is",
    "The train left the station at dawn, and",
    "Scientists announced today that the new telescope",
    "When I was young, my grandmother told me",
    "The best way to learn a language is",
    "Late at night the lighthouse keeper heard",
)
JOINER_TOKENS = 4  # the visitor who joins mid-batch writes this many


@dataclass
class Visitor:
    started: float = 0.0
    first: float = 0.0  # when the first token came
    last: float = 0.0
    tokens: int = 0
    error: str = ""

    @property
    def ttft_s(self) -> float:
        return self.first - self.started

    @property
    def decode_tok_s(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0


@dataclass
class Round:
    visitors: int
    per_visitor_tok_s_median: float
    per_visitor_tok_s_slowest: float
    aggregate_tok_s: float
    ratio_to_one: float
    ttft_median_s: float
    ttft_worst_s: float
    joiner_ttft_s: float
    joiner_bound_s: float  # its prefill alone + two of this batch's steps
    peak_rss_bytes: int | None  # this process's, or the server's (--server-pid); None: not measured
    largest_batch: int | None  # the most runs one forward pass served (this machine's batch only)


def visit(engine: gpt2_engine.Engine, phrase: str, seed: int, tokens: int, out: Visitor, go: threading.Event) -> None:
    go.wait()
    out.started = time.perf_counter()
    try:
        for _step in engine.stream(phrase, max_new_tokens=tokens, seed=seed, stop_at_eos=False):
            now = time.perf_counter()
            out.first = out.first or now
            out.last, out.tokens = now, out.tokens + 1
    except Exception as error:  # noqa: BLE001 - reported in the table, not a traceback per thread
        out.error = f"{type(error).__name__}: {error}"


def prefill_s(engine: gpt2_engine.Engine, phrase: str) -> float:
    """Time to first token alone: the phrase's prefill and one sample."""
    start = time.perf_counter()
    next(iter(engine.stream(phrase, max_new_tokens=1, seed=0)))
    return time.perf_counter() - start


def own_rss() -> int:
    """This process's resident memory: the engine's, when the model is loaded here."""
    return read_process_memory().rss_bytes


def one_round(engine, k: int, tokens: int, one_alone: float | None, rss: Callable[[], int] = own_rss) -> Round:
    batcher = getattr(engine, "batcher", None)  # a RemoteEngine has none: the server batches
    if batcher is not None:
        batcher.largest_batch = 0
    visitors = [Visitor() for _ in range(k)]
    joiner = Visitor()
    go = threading.Event()
    threads = [
        threading.Thread(target=visit, args=(engine, PHRASES[i % len(PHRASES)], 1000 + i, tokens, visitors[i], go))
        for i in range(k)
    ]
    peak = [rss()]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for thread in threads:
        thread.start()
    go.set()
    while not all(v.tokens >= min(4, tokens) or v.error for v in visitors):  # all writing: now one joins
        time.sleep(0.005)
    join_go = threading.Event()
    join_thread = threading.Thread(
        target=visit, args=(engine, PHRASES[-1], 7, JOINER_TOKENS, joiner, join_go), name="joiner"
    )
    join_thread.start()
    join_go.set()
    for thread in (*threads, join_thread):
        thread.join()
    sampling.set()
    sampler.join()
    errors = [v.error for v in (*visitors, joiner) if v.error]
    if errors:
        raise SystemExit(f"K={k}: {errors[0]}")
    rates = [v.decode_tok_s for v in visitors]
    wall = max(v.last for v in visitors) - min(v.started for v in visitors)
    aggregate = sum(v.tokens for v in visitors) / wall
    ttfts = [v.ttft_s for v in visitors]
    median_rate = statistics.median(rates)
    step_s = 1 / median_rate if median_rate else 0.0
    alone = prefill_s(engine, PHRASES[-1])
    return Round(
        visitors=k,
        per_visitor_tok_s_median=median_rate,
        per_visitor_tok_s_slowest=min(rates),
        aggregate_tok_s=aggregate,
        ratio_to_one=aggregate / one_alone if one_alone else 1.0,
        ttft_median_s=statistics.median(ttfts),
        ttft_worst_s=max(ttfts),
        joiner_ttft_s=joiner.ttft_s,
        joiner_bound_s=alone + 2 * step_s,
        peak_rss_bytes=peak[0] or None,
        largest_batch=batcher.largest_batch if batcher is not None else None,
    )


def markdown(rounds: list[Round]) -> str:
    lines = [
        "| visitors | per visitor tok/s (median / slowest) | aggregate tok/s | x one alone | TTFT median / worst (s) "
        "| joiner TTFT / bound (s) | peak RSS (GB) | largest batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.visitors} | {r.per_visitor_tok_s_median:.2f} / {r.per_visitor_tok_s_slowest:.2f} "
            f"| {r.aggregate_tok_s:.2f} | {r.ratio_to_one:.2f} | {r.ttft_median_s:.2f} / {r.ttft_worst_s:.2f} "
            f"| {r.joiner_ttft_s:.2f} / {r.joiner_bound_s:.2f} "
            f"| {f'{r.peak_rss_bytes / 1e9:.2f}' if r.peak_rss_bytes else '-'} | {r.largest_batch or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-xl", help="a known name, hub id or folder (a stand-in works)")
    parser.add_argument("--precision", default="auto", help="auto (what the page would pick), fp32, bf16, q8, ...")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each visitor writes")
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--max-runs", type=int, help="the batch's bound on runs (default: the largest K + 1)")
    parser.add_argument("--backend", help="a server's OpenAI-compatible API (…/v1) instead of a model loaded here")
    parser.add_argument("--server-pid", type=int, help="with --backend: the server's process, for its peak RSS")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rss = own_rss
    if args.backend:
        engine = gpt2_engine.RemoteEngine(args.backend)
        server = psutil.Process(args.server_pid) if args.server_pid else None
        rss = (lambda: server.memory_info().rss) if server else (lambda: 0)
        print(f"{engine.name}; {args.tokens} tokens each")
    else:
        engine = gpt2_engine.load(args.model, dtype=args.precision)
        engine.batcher.scheduler.max_runs = args.max_runs or max(args.visitors) + 1
        print(
            f"{args.model} at {engine.precision}; batch bound {engine.batcher.scheduler.max_runs} runs; {args.tokens} each"
        )
    for phrase in PHRASES[:2]:  # warm-up: first-pass allocations (the small heap each kind of pass grows once)
        list(engine.stream(phrase, max_new_tokens=4, seed=0))
    rounds: list[Round] = []
    for k in args.visitors:
        one_alone = rounds[0].aggregate_tok_s if rounds and rounds[0].visitors == 1 else None
        rounds.append(one_round(engine, k, args.tokens, one_alone, rss))
        print(f"K={k}: {rounds[-1].aggregate_tok_s:.2f} tok/s in all", flush=True)
    print(markdown(rounds))
    if args.out:
        report = {"model": engine.name, "precision": getattr(engine, "precision", None), "tokens": args.tokens}
        args.out.write_text(json.dumps({**report, "rounds": [asdict(r) for r in rounds]}, indent=2))


if __name__ == "__main__":
    bench.run(main)
