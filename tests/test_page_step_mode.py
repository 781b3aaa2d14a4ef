"""Look inside the sampler, on the page: the Step by step tab driven by its widget keys through AppTest (bars,
the top-p cut, pick, sample, undo, auto, the window), and the Write tab's token tooltips and colours.

The bars' data are read back from the page (each bar's data-* attributes) and checked against the model:
a StepMode of the test's own, walked through the same tokens, and a softmax over a full forward pass."""

from __future__ import annotations

import html
import math
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import gpt2_engine
import gpt2_engine.fast
from gpt2_engine.sampling import distribution
from gpt2_engine.stepping import StepMode
from studio import keys, run_view, runner, step_html, step_mode

APP = Path(__file__).resolve().parent.parent / "app.py"
BAR = re.compile(
    r'<div class="cand (in|out)" data-rank="(\d+)" data-token-id="(\d+)" data-probability="([^"]+)" '
    r'data-in-top-p="(true|false)">'
)


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def started(at: AppTest, **values) -> AppTest:
    """Sets the tab's widgets by key (step_prompt, step_top_p, ...), then starts step mode."""
    for key, value in values.items():
        widget = next(w for kind in ("text_area", "slider", "select_slider") for w in getattr(at, kind) if w.key == key)
        widget.set_value(value)
    return click(at, "step_restart")


def bars(at: AppTest) -> list[dict]:
    """The bar chart's data as the page drew it, rank order."""
    rows = [
        {"rank": int(rank), "token_id": int(token), "probability": float(p), "in_top_p": flag == "true", "side": side}
        for h in at.html
        for side, rank, token, p, flag in BAR.findall(h.value)
    ]
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    return rows


def stepper(at: AppTest) -> StepMode:
    return at.session_state[keys.STEPPING].stepper


def step_text(at: AppTest) -> str:
    return next(h.value for h in at.html if "step-text" in h.value and "<style>" not in h.value)


def full_forward_probs(engine: gpt2_engine.Engine, ids: list[int], temperature: float) -> torch.Tensor:
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids], device=engine.device)).logits[0, -1].float().cpu()
    return torch.softmax(logits / temperature, dim=-1)


def test_nothing_runs_until_asked_then_the_bars_are_the_models_own(page: AppTest) -> None:
    assert keys.STEPPING not in page.session_state  # no forward pass for a visitor who never looks
    assert page.text_area(key="step_prompt").value == step_mode.DEFAULT_PROMPT
    at = started(page, step_prompt="The cat sat on the", step_top_p=0.6, step_temperature=0.8)
    shown = bars(at)
    assert len(shown) == 10
    held = stepper(at)
    own = StepMode(held.engine, "The cat sat on the", gpt2_engine.GenerationSettings(top_p=0.6, temperature=0.8))
    expected = own.candidates(10)
    assert [b["token_id"] for b in shown] == [c.token_id for c in expected]
    assert [b["probability"] for b in shown] == [c.probability for c in expected]  # repr: every digit
    assert [b["in_top_p"] for b in shown] == [c.in_top_p for c in expected]
    assert all(b["side"] == ("in" if b["in_top_p"] else "out") for b in shown)  # the colour split
    # ... and those are a softmax over the model's own logits for this context, at this temperature
    probs = full_forward_probs(held.engine, held.ids, 0.8)
    torch.testing.assert_close(
        torch.tensor([b["probability"] for b in shown]), probs[[b["token_id"] for b in shown]], rtol=0.03, atol=2e-3
    )
    nucleus = distribution(own.logits, 0.8, None, 0.6).nucleus_size
    assert sum(b["in_top_p"] for b in shown) == min(nucleus, 10)
    labels = [at.button(key=f"step_pick_{rank}").label for rank in range(10)]
    assert labels == [step_html.token_label(c.text) for c in expected]


def test_pick_grows_the_text_by_that_token_and_undo_takes_it_back(page: AppTest) -> None:
    at = started(page, step_prompt="Once upon a time")
    before_text, before_bars, before_ids = step_text(at), bars(at), list(stepper(at).ids)
    pick = before_bars[3]["token_id"]
    at = click(at, "step_pick_3")
    held = stepper(at)
    assert held.ids == [*before_ids, pick] and held.steps[-1].token_id == pick
    piece = step_html.token_pieces(held.engine.tokenizer, held.ids)[-1]
    assert f'<span class="generated latest">{html.escape(piece)}</span>' in step_text(at)
    assert "You picked" in at.session_state[keys.STEPPING].note and "4th choice" in at.session_state[keys.STEPPING].note
    assert bars(at) != before_bars  # a new context: new candidates
    at = click(at, "step_undo")
    assert stepper(at).ids == before_ids
    assert step_text(at) == before_text and bars(at) == before_bars
    assert at.button(key="step_undo").disabled  # nothing left to take back


