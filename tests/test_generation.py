"""The engine against Hugging Face's own generate() and against full recomputation; the window, exactly."""

from __future__ import annotations

import itertools

import pytest
import torch

import gpt2_engine
from gpt2_engine import decoding
from gpt2_engine.batching import LOOKAHEAD
from gpt2_engine.context import KVCacheContext
from gpt2_engine.fast import FastContext


def token_ids(engine: gpt2_engine.Engine, prompt: str, **settings) -> list[int]:
    return [step.token_id for step in engine.stream(prompt, **settings)]


def full_forward_logits(engine: gpt2_engine.Engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([ids])).logits[0, -1]


class RecordingContext(KVCacheContext):
    """The real context, keeping every forward's ids and logits so tests can recompute them."""

    def __init__(self, model):
        super().__init__(model)
        self.held: list[int] = []  # the ids the cache holds, in order
        self.calls: list[tuple[str, list[int], torch.Tensor]] = []
        self.max_length = 0

    def prime(self, ids):
        logits = super().prime(ids)
        self.held = list(ids)
        self.calls.append(("prime", list(self.held), logits.clone()))
        self.max_length = max(self.max_length, self.length)
        return logits

    def append(self, token_id):
        logits = super().append(token_id)
        self.held.append(token_id)
        self.calls.append(("append", list(self.held), logits.clone()))
        self.max_length = max(self.max_length, self.length)
        return logits


@pytest.fixture
def recording(engine, monkeypatch):
    contexts: list[RecordingContext] = []

    def new_context(model, settings, backend, window_mode, *sizes):
        contexts.append(RecordingContext(model))
        return contexts[-1]

    monkeypatch.setattr(decoding, "new_context", new_context)
    return contexts


def test_greedy_equals_transformers_generate(engine) -> None:
    prompt = "The cat sat on the"
    ours = token_ids(engine, prompt, sampler="greedy", max_new_tokens=40, window=None, stop_at_eos=False)
    input_ids = torch.tensor([engine.tokenizer.encode(prompt)])
    theirs = engine.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=40,
        min_new_tokens=40,
        pad_token_id=0,
    )[0, input_ids.shape[1] :].tolist()
    assert ours == theirs


def test_cached_logits_equal_a_full_forward(engine, recording) -> None:
    list(engine.stream("Hello world", max_new_tokens=30, window=None, seed=3, stop_at_eos=False))
    (context,) = recording
    assert len(context.calls) >= 30  # the prompt's read and every token's but the last (not read: nothing follows)
    for _, held, logits in context.calls:
        torch.testing.assert_close(logits, full_forward_logits(engine, held), rtol=1e-4, atol=1e-4)


def test_seeded_runs_repeat_exactly(engine) -> None:
    a = list(engine.stream("Once upon", max_new_tokens=50, seed=7))
    b = list(engine.stream("Once upon", max_new_tokens=50, seed=7))
    assert [s.token_id for s in a] == [s.token_id for s in b]
    assert all(s.seed == 7 for s in a)
    c = list(engine.stream("Once upon", max_new_tokens=50))  # no seed: one is drawn and reported
    assert c[0].seed == c[-1].seed
    assert [s.token_id for s in engine.stream("Once upon", max_new_tokens=50, seed=c[0].seed)] == [
        s.token_id for s in c
    ]


@pytest.mark.parametrize("sampler", ["nucleus", "tutorial", "greedy"])
def test_window_at_least_the_run_equals_window_off(engine, sampler) -> None:
    run = dict(max_new_tokens=40, seed=11, sampler=sampler, stop_at_eos=False)
    assert token_ids(engine, "The cat", window=64, **run) == token_ids(engine, "The cat", window=None, **run)


