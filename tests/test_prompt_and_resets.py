"""A long phrase is read in pieces that report progress; a window reset with the shadow row costs one ordinary
step (no pause in the stream); q8's rows do not change each other, so the shadow row leaves the text alone."""

from __future__ import annotations

import pytest
import torch
from conftest import runs_here

import gpt2_engine
from gpt2_engine import fast, scheduler
from gpt2_engine.autotune import Choice, Trial
from gpt2_engine.q8 import Q8Linear
from gpt2_engine.quantize import quantize_rows

LONG = "The cat sat on the mat. Hello world! Is it raining? Yes, it is. Once upon a time there was a model. " * 3


def test_a_long_prompt_is_read_in_pieces_that_report_progress_in_order(engine, monkeypatch) -> None:
    monkeypatch.setattr(scheduler, "PIECE", 16)
    reports: list[tuple[int, int]] = []
    chunked = list(engine.stream(LONG, on_prompt=lambda read, total: reports.append((read, total)), **SETTINGS))
    total = chunked[0].prompt_tokens
    assert total > 3 * 16
    assert reports == [(min(end, total), total) for end in range(16, total + 16, 16)]
    monkeypatch.setattr(scheduler, "PIECE", 10_000)  # the same prompt in one pass: the same tokens
    assert [s.token_id for s in engine.stream(LONG, **SETTINGS)] == [s.token_id for s in chunked]


def test_a_prompt_read_in_pieces_gives_the_logits_of_one_pass(engine) -> None:
    ids = engine.tokenizer.encode(LONG)[:90]
    with torch.inference_mode():
        whole = fast.FastContext(engine.model).prime(ids)
        cache = fast.StaticKVCache(engine.model, rows=1)
        for start in range(0, len(ids), 7):  # what the batch does with a prompt, 7 tokens a pass
            pieces = fast.forward_reads(engine.model, [fast.Read(cache, 0, ids[start : start + 7], "prompt")])
        torch.testing.assert_close(pieces[0], whole, rtol=1e-4, atol=1e-4)


SETTINGS = dict(max_new_tokens=60, window=None, sampler="greedy", stop_at_eos=False, seed=0)


def forward_sizes(engine, monkeypatch, window_mode: str, window: int) -> list[list[list[int]]]:
    """The tokens per segment of every forward pass, grouped by the Step that followed them (a decoder alone:
    a stream's batch decodes a token or two ahead of its reader)."""
    calls: list[list[int]] = []
    real = fast.forward_reads

    def counting(model, reads):
        calls.append([len(read.ids) for read in reads])
        return real(model, reads)

    monkeypatch.setattr(fast, "forward_reads", counting)
    settings = engine.settings_for(**{**SETTINGS, "window": window})
    decoder = engine.decoder("The cat sat on the mat", settings, window_mode=window_mode)
    per_step = []
    while not decoder.finished:
        decoder.step()
        per_step.append(list(calls))
        calls.clear()
    return per_step


def test_with_the_shadow_row_every_reset_costs_one_ordinary_step(engine, monkeypatch) -> None:
    chunk = fast.SHADOW_CHUNK
    per_step = forward_sizes(engine, monkeypatch, "shadow", window=8)
    assert per_step[0] == [[len(engine.tokenizer.encode("The cat sat on the mat"))]]  # the prompt
    for calls in per_step[1:]:  # then one pass a token: the main row's token, now and then the shadow's few
        assert len(calls) == 1 and calls[0] in ([1], [1, chunk], [8 % chunk or chunk]), calls
    resets = [calls for calls in per_step[1:] if len(calls[0]) == 1 and calls[0] != [1]]
    assert len(resets) == (len(per_step) - 1) // 8  # each reset read at most a chunk, never the window


def test_a_plain_re_prime_reads_the_window_at_once(engine, monkeypatch) -> None:
    per_step = forward_sizes(engine, monkeypatch, "reprime", window=8)
    assert [calls for calls in per_step[1:] if calls != [[1]]] == [[[8]]] * ((len(per_step) - 1) // 8)


def test_shadow_and_re_prime_write_the_same_tokens(engine, monkeypatch) -> None:
    shadow = [s.token_id for s in engine.stream("The cat", window_mode="shadow", **{**SETTINGS, "window": 5})]
    assert shadow == [s.token_id for s in engine.stream("The cat", window_mode="reprime", **{**SETTINGS, "window": 5})]


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_resets_read_through_the_shadow_row_with_the_chunk_auto_measured(engine, monkeypatch, chunk) -> None:
    """Every engine resets through the shadow row (no pause); the chunk it reads at a time is the measured one."""
    trials = (Trial("fp32", 0.30), Trial("q8", 0.10, 1.0, 0.0))
    monkeypatch.setattr(engine, "choice", Choice("q8", trials, True, shadow_chunk=chunk))
    assert engine.window_mode == "shadow" and engine.shadow_chunk == chunk
    per_step = forward_sizes(engine, monkeypatch, engine.window_mode, window=8)
    for calls in per_step[1:]:  # the main row's token, and every chunk-th step the shadow's chunk beside it
        assert len(calls) == 1 and calls[0] in ([1], [1, chunk], [8 % chunk or chunk]), calls
    assert max(len(calls[0]) for calls in per_step[1:]) <= 2


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_q8_rows_do_not_change_each_other(precision) -> None:
    torch.manual_seed(0)
    weight = torch.randn(48, 64) * 0.05
    layer = Q8Linear(*quantize_rows(weight), torch.randn(48))
    x = torch.randn(3, 64)
    x[1] *= 40  # a row far larger than the others: with one scale per call it would coarsen theirs
    with torch.inference_mode():
        alone = torch.cat([layer(x[i : i + 1]) for i in range(3)])
        together = layer(x)
    assert torch.equal(alone, together)
    exact = x @ weight.T + layer.bias
    assert ((together - exact).norm(dim=1) / exact.norm(dim=1)).max() < 0.03


@pytest.mark.parametrize("precision", runs_here("q8"))
def test_q8_follows_fp32_and_its_shadow_row_leaves_the_text_alone(tiny_model_dir, engine, precision) -> None:
    low = gpt2_engine.load(str(tiny_model_dir), dtype=precision, device="cpu")
    prompt = "The cat sat on the mat"
    assert low.weight_bytes < 0.75 * engine.weight_bytes
    same = [s.token_id for s in low.stream(prompt, **{**SETTINGS, "window": 64})]
    # a window longer than the run never resets: only the second row differs
    assert [s.token_id for s in low.stream(prompt, window_mode="shadow", **{**SETTINGS, "window": 64})] == same
    with torch.inference_mode():
        ids = engine.tokenizer.encode(LONG)[:60]
        a = engine.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        b = low.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    assert float((a.exp() * (a - b)).sum(-1).mean()) < 0.03
