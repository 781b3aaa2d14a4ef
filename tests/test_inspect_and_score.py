"""Candidates and step mode (look inside the sampler); coherence scoring; tutorial mode and the memory guard."""

from __future__ import annotations

import pytest
import torch

import gpt2_engine
from gpt2_engine.sampling import distribution
from gpt2_engine.scoring import coherence
from gpt2_engine.stepping import StepMode


def full_logits(engine, ids):
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_candidates_are_the_models_own_softmax_in_rank_order(engine) -> None:
    steps = list(
        engine.stream(
            "The cat sat",
            max_new_tokens=12,
            candidates=8,
            temperature=0.8,
            top_p=0.6,
            seed=2,
            window=None,
            stop_at_eos=False,
        )
    )
    ids = engine.tokenizer.encode("The cat sat")
    for step in steps:
        probs = torch.softmax(full_logits(engine, ids) / 0.8, dim=-1)
        top = torch.topk(probs, 8)
        assert [c.token_id for c in step.candidates] == top.indices.tolist()
        torch.testing.assert_close(
            torch.tensor([c.probability for c in step.candidates]), top.values, rtol=1e-4, atol=1e-5
        )
        dist = distribution(full_logits(engine, ids), 0.8, None, 0.6)
        assert [c.in_top_p for c in step.candidates] == [rank < dist.nucleus_size for rank in range(8)]
        assert step.nucleus_size == dist.nucleus_size and step.nucleus_mass >= 0.6 - 1e-6
        ids.append(step.token_id)


def test_candidates_are_off_unless_asked(engine) -> None:
    assert all(step.candidates == () for step in engine.stream("Hi", max_new_tokens=5, seed=0))


def test_step_mode_choose_undo_choose_gives_the_same_distribution(engine) -> None:
    stepper = StepMode(engine, "The cat sat", gpt2_engine.GenerationSettings(seed=3, window=None))
    first = stepper.candidates(10)
    pick = first[3].token_id
    stepper.step(choice=pick)
    after = [(c.token_id, c.probability) for c in stepper.candidates(10)]
    assert stepper.undo()
    assert [(c.token_id, c.probability) for c in stepper.candidates(10)] == [(c.token_id, c.probability) for c in first]
    stepper.step(choice=pick)
    again = [(c.token_id, c.probability) for c in stepper.candidates(10)]
    assert [t for t, _ in again] == [t for t, _ in after]
    torch.testing.assert_close(torch.tensor([p for _, p in again]), torch.tensor([p for _, p in after]))


def test_step_modes_undo_keeps_logits_within_its_bytes_and_reads_again_beyond(engine, monkeypatch) -> None:
    """Issue 30: every step kept a whole vocabulary of logits for undo, with no cap. The newest steps' are kept
    within UNDO_LOGITS_BYTES; undoing an older step reads its context again, to the same logits."""
    from gpt2_engine import stepping

    per_step = engine.model.config.vocab_size * 4  # fp32 logits
    monkeypatch.setattr(stepping, "UNDO_LOGITS_BYTES", 3 * per_step)
    stepper = StepMode(engine, "The cat sat on the mat", gpt2_engine.GenerationSettings(seed=2, window=None))
    for _ in range(8):
        stepper.step()
        assert stepper.undo_bytes <= 3 * per_step
    while stepper.steps:  # back to the phrase: the first five undos read their context again
        stepper.undo()
        torch.testing.assert_close(stepper.logits.float(), full_logits(engine, stepper.ids), rtol=1e-4, atol=1e-4)


def test_step_mode_continues_from_the_cache_and_honours_the_window(engine) -> None:
    stepper = StepMode(engine, "The cat sat on the mat", gpt2_engine.GenerationSettings(seed=1, window=4))
    for k in range(11):
        stepper.step(choice=None if k % 2 else stepper.candidates(5)[k % 5].token_id)
        held = stepper.ids[stepper.held_from :]
        torch.testing.assert_close(stepper.logits.float(), full_logits(engine, held), rtol=1e-4, atol=1e-4)
    assert [s.index for s in stepper.steps if s.reset] == [4, 8]
    for _ in range(5):  # undo back across the reset at 8
        stepper.undo()
        held = stepper.ids[stepper.held_from :]
        torch.testing.assert_close(stepper.logits.float(), full_logits(engine, held), rtol=1e-4, atol=1e-4)
    assert len(stepper.steps) == 6


def test_step_mode_retune_redraws_without_a_forward_pass(engine, monkeypatch) -> None:
    stepper = StepMode(engine, "The cat", gpt2_engine.GenerationSettings(seed=0, top_p=0.9))
    monkeypatch.setattr(stepper.context, "append", lambda token: pytest.fail("no forward pass expected"))
    wide = stepper.distribution(top_p=0.9).nucleus_size
    narrow = stepper.distribution(top_p=0.2).nucleus_size
    assert narrow < wide
    stepper.retune(top_p=0.2)
    assert stepper.distribution().nucleus_size == narrow