@pytest.mark.parametrize("window", [1, 5, 16])
def test_after_a_reset_logits_equal_a_fresh_forward_over_the_last_n_ids(engine, recording, window) -> None:
    steps = list(engine.stream("The cat sat on the mat", max_new_tokens=50, window=window, seed=5, stop_at_eos=False))
    (context,) = recording
    prompt_ids = engine.tokenizer.encode("The cat sat on the mat")
    all_ids = prompt_ids + [s.token_id for s in steps]
    primes = [held for kind, held, _ in context.calls if kind == "prime"]
    # the first prime is the prompt; then one at every N-th generated token, from the last N ids
    assert primes[0] == prompt_ids
    expected = [all_ids[: len(prompt_ids) + k][-window:] for k in range(window, 50, window)]
    assert primes[1:] == expected
    assert [s.index for s in steps if s.reset] == list(range(window, 50, window))
    for _, held, logits in context.calls:
        torch.testing.assert_close(logits, full_forward_logits(engine, held), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prompt_tokens,window", [(3, 8), (20, 8), (3, 64), (60, 30)])
def test_context_never_exceeds_the_bound(engine, recording, prompt_tokens, window) -> None:
    prompt_ids = list(
        itertools.islice(itertools.cycle(engine.tokenizer.encode("The cat sat on the mat. ")), prompt_tokens)
    )
    prompt = engine.tokenizer.decode(prompt_ids)
    steps = list(engine.stream(prompt, max_new_tokens=200, window=window, seed=1, stop_at_eos=False))
    kept = steps[0].prompt_tokens
    bound = max(kept, window) + window - 1
    assert max(s.context_tokens for s in steps) <= bound
    assert recording[0].max_length <= bound <= engine.n_positions
    kv_per_token = engine.kv_bytes_per_token
    assert all(s.kv_bytes == s.context_tokens * kv_per_token for s in steps)


def test_window_off_runs_far_past_the_model_limit(engine, recording) -> None:
    n = engine.n_positions * 4  # the test model has 128 positions
    steps = list(engine.stream("The cat", max_new_tokens=n, window=None, seed=2, stop_at_eos=False))
    assert len(steps) == n
    assert max(s.context_tokens for s in steps) == engine.n_positions
    resets = [s.index for s in steps if s.reset]
    assert resets, "window off must re-prime when the context is full"
    (context,) = recording
    half = [held for kind, held, _ in context.calls if kind == "prime"][1:]
    assert all(len(held) == engine.n_positions // 2 for held in half)


def test_long_prompt_keeps_its_most_recent_tokens(engine) -> None:
    prompt = "The cat sat on the mat. " * 200
    ids = engine.tokenizer.encode(prompt)
    first = next(engine.stream(prompt, max_new_tokens=1, window=None, seed=0))
    assert first.prompt_tokens == engine.n_positions and first.prompt_tokens_dropped == len(ids) - engine.n_positions
    with_window = next(engine.stream(prompt, max_new_tokens=1, window=16, seed=0))
    assert with_window.prompt_tokens == engine.n_positions - 16


def test_empty_prompt_starts_a_fresh_document(engine) -> None:
    steps = list(engine.stream("", max_new_tokens=5, seed=0, stop_at_eos=False))
    assert len(steps) == 5 and steps[0].prompt_tokens == 1


def test_stops_at_end_of_text_and_says_why(engine, monkeypatch) -> None:
    eos = engine.eos_token_id
    forced = torch.full((engine.model.config.vocab_size,), -1e9)
    forced[eos] = 0.0

    real_took = FastContext.took

    def forced_took(self, logits):  # the logits after every appended token (not after the prompt) are these
        appended, logits = self._reading == "append", real_took(self, logits)
        return forced.clone() if appended else logits

    monkeypatch.setattr(KVCacheContext, "append", lambda self, token: forced.clone())
    monkeypatch.setattr(FastContext, "took", forced_took)
    steps = list(engine.stream("Hi", max_new_tokens=10, sampler="greedy", window=None, stop_at_eos=True))
    assert len(steps) == 2 and steps[-1].token_id == eos and steps[-1].stop_reason == "eos"
    assert steps[-1].text == ""  # special tokens are not shown
    kept = list(engine.stream("Hi", max_new_tokens=10, sampler="greedy", window=None, stop_at_eos=False))
    assert len(kept) == 10 and kept[-1].stop_reason == "length"


def test_stop_at_sentence_end_runs_on_to_a_full_stop(engine) -> None:
    settings = gpt2_engine.GenerationSettings(
        max_new_tokens=5, stop_at_sentence_end=True, sentence_end_max_extra=300, seed=4, stop_at_eos=False
    )
    steps = list(engine.stream("The cat sat on the mat.", settings))
    last = steps[-1]
    assert len(steps) >= 5
    if last.stop_reason == "sentence_end":
        assert any(mark in engine.tokenizer.decode([last.token_id]) for mark in ".!?")
        assert not any(any(m in engine.tokenizer.decode([s.token_id]) for m in ".!?") for s in steps[4:-1])
    else:  # the bound is what stops it
        assert last.stop_reason == "length" and len(steps) == 5 + 300
    bounded = list(engine.stream("The cat", settings.with_(sentence_end_max_extra=0)))
    assert len(bounded) == 5


def test_closing_the_stream_stops_the_work(engine, recording) -> None:
    steps = engine.stream("The cat", max_new_tokens=1000, window=None, seed=0, stop_at_eos=False)
    for step in steps:
        if step.index == 9:
            break
    steps.close()
    assert engine.batcher.join(timeout_s=60)  # the run has left the batch, and the batch's thread has ended
    # the prime and nine appends, and at most the steps the batch decoded ahead of a slow reader before the break
    assert 10 <= len(recording[0].calls) <= 10 + LOOKAHEAD


def test_speak_and_xspeak_keep_the_tutorial_api(engine) -> None:
    pieces = list(engine.xspeak("The cat", max_new_tokens=12, seed=9))
    assert pieces[0] == "The cat"
    assert engine.speak("The cat", max_new_tokens=12, seed=9) == "".join(pieces)


def test_steps_carry_memory_and_time(engine) -> None:
    steps = list(engine.stream("The cat", max_new_tokens=20, seed=0, stop_at_eos=False))
    assert [s.index for s in steps] == list(range(20))
    assert all(s.rss_bytes >= s.anon_bytes > 0 for s in steps)
    assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(steps))
    assert steps[-1].stop_reason == "length" and all(s.stop_reason is None for s in steps[:-1])


def test_a_step_reads_every_matrix_and_the_tied_token_table_not_the_position_table(engine) -> None:
    """The bandwidth ceiling's bytes (bench.benchmark): fp32's LM head is the token table itself, read whole at every
    step; of the position table a step reads one row."""
    positions = engine.model.transformer.wpe.weight
    assert engine.step_bytes == engine.weight_bytes - positions.numel() * positions.element_size()
