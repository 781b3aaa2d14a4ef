"""A pace a room can watch (studio/presenter.py, runner.paced): in presenter mode the Write tab shows the text no
faster than its Pace, while the page's tokens/s stays the model's own speed; at full speed, outside presenter mode,
and in Compare and History's replays, nothing waits. The real app.py through AppTest with the tiny model.

Timing is asserted one way only: a paced run takes at least as long as its pace says (a busy machine is slower,
never faster)."""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest
from test_page import full_length_seed, generated_shown, metric
from test_page_compare import compare, press, set_widgets

import gpt2_engine
from studio import presenter, runner


def presenting(at: AppTest, pace: int) -> AppTest:
    """Presenter mode on, then its Pace set (the select is drawn only in presenter mode)."""
    at.toggle(key=presenter.KEY).set_value(True).run()
    assert not at.exception, at.exception
    set_widgets(at, **{presenter.PACE_KEY: pace})
    return at


@pytest.fixture
def pacings(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pace of every run that runner.paced showed, in order."""
    asked: list[float] = []
    real = runner.paced

    def spy(steps, per_s, *args):
        asked.append(per_s)
        return real(steps, per_s, *args)

    monkeypatch.setattr(runner, "paced", spy)
    return asked


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_presenter_mode_shows_the_text_at_its_pace_and_tokens_per_s_stays_the_models_speed(
    page: AppTest, page_engine: gpt2_engine.Engine, pacings: list[float]
) -> None:
    pace, length = 8, 12
    seed = full_length_seed(page_engine, "The cat sat", length)  # all 12 tokens: nothing ends the run early
    at = set_widgets(presenting(page, pace), prompt="The cat sat", length=length, seed=str(seed))
    at.button(key="generate").click()
    started = time.monotonic()
    at.run()
    showing_s = time.monotonic() - started
    assert not at.exception, at.exception
    run = at.session_state["run"]
    assert len(run.steps) == length and run.steps[-1].stop_reason == "length"
    assert generated_shown(at) == run.generated  # every token shown, none lost to the pace
    assert pacings == [pace]
    assert showing_s >= (length - 1) / pace  # the first token at once, then one every 1/pace s at least
    shown_speed = float(metric(at, "Tokens/s").replace(",", ""))
    assert shown_speed == pytest.approx(run.stats.tokens_per_s, abs=0.05)  # the model's own, from its steps' times
    assert shown_speed > 4 * pace  # the tiny model writes far faster than the room is shown it
    assert next(m.delta for m in at.metric if m.label == "Tokens/s") == f"shown at {pace}/s"
    assert f"shown at a reading pace, {pace} tokens/s" in captions(at)


def test_full_speed_and_normal_mode_are_not_paced(page: AppTest, pacings: list[float]) -> None:
    assert presenter.PACE_KEY not in [s.key for s in page.selectbox]  # the Pace is presenter mode's only
    at = press(set_widgets(page, prompt="The cat sat", length=12, seed="3"), "generate")
    assert "reading pace" not in captions(at)
    at = press(presenting(at, presenter.FULL_SPEED), "generate")
    assert at.session_state["run"].steps and "reading pace" not in captions(at)
    assert next(m.delta for m in at.metric if m.label == "Tokens/s") in (None, "")
    assert pacings == []


def test_compare_and_a_replay_are_not_paced_in_presenter_mode(page: AppTest, pacings: list[float]) -> None:
    at = press(set_widgets(presenting(page, 32), prompt="The cat sat", length=3, seed="3"), "generate")
    assert pacings == [32]  # the Write run
    at = press(at, "history_replay_1")
    assert at.session_state["run"].label == "replay of run 1"
    at = compare(at, compare_length=10)
    assert all(run.steps for run in at.session_state["comparison"].runs)
    assert pacings == [32]


class Stopped(BaseException):
    """What Streamlit raises in a script it stops (a BaseException, as its own is)."""


def test_paced_steps_are_taken_at_full_speed_and_a_stop_ends_them_at_once() -> None:
    taken: list[int] = []

    def model():  # a model far faster than the pace: 50 steps, each ready at once
        for i in range(50):
            taken.append(i)
            yield i

    shown: list[int] = []

    def check() -> None:  # Stop pressed as the third step is shown
        if len(shown) == 3:
            raise Stopped

    with pytest.raises(Stopped):
        for step in runner.paced(model(), 10, check):  # type: ignore[arg-type]  # ints stand for Steps
            shown.append(step)
    assert shown == [0, 1, 2]  # not one step more once stopped
    assert taken == list(range(50))  # the model was not held to the pace: all its steps were taken


def test_a_model_that_fails_while_paced_is_shown_up_to_where_it_failed() -> None:
    def model():
        yield from range(3)
        raise RuntimeError("the server went away")

    shown: list[int] = []
    with pytest.raises(RuntimeError, match="went away"):
        for step in runner.paced(model(), 50, lambda: None):  # type: ignore[arg-type]  # ints stand for Steps
            shown.append(step)
    assert shown == [0, 1, 2]
