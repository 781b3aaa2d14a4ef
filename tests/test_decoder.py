"""The one decoding core: `Engine.stream()` and step mode are the same `Decoder`, so they write the same tokens;
step mode's undo and retune leave the cache as a fresh read of the context would."""

from __future__ import annotations

import pytest
import torch

import gpt2_engine
from gpt2_engine import Decoder, StepMode
from gpt2_engine.fast import FastContext

PROMPT = "Once upon a time, there was a"


@pytest.mark.parametrize("window", [None, 5])
def test_stream_and_step_mode_write_the_same_tokens_for_the_same_seed(engine, window) -> None:
    settings = gpt2_engine.GenerationSettings(max_new_tokens=24, window=window, seed=11, top_p=0.9, stop_at_eos=False)
    streamed = list(engine.stream(PROMPT, settings, window_mode="reprime"))
    stepper = StepMode(engine, PROMPT, settings)
    stepped = [stepper.step() for _ in streamed]
    assert [s.token_id for s in stepped] == [s.token_id for s in streamed]
    assert [s.reset for s in stepped] == [s.reset for s in streamed]
    assert [s.context_tokens for s in stepped] == [s.context_tokens for s in streamed]
    # Step.text means one thing everywhere: the text this token completes (the last stream step flushes)
    assert [s.text for s in stepped[:-1]] == [s.text for s in streamed[:-1]]
    torch.testing.assert_close([s.logprob for s in stepped], [s.logprob for s in streamed])


def test_a_decoder_takes_the_same_choices_as_step_mode(engine) -> None:
    settings = engine.settings_for(gpt2_engine.GenerationSettings(window=4, seed=5, candidates=10))
    choices = [None, 50, None, None, 3, None, 7, None, None]
    stepper = StepMode(engine, PROMPT, settings)
    decoder = engine.decoder(PROMPT, settings, stops=False)
    for choice in choices:
        a, b = stepper.step(choice), decoder.step(choice)
        assert (a.token_id, a.reset, a.context_tokens, a.nucleus_size) == (
            b.token_id,
            b.reset,
            b.context_tokens,
            b.nucleus_size,
        )
    assert stepper.ids == decoder.ids and isinstance(decoder, Decoder)


def fresh_keys(engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        context = FastContext(engine.model)
        context.prime(ids)
        return context.cache.keys[0][:, :, : len(ids)].clone()


def test_undo_and_retune_continue_from_the_cache_a_fresh_read_would_make(engine) -> None:
    stepper = StepMode(engine, PROMPT, gpt2_engine.GenerationSettings(window=4, seed=3, top_p=0.8))
    for k in range(7):  # across a window reset (after token 4)
        stepper.step(choice=None if k % 3 else stepper.candidates(3)[k % 3].token_id)
    stepper.undo()
    stepper.undo()
    stepper.undo()  # back over the reset: the window's earlier context is read again
    stepper.retune(top_p=0.3, temperature=0.7)
    for _ in range(4):
        stepper.step()
    held = stepper.ids[stepper.held_from :]
    context = stepper.context
    assert context.length == len(held)
    torch.testing.assert_close(context.cache.keys[0][:, :, : len(held)], fresh_keys(engine, held), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        full = engine.model(input_ids=torch.tensor([held])).logits[0, -1].float()
    torch.testing.assert_close(stepper.logits.float(), full, rtol=1e-4, atol=1e-4)
    assert stepper.distribution().nucleus_mass >= 0.3 and stepper.settings.temperature == 0.7


def test_step_mode_refuses_what_it_cannot_do_with_a_settings_error(engine) -> None:
    stepper = StepMode(engine, PROMPT, gpt2_engine.GenerationSettings(window=4))
    with pytest.raises(gpt2_engine.SettingsError) as error:
        stepper.step(choice=engine.model.config.vocab_size)
    assert error.value.field == "choice"
    with pytest.raises(gpt2_engine.SettingsError) as error:
        stepper.retune(window=8)
    assert error.value.field == "window"
    assert stepper.steps == []  # nothing was changed by the refusals
