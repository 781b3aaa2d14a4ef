"""End to end: the real Streamlit server with the tiny model, driven by headless Chromium (Playwright).

Type a phrase, Generate, see the text and the charts; start a long run and Stop it; a bad model path; two
visitors writing at once, and a third beyond the batch's bound (GPT2_STUDIO_MAX_RUNS=2 here) told its place.
Screenshots go to $GPT2_STUDIO_SCREENSHOTS (default: a temporary folder), to look at.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from browser_page import (  # noqa: F401 - fixtures used by name
    CHROMIUM,
    browser,
    colour_by_probability,
    full_length_seed,
    generated_text,
    history_titles,
    open_page,
    page,
    screenshot,
    server,
    set_length_to_max,
    settings_line,
    shots,
    status_text,
    stop_a_long_run,
    text_length,
    type_seed,
    unfold_settings,
    wait_until_idle,
    write_tab,
    writing_for_a_while,
)
from playwright.sync_api import expect

from studio.controls import MAX_LENGTH

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


def test_type_generate_and_watch_it_stream(page, engine, shots: Path) -> None:  # noqa: F811
    assert "precision fp32" in page.locator('[data-testid="stSidebar"]').inner_text()  # GPT2_STUDIO_PRECISION
    screenshot(page, shots / "1-idle.png")
    page.get_by_role("textbox", name="Your phrase").fill("The cat sat on the mat.")
    type_seed(page, full_length_seed(engine, "The cat sat on the mat.", 100))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").wait_for()
    assert write_tab(page).locator(".studio-text .prompt").inner_text() == "The cat sat on the mat."
    assert generated_text(page).strip()
    write_tab(page).locator('[data-testid="stVegaLiteChart"]').first.wait_for()  # its code loads on first use
    expect(write_tab(page).locator('[data-testid="stVegaLiteChart"]')).to_have_count(1)  # the run's, KV cache in it
    write_tab(page).locator(
        '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
    ).first.wait_for()
    assert write_tab(page).locator('[data-testid="stMetricValue"]').last.inner_text().isdigit()  # the seed
    assert (
        "⟲" in write_tab(page).locator(".studio-text").inner_text()
    )  # 100 tokens with a window of 50: a reset, marked
    screenshot(page, shots / "3-after-a-run.png")


def test_stop_ends_a_long_run_and_keeps_its_text(page, engine, shots: Path) -> None:  # noqa: F811
    seed, stopped = stop_a_long_run(page, engine)
    assert "Stopped after" in stopped, f"{stopped} (seed {seed} typed; the run: {settings_line(page)})"
    tokens = int(stopped.split("Stopped after ")[1].split(" ")[0])
    assert 0 < tokens < 1000
    text = generated_text(page)
    assert text
    wait_until_idle(page)  # the script run is over: a run that had not stopped would have written on until then
    assert generated_text(page) == text and status_text(page) == stopped
    screenshot(page, shots / "4-stopped.png")


def test_a_bad_model_path_shows_what_to_do(page, shots: Path, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.get_by_role("option", name="other: a folder or hub id")
    for _ in range(5):  # a click that lands while the page redraws (a busy machine) opens nothing: click again
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        try:
            option.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            continue
    option.click()
    folder = page.get_by_role("textbox", name="Folder or hub id")
    folder.fill(str(tmp_path / "no-such-model"))
    folder.press("Enter")
    page.get_by_text("Could not load this model").wait_for()
    page.get_by_text("Pick another model in the sidebar").wait_for()  # drawn after the error: wait, not count
    assert page.locator('[data-testid="stException"]').count() == 0
    screenshot(page, shots / "5-bad-model.png")


def test_two_visitors_write_at_once_and_a_third_beyond_the_bound_waits(browser, server, engine, shots: Path) -> None:  # noqa: F811
    """Three visitors press Generate one right after the other (each a 1,000-token run with a window, in a batch bound to
    2 runs). Two write side by side; whichever came third is told it waits, with 2 runs ahead; when a writer's
    tab closes, its place comes free and the third writes. The three presses take a fraction of a second and a run
    takes seconds, so no run ends before the third press (the order of the first two presses is the server's)."""
    visitors = [open_page(browser, server) for _ in range(3)]
    seed = full_length_seed(engine, visitors[0].get_by_role("textbox", name="Your phrase").input_value())
    for visitor in visitors:
        set_length_to_max(visitor)
        type_seed(visitor, seed)
    for visitor in visitors:
        visitor.get_by_role("button", name="Generate").click()
    waiting = next_to_say(visitors, "Waiting for the model")
    assert "2 runs are ahead" in status_text(waiting), status_text(waiting)
    writers = [visitor for visitor in visitors if visitor is not waiting]
    assert all("Writing…" in status_text(writer) for writer in writers)  # both stream, side by side
    writers[0].close()  # its run still held its rows: when its tab closes, they must come free
    waiting.get_by_text("Writing…").wait_for()
    screenshot(waiting, shots / "6-a-third-visitor-writes-once-a-tab-closed.png")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for visitor in (writers[1], waiting):  # Stop is drawn anew at each token: a click event, not a wait for it
        with contextlib.suppress(PlaywrightTimeout):  # no Stop within 5 s: the run has written its 1,000 tokens
            visitor.get_by_role("button", name="Stop").dispatch_event("click", timeout=5_000)
        stopped = visitor.get_by_text("Stopped after").or_(visitor.get_by_text("Stopped before it started"))
        stopped.or_(visitor.get_by_text("Done:")).first.wait_for()


def next_to_say(visitors: list, words: str, timeout_ms: int = 60_000):
    """The first of the visitors whose status line says `words` (each page is polled in turn, briefly)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        for visitor in visitors:
            if visitor.get_by_text(words).count():
                return visitor
        visitors[0].wait_for_timeout(50)  # a poll, not a wait for time to pass: the loop ends on the event
    raise AssertionError(f"no visitor was told {words!r}: " + " | ".join(status_text(v) for v in visitors))


def test_step_mode_take_a_candidate_then_look_inside_a_written_text(page, engine, shots: Path) -> None:  # noqa: F811
    page.get_by_role("tab", name="Step by step").click()
    page.get_by_role("button", name="Show what GPT-2 would write next").click()
    page.locator(".st-key-step_pick_9 button").first.wait_for()  # Streamlit draws a hidden twin of each button
    assert page.locator(".step-text .generated").count() == 0  # the phrase alone
    shown = page.locator(".step-text").inner_text()
    ids = [int(page.locator(".cand").nth(rank).get_attribute("data-token-id")) for rank in range(10)]

    def whole(token_id: int) -> bool:  # a whole, printable token (the tiny model also offers pieces of characters)
        text = engine.tokenizer.decode([token_id])
        return bool(text.strip()) and text.isprintable() and "\ufffd" not in text

    rank = next((r for r in range(1, 10) if whole(ids[r])), 0)
    piece = engine.tokenizer.decode([ids[rank]])
    page.locator(f".st-key-step_pick_{rank} button").first.click()
    page.locator(".step-text .generated.latest").wait_for()
    assert page.locator(".step-text .generated").inner_text() == piece
    assert page.locator(".step-text").inner_text() == shown.removesuffix("▁") + piece + "▁"  # grew by that token
    assert "You picked" in page.locator('[data-testid="stCaptionContainer"]', has_text="You picked").inner_text()
    page.locator(".st-key-step_sample button").first.click()
    page.get_by_text("The sampler drew").wait_for()
    for name, presses in (("Temperature", 8), ("Top-p", 9)):  # 1.0 -> 0.6, 0.7 -> 0.25: a sharper model, a cut
        slider = page.get_by_role("slider", name=name)
        slider.focus()
        for _ in range(presses):
            slider.press("ArrowLeft")
    page.locator(".cut").first.wait_for()  # the dashed line is drawn across the bars (the old one may linger a moment)
    page.get_by_text("p = 25%").wait_for()
    page.set_viewport_size({"width": 1440, "height": 1300})
    page.locator(".step-text").scroll_into_view_if_needed()
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no button's help over the bars
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    page.screenshot(path=shots / "7-step-mode.png")
    page.set_viewport_size({"width": 1440, "height": 1000})

    page.get_by_role("tab", name="Write").click()
    page.get_by_role("textbox", name="Your phrase").fill("The cat sat on the mat.")
    type_seed(page, full_length_seed(engine, "The cat sat on the mat.", 40))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").wait_for()
    colour_by_probability(page)
    tokens = page.get_by_role("tabpanel", name="Write").locator(".studio-text .inspectable .tok")
    texts = tokens.evaluate_all("spans => spans.map(span => span.innerText)")
    token = tokens.nth(next((i for i, t in enumerate(texts) if len(t.strip()) > 1 and t.strip().isalpha()), 0))
    assert "GPT-2 gave it" in token.get_attribute("data-tip") and "The candidates" in token.get_attribute("data-tip")
    assert token.get_attribute("class").split()[1].startswith("p-")  # coloured by its probability
    token.hover()
    screenshot(page, shots / "8-inspector.png")


def test_generate_while_writing_stops_and_a_reload_keeps_the_visit(browser, server, engine, shots: Path) -> None:  # noqa: F811
    # in presenter mode, which shows the text at a reading pace: the tiny model writes its 1,000 tokens in about a
    # second, so a second press on a busy machine could come after the run had ended (a new run, rightly)
    page = open_page(browser, server + "/?presenter=1")  # noqa: F811 - its own page, not the fixture
    unfold_settings(page)
    set_length_to_max(page)
    type_seed(page, full_length_seed(engine, page.get_by_role("textbox", name="Your phrase").input_value()))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.length > 20")
    unfold_settings(page)  # the settings fold as a run starts
    page.get_by_role("button", name="Generate").click()  # again, while it writes: a Stop, not a new run
    page.get_by_text("Generate was pressed while it wrote").wait_for()
    assert "Stopped after" in status_text(page)
    text = generated_text(page)
    wait_until_idle(page)
    assert text and generated_text(page) == text and history_titles(page) == ["Run 1"]

    page.reload()  # after the run: the same visit, its text, its History and its widgets
    page.get_by_text("Generate was pressed while it wrote").wait_for()
    assert generated_text(page) == text and history_titles(page) == ["Run 1"]
    unfold_settings(page)  # folded, as presenter mode draws them
    slider = write_tab(page).get_by_role("slider", name="Length (tokens)")
    assert slider.get_attribute("aria-valuetext") == str(MAX_LENGTH)

    runs = 1
    while runs < 4:  # mid-run: the run stops, its text so far is kept
        runs += 1
        page.get_by_role("button", name="Generate").click()
        writing_for_a_while(page)  # this run's (the last one's text stays on screen until its first token)
        page.reload()
        said = page.get_by_text("The page was reloaded while it wrote").or_(page.get_by_text("Done:"))
        said.first.wait_for()
        if "reloaded" in status_text(page):
            break
        # on a loaded machine the new page can come after the tiny model wrote all its tokens: nothing to stop
    assert "The page was reloaded while it wrote" in status_text(page)
    # the status line comes before the text in the page's order: under load the text's delta can come a moment later
    page.wait_for_function("document.querySelector('.studio-text .generated')?.innerText.trim().length > 0")
    assert history_titles(page) == [f"Run {n}" for n in range(runs, 0, -1)]
    screenshot(page, shots / "8-after-a-reload.png")
