"""Window N's rule, in the one place that says it (gpt2_engine/window.py). The decoder, its cache, and a run on a
server all ask this object; their own tests check that they do what it says."""

from __future__ import annotations

from gpt2_engine.window import Window


def test_a_prompt_keeps_room_for_the_window() -> None:
    assert Window(None, 1024).prompt_room() == 1024
    assert Window(50, 1024).prompt_room() == 974


def test_a_run_resets_every_n_tokens_and_keeps_the_last_n() -> None:
    window = Window(8, 1024)
    assert [window.reset_keep(generated, held=20) for generated in (1, 7, 8, 9, 16)] == [None, None, 8, None, 8]
    assert [window.until_reset(generated, held=20) for generated in (0, 1, 7, 8)] == [8, 7, 1, 8]


def test_with_the_window_off_a_full_context_keeps_its_recent_half() -> None:
    off = Window(None, 1024)
    assert off.reset_keep(500, held=1023) is None  # one more fits
    assert off.reset_keep(501, held=1024) == 512
    assert off.until_reset(0, held=1000) == 24


def test_a_row_holds_what_its_window_allows() -> None:
    assert Window(16, 1024).row_positions(10) == 32  # max(10, 16) + 16
    assert Window(16, 1024).row_positions(100) == 116  # a long prompt, then the window's tokens after it
    assert Window(512, 1024).row_positions(1000) == 1024  # never past the model's limit
    assert Window(None, 1024).row_positions(10) == 1024
    assert Window(16, 1024).shadow_positions() == 32


def test_the_shadow_reads_ahead_only_for_a_reset_the_run_reaches_within_what_off_holds() -> None:
    window = Window(8, 1024)
    assert window.read_ahead_from(generated=1, prompt_tokens=4, last=100) == 6  # the reset comes at token 8
    assert window.read_ahead_from(generated=9, prompt_tokens=4, last=100) == 6  # ... and at 16
    assert window.read_ahead_from(generated=1, prompt_tokens=4, last=8) is None  # the run ends first
    assert window.read_ahead_from(generated=1, prompt_tokens=4, last=12) is None  # holding it would pass off's 16
    assert Window(None, 1024).read_ahead_from(generated=1, prompt_tokens=4, last=100) is None
