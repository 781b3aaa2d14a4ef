"""Command line: `python -m gpt2_engine "phrase"` streams GPT-2's continuation to the terminal.

python -m gpt2_engine "The meaning of life is" --length 40 --top-p 0.9 --window off
python -m gpt2_engine --long                # the tutorial's long paragraph: 500 tokens, window 50
python -m gpt2_engine --model ./my-gpt2 --seed 7 "Once upon a time"
python -m gpt2_engine "The cat sat on the" --length 5 --show-candidates 5   # the top 5 at each step, on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .decoding import Step
from .errors import SettingsError, StudioError
from .memory import format_bytes
from .scheduler import PIECE
from .serving import plan_load
from .settings import MAX_CANDIDATES, SAMPLERS, TUTORIAL_PHRASE, GenerationSettings
from .shapes import DEFAULT_MODEL, DTYPE_CHOICES, KNOWN_MODELS
from .threads import policy_for

if TYPE_CHECKING:
    from .generation import Engine
    from .text_engine import TextEngine

FLAGS = {  # a setting's name in GenerationSettings -> the flag that sets it, as an error names it
    "max_new_tokens": "--length",
    "top_p": "--top-p",
    "window": "--window",
    "sampler": "--sampler",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "seed": "--seed",
    "candidates": "--show-candidates",
}


def window_value(text: str) -> int | None:
    """`off` keeps the whole context; otherwise a whole number of tokens (0 or less is refused by the settings'
    own check, in the same words as -5: "use off, or a whole number of tokens from 1")."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a window: use off or a whole number of tokens") from None


def in_words(error: StudioError) -> str:
    """An error as the command line says it: a setting by its flag and its value as typed (off, not None)."""
    if isinstance(error, SettingsError):
        value = "off" if error.value is None else error.value
        return f"{FLAGS.get(error.field, error.field)} {value} is not allowed: use {error.allowed}."
    return str(error)


def check_before_loading(args: argparse.Namespace, settings: GenerationSettings) -> None:
    """Everything that can be checked without the weights: the model can be found, the precision runs here, and
    the window fits the model's positions (from its name, or its folder's config.json: a few kB). A bad value is
    refused in a second or two, not after a load of half a minute."""
    plan = plan_load(args.model, args.precision, args.device)
    settings.check_for(plan.shape.n_positions)


def build_parser() -> argparse.ArgumentParser:
    defaults = GenerationSettings()
    parser = argparse.ArgumentParser(
        prog="python -m gpt2_engine", description="Stream GPT-2's continuation of a phrase."
    )
    parser.add_argument(
        "prompt", nargs="?", default=TUTORIAL_PHRASE, help="the phrase to continue (default: the tutorial's)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"{', '.join(KNOWN_MODELS)}, a hub id or a local folder (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=DTYPE_CHOICES,
        help="weights' number format: fp32, bf16, fp16, int8 (bf16 activations) or q8 (8-bit activations too), "
        "as far as they run on this machine (default auto: the fastest that writes what fp32 would, measured at "
        "the model's first load here and remembered)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("GPT2_STUDIO_BACKEND", ""),
        metavar="URL",
        help="drive a GPT-2 served elsewhere through its OpenAI-compatible API, e.g. http://host:8000/v1 (vLLM, "
        "llama.cpp's server); --model, --precision and --device are then the server's (default: "
        "$GPT2_STUDIO_BACKEND, else the model runs here)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto: the GPU when there is one)")
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help=f"tokens to generate (default {defaults.max_new_tokens}; 500 with --long)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        help=f"sample from the smallest set of tokens holding this much probability (default {defaults.top_p})",
    )
    parser.add_argument(
        "--window",
        type=window_value,
        default=defaults.window,
        help=f"re-prime from the last N tokens every N tokens; 'off' keeps the whole context (default {defaults.window})",
    )
    parser.add_argument(
        "--sampler",
        default=defaults.sampler,
        choices=SAMPLERS,
        help="nucleus: by weight; tutorial: uniform in the top-p set; greedy: the most likely",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="divide the logits by this: <1 surer, >1 wilder (default 1)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep only the k most likely tokens before top-p (default: no limit)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="repeat a run exactly (default: a fresh seed, printed at the end)"
    )
    parser.add_argument(
        "--sentence-end", action="store_true", help="after the length, go on to the end of the sentence"
    )
    parser.add_argument("--no-eos-stop", action="store_true", help="do not stop when the model writes <|endoftext|>")
    parser.add_argument(
        "--long", action="store_true", help="the tutorial's long paragraph: 500 tokens, window 50, stop at sentence end"
    )
    parser.add_argument(
        "--show-candidates",
        type=int,
        default=0,
        metavar="K",
        help=f"at each step, print the K most likely next tokens with their probabilities (after temperature "
        f"and top-k; * marks the top-p set the token was drawn from) to stderr, one line per token, while the text "
        f"goes to stdout as usual: add 2>candidates.txt to keep them apart (K up to {MAX_CANDIDATES}; default 0: off)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=args.length if args.length is not None else (500 if args.long else 20),
        top_p=args.top_p,
        window=args.window,
        sampler=args.sampler,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        stop_at_eos=not args.no_eos_stop,
        stop_at_sentence_end=args.sentence_end or args.long,
        candidates=args.show_candidates,
    )


