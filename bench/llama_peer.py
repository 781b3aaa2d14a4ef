"""llama.cpp as a peer of the engine: the same model folder converted to GGUF (q8_0 and f16) by llama.cpp's own
converter and measured through llama-cpp-python the way the benchmark measures the engine: decode tok/s (median
per-token time after warm-up), prefill tok/s for prompts of 20, 200 and 1000 tokens, time to first token, peak
RSS of a load and a 200-token run, and teacher-forced agreement with an fp32 reference.

The converter is not part of the llama-cpp-python package: it is `vendor/llama.cpp/convert_hf_to_gguf.py` in
its source tree, named by --convert or $LLAMA_CPP_CONVERT. Each GGUF is measured in Python processes of its own,
so a crash inside llama.cpp becomes a row that says so rather than the end of the benchmark.

    python -m bench.llama_peer --model bench/models/gpt2-xl --convert /path/to/vendor/llama.cpp/convert_hf_to_gguf.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import bench
from bench.peaks import fresh_python
from bench.report import table

if TYPE_CHECKING:  # torch is imported where it is used: the fresh processes that measure llama.cpp stay without it
    import numpy as np
    import torch
    from llama_cpp import Llama

GGUF_TYPES = ("q8_0", "f16")
N_CTX = 1024
N_BATCH = 512
PROMPT_TOKENS = 20
WARMUP_TOKENS = 5
PREFILL_LENGTHS = (20, 200, 1000)
PREFILL_REPEATS = 3
PEAK_TOKENS = 200
# the teacher-forced ids of the agreement check (the benchmark's too), taken modulo the vocabulary size
AGREEMENT_IDS = [(i * 7919 + 13) % 50000 for i in range(128)]


def unavailable(reason: str, precision: str = "llama.cpp") -> dict:
    return {"precision": precision, "unavailable": reason}


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version; raises ImportError (or OSError, for its library) if it cannot load."""
    import llama_cpp

    return llama_cpp.__version__


def find_converter(convert: str | None) -> Path:
    """The converter script: `convert`, else $LLAMA_CPP_CONVERT; raises FileNotFoundError saying what is missing."""
    named = convert or os.environ.get("LLAMA_CPP_CONVERT")
    if not named:
        raise FileNotFoundError(
            "no converter: pass --convert or set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py "
            "(vendor/llama.cpp in llama-cpp-python's source)"
        )
    if not Path(named).is_file():
        raise FileNotFoundError(f"converter not found: {named}")
    return Path(named).resolve()


def default_gguf_dir(model_dir: str) -> Path:
    """A folder under the system's temporary folder, one per model folder, so a later run reuses its GGUFs."""
    source = Path(model_dir).resolve()
    return (
        Path(tempfile.gettempdir()) / "llama-peer-gguf" / f"{source.name}-{hashlib.sha1(bytes(source)).hexdigest()[:8]}"
    )


def source_mtime(model_dir: str) -> float:
    """When the model's config or weights last changed."""
    folder = Path(model_dir)
    files = [folder / "config.json", *folder.glob("*.safetensors"), *folder.glob("*.bin")]
    return max(path.stat().st_mtime for path in files if path.exists())


def stage_source(model_dir: str, staging: Path) -> Path:
    """A folder of symlinks to the model folder's files, but with a config.json that has `n_ctx`: the converter's
    GPT-2 reads it and transformers 5 no longer writes it. The model folder itself is left as it is."""
    source = Path(model_dir).resolve()
    for path in source.iterdir():
        if path.name != "config.json":
            (staging / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])
    (staging / "config.json").write_text(json.dumps(config, indent=1))
    return staging


