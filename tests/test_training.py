"""The training script of the shipped model (bench/train_shakespeare.py): the loss with a window that it logs as it
trains is the engine's own reading with that window. No training runs here."""

from __future__ import annotations

import math

import pytest
import torch

from bench.train_shakespeare import context_loss
from gpt2_engine.scoring import window_logprobs


@pytest.mark.parametrize("window", [4, 8])
def test_the_logged_loss_with_a_window_is_the_engines_reading_with_it(engine, window: int) -> None:
    ids = torch.randint(0, engine.model.config.vocab_size, (window * 13,), generator=torch.Generator().manual_seed(1))
    logged = context_loss(engine.model, ids, window, tokens=window * 12)
    read = window_logprobs(engine, ids.tolist(), window, prompt_tokens=window)
    assert len(read) == window * 12
    assert logged == pytest.approx(-sum(read) / len(read), abs=1e-4)
    assert math.isfinite(logged)
