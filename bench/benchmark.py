"""The benchmark: the engine against transformers' `generate()` on the same weights, and llama.cpp beside them.

For every precision that runs on this machine (gpt2_engine.capabilities) it loads the model (first and second load:
int8's and q8's first converts the weights into a weights cache of the run's own, the second maps it), probes the
machine's read bandwidth right before each timing, and measures: decode tokens/s (median per-token time after
warm-up) for the engine and for `model.generate()` in alternating rounds, each as a share of the bandwidth ceiling
(the bytes of weights a decode step reads x tokens/s / bandwidth: `Engine.step_bytes`, which leaves out the
embedding tables a step looks one row up in, and q8's prompt kernel's copy); prefill tokens/s for prompts of 20, 200
and 1000 tokens; time to first token; the window's cost (window 50 against off over 200 tokens, by re-prime and by
shadow row); the gaps between tokens with window 20 over 300 tokens (median and longest: the pause a room sees at a
reset); peak RSS and its anonymous part in a fresh process; teacher-forced agreement with fp32 (top-1 and KL). Then
what `auto` picks, measured as at a first load. With llama-cpp-python installed and its converter named
(--llama-convert), llama.cpp's q8_0 and f16 of the same weights are rows of the table. Prints a Markdown table, the
CPU and its flags, and writes a JSON report.

    python -m bench.benchmark --model bench/models/gpt2-xl
    python -m bench.benchmark --llama-convert /path/to/llama-cpp-python/vendor/llama.cpp/convert_hf_to_gguf.py
    python -m bench.benchmark --smoke          # a tiny stand-in, a few tokens: checks it all runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import bench
import gpt2_engine
from bench.kernels import read_bandwidth
from bench.llama_peer import AGREEMENT_IDS, measure_llama  # teacher-forced ids for agreement
from bench.peaks import fresh_python
from bench.report import machine_facts, table
from bench.standin import build_standin, gpt2_tokenizer
from gpt2_engine import capabilities, weights_cache
from gpt2_engine.decoding import WindowMode
from gpt2_engine.fast import FastContext
from gpt2_engine.memory import read_process_memory
from gpt2_engine.threads import passing


class TokenClock:
    """A `generate()` streamer that notes the time each new token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first put() is the prompt
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def per_token_seconds(times: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps[warmup:])


def engine_decode(engine: gpt2_engine.Engine, prompt: list[int], tokens: int, warmup: int) -> tuple[float, list[int]]:
    """Median seconds per token of the engine's own loop (sampling and memory readings included), and its ids."""
    text = engine.tokenizer.decode(prompt)
    settings = gpt2_engine.GenerationSettings(
        max_new_tokens=tokens + warmup + 1, window=None, sampler="greedy", stop_at_eos=False, seed=0
    )
    times, ids = [time.perf_counter()], []
    for step in engine.stream(text, settings):
        times.append(time.perf_counter())
        ids.append(step.token_id)
    return per_token_seconds(times[1:], warmup), ids


def generate_decode(engine: gpt2_engine.Engine, prompt: list[int], tokens: int, warmup: int) -> tuple[float, list[int]]:
    clock = TokenClock()
    ids = torch.tensor([prompt], device=engine.device)
    n = tokens + warmup + 1
    with torch.inference_mode():
        out = engine.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=0,
            streamer=clock,
        )
    return per_token_seconds(clock.times, warmup), out[0, len(prompt) :].tolist()


def prefill(engine: gpt2_engine.Engine, length: int, repeats: int) -> float:
    """Median seconds to read `length` tokens in one forward pass (the time to first token, less sampling)."""
    ids = [(i * 7919) % 50000 % engine.model.config.vocab_size for i in range(length)]
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            FastContext(engine.model).prime(ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run_steps(engine: gpt2_engine.Engine, tokens: int, window: int | None, mode: WindowMode) -> list[float]:
    """The time each token arrived (s since the stream started), greedy from "The", in a window mode."""
    settings = dict(max_new_tokens=tokens, window=window, sampler="greedy", stop_at_eos=False, seed=0)
    return [step.elapsed_s for step in engine.stream("The", window_mode=mode, **settings)]


def gaps(times: list[float]) -> tuple[float, float]:
    """(median, longest) gap between two tokens: the longest is the pause a room sees."""
    between = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(between), max(between)


def fresh_process_peaks(model_dir: str, precision: str, device: str, tokens: int) -> dict:
    """Peak RSS (file-mapped weights included) and peak anonymous memory of a load and a `tokens` run with
    window 50, in a process of its own: in this one, earlier precisions' freed memory would blur the peak."""
    return fresh_python(
        ["-m", "bench.peaks", model_dir, precision, device, str(tokens)], "the fresh-process memory run"
    )


def log_probs(engine: gpt2_engine.Engine) -> torch.Tensor:
    ids = [i % engine.model.config.vocab_size for i in AGREEMENT_IDS]
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([ids], device=engine.device)).logits[0].float().cpu().log_softmax(-1)