def failure_line(text: str) -> str:
    """The telling line of a failed process's stderr: a fatal signal's, else the last one (the exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("Fatal Python error")), lines[-1] if lines else "no output")


# Runs the converter with its pre-tokenizer check answered: a tokenizer it does not know by hash (the tests' tiny
# byte-level BPE splits text exactly as GPT-2's does, but has its own vocabulary) is declared to split as `pre`.
CONVERT_AS = """import sys
sys.path.insert(0, sys.argv[1])
pre, sys.argv = sys.argv[3], [sys.argv[2], *sys.argv[4:]]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert_gguf(
    model_dir: str, outtype: str, converter: Path, gguf_dir: Path, pretokenizer: str | None = None
) -> Path:
    """The model as a GGUF of `outtype` in `gguf_dir`, converted unless one newer than the model is there; raises
    RuntimeError with the converter's last words if it fails. `pretokenizer` (e.g. "gpt-2") names how the
    tokenizer splits text, for a tokenizer the converter does not recognise (the tests' tiny one)."""
    out = gguf_dir / f"{Path(model_dir).resolve().name}-{outtype}.gguf"
    if out.exists() and out.stat().st_mtime > source_mtime(model_dir):
        return out
    gguf_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")  # renamed when done: a killed conversion leaves no GGUF that looks fresh
    env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}  # the converter's own gguf-py
    with tempfile.TemporaryDirectory(prefix="llama-peer-source-") as staging:
        source = str(stage_source(model_dir, Path(staging)))
        command = [sys.executable, str(converter), source]
        if pretokenizer:
            command = [sys.executable, "-c", CONVERT_AS, str(converter.parent), str(converter), pretokenizer, source]
        done = subprocess.run(
            [*command, "--outtype", outtype, "--outfile", str(partial)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"conversion to {outtype} failed: {failure_line(done.stderr)}")
    os.replace(partial, out)
    return out


def load(gguf: str, threads: int, n_ctx: int = N_CTX, logits_all: bool = False) -> Llama:
    from llama_cpp import Llama

    return Llama(
        model_path=gguf,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,  # its default is every core; the engine's prompt runs on torch's threads
        n_batch=N_BATCH,
        verbose=False,
        logits_all=logits_all,
    )


def next_token(llm: Llama) -> int:
    """Greedy: reads the last position's logits (as a sampler would) and takes the largest."""
    import llama_cpp
    import numpy as np

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(logits.argmax())


def decode_seconds(llm: Llama, prompt: list[int], tokens: int, warmup: int) -> float:
    """Median seconds per token of `Llama.eval([token])` one token at a time, greedy, after `warmup` tokens."""
    llm.reset()
    llm.eval(prompt)
    token, times = next_token(llm), []
    for _ in range(warmup + tokens):
        start = time.perf_counter()
        llm.eval([token])
        token = next_token(llm)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def prompt_seconds(llm: Llama, ids: list[int], repeats: int) -> float:
    """Median seconds to read `ids` from an empty cache and the logits after them."""
    times = []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        next_token(llm)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def llama_logits(gguf_path: str, ids: list[int], threads: int | None = None) -> np.ndarray:
    """Teacher-forced logits, (len(ids), vocab) float32: row i is the next-token logits after ids[: i + 1]."""
    llm = load(str(gguf_path), threads or os.cpu_count() or 1, n_ctx=max(len(ids), 1), logits_all=True)
    llm.eval(ids)
    return llm.scores[: llm.n_tokens].copy()


def llama_log_probs(gguf_path: str, ids: list[int]) -> torch.Tensor:
    """Teacher-forced next-token log-probabilities of the GGUF at every position, (len(ids), vocab) float32."""
    import torch

    return torch.from_numpy(llama_logits(gguf_path, ids, torch.get_num_threads())).float().log_softmax(-1)


def measure_child(gguf: str, tokens: int, threads: int, n_ctx: int, logits_out: str | None) -> None:
    """In a fresh process: decode, prefill and first-token times, and the agreement logits saved to `logits_out`
    (.npy); prints them as one JSON line."""
    import numpy as np

    llm = load(gguf, threads, n_ctx)
    vocab = llm.n_vocab()
    prompt = [(i * 31) % vocab for i in range(PROMPT_TOKENS)]  # the benchmark's decode prompt
    tokens = min(tokens, n_ctx - PROMPT_TOKENS - WARMUP_TOKENS - 1)
    report: dict = {"decode_s_per_token": decode_seconds(llm, prompt, tokens, WARMUP_TOKENS), "tokens": tokens}
    for length in (n for n in PREFILL_LENGTHS if n <= n_ctx):
        ids = [(i * 7919) % 50000 % vocab for i in range(length)]  # the benchmark's prefill ids
        report[f"prefill_{length}_s"] = prompt_seconds(llm, ids, PREFILL_REPEATS)
    report["time_to_first_token_s"] = prompt_seconds(llm, prompt, PREFILL_REPEATS)
    del llm
    if logits_out:
        np.save(logits_out, llama_logits(gguf, [i % vocab for i in AGREEMENT_IDS], threads))
    print(json.dumps(report))


def peak_child(gguf: str, tokens: int, threads: int, n_ctx: int) -> None:
    """In a fresh process: load and a greedy `tokens` run; prints its peak RSS (the kernel's high-water mark,
    mapped weights included) and peak anonymous memory, in bytes, as one JSON line."""
    import llama_cpp  # noqa: F401 - loaded before the baseline

    from bench.peaks import PeakWatch, status

    base_rss = status("VmRSS")
    with PeakWatch() as watch:
        llm = load(gguf, threads, n_ctx)
        llm.eval([464 % llm.n_vocab()])  # "The", as bench.peaks' run
        for _ in range(min(tokens, n_ctx - 2)):
            llm.eval([next_token(llm)])
    print(json.dumps({"base_rss": base_rss, "peak_rss": status("VmHWM"), "peak_anon": watch.peak_anon}))


def in_fresh_python(function: str, args: tuple, what: str) -> dict:
    """This module's `function(*args)` in a process of its own; its JSON line. faulthandler names a fatal signal."""
    code = f"from bench.llama_peer import {function}; {function}(*{args!r})"
    try:
        return fresh_python(["-X", "faulthandler", "-c", code], what)
    except RuntimeError as error:
        raise RuntimeError(f"{what} failed: {failure_line(str(error).partition(chr(10))[2])}") from None


def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean KL(reference || other), as the benchmark computes them."""
    top1 = (reference.argmax(-1) == other.argmax(-1)).float().mean()
    return float(top1), float((reference.exp() * (reference - other)).sum(-1).mean())


def measure_gguf(
    gguf: Path, precision: str, tokens: int, threads: int, n_ctx: int, reference: torch.Tensor | None
) -> dict:
    import numpy as np
    import torch

    row: dict = {"precision": precision}
    with tempfile.TemporaryDirectory(prefix="llama-peer-logits-") as scratch:
        logits_out = str(Path(scratch) / "logits.npy") if reference is not None else None
        times = in_fresh_python("measure_child", (str(gguf), tokens, threads, n_ctx, logits_out), precision)
        logits = torch.from_numpy(np.load(logits_out)) if logits_out else None
    row["engine_tok_s"] = 1 / times["decode_s_per_token"]
    for length in PREFILL_LENGTHS:
        if f"prefill_{length}_s" in times:
            row[f"prefill_{length}_tok_s"] = length / times[f"prefill_{length}_s"]
    row["time_to_first_token_s"] = times["time_to_first_token_s"]
    peaks = in_fresh_python("peak_child", (str(gguf), PEAK_TOKENS, threads, n_ctx), f"{precision}'s peak run")
    row["peak_rss_bytes"], row["peak_anon_bytes"] = peaks["peak_rss"], peaks["peak_anon"]
    row["weight_bytes"] = gguf.stat().st_size
    if reference is not None and logits is not None:
        if reference.shape == logits.shape:
            row["top1_agreement"], row["kl_vs_fp32"] = agreement(reference.float(), logits.float().log_softmax(-1))
        else:
            row["agreement_unavailable"] = f"reference {tuple(reference.shape)} vs llama.cpp {tuple(logits.shape)}"
    return row


def measure_llama(
    model_dir: str,
    tokens: int,
    convert: str | None,
    gguf_dir: str | None,
    reference_log_probs: torch.Tensor | None,
) -> list[dict]:
    """One row per GGUF type (q8_0, f16) of `model_dir`, keyed as the benchmark's rows; `reference_log_probs`:
    fp32 log-probabilities of AGREEMENT_IDS, for top-1 agreement and KL. If llama.cpp cannot run here, one row
    that says why."""
    try:
        version = llama_cpp_version()
    except (ImportError, OSError) as error:
        return [unavailable(f"llama-cpp-python does not import: {error}")]
    try:
        converter = find_converter(convert)
    except FileNotFoundError as error:
        return [unavailable(str(error))]
    try:
        config = json.loads(Path(model_dir, "config.json").read_text())
    except (OSError, ValueError) as error:
        return [unavailable(f"no model config: {error}")]
    from gpt2_engine.threads import cores  # torch with it: here, not in the measuring processes

    # Every core this process may use: torch's own count can be what the engine's thread policy last chose (1, on
    # a 2-core Xeon without AMX on 2026-12-07: llama.cpp q8_0 ran at 3.90 tok/s there, and 8.01 on both cores).
    threads = cores()
    n_ctx = min(N_CTX, config.get("n_positions", N_CTX))  # GPT-2's positions are learned: none past them
    folder = Path(gguf_dir) if gguf_dir else default_gguf_dir(model_dir)
    rows = []
    for outtype in GGUF_TYPES:
        precision = f"llama.cpp {outtype}"
        try:
            print(f"converting to {outtype} GGUF in {folder} (reused if newer than the model) ...", flush=True)
            gguf = convert_gguf(model_dir, outtype, converter, folder)
            print(f"measuring {precision} ...", flush=True)
            row = measure_gguf(gguf, precision, tokens, threads, n_ctx, reference_log_probs)
        except RuntimeError as error:  # the converter's or a measuring process's failure, said in one line
            rows.append(unavailable(str(error), precision))
            continue
        except Exception as error:  # anything else: the benchmark goes on, this row says what happened
            rows.append(unavailable(f"{type(error).__name__}: {error}", precision))
            continue
        rows.append({**row, "llama_cpp_version": version})
    return rows


def transformers_log_probs(model_dir: str, ids: list[int]) -> torch.Tensor:
    """The fp32 reference: transformers' GPT2LMHeadModel on `ids`, teacher-forced, as log-probabilities."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench/models/gpt2-xl", help="the model folder (a GPT-2 in safetensors)")
    parser.add_argument(
        "--convert",
        default=None,
        help="llama.cpp's convert_hf_to_gguf.py, from llama-cpp-python's source (default: $LLAMA_CPP_CONVERT)",
    )
    parser.add_argument(
        "--gguf-dir",
        default=None,
        help="where the GGUFs are written and reused while newer than the model "
        "(default: a folder per model under the system's temporary folder)",
    )
    parser.add_argument("--tokens", type=int, default=100, help="decode tokens timed, after 5 untimed")
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="also compare with transformers' fp32 on the benchmark's teacher-forced ids (loads the model in fp32)",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    reference = None
    if args.agreement:
        vocab = json.loads(Path(args.model, "config.json").read_text())["vocab_size"]
        reference = transformers_log_probs(args.model, [i % vocab for i in AGREEMENT_IDS])
    rows = measure_llama(args.model, args.tokens, args.convert, args.gguf_dir, reference)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))  # the benchmark's own table: llama.cpp's columns filled, the engine's left '-'


if __name__ == "__main__":
    bench.run(main)