def candidates_line(step: Step, token_text: str) -> str:
    """One line for --show-candidates: the token taken (`token_text`, as Engine.token_text shows it) and its
    probability, then the candidates in rank order, * on those in the top-p set.

    #3 " mat" 41.0% (top-p set: 2 tokens, 61.2%) | *" mat" 41.0%  *" floor" 20.2%  " rug" 8.3%
    """
    shown = json.dumps  # quotes, and shows spaces, newlines and tabs as they are in the token
    taken = next((c for c in step.candidates if c.token_id == step.token_id), None)
    chance = f"{100 * taken.probability:.1f}%" if taken else f"(not in the top {len(step.candidates)})"
    ranked = "  ".join(
        f"{'*' if c.in_top_p else ''}{shown(c.text, ensure_ascii=False)} {100 * c.probability:.1f}%"
        for c in step.candidates
    )
    return (
        f"#{step.index + 1} {shown(token_text, ensure_ascii=False)} {chance} "
        f"(top-p set: {step.nucleus_size} token{'s' if step.nucleus_size != 1 else ''}, {100 * step.nucleus_mass:.1f}%) "
        f"| {ranked}"
    )


def dropped_note(step: Step) -> str:
    """What the model did not read of a phrase too long for it, said once, as the page says it."""
    kept, dropped = step.prompt_tokens, step.prompt_tokens_dropped
    return (
        f"[your phrase is {kept + dropped:,} tokens, more than the model can hold beside the window: it reads the "
        f"last {kept:,}; the first {dropped:,} were dropped]"
    )


def reading_progress(read: int, total: int) -> None:
    """On stderr, for a phrase long enough to take a while: "[reading your phrase: 512 of 2,300 tokens]"."""
    if total > PIECE:
        print(f"[reading your phrase: {read:,} of {total:,} tokens]", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import load  # after parsing, so --help and bad flags answer at once

    try:
        settings = settings_from(args)
        local: Engine | None = None  # the model in this process: its precision, device and auto's choice are said
        engine: TextEngine
        if not args.prompt.strip():
            print("[an empty phrase: GPT-2 starts from a fresh document, as after <|endoftext|>]", file=sys.stderr)
        if args.backend:
            from .remote import RemoteEngine

            engine = RemoteEngine(args.backend)
            print(f"[{engine.name}]", file=sys.stderr)
        else:
            check_before_loading(args, settings)
            engine = local = load(
                args.model,
                dtype=args.precision,
                device=args.device,
                progress=lambda m: print(f"[{m}]", file=sys.stderr),
            )
        steps = engine.stream(args.prompt, settings, on_prompt=reading_progress)
        print(args.prompt, end="", flush=True)
        last, peak_rss = None, 0
        for step in steps:
            if step.index == 0 and step.prompt_tokens_dropped:
                print(f"\n{dropped_note(step)}", file=sys.stderr, flush=True)
            print(step.text, end="", flush=True)
            if step.candidates:
                print(candidates_line(step, engine.token_text(step.token_id)), file=sys.stderr, flush=True)
            last, peak_rss = step, max(peak_rss, step.rss_bytes)
    except StudioError as error:
        print(f"\nerror: {in_words(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
        return 130
    print()
    if last is not None:
        tokens = last.index + 1
        print(
            f"[{tokens:,} token{'s' if tokens != 1 else ''} in {last.elapsed_s:.1f} s: {tokens / last.elapsed_s:.1f} tokens/s, "
            + (f"peak memory {format_bytes(peak_rss)}, " if peak_rss else "")
            + f"stopped by {last.stop_reason}, seed {last.seed}, "
            + (
                engine.name
                if local is None
                else f"{local.name} {local.precision} on {local.device}, {policy_for(local.model).describe()}"
            )
            + (f"; auto is {local.choice.why}" if local is not None and local.choice else "")
            + "]",
            file=sys.stderr,
        )
    return 0


def exit_now(code: int) -> None:
    """Ends the process with `code` once its output is flushed, skipping the interpreter's teardown. The batch's
    thread (batching.py) ends as the run does; on a slow machine its last C++ clean-up can overlap the teardown,
    where a thread that asks for the GIL is ended by force, and torch's clean-up code cannot be: the process then
    aborted ("terminate called without an active exception", exit status -6) after printing all it had to, twice
    in one CI run (pytorch/pytorch#38228 is that crash). Nothing is left for a teardown to do: the text and
    the summary are written, and converted weights were renamed into place at load."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        status = main()
    except BrokenPipeError:  # what reads the text went away (`| head`): stop quietly, as `yes | head` does
        status = 1
    exit_now(status)
