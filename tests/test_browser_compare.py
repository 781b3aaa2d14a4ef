"""End to end, memory versus coherence: the real Streamlit server with the tiny model, driven by headless
Chromium. Compare two windows (with tutorial mode on), then download a run's JSON from the History tab
and replay it with the engine; sweep four windows and see one point per window, and download the sweep.
Screenshots go to $GPT2_STUDIO_SCREENSHOTS (default: a temporary folder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_page import CHROMIUM, browser, open_page, server, shots  # noqa: F401 - fixtures used by name
from playwright.sync_api import expect

from gpt2_engine.records import load_record, settings_from_record
from gpt2_engine.stats import generated_text

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def tall_screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window grows to fit it for the shot."""
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)  # the charts redraw at the new size
    page.screenshot(path=path)
    page.set_viewport_size({"width": 1440, "height": 1000})


def full_length_seed(engine, prompt: str, length: int) -> int:
    """A seed with which the tiny random model writes all `length` tokens with both default windows (20 and off):
    it often writes <|endoftext|> early, and a comparison should show resets."""
    for seed in range(200):
        if all(
            len(list(engine.stream(prompt, max_new_tokens=length, window=window, seed=seed))) == length
            for window in (20, None)
        ):
            return seed
    raise AssertionError("no seed in 0..199 runs to the full length with both windows")


def test_compare_in_tutorial_mode_then_download_and_replay_a_run(browser, server, engine, shots: Path) -> None:  # noqa: F811
    page = open_page(browser, server)
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').nth(1).click()
    page.get_by_role("option", name="fp32 (full)").click()  # tutorial mode keeps autograd: fp32 weights
    page.get_by_text("Type a phrase, then press").wait_for()
    page.get_by_role("tab", name="Compare windows").click()
    compare = page.get_by_role("tabpanel", name="Two windows")
    seed = full_length_seed(engine, compare.get_by_role("textbox", name="Your phrase").input_value(), 100)
    compare.get_by_role("textbox", name="Seed").fill(str(seed))
    compare.get_by_role("switch", name="Tutorial mode: autograd on (teaching)").click(force=True)
    compare.get_by_role("button", name="Compare").click()
    compare.get_by_role("button", name="Keep this seed").wait_for()  # both runs written and scored
    compare.locator('[data-testid="stDataFrameResizable"]').first.wait_for()  # the table comes after scoring
    expect(compare.locator(".compare-text")).to_have_count(2)  # expect waits: a busy machine draws late
    expect(compare.locator('[data-testid="stVegaLiteChart"]')).to_have_count(1)
    expect(compare.locator('[data-testid="stDataFrameResizable"]')).to_have_count(1)
    assert f"seed {seed}" in compare.inner_text()
    assert compare.get_by_text("tutorial mode", exact=True).count() == 2  # each run says so
    assert page.locator('[data-testid="stException"]').count() == 0
    tall_screenshot(page, shots / "8-compare-tutorial-mode.png")

    page.get_by_role("tab", name="History").click()
    history = page.get_by_role("tabpanel", name="History")
    history.get_by_text("Run 2").wait_for()
    with page.expect_download() as download:
        history.get_by_role("button", name="JSON").first.click()  # the newest: window off
    record = load_record(Path(download.value.path()).read_text())
    assert record["kind"] == "compare" and record["seed"] == seed and record["settings"]["autograd"] is True
    assert record["settings"]["window"] is None and record["coherence"]["perplexity"] > 1
    replay = list(engine.stream(record["prompt"], settings_from_record(record)))  # conftest's engine: fp32 too
    assert generated_text(replay) == record["text"]
    with page.expect_download() as download:
        history.get_by_role("button", name="CSV").first.click()
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("tokens,rss_bytes") and len(rows) == 1 + len(record["steps"])
    tall_screenshot(page, shots / "9-history.png")


def test_a_sweep_draws_one_point_per_window_and_downloads(browser, server, shots: Path) -> None:  # noqa: F811
    page = open_page(browser, server)
    page.get_by_role("tab", name="Compare windows").click()
    page.get_by_role("tab", name="Sweep: many windows").click()
    sweep = page.get_by_role("tabpanel", name="Sweep: many windows")
    windows = sweep.get_by_role("group", name="Selected values").locator("[data-tag]")
    windows.first.wait_for()
    assert windows.count() == 4  # the defaults that fit the tiny model (largest window 64): 10, 20, 50 and off
    sweep.get_by_role("textbox", name="Seed").fill("3")
    sweep.get_by_role("button", name="Sweep", exact=True).click()
    sweep.get_by_text("Swept 4 windows with seed 3").wait_for()
    charts = sweep.locator('[data-testid="stVegaLiteChart"]')
    expect(charts).to_have_count(2)  # the points, and under them each window's texts reread (mean and range)
    chart = charts.first
    expect(charts.nth(1).locator("g.sweep_text_means_marks path")).to_have_count(4)
    points = chart.locator("g.sweep_points_marks path")
    expect(points).to_have_count(4)  # one point per window
    labels = chart.locator("g[class*=sweep_labels] text").evaluate_all("texts => texts.map(t => t.textContent)")
    assert sorted(labels) == ["window 10", "window 20", "window 50", "window off"]  # each point says its window
    assert re.search(r"keeps (all of|[\d.]+% of) .*coherence for", sweep.inner_text())  # the sentence reading the chart
    assert page.locator('[data-testid="stException"]').count() == 0
    with page.expect_download() as download:
        sweep.get_by_role("button", name="Download the sweep (CSV)").click()
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("window,seed,tokens,peak_kv_bytes")  # a row per text: 3 a window on the tiny model
    assert [row.split(",")[:2] for row in rows[1:]] == [[w, s] for w in ("off", "50", "20", "10") for s in "345"]
    page.set_viewport_size({"width": 1280, "height": 720})  # a projector
    sweep.get_by_text("Swept 4 windows").scroll_into_view_if_needed()
    page.wait_for_timeout(800)  # the chart redraws at the new size
    chart.scroll_into_view_if_needed()
    page.screenshot(path=shots / "10-sweep.png")
