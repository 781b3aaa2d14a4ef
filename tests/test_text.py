"""Streamed text: the deltas join to tokenizer.decode(all ids), and no half character is ever shown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_engine.detokenize import REPLACEMENT, TextStream

# Not in the test tokenizer's training text, so its characters are split over byte tokens.
MULTI_BYTE = ["🙂 🚀 👋🏾 ❤️‍🔥", "東京都の天気", "汉字与한글", "Ünïcödé ŝtrîñg", "a🙂b東c", "🚀🚀🚀"]


@pytest.mark.parametrize("text", MULTI_BYTE)
def test_multi_byte_characters_split_across_tokens_stream_whole(engine, text) -> None:
    tokenizer = engine.tokenizer
    ids = tokenizer.encode(text)
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids) or text.isascii() or len(ids) == len(text), (
        "no split here"
    )
    stream = TextStream(tokenizer)
    deltas = [stream.push(i) for i in ids]
    deltas.append(stream.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any(REPLACEMENT in d for d in deltas), deltas


def test_some_test_character_really_is_split(engine) -> None:
    """Guards the test above: the small tokenizer must split at least one character over tokens."""
    assert any(REPLACEMENT in engine.tokenizer.decode([i]) for i in engine.tokenizer.encode("😀"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), min_size=0, max_size=40))
def test_any_token_sequence_joins_to_decode(engine, ids) -> None:
    """Random ids (invalid UTF-8 included) join exactly to what decode() gives for the whole list."""
    ids = [i % len(engine.tokenizer) for i in ids]
    stream = TextStream(engine.tokenizer)
    joined = "".join(stream.push(i) for i in ids) + stream.flush()
    assert joined == engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_generated_stream_joins_to_decode(engine) -> None:
    steps = list(engine.stream("日本 😀", max_new_tokens=200, seed=1, stop_at_eos=False, window=16))
    ids = [s.token_id for s in steps]
    assert "".join(s.text for s in steps) == engine.tokenizer.decode(ids, skip_special_tokens=True)
    # a delta may contain U+FFFD only where the bytes are truly invalid, never as a half character at its end
    assert not any(s.text.endswith(REPLACEMENT) for s in steps[:-1])