def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean KL(fp32 || this precision) of teacher-forced next-token distributions."""
    return float((reference.argmax(-1) == other.argmax(-1)).float().mean()), float(
        (reference.exp() * (reference - other)).sum(-1).mean()
    )


def measure(model_dir: str, precision: str, args: argparse.Namespace, reference: dict) -> dict:
    row: dict = {"precision": precision}
    start = time.perf_counter()
    engine = gpt2_engine.load(model_dir, dtype=precision, device=args.device)
    row["first_load_s"] = time.perf_counter() - start
    del engine
    gc.collect()
    start = time.perf_counter()
    engine = gpt2_engine.load(model_dir, dtype=precision, device=args.device)
    row["second_load_s"] = time.perf_counter() - start
    row["weight_bytes"] = engine.weight_bytes
    row["step_bytes"] = engine.step_bytes  # what a decode step reads: the ceiling's numerator
    prompt = [(i * 31) % engine.model.config.vocab_size for i in range(20)]
    ours, theirs, probes = [], [], []
    for _ in range(args.rounds):  # alternate, so a noisy neighbour hurts both alike
        probes.append(passing(read_bandwidth, 1.0, 5, engine.device))
        seconds, our_ids = engine_decode(engine, prompt, args.tokens // args.rounds, args.warmup)
        ours.append(seconds)
        probes.append(passing(read_bandwidth, 1.0, 5, engine.device))
        seconds, their_ids = passing(generate_decode, engine, prompt, args.tokens // args.rounds, args.warmup)
        theirs.append(seconds)
    # a speed-up counts only if the outputs agree: greedy tokens, same prompt, same weights
    row["greedy_tokens_equal"] = next((i for i, (a, b) in enumerate(zip(our_ids, their_ids)) if a != b), len(our_ids))
    row["greedy_tokens_compared"] = len(our_ids)
    bandwidth = statistics.median(probes) * 1e9
    row["bandwidth_gb_s"] = bandwidth / 1e9
    row["ceiling_tok_s"] = bandwidth / engine.step_bytes
    row["engine_tok_s"] = 1 / statistics.median(ours)
    row["generate_tok_s"] = 1 / statistics.median(theirs)
    for length in args.prefill:
        row[f"prefill_{length}_tok_s"] = length / passing(prefill, engine, length, args.prefill_repeats)
    first = next(
        iter(
            engine.stream(
                "The cat sat on the mat and looked at the dog, who looked back at the", max_new_tokens=1, seed=0
            )
        )
    )
    row["time_to_first_token_s"] = first.elapsed_s
    if args.window_tokens and precision in args.window_precisions:
        row["window_off_s"] = run_steps(engine, args.window_tokens, None, "reprime")[-1]
        row["window_50_shadow_s"] = run_steps(engine, args.window_tokens, 50, "shadow")[-1]
        row["window_50_reprime_s"] = run_steps(engine, args.window_tokens, 50, "reprime")[-1]
    if args.gap_tokens and precision in args.window_precisions:
        for mode in ("reprime", "shadow"):
            row[f"gap_20_{mode}_median_s"], row[f"gap_20_{mode}_max_s"] = gaps(
                run_steps(engine, args.gap_tokens, 20, mode)
            )
    memory = read_process_memory()
    row["rss_bytes"], row["anon_bytes"] = memory.rss_bytes, memory.anon_bytes
    if args.peak_tokens:
        peaks = fresh_process_peaks(model_dir, precision, args.device, args.peak_tokens)
        row["peak_rss_bytes"], row["peak_anon_bytes"], row["peak_kv_bytes"] = (
            peaks["peak_rss"],
            peaks["peak_anon"],
            peaks["kv"],
        )
    row["kv_bytes_per_token"] = engine.kv_bytes_per_token
    if precision == "fp32":
        reference["fp32"] = passing(log_probs, engine)
    elif "fp32" in reference:
        row["top1_agreement"], row["kl_vs_fp32"] = agreement(reference["fp32"], passing(log_probs, engine))
    del engine
    gc.collect()
    return row


def auto_pick(model_dir: str, device: str) -> dict:
    """What `auto` picks here, measured as at a first load (this run's own weights cache has no choice yet)."""
    start = time.perf_counter()
    engine = gpt2_engine.load(model_dir, dtype="auto", device=device)
    row = {"auto_first_load_s": time.perf_counter() - start, "precision": engine.precision}
    if engine.choice is not None:
        row.update(
            why=engine.choice.why, window_mode=engine.window_mode, trials=[vars(t) for t in engine.choice.trials]
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="Engine vs transformers generate(), per precision, in one process.")
    parser.add_argument(
        "--model", default="bench/models/gpt2-xl", help="a model folder (built as a gpt2-xl stand-in if missing)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="GPT-2's tokenizer folder, for a stand-in that must be built (default: the Hugging Face cache's)",
    )
    parser.add_argument(
        "--precisions",
        default="here",
        help="comma-separated: fp32, bf16, fp16, int8, q8; 'here' (default): every one that runs on this machine",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tokens", type=int, default=100, help="decode tokens timed per side (split over the rounds)")
    parser.add_argument("--warmup", type=int, default=5, help="tokens not timed at the start of each round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating engine/generate() rounds")
    parser.add_argument("--prefill", default="20,200,1000", help="prompt lengths for prefill speed")
    parser.add_argument("--prefill-repeats", type=int, default=3, help="timed prefills per length (median)")
    parser.add_argument(
        "--window-tokens", type=int, default=200, help="length of the window 50 / off runs (0 skips them)"
    )
    parser.add_argument(
        "--gap-tokens", type=int, default=300, help="length of the window 20 runs whose gaps are timed (0 skips them)"
    )
    parser.add_argument(
        "--llama-convert",
        default=os.environ.get("LLAMA_CPP_CONVERT", ""),
        help="llama.cpp's convert_hf_to_gguf.py (in llama-cpp-python's source, vendor/llama.cpp): adds llama.cpp "
        "q8_0 and f16 rows when llama-cpp-python is installed (default: $LLAMA_CPP_CONVERT)",
    )
    parser.add_argument("--no-auto", action="store_true", help="skip measuring what auto picks (a first load's cost)")
    parser.add_argument(
        "--window-precisions",
        default="bf16,int8,q8",
        help="precisions that get the window runs (they are the slow part)",
    )
    parser.add_argument(
        "--peak-tokens",
        type=int,
        default=200,
        help="tokens of the fresh-process run that measures peak memory (0 skips it)",
    )
    parser.add_argument("--out", default="bench/out/report.json", help="where to write the JSON report")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny stand-in and a few tokens: checks that everything runs"
    )
    args = parser.parse_args()
    args.prefill = [int(x) for x in args.prefill.split(",") if x]
    args.window_precisions = [p.strip() for p in args.window_precisions.split(",")]
    model_dir = args.model
    if args.smoke:
        model_dir = str(build_standin("tiny", Path(tempfile.mkdtemp()) / "tiny"))
        args.tokens, args.warmup, args.rounds, args.window_tokens, args.prefill, args.prefill_repeats = (
            8,
            1,
            2,
            60,
            [20, 200],
            1,
        )
        args.gap_tokens = 45
        args.peak_tokens = 60
    elif not Path(model_dir, "config.json").exists():
        tokenizer = gpt2_tokenizer(Path(args.tokenizer) if args.tokenizer else None)  # or says what it needs
        print(f"building a gpt2-xl stand-in in {model_dir} (random weights, a minute) ...", flush=True)
        build_standin("gpt2-xl", Path(model_dir), tokenizer)
    support = capabilities.supported(gpt2_engine.loading.resolve_device(args.device))
    asked = list(support) if args.precisions == "here" else [p.strip() for p in args.precisions.split(",") if p.strip()]
    precisions = [p for p in asked if support[p].runs]
    refused = [
        {"precision": p, "refused": f"does not run here: {support[p].why}"} for p in asked if not support[p].runs
    ]
    if "fp32" in precisions:  # measured first, so every other precision is compared with its logits
        precisions.remove("fp32")
        precisions.insert(0, "fp32")
    reference: dict = {}
    rows = []
    # a weights cache of this run's own: int8's 1st load converts and saves it, the 2nd maps it (weights_cache)
    cache = tempfile.mkdtemp(prefix="bench-weights-cache-")
    os.environ[weights_cache.ENV_CACHE] = cache
    try:
        for precision in precisions:
            print(f"measuring {precision} ...", flush=True)
            rows.append(measure(model_dir, precision, args, reference))
        auto = None if args.no_auto else auto_pick(model_dir, args.device)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.llama_convert or args.smoke:
        print("measuring llama.cpp ...", flush=True)
        rows += measure_llama(model_dir, args.tokens, args.llama_convert or None, None, reference.get("fp32"))
    rows += refused
    report = {"machine": machine_facts(), "model": model_dir, "rows": rows, "auto": auto}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    machine = report["machine"]
    print(
        f"\n{machine['cpu']} ({machine['vector_units']}; torch kernels: {machine['torch_cpu_capability']}), "
        f"{machine['cores']} cores, torch {machine['torch']}, transformers {machine['transformers']}\n"
        f"flags: {machine['cpu_flags']}\n"
    )
    print(table(rows))
    if auto is not None:
        print(
            f"\nauto picked {auto['precision']}: {auto.get('why', '')}; window resets by {auto.get('window_mode')}; "
            f"its first load, measuring, took {auto['auto_first_load_s']:.1f} s"
        )
    print(f"\nreport: {args.out}")


if __name__ == "__main__":
    bench.run(main)
