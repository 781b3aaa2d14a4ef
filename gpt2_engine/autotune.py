"""`auto` precision on a CPU: measured on this machine at a model's first load, then remembered.

Which precision decodes fastest depends on the CPU (AVX2, AVX-512, native bf16, AMX, ARM) more than on
anything the engine can know in advance. So at a model's first load with `auto`, every precision that
runs here (capabilities.py) is loaded the way the engine loads it, but with only its first PROBE_LAYERS
layers (a decode step costs per layer times layers, plus the head, so a few layers rank the precisions as
the whole model does, at a fraction of the load's time and memory), one candidate at a time, and decodes a
short teacher-forced text through the engine's own fast forward: the median time of a step is its speed, and
its next-token distributions against fp32's are its faithfulness (top-1 agreement and KL). A candidate whose
first steps run far slower than the best so far (fp16 without a native kernel) is given up after two steps.
The fastest one that stays faithful wins, and only it is loaded whole.

Window resets read the last N tokens through the shadow row (fast.FastContext), a few tokens beside each step,
so a reset never pauses the stream; how many at a time is measured too (`shadow_chunk`: the fewest extra
seconds a step on average; on one CPU five rows cost what one does, on another two rows already cost more).

The choice is kept in the weights cache folder under a key of the CPU (model name and flags), torch's
version and the model's weight files, so later loads read it and measure nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import capabilities, weights_cache
from .fast import LONG_CHUNK, SHADOW_CHUNK, FastContext
from .threads import policy_for
from .window import Window

FORMAT = 3  # bump when what a remembered choice means changes (2: a few layers measured, the shadow's chunk;
# 3: a chunk that reaches q8's prompt kernel is among those measured)
CHOICES_FILE = "auto-precision.json"
MIN_TOP1 = 0.75  # a precision must pick fp32's most likely token this often on the check text (random weights'
# flat distributions make top-1 fragile: KL is the sharper test) ...
MAX_KL = 0.02  # ... and stay this close (nats) to fp32's distributions; a broken kernel is far beyond both
CHECK_TEXT = "The old lighthouse keeper climbed the stairs every evening, lit the lamp, and watched the ships pass by."
PRIME_TOKENS = 8  # read as a prompt first, so that the prompt's path (several rows) is checked too
CHECK_STEPS = 16  # decode steps timed and compared per precision
GIVE_UP_AFTER = 2  # steps: a precision this many steps slower than 1.5x the best so far is not finished
PROBE_LAYERS = 4  # layers each candidate is measured on (gpt2-xl has 48: a twelfth of its matrices, and its head)
SHADOW_CHUNKS = (1, 2, 4, LONG_CHUNK)  # tokens the shadow row may read at a time beside a step: the cheapest on
# average wins
LOG = logging.getLogger("gpt2_studio")


@dataclass(frozen=True)
class Trial:
    """One precision as measured here: its decode step and how closely it follows fp32."""

    precision: str
    step_s: float  # median seconds of a decode step (one token, the whole model)
    top1: float | None = None  # share of steps whose most likely token is fp32's; None: not checked
    kl: float | None = None  # mean KL(fp32 || this), nats
    note: str = ""  # why it was not checked, or why it failed

    @property
    def faithful(self) -> bool:
        if self.precision == "fp32":
            return True  # the reference
        return self.top1 is not None and self.kl is not None and self.top1 >= MIN_TOP1 and self.kl <= MAX_KL


@dataclass(frozen=True)
class Choice:
    """What `auto` resolved to on this machine, and the measurements behind it."""

    precision: str
    trials: tuple[Trial, ...]
    measured_now: bool  # False: read from an earlier load's measurement
    shadow_chunk: int = SHADOW_CHUNK  # tokens the window's shadow row reads at a time: the cheapest measured
    layers: str = ""  # what was measured: "4 of 48 layers"

    @property
    def why(self) -> str:
        """In words: "int8: 3.2x fp32's speed here, measured at first load"."""
        when = "measured at this first load" if self.measured_now else "measured at this model's first load here"
        if self.layers:
            when += f" on {self.layers}"
        by_name = {t.precision: t for t in self.trials}
        if not self.trials:
            return (
                f"{self.precision}: the smallest that runs here, as fp32 does not fit in the free memory (not measured)"
            )
        if self.precision == "fp32" or "fp32" not in by_name:
            others = [t.precision for t in self.trials if t.precision != "fp32"]
            return f"{self.precision}: the fastest faithful precision here" + (
                f" ({', '.join(others)} were slower or less faithful), {when}" if others else f", {when}"
            )
        ratio = by_name["fp32"].step_s / by_name[self.precision].step_s
        return f"{self.precision}: {ratio:.1f}x fp32's speed here, {when}"


def pick(trials: list[Trial]) -> str:
    """The fastest faithful precision (fp32, the reference, is always faithful)."""
    faithful = [t for t in trials if t.faithful and math.isfinite(t.step_s)]
    if not faithful:
        raise ValueError("no precision was measured: at least fp32 must be")
    return min(faithful, key=lambda t: t.step_s).precision


def check_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """The teacher-forced text, PRIME_TOKENS + CHECK_STEPS ids (repeated if the tokenizer makes fewer)."""
    ids = [i % vocab_size for i in tokenizer.encode(CHECK_TEXT)] or [0]
    while len(ids) < PRIME_TOKENS + CHECK_STEPS:
        ids = ids + ids
    return ids[: PRIME_TOKENS + CHECK_STEPS]


def decode_steps(
    model: Any, ids: list[int], stop_after_s: float = math.inf, rows: int = 1, shadow_chunk: int = SHADOW_CHUNK
) -> tuple[list[float], list[torch.Tensor]]:
    """Reads the first PRIME_TOKENS of `ids` as a prompt, then the rest a token at a time, through the fast
    forward: each step's seconds and the next-token log-probs after the prompt and after each step.
    Stops early once GIVE_UP_AFTER steps each took longer than `stop_after_s`. `rows=2`: with the window's
    shadow row beside the main one, reading `shadow_chunk` tokens every `shadow_chunk` steps."""
    seconds, log_probs = [], []
    with torch.inference_mode(), policy_for(model).hold():
        window = Window(len(ids) if rows == 2 else None, model.config.n_positions)
        context = FastContext(model, window, shadow=rows == 2, shadow_chunk=shadow_chunk)
        logits = context.prime(ids[:PRIME_TOKENS])
        for token in ids[PRIME_TOKENS:]:
            log_probs.append(logits.float().log_softmax(-1))
            start = time.perf_counter()
            logits = context.append(token)
            seconds.append(time.perf_counter() - start)
            if len(seconds) >= GIVE_UP_AFTER and min(seconds[-GIVE_UP_AFTER:]) > stop_after_s:
                break
        log_probs.append(logits.float().log_softmax(-1))
    return seconds, log_probs


def step_seconds(seconds: list[float]) -> float:
    """The median step, the first two left out (they page in the weights and warm the kernels)."""
    return statistics.median(seconds[2:] if len(seconds) > 4 else seconds)


def choose(
    candidates: list[str],
    load_probe: Callable[[str], Any],
    ids: list[int],
    say: Callable[[str], None] = lambda message: None,
    layers: str = "",
) -> Choice:
    """Measures the candidates (see `measure`) on the models `load_probe(precision)` gives (a few layers each),
    picks the fastest faithful one, and times its steps with the window's shadow row at each chunk, in turns
    (this machine's speed drifts): the cheapest chunk is how this model reads the next window near a reset."""
    trials = measure(candidates, load_probe, ids, say)
    precision = pick(trials)
    say(f"Timing window resets with {precision}")
    model = load_probe(precision)
    shadowed: dict[int, list[float]] = {chunk: [] for chunk in SHADOW_CHUNKS}
    for _ in range(3):  # means, not medians: only every chunk-th step carries the shadow's tokens
        for chunk, means in shadowed.items():
            means.append(statistics.mean(decode_steps(model, ids, rows=2, shadow_chunk=chunk)[0][2:]))
    del model
    chunk = min(shadowed, key=lambda c: min(shadowed[c]))
    return Choice(precision, tuple(trials), True, chunk, layers)


def measure(
    candidates: list[str],
    load_probe: Callable[[str], Any],
    ids: list[int],
    say: Callable[[str], None] = lambda message: None,
) -> list[Trial]:
    """Loads each candidate precision with `load_probe(precision)`, one at a time (each is freed before the
    next is loaded), times its decode steps and compares them with fp32's (measured first)."""
    order = ["fp32", *(p for p in candidates if p != "fp32")]
    trials: list[Trial] = []
    reference: list[torch.Tensor] = []
    best = math.inf
    started = time.perf_counter()
    for number, precision in enumerate(order, 1):
        left = ""
        if number > 1:  # the candidates so far took about this long each
            left = f", about {(time.perf_counter() - started) / (number - 1) * (len(order) - number + 1):.0f} s left"
        say(f"Measuring {precision} on this CPU ({number} of {len(order)}), once for this model{left}")
        model = load_probe(precision)
        seconds, log_probs = decode_steps(model, ids, stop_after_s=1.5 * best)
        del model
        step_s = step_seconds(seconds)
        if precision == "fp32":
            reference, trial = log_probs, Trial(precision, step_s)
        elif len(log_probs) < len(reference) or step_s >= best:
            trial = Trial(precision, step_s, note="slower than a faithful precision measured before it")
        else:
            trial = Trial(precision, step_s, *agreement(reference, log_probs))
        trials.append(trial)
        LOG.info("auto precision: %s", trial)
        if trial.faithful:
            best = min(best, step_s)
    return trials


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    """(top-1 agreement, mean KL(reference || other)) over matching steps of log-probabilities."""
    ref, oth = torch.stack(reference), torch.stack(other[: len(reference)])
    top1 = float((ref.argmax(-1) == oth.argmax(-1)).float().mean())
    kl = float((ref.exp() * (ref - oth)).sum(-1).mean())
    return top1, kl


# Remembering: one JSON file in the weights cache folder, one entry per machine, torch and model.


def key(source: str, is_local: bool) -> str | None:
    """What a measurement depends on: the CPU, torch, and the model's weight files (None: cannot tell)."""
    stamp = weights_cache.weights_stamp(source, is_local)
    if stamp is None:
        return None
    # not torch's thread count: every process of a machine (the page, the command line) must agree on `auto`
    machine = (capabilities.cpu_name(), sorted(capabilities.cpu_flags()), os.cpu_count())
    return hashlib.sha256(repr((machine, torch.__version__, stamp, FORMAT)).encode()).hexdigest()[:20]


def _choices_path() -> Path | None:
    folder = weights_cache.cache_folder()
    return None if folder is None else folder / CHOICES_FILE


def _read_all(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered(choice_key: str | None) -> Choice | None:
    """The choice measured earlier under this key, or None (never measured, cache off, unreadable)."""
    path = _choices_path()
    if choice_key is None or path is None:
        return None
    entry = _read_all(path).get(choice_key, {})
    try:
        trials = tuple(Trial(**trial) for trial in entry["trials"])
        choice = Choice(
            entry["precision"],
            trials,
            False,
            entry["shadow_chunk"],
            entry.get("layers", ""),
        )
    except (TypeError, KeyError):
        return None
    usable = capabilities.runnable("cpu")
    return choice if choice.precision in usable else None


def remember(choice_key: str | None, choice: Choice) -> None:
    path = _choices_path()
    if choice_key is None or path is None:
        return
    data = _read_all(path)
    data[choice_key] = {
        "precision": choice.precision,
        "trials": [asdict(t) for t in choice.trials],
        "shadow_chunk": choice.shadow_chunk,
        "layers": choice.layers,
        "cpu": capabilities.cpu_name(),
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache: the next load measures again
        LOG.warning("could not remember the auto precision in %s (%s)", path, error)
