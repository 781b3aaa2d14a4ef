"""The training script of the shipped model (bench/train_shakespeare.py): the loss with a window that it logs as it
trains is the engine's own reading with that window, and the precision it trains in is the one it measured.
No training runs here."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

from bench.train_shakespeare import as_prose, context_loss, pick_precision
from gpt2_engine.scoring import window_logprobs


@pytest.mark.parametrize("window", [4, 8])
def test_the_logged_loss_with_a_window_is_the_engines_reading_with_it(engine, window: int) -> None:
    ids = torch.randint(0, engine.model.config.vocab_size, (window * 13,), generator=torch.Generator().manual_seed(1))
    logged = context_loss(engine.model, ids, window, tokens=window * 12)
    read = window_logprobs(engine, ids.tolist(), window, prompt_tokens=window)
    assert len(read) == window * 12
    assert logged == pytest.approx(-sum(read) / len(read), abs=1e-4)
    assert math.isfinite(logged)


class Probe(torch.nn.Module):
    """A stand-in model whose step under bf16 autocast fails (no bf16 kernel on this CPU), or is slower or faster
    than in fp32: what `pick_precision` measures, made to answer each way on any CPU."""

    def __init__(self, bf16: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.bf16 = bf16

    def forward(self, input_ids, labels):
        if torch.is_autocast_enabled("cpu"):
            if self.bf16 == "fails":
                raise RuntimeError("no bf16 kernel for this operator here")
            time.sleep(0.1 if self.bf16 == "slower" else 0.0)
        else:
            time.sleep(0.0 if self.bf16 == "slower" else 0.1)
        return SimpleNamespace(loss=(self.weight * input_ids.float()).sum())


@pytest.mark.parametrize(("bf16", "trains_in_bf16"), [("faster", True), ("slower", False), ("fails", False)])
def test_training_takes_bf16_only_where_it_runs_and_is_clearly_faster(bf16: str, trains_in_bf16: bool) -> None:
    model, said = Probe(bf16), []
    pick_precision(model, torch.ones(1, 4), said.append)
    assert model.train_bf16 is trains_in_bf16
    assert said and ("bf16" if trains_in_bf16 else "fp32") in said[-1].split(": ")[-1], said


def test_prose_joins_a_speechs_lines_and_keeps_who_speaks_and_where_speeches_end() -> None:
    """`as_prose` (issue 28): the lines inside a paragraph become one line, the speaker's name keeps its own line,
    the blank lines between paragraphs stay; the words are the text's own, in order."""
    printed = (
        "ACT I.\n\nSCENE I. London. A street\n\n[Enter GLOSTER.]\n\n"
        "GLOSTER\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n\n"
        "Ham.\nTo be, or not to be,--that is the question:--\n\n"
        "1 Clown.\nIs she to be buried in Christian burial\nwhen she wilfully seeks her own salvation?\n\n\n"
        "PERICLES. [Aside.]\nHow courtesy would seem to cover sin,\n  When what is done is like an hypocrite,\n\n"
        "And so will I.\nPeace, children, peace!\n"
    )
    assert as_prose(printed) == (
        "ACT I.\n\nSCENE I. London. A street\n\n[Enter GLOSTER.]\n\n"
        "GLOSTER\nNow is the winter of our discontent Made glorious summer by this sun of York;\n\n"
        "Ham.\nTo be, or not to be,--that is the question:--\n\n"
        "1 Clown.\nIs she to be buried in Christian burial when she wilfully seeks her own salvation?\n\n\n"
        "PERICLES. [Aside.]\nHow courtesy would seem to cover sin, When what is done is like an hypocrite,\n\n"
        "And so will I. Peace, children, peace!\n"  # a line of verse is not a speaker's name
    )
    assert as_prose(printed).split() == printed.split()
    assert as_prose(as_prose(printed)) == as_prose(printed)
