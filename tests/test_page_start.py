"""The page's first sight on a fresh machine: the start-up model (gpt2-xl, or GPT2_STUDIO_MODEL) is not on this
machine and there is no network. The page starts on the shipped model by itself, says so in one line with the
command that downloads the one asked for, and writes; a later visitor lands on the model the server holds. A model
picked by hand that cannot be had still says why, with the shipped model one click away."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_page_compare import press, shown_text

from gpt2_engine import DEFAULT_MODEL, SHIPPED_MODEL
from studio import model_picker

APP = Path(__file__).resolve().parent.parent / "app.py"
NOTE = "Writing with **gpt2-shakespeare**"


@pytest.fixture
def fresh_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An empty Hugging Face cache, no network (HF_HUB_OFFLINE), and a server that has not tried its start-up
    model yet (the shipped model itself may be held already: it loads the same either way)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GPT2_STUDIO_MODEL", raising=False)
    monkeypatch.delenv("GPT2_STUDIO_PRECISION", raising=False)
    model_picker.unavailable_starts.clear()
    yield
    model_picker.unavailable_starts.clear()


def visit() -> AppTest:
    """A new browser tab: a new session, no visit key in its address."""
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, at.exception
    return at


def notes(at: AppTest) -> list[str]:
    return [i.value for i in at.info if NOTE in i.value]


def writes(at: AppTest) -> None:
    """Generate is there and writes words."""
    assert not at.button(key="generate").disabled
    at.text_area(key="prompt").set_value("KING.\nWhat news")
    at = press(at, "generate")
    assert any("Done:" in s.value for s in at.success), [s.value for s in at.success]
    assert len(shown_text(at).split()) > 5


@pytest.mark.parametrize("asked", [None, "distilgpt2"])
def test_a_fresh_page_offline_starts_on_the_shipped_model_and_writes(
    fresh_server: None, monkeypatch: pytest.MonkeyPatch, asked: str | None
) -> None:
    """The default (gpt2-xl) or GPT2_STUDIO_MODEL's known name: no red error, no button to press, one line."""
    if asked:
        monkeypatch.setenv("GPT2_STUDIO_MODEL", asked)
    name = asked or DEFAULT_MODEL
    at = visit()
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="model").value == SHIPPED_MODEL
    (note,) = notes(at)
    assert "\n" not in note and f"**{name}** is not on this machine" in note
    assert f"`python -m gpt2_engine --model {name} --length 1 Hello`" in note  # how to get it, once
    assert "HF_HUB_OFFLINE unset" in note and "Which GPT-2** in the sidebar" in note  # where to pick it then
    assert not [b for b in at.button if b.key == "use_shipped"]
    writes(at)


def test_a_second_visitor_lands_on_the_model_the_server_holds(
    fresh_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = visit()
    assert first.selectbox(key="model").value == SHIPPED_MODEL and not first.error
    asked: list[str] = []
    held = model_picker.shared_model

    def shared_model(name: str, precision: str):
        asked.append(name)
        return held(name, precision)

    monkeypatch.setattr(model_picker, "shared_model", shared_model)
    second = visit()  # a new tab, no visit key: not the start-up model that failed, but the one the server holds
    assert set(asked) == {SHIPPED_MODEL}, asked  # without trying (and failing) the start-up model again
    assert not second.error, [e.value for e in second.error]
    assert second.selectbox(key="model").value == SHIPPED_MODEL
    assert len(notes(second)) == 1
    writes(second)


def test_a_model_picked_by_hand_that_cannot_be_had_says_why(fresh_server: None) -> None:
    at = visit()
    at.selectbox(key="model").set_value(DEFAULT_MODEL).run()  # picked in the sidebar: an error, never replaced
    assert not at.exception, at.exception
    assert at.selectbox(key="model").value == DEFAULT_MODEL
    (error,) = [e.value for e in at.error]
    assert "Could not load this model" in error and f"model '{DEFAULT_MODEL}'" in error and "HF_HUB_OFFLINE" in error
    assert at.button(key="generate").disabled and not notes(at)
    at = press(at, "use_shipped")  # the shipped model, one click away
    assert at.selectbox(key="model").value == SHIPPED_MODEL and not at.error
    writes(at)


def test_a_hub_id_typed_by_hand_that_cannot_be_had_says_why(fresh_server: None) -> None:
    at = visit()
    at.selectbox(key="model").set_value(model_picker.OTHER).run()
    at.text_input(key="model_folder").set_value("someone/my-gpt2").run()
    assert not at.exception, at.exception
    assert any("Could not load this model" in e.value and "someone/my-gpt2" in e.value for e in at.error)
    assert at.text_input(key="model_folder").value == "someone/my-gpt2" and at.button(key="generate").disabled


def test_the_loading_heading_states_a_size_only_once_the_precision_is_known() -> None:
    """Issue 30: the heading said 1.72 GB (the smallest precision) while auto went on to load 1.89 GB, and it did
    not change for 15 s of a long phase. It now names a size only for a known precision, and counts the seconds."""
    from gpt2_engine import plan_load

    auto = plan_load("gpt2-xl", "auto")
    if auto.precision == "auto":  # not measured on this machine yet
        assert model_picker.load_label(auto, 25.4) == "Loading gpt2-xl, once for everyone · 25 s so far"
        assert model_picker._weights_said(auto, None).startswith("from ")
    fp32 = plan_load("gpt2-xl", "fp32")
    assert (
        model_picker.load_label(fp32, 3) == "Loading gpt2-xl: 6.23 GB of weights (fp32), once for everyone · 3 s so far"
    )
    assert model_picker._weights_said(fp32, None) == "6.23 GB"