def test_coherence_agrees_with_the_transformers_loss(engine) -> None:
    steps = list(engine.stream("The cat sat on the mat.", max_new_tokens=40, seed=5, stop_at_eos=False))
    prompt_ids = engine.tokenizer.encode("The cat sat on the mat.")
    generated = [s.token_id for s in steps]
    ids = torch.tensor([prompt_ids + generated])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100  # the prompt is context, not scored
    with torch.inference_mode():
        loss = float(engine.model(input_ids=ids, labels=labels).loss)
    score = coherence(engine, prompt_ids, generated)
    assert score.tokens == len(generated)
    assert score.mean_logprob == pytest.approx(-loss, rel=1e-4)
    assert score.perplexity == pytest.approx(torch.exp(torch.tensor(loss)).item(), rel=1e-4)


def test_sliding_scoring_agrees_with_one_pass_where_both_fit(engine) -> None:
    prompt_ids = engine.tokenizer.encode("Once upon a time")
    generated = [
        s.token_id
        for s in engine.stream("Once upon a time", max_new_tokens=100, seed=1, stop_at_eos=False, window=None)
    ]
    one_pass = coherence(engine, prompt_ids, generated)  # 104 tokens fit in the 128 positions
    # a stride of the whole limit is one pass; a smaller limit forces windows: the same ids, scored with less context
    assert coherence(engine, prompt_ids, generated, stride=128).mean_logprob == pytest.approx(
        one_pass.mean_logprob, rel=1e-5
    )
    long_ids = [s.token_id for s in engine.stream("Once", max_new_tokens=400, seed=2, stop_at_eos=False, window=None)]
    progress = []
    long_score = coherence(
        engine, engine.tokenizer.encode("Once"), long_ids, progress=lambda done, total: progress.append((done, total))
    )
    assert long_score.tokens == 400 and progress[-1] == (400, 400)


def graph_size(tensor: torch.Tensor) -> int:
    """Nodes in the autograd graph behind a tensor (0 when there is none)."""
    seen, stack = set(), [tensor.grad_fn] if tensor.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_tutorial_mode_keeps_the_autograd_graph_and_inference_mode_does_not(engine, monkeypatch) -> None:
    from gpt2_engine.context import KVCacheContext

    sizes: dict[bool, list[int]] = {True: [], False: []}
    original_forward = KVCacheContext._forward

    def recording_forward(self, ids):
        logits = original_forward(self, ids)
        sizes[torch.is_grad_enabled()].append(graph_size(self.cache.layers[0].keys))
        return logits

    monkeypatch.setattr(KVCacheContext, "_forward", recording_forward)
    settings = dict(max_new_tokens=30, window=None, seed=0, stop_at_eos=False, backend="reference")
    list(engine.stream("The cat", **settings))
    list(engine.stream("The cat", **settings, autograd=True))
    assert sizes[False] and all(n == 0 for n in sizes[False])  # inference mode: no graph at all
    grown = sizes[True]
    assert len(grown) == 30 and all(b > a for a, b in zip(grown, grown[1:]))  # the graph grows with every token


def test_tutorial_mode_saves_more_per_token_as_the_context_grows(engine) -> None:
    """Memory autograd saves per step (the bytes of tensors saved for backward) grows with the context."""
    saved: list[int] = []

    def pack(tensor):
        saved[-1] += tensor.numel() * tensor.element_size()
        return tensor

    steps = engine.stream("The cat", max_new_tokens=40, window=None, seed=0, stop_at_eos=False, autograd=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.append(0)
        for _ in steps:
            saved.append(0)
    per_step = saved[2:-1]
    assert all(b > a for a, b in zip(per_step, per_step[1:])), (
        per_step
    )  # each token attends over more keys: more is kept


def test_memory_guard_stops_a_run_with_a_reason_and_keeps_the_text(engine, monkeypatch) -> None:
    monkeypatch.setattr("gpt2_engine.decoding.available_bytes", lambda: 1)  # as if the machine were full
    steps = list(engine.stream("The cat", max_new_tokens=50, seed=0, stop_at_eos=False))
    assert steps[-1].stop_reason == "memory" and len(steps) < 50
    assert "".join(s.text for s in steps) == engine.tokenizer.decode(
        [s.token_id for s in steps], skip_special_tokens=True
    )


def test_tutorial_mode_refuses_weights_without_gradients(tiny_model_dir) -> None:
    low = gpt2_engine.load(str(tiny_model_dir), dtype="int8")
    with pytest.raises(gpt2_engine.SettingsError, match="autograd"):
        list(low.stream("Hi", autograd=True))