def test_sample_draws_from_the_top_p_set(page: AppTest) -> None:
    at = started(page, step_prompt="The cat sat", step_top_p=0.05)  # a set of one: the likeliest token
    shown = bars(at)
    assert [b["in_top_p"] for b in shown] == [True] + [False] * 9
    at = click(at, "step_sample")
    assert stepper(at).steps[-1].token_id == shown[0]["token_id"]
    assert "The sampler drew" in at.session_state[keys.STEPPING].note
    for _ in range(3):  # wider sets: whatever it draws, it is one of the set
        at.slider(key="step_top_p").set_value(0.5).run()
        in_set = {b["token_id"] for b in bars(at) if b["in_top_p"]}
        nucleus = stepper(at).distribution().nucleus_size
        at = click(at, "step_sample")
        if nucleus <= 10:
            assert stepper(at).steps[-1].token_id in in_set


def test_top_p_and_temperature_move_the_bars_without_a_forward_pass(
    page: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = started(page, step_prompt="Hello world!", step_top_p=0.9)
    wide = sum(b["in_top_p"] for b in bars(at))
    forward_passes = []
    real_forward = gpt2_engine.fast.forward_reads
    monkeypatch.setattr(
        gpt2_engine.fast, "forward_reads", lambda *a, **k: forward_passes.append(1) or real_forward(*a, **k)
    )
    at.slider(key="step_top_p").set_value(0.1).run()
    narrow = sum(b["in_top_p"] for b in bars(at))
    assert narrow < wide  # the cut moved up
    cut = re.search(r'class="cut" data-nucleus-size="(\d+)"', "".join(h.value for h in at.html))
    assert cut and int(cut.group(1)) == narrow  # the dashed line sits under the last orange bar
    assert "p = 10% · the sampler draws only above" in "".join(h.value for h in at.html)  # ... and says its p
    at.slider(key="step_temperature").set_value(1.5).run()
    held = stepper(at)
    hot = torch.softmax(held.logits.float().cpu() / 1.5, dim=-1)
    shown = bars(at)
    torch.testing.assert_close(
        torch.tensor([b["probability"] for b in shown]), hot[[b["token_id"] for b in shown]], rtol=1e-5, atol=1e-7
    )
    assert forward_passes == []  # the same logits, re-read: the model did not run
    title = next(m for m in at.markdown if m.value == step_mode.CANDIDATES_TITLE)
    assert "p = 10%" in title.proto.help  # the title's help says the p it uses


def test_auto_runs_to_the_length_and_the_window_resets_show(page: AppTest) -> None:
    at = started(page, step_prompt="Once upon a time, there was a cat.", step_window=4, step_length=11)
    at = click(at, "step_auto")
    held = stepper(at)
    eos = held.engine.eos_token_id
    assert len(held.steps) == 11 or held.steps[-1].token_id == eos  # the tiny model may end the text early
    resets = [s.index for s in held.steps if s.reset]
    assert resets == [n for n in (4, 8) if n < len(held.steps)]
    text = step_text(at)
    assert text.count("⟲") == len(resets)
    assert ('class="prompt forgotten"' in text) == (held.held_from > 0)
    assert held.held_from > 0 or len(held.steps) < 4
    caption = next(c.value for c in at.caption if " written · GPT-2 reads" in c.value)  # 1 token, or n tokens
    assert f"GPT-2 reads the last **{len(held.ids) - held.held_from}**" in caption and "window 4" in caption
    if len(held.steps) == 11:
        assert at.button(key="step_auto").disabled  # at the length


def test_a_new_phrase_or_window_starts_over_and_so_does_the_button(page: AppTest) -> None:
    at = click(started(page, step_prompt="The cat"), "step_sample")
    first = stepper(at)
    at.text_area(key="step_prompt").set_value("Hello world!").run()
    assert stepper(at) is not first and stepper(at).steps == [] and stepper(at).prompt.text == "Hello world!"
    at = click(at, "step_pick_0")
    at.select_slider(key="step_window").set_value(8).run()
    assert stepper(at).steps == [] and stepper(at).settings.window == 8
    at = click(click(at, "step_sample"), "step_restart")
    assert stepper(at).steps == []


def test_markup_in_the_phrase_and_the_tokens_is_text(page: AppTest) -> None:
    prompt = "<script>alert(1)</script> **bold** $x$"
    at = click(started(page, step_prompt=prompt), "step_sample")
    assert html.escape(prompt) in "".join(re.findall(r'<span class="prompt">([^<]*)</span>', step_text(at)))
    assert "<script>" not in step_text(at)
    assert step_html.token_label("**[x](y)** $z$ :smile:") == r"\*\*\[x\]\(y\)\*\* \$z\$ \:smile\:"
    assert step_html.token_label(" the") == "the" and step_html.token_label("\n") == "⏎"


def test_a_step_waits_for_the_models_turn(page: AppTest) -> None:
    at = started(page, step_prompt="The cat")
    queue = runner.turn_queue()
    other_visitor = queue.join()  # someone else's run has the model
    threading.Timer(0.6, queue.leave, args=(other_visitor,)).start()
    start = time.monotonic()
    at = click(at, "step_sample")
    assert time.monotonic() - start >= 0.5 and len(stepper(at).steps) == 1
    assert len(queue) == 0


def test_without_a_model_both_tabs_point_above_them_where_the_page_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2_STUDIO_MODEL", str(tmp_path / "no-such-model"))  # a folder that is not there: it fails
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception, at.exception
    in_order = []  # the main area's elements, top to bottom

    def walk(node) -> None:
        in_order.append(node)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    kinds = [getattr(node, "type", "") for node in in_order]
    why = next(i for i, node in enumerate(in_order) if "Could not load this model" in str(getattr(node, "value", "")))
    use_shipped = next(i for i, node in enumerate(in_order) if getattr(node, "key", None) == "use_shipped")
    assert why < kinds.index("tab") and use_shipped < kinds.index("tab")  # the reason and the way out: above the tabs
    assert not at.sidebar.error  # ... not in the sidebar
    said = [node.value for node in in_order if getattr(node, "type", "") == "info"]
    assert step_mode.NO_MODEL in said and "above the tabs" in step_mode.NO_MODEL
    assert "Generate waits for a model: see above the tabs." in said


# ---- the Write tab: each token can be inspected, and coloured by its probability ----------------------


def test_write_tab_tokens_show_their_candidates_and_colour_on_request(page: AppTest) -> None:
    page.text_area(key="prompt").set_value("The cat sat on the mat.")
    page.slider(key="length").set_value(15)
    page.text_input(key="seed").set_value("5")
    page.button(key="generate").click().run()
    run = page.session_state["run"]
    assert all(len(s.candidates) == run_view.INSPECT_CANDIDATES for s in run.steps)
    box = next(h.value for h in page.html if 'class="studio-text' in h.value)
    tips = re.findall(r'<span class="tok" tabindex="0" data-tip="([^"]*)">', box)
    assert len(tips) == sum(1 for s in run.steps if s.text)
    first = next(s for s in run.steps if s.text)
    assert html.unescape(tips[0]) == run_view.token_tip(first, run.settings)
    assert f"GPT-2 gave it {run_view.percent(math.exp(first.logprob))}" in html.unescape(tips[0])
    for candidate in first.candidates:
        assert html.escape(run_view.quoted(candidate.text)) in tips[0]
    assert not any("How sure GPT-2 was" in h.value for h in page.html)  # no colours until asked
    page.toggle(key=run_view.COLOUR_KEY).set_value(True).run()
    assert not page.exception
    box = next(h.value for h in page.html if 'class="studio-text' in h.value)
    classes = re.findall(r'<span class="tok (p-[a-z]+)"', box)
    expected = [run_view.confidence_class(math.exp(s.logprob)) for s in run.steps if s.text]
    assert classes == expected
    assert any("How sure GPT-2 was" in h.value for h in page.html)  # the legend


def test_tooltips_escape_what_the_model_wrote() -> None:
    step = gpt2_engine.Step(
        index=0,
        token_id=1,
        text='"><script>x</script>',
        logprob=math.log(0.25),
        reset=False,
        context_tokens=3,
        kv_bytes=0,
        rss_bytes=0,
        anon_bytes=0,
        elapsed_s=0.0,
        seed=0,
        stop_reason="length",
        prompt_tokens=3,
        prompt_tokens_dropped=0,
        nucleus_size=2,
        nucleus_mass=0.75,
        candidates=(
            gpt2_engine.Candidate(2, "<b>bold</b>", 0.5, True),
            gpt2_engine.Candidate(1, '"><script>x</script>', 0.25, True),
        ),
    )
    run = runner.Run("Hi", gpt2_engine.GenerationSettings(), "tiny", 0, [step])
    box = run_view.text_html(run, colour=True)
    assert "<script>" not in box and "<b>" not in box
    assert "25%, its 2nd choice" in html.unescape(box) and "← written" in html.unescape(box)
