"""A room all day, compressed: K visitors write for T minutes, and what piles up, fails or stalls is counted.

Each visitor (a thread, as a page's visitor is a script thread) writes run after run through `engine.stream()`,
each with a phrase of a random length (1 to --max-phrase tokens), a random window (off, or 8 to 256 where the
model allows), seed and length, and now and then a Stop part-way (the stream closed). Reported: runs, runs that
failed (an exception the visitor did not cause), the process's RSS at the start and the end and its slope over the
last part of the soak (least squares over a sample a second, with its standard error; also with the KV caches of
the runs being written at each sample taken out, which swing RSS by a GB), each visitor's median and longest gap
between two tokens, and time to first token (median and worst). Every --lull-every minutes the room has a lull: each
visitor finishes the run it is writing and waits until every other has and the batch has ended, and RSS is read
then, as it is, with no run's cache in it: the slope through those readings is what piles up, without the live
caches' swing that a slope through every second carries (a 20-minute one moved between -7 and +31 MB/min).

    python -m bench.soak --model bench/models/gpt2-xl --visitors 8 --minutes 30
    python -m bench.soak --model bench/models/gpt2-large --precision q8 --runs 30 --words 4,236   # pile-up check
    python -m bench.soak --model bench/models/gpt2-large --fairness 1000   # 3 write, a 4th sends 1,000 tokens

`--runs N --words A,B`: one visitor, N runs one after another with phrases of A to B words, RSS after each run
(what a day of phrases of new lengths leaves behind). `--fairness T`: three visitors stream while a fourth sends a
T-token phrase: their median and longest gap while it is read.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

import bench
import gpt2_engine
from gpt2_engine import capabilities, fast, step_kernel
from gpt2_engine.memory import read_process_memory, release_freed_memory
from gpt2_engine.threads import policy_for

from .busy import busy

WORDS = [
    "the",
    "old",
    "keeper",
    "climbed",
    "stairs",
    "every",
    "evening",
    "lit",
    "lamp",
    "and",
    "watched",
    "ships",
    "pass",
    "by",
    "while",
    "gulls",
    "cried",
    "over",
    "harbour",
    "town",
    "where",
    "children",
    "played",
    "on",
    "cold",
    "stones",
    "near",
    "market",
    "stalls",
    "selling",
    "bread",
    "fish",
    "apples",
]


@dataclass
class Visitor:
    runs: int = 0
    failed: list[str] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    kv_bytes: int = 0  # the KV cache of the run it is writing now (0 between runs)


def phrase(chance: random.Random, words: int) -> str:
    return " ".join(chance.choice(WORDS) for _ in range(words))


def one_run(engine: gpt2_engine.Engine, chance: random.Random, visitor: Visitor, words: int | None = None) -> None:
    """A run with random settings; a Stop part-way one time in five."""
    limit = engine.n_positions // 2
    window = chance.choice([None, *(w for w in (8, 16, 20, 32, 50, 64, 128, 256) if w <= limit)])
    settings = gpt2_engine.GenerationSettings(
        max_new_tokens=chance.randint(1, 120), window=window, seed=chance.randrange(2**31), stop_at_eos=False
    )
    stop_at = chance.randint(1, 60) if chance.random() < 0.2 else None
    text = phrase(chance, words if words is not None else chance.randint(1, 900 * 3 // 4))  # ~0.75 words a token
    started, last = time.perf_counter(), None
    try:
        steps = engine.stream(text, settings)
        for n, step in enumerate(steps, 1):
            now = time.perf_counter()
            if last is None:
                visitor.ttfts_s.append(now - started)
            else:
                visitor.gaps_s.append(now - last)
            last = now
            visitor.kv_bytes = step.kv_bytes
            if n == stop_at:
                steps.close()  # a Stop
                break
        visitor.runs += 1
    except Exception as error:  # noqa: BLE001 - counted: no run should fail
        visitor.failed.append(f"{type(error).__name__}: {error}")
    finally:
        visitor.kv_bytes = 0


def slope_and_error(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """Least-squares slope of RSS over time and its standard error, MB a minute. The samples are a second apart and a
    run holds its KV cache for minutes, so neighbours are alike: the error counts the samples as fewer by their lag-1
    autocorrelation (n (1 - r) / (1 + r)), or it would claim a precision the soak does not have."""
    if len(samples) < 3:
        return 0.0, float("inf")
    xs, ys = [t / 60 for t, _ in samples], [rss / 1e6 for _, rss in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return 0.0, float("inf")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    residuals = [y - my - slope * (x - mx) for x, y in zip(xs, ys)]
    squares = sum(r * r for r in residuals)
    if not squares:
        return slope, 0.0
    lag1 = max(0.0, sum(a * b for a, b in zip(residuals, residuals[1:])) / squares)
    effective = max(3.0, len(samples) * (1 - lag1) / (1 + lag1))
    return slope, (squares / (len(samples) - 2) / var * len(samples) / effective) ** 0.5


def describe_slope(samples: list[tuple[float, int]]) -> str:
    slope, error = slope_and_error(samples)
    return f"{slope:+.2f} ± {error:.2f} MB/min"


def soak(
    engine: gpt2_engine.Engine,
    visitors: int,
    minutes: float,
    seed: int,
    last_minutes: float,
    runs_each: int = 0,
    lull_every: float = 0.0,
) -> None:
    release_freed_memory()
    start_rss = read_process_memory().rss_bytes
    t0 = time.perf_counter()
    end = t0 + 60 * minutes
    samples: list[tuple[float, int]] = []
    beside_kv: list[tuple[float, int]] = []  # RSS less the KV caches of the runs being written at that moment
    done = threading.Event()
    results = [Visitor() for _ in range(visitors)]

    def sample() -> None:
        while not done.wait(1.0):
            now, rss = time.perf_counter() - t0, read_process_memory().rss_bytes
            samples.append((now, rss))
            beside_kv.append((now, rss - sum(v.kv_bytes for v in results)))

    lulls: list[tuple[float, int]] = []  # RSS with no run live: each lull's (the k-th due at k x every) and the end's
    every = 0.0 if runs_each else 60 * lull_every

    def lull() -> None:  # run by the last visitor to reach it, while the others wait
        engine.batcher.join(timeout_s=60)  # a run's cache is freed once its batch has ended
        lulls.append((time.perf_counter() - t0, read_process_memory().rss_bytes))

    barrier = threading.Barrier(visitors, action=lull)

    def visit(k: int, out: Visitor) -> None:
        chance = random.Random(seed * 1000 + k)
        due = every  # this visitor's next lull, seconds from the start
        while True:
            while every and due < 60 * minutes and time.perf_counter() - t0 >= due:
                barrier.wait()
                due += every
            if not ((out.runs + len(out.failed) < runs_each) if runs_each else time.perf_counter() < end):
                break
            one_run(engine, chance, out)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=visit, args=(k, results[k])) for k in range(visitors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    engine.batcher.join(timeout_s=60)  # the last run's cache is freed once the batch ends, not as its reader leaves
    end_rss = read_process_memory().rss_bytes
    lulls.append((time.perf_counter() - t0, end_rss))
    release_freed_memory()  # as a run's start does on the page: what stays is what the engine kept
    trimmed_rss = read_process_memory().rss_bytes
    since = samples[-1][0] - 60 * last_minutes if samples else 0.0
    tail = [(t, rss) for t, rss in samples if t >= since]
    tail_beside_kv = [(t, rss) for t, rss in beside_kv if t >= since]
    failed = [f for v in results for f in v.failed]
    took = (
        f"{runs_each} runs each in {(time.perf_counter() - t0) / 60:.1f} min" if runs_each else f"for {minutes:g} min"
    )
    print(
        f"\n{visitors} visitors, {took}: {sum(v.runs for v in results)} runs, {len(failed)} failed; "
        f"RSS {start_rss / 1e9:.2f} GB at the start, {end_rss / 1e9:.2f} GB at the end ({trimmed_rss / 1e9:.2f} GB once "
        f"freed memory is handed back), peak "
        f"{max((r for _, r in samples), default=end_rss) / 1e9:.2f} GB; slope over the last {last_minutes:g} min "
        f"{describe_slope(tail)} (less the live runs' KV caches: {describe_slope(tail_beside_kv)}); "
        f"threads: {policy_for(engine.model).describe()}"
    )
    if every:
        lulled_s = sum(when - every * k for k, (when, _) in enumerate(lulls[:-1], 1))  # each from when it was due
        tail_lulls = [(t, rss) for t, rss in lulls if t >= since]
        print(
            f"RSS at each lull (every visitor between runs, the batch ended, nothing handed back) and at the end: "
            f"{', '.join(f'{rss / 1e9:.3f}' for _, rss in lulls)} GB; through those of the last {last_minutes:g} min "
            f"{describe_slope(tail_lulls)}; the lulls kept the room from writing "
            f"{lulled_s:.0f} s in all (each visitor finishing its run)"
        )
    for error in failed[:5]:
        print("  failed:", error)
    ttfts = sorted(t for v in results for t in v.ttfts_s)
    if ttfts:
        print(
            f"time to first token, all {len(ttfts)} runs: median {statistics.median(ttfts):.1f} s, "
            f"90th percentile {ttfts[int(0.9 * (len(ttfts) - 1))]:.1f} s, worst {ttfts[-1]:.1f} s"
        )
    print(
        "\n| visitor | runs | failed | gap median / longest (s) | TTFT median / worst (s) |\n|---:|---:|---:|---|---|"
    )
    for k, v in enumerate(results, 1):
        gaps = f"{statistics.median(v.gaps_s):.3f} / {max(v.gaps_s):.3f}" if v.gaps_s else "-"
        ttft = f"{statistics.median(v.ttfts_s):.2f} / {max(v.ttfts_s):.2f}" if v.ttfts_s else "-"
        print(f"| {k} | {v.runs} | {len(v.failed)} | {gaps} | {ttft} |")


def pileup(engine: gpt2_engine.Engine, runs: int, words: tuple[int, int], seed: int) -> None:
    """One visitor, `runs` runs one after another, phrases of `words` words: RSS after each."""
    chance, visitor = random.Random(seed), Visitor()
    after: list[int] = []
    for _ in range(runs):
        one_run(engine, chance, visitor, chance.randint(*words))
        release_freed_memory()  # as the next run's start does: what stays is what the engine kept
        after.append(read_process_memory().rss_bytes)
    marks = [n for n in (1, 10, 20, 30, runs) if n <= runs]
    print(f"\n{runs} runs, phrases of {words[0]}-{words[1]} words, {len(visitor.failed)} failed")
    print("| after run | " + " | ".join(str(n) for n in dict.fromkeys(marks)) + " |")
    print("|---|" + "---:|" * len(dict.fromkeys(marks)))
    print("| RSS (GB) | " + " | ".join(f"{after[n - 1] / 1e9:.3f}" for n in dict.fromkeys(marks)) + " |")
    if runs >= 10:
        print(f"run {runs} - run 10: {(after[-1] - after[9]) / 1e6:+.0f} MB")


SETTLE = 20  # a writer's first gaps, left out of its median before the long phrase: beside a busy process the
# thread policy spends them finding its count (a median of 1.07 s a gap beside one busy process; 0.205 s settled)


def fairness(engine: gpt2_engine.Engine, tokens: int) -> None:
    """Three visitors stream; once they are writing steadily, a fourth sends a `tokens`-token phrase."""
    gaps: list[list[tuple[float, float]]] = [[], [], []]  # (when, gap) per streaming visitor
    stop = threading.Event()

    def stream(k: int) -> None:
        last = None
        for _ in engine.stream(phrase(random.Random(k), 6), max_new_tokens=100_000, seed=k, window=50):
            now = time.perf_counter()
            if last is not None:
                gaps[k].append((now, now - last))
            last = now
            if stop.is_set():
                break

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    while min(len(g) for g in gaps) < 2 * SETTLE:  # their cadence once the thread policy has settled
        time.sleep(0.05)
    ids = [i % 1000 + 300 for i in range(tokens)]
    long_phrase = engine.tokenizer.decode(ids)
    pieces: list[int] = []  # the prompt tokens of each pass that read some: what the scheduler chose
    real = fast.forward_reads

    def recording(model, reads):
        if any(read.kind == "prompt" for read in reads):
            pieces.append(sum(len(read.ids) for read in reads if read.kind == "prompt"))
        return real(model, reads)

    fast.forward_reads = recording
    began = time.perf_counter()
    try:
        first = next(iter(engine.stream(long_phrase, max_new_tokens=1, seed=9, window=None)))
    finally:
        fast.forward_reads = real
    read_s = time.perf_counter() - began
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    before = [gap for g in gaps for when, gap in g[SETTLE:] if when < began]
    during = [gap for g in gaps for when, gap in g if began <= when <= began + read_s]
    median = statistics.median(before)
    print(
        f"\n3 visitors streaming; a 4th's {first.prompt_tokens:,}-token phrase read in {read_s:.1f} s "
        f"(beside three writers' steps, a pass now reads {engine.batcher.scheduler.budget(3, 3)} of a phrase's tokens)"
    )
    print(f"the tokens of its phrase each pass read ({len(pieces)} passes): {', '.join(map(str, pieces))}")
    print(
        f"their gap: median {median:.3f} s before it; while it was read, longest {max(during):.3f} s "
        f"= {max(during) / median:.1f}x, median {statistics.median(during):.3f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-xl", help="a known name, hub id or folder (a stand-in works)")
    parser.add_argument("--precision", default="auto", help="auto (what the page would pick), fp32, q8, ...")
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--last-minutes", type=float, default=20.0, help="the RSS slope is over this last part")
    parser.add_argument("--lull-every", type=float, default=5.0, help="minutes between the room's lulls (0: none)")
    parser.add_argument("--runs", type=int, help="pile-up check: one visitor, this many runs one after another")
    parser.add_argument("--words", default="4,236", help="with --runs: phrases of A to B words")
    parser.add_argument("--fairness", type=int, metavar="TOKENS", help="three stream while a fourth sends TOKENS")
    parser.add_argument("--runs-each", type=int, default=0, help="each visitor writes this many runs (not --minutes)")
    parser.add_argument("--busy", type=int, default=0, help="busy processes beside it (pure-Python loops)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"{capabilities.cpu_name()} ({' '.join(sorted(capabilities.cpu_flags() & {'avx2', 'avx512f', 'avx512_vnni'}))})"
    )
    engine = gpt2_engine.load(args.model, dtype=args.precision)
    print(f"{args.model} at {engine.precision}; resets by {engine.window_mode} ({engine.shadow_chunk} a step)")
    if engine.precision == "q8":  # where the steps are read is most of a q8 soak's speed: say it
        steps = "the step kernel" if engine.step_kernel else f"fbgemm ({step_kernel.declined})"
        print(f"decode steps through {steps}")
    list(engine.stream("Warm up", max_new_tokens=4, seed=0))
    with busy(args.busy):
        if args.runs:
            low, high = (int(w) for w in args.words.split(","))
            pileup(engine, args.runs, (low, high), args.seed)
        elif args.fairness:
            fairness(engine, args.fairness)
        else:
            last = min(args.last_minutes, args.minutes)
            soak(engine, args.visitors, args.minutes, args.seed, last, args.runs_each, args.lull_every)


if __name__ == "__main__":
    bench.run(main)
