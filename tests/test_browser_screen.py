"""The presenter's screen, end to end: at 1280x720 and 1920x1080, in normal and presenter mode, while a Write run,
a comparison and a sweep write, their status line, their newest text and their chart are inside the window without
scrolling (studio/screen.py brings them there), and still are once Stop has ended them; and no label, button or
metric in the header, the sidebar, the metrics or History is cut short with an ellipsis.

One server (the tiny model) for the module; each case is one visit, one page. Runs are long enough to be caught
writing (full-length seeds, 1,000 tokens), and Stop ends each one as soon as it has been looked at.
Screenshots go to $GPT2_STUDIO_SCREENSHOTS (default: a temporary folder).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser_page import CHROMIUM, browser, full_length_seed, server, shots, unfold_settings  # noqa: F401 - fixtures used by name
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from studio import screen
from studio.controls import MAX_LENGTH

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# The boxes of what must be in view, measured in one go in the page (a run can end between two separate looks),
# with the status line's words, to tell that it was still writing. Everything under Streamlit's header is hidden.
IN_VIEW = """([area, status, texts]) => {
  const root = document.querySelector('.st-key-' + area);
  const header = document.querySelector('[data-testid="stHeader"]').getBoundingClientRect().bottom;
  const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, height: r.height}; };
  const all = (css) => [...root.querySelectorAll(css)].filter((el) => el.getClientRects().length).map(box);
  return {
    header, height: window.innerHeight, said: root.innerText,
    status: all(status), texts: texts ? all(texts) : [], charts: all('[data-testid="stVegaLiteChart"]'),
  };
}"""
# Text cut short: an element that clips its text with an ellipsis and holds more than it shows.
CUT_SHORT = """(css) => [...document.querySelectorAll(css)].flatMap((root) => [root, ...root.querySelectorAll('*')])
  .filter((el) => el.getClientRects().length && el.textContent.trim() && el.clientWidth > 0
          && getComputedStyle(el).textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1)
  .map((el) => el.textContent.trim().slice(0, 60))"""
SIZES = {"1280x720": (1280, 720), "1920x1080": (1920, 1080)}
SETTLE_S = 10.0  # how long the run may take to be drawn in view before the test says it is not


def assert_in_view(page, area: str, status: str, texts: str | None, writing: str | None) -> None:
    """The status line(s), the text boxes and the chart of the run in `area` lie inside the window, under the
    header; with `writing`, the status still said so when they were measured."""
    deadline = time.monotonic() + SETTLE_S
    while True:  # a busy machine draws the page in pieces (a rerun after Stop too): wait for it to settle in view
        seen = page.evaluate(IN_VIEW, [area, status, texts])
        drawn = seen["status"] and seen["charts"] and (texts is None or seen["texts"])
        outside = [
            (what, box)
            for what in ("status", "texts", "charts")
            for box in seen[what]
            if box["top"] < seen["header"] - 1 or box["bottom"] > seen["height"] + 1
        ]
        if (drawn and not outside) or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    if writing:
        assert writing in seen["said"], f"the run was no longer writing when looked at: {seen['said'][:200]}"
    assert drawn, seen
    assert not outside, (area, outside, seen)


def assert_nothing_cut_short(page, *css: str) -> None:
    cut = page.evaluate(CUT_SHORT, ", ".join(css))
    assert not cut, f"cut short with an ellipsis: {cut}"


def stop(page, key: str) -> None:
    """Presses Stop while it shows; a run that ended first (a busy machine spent its time on the checks before)
    has no Stop left to press, and is waited for as it ended."""
    button = page.locator(f".st-key-{key} button").first
    try:
        button.click(timeout=5_000)
    except PlaywrightTimeout:
        assert button.count() == 0, "Stop shows but could not be pressed"


def scroll_away(page) -> None:
    """The presenter scrolls up to the form, as a room asks what was typed; Stop is then pressed wherever it shows
    (Playwright scrolls it into view), and the stopped run must come back into view: screen.after_stop."""
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    page.mouse.move(width * 0.6, height / 2)
    page.mouse.wheel(0, -height)


def open_visit(browser, url: str, size: str, presenting: bool):  # noqa: F811
    width, height = SIZES[size]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)  # the machine may be busy
    page.goto(url + ("/?presenter=1" if presenting else ""))
    page.get_by_text("Type a phrase, then press").wait_for()
    return page


def check_the_header_and_the_sidebar(page, presenting: bool) -> None:
    header = page.evaluate("document.querySelector('[data-testid=stHeader]').getBoundingClientRect().bottom")
    toggle = page.locator(".st-key-presenter").bounding_box()
    assert toggle["y"] >= header - 1, "the Presenter mode toggle is under the header"
    assert_nothing_cut_short(page, '[data-testid="stHeading"]', ".st-key-presenter", '[data-testid="stSidebar"]')
    if not presenting:  # the sidebar, folded in presenter mode, holds all it says within the window
        last = page.locator('[data-testid="stSidebarUserContent"] [data-testid="stVerticalBlock"]').first
        assert last.bounding_box()["y"] + last.bounding_box()["height"] <= page.viewport_size["height"] + 1


def write_then_stop(page, seed: int, presenting: bool, shot: Path) -> None:
    if presenting:
        unfold_settings(page)
    slider = page.get_by_role("tabpanel", name="Write").get_by_role("slider", name="Length (tokens)")
    slider.press("End")
    page.get_by_role("tabpanel", name="Write").locator(f'[aria-valuetext="{MAX_LENGTH}"]').wait_for()
    page.get_by_text("Advanced").click()
    page.get_by_role("tabpanel", name="Write").get_by_role("textbox", name="Seed").fill(str(seed))
    page.get_by_role("button", name="Generate").click()
    page.locator(f".st-key-{screen.WRITE} [data-testid=stVegaLiteChart]").wait_for()
    assert_in_view(page, screen.WRITE, ".st-key-run_status [data-testid=stAlert]", ".studio-text", "Writing…")
    page.screenshot(path=shot.with_name(shot.name.format(state="writing")))
    stop(page, "stop")
    area = page.locator(f".st-key-{screen.WRITE}")
    area.get_by_text("Stopped after").or_(area.get_by_text("Done:")).first.wait_for()
    expect(page.locator(".st-key-stop")).to_have_count(0)  # Stop is gone once the run has ended
    assert_in_view(page, screen.WRITE, ".st-key-run_status [data-testid=stAlert]", ".studio-text", None)
    assert_nothing_cut_short(page, '[data-testid="stMetric"]')
    page.screenshot(path=shot.with_name(shot.name.format(state="stopped")))


def compare_then_stop(page, seed: int, shot: Path) -> None:
    page.get_by_role("tab", name="Compare windows").click()
    panel = page.get_by_role("tabpanel", name="Two windows")
    panel.get_by_role("slider", name="Length (tokens)").press("End")
    panel.locator(f'[aria-valuetext="{MAX_LENGTH}"]').wait_for()
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Compare").click()
    page.locator(f".st-key-{screen.COMPARE} [data-testid=stVegaLiteChart]").wait_for()
    alerts = "[data-testid=stAlert]"
    assert_in_view(page, screen.COMPARE, alerts, ".compare-text", "Writing…")
    page.screenshot(path=shot.with_name(shot.name.format(state="compare-writing")))
    scroll_away(page)
    stop(page, "compare_stop")
    expect(page.locator(".st-key-compare_stop")).to_have_count(0)  # ("Done:" can be the first run's, not the end)
    panel.get_by_text("Stopped after").first.wait_for()
    assert_in_view(page, screen.COMPARE, alerts, ".compare-text", None)
    page.screenshot(path=shot.with_name(shot.name.format(state="compare-stopped")))


def sweep_then_stop(page, shot: Path) -> None:
    page.get_by_role("tab", name="Sweep: many windows").click()
    panel = page.get_by_role("tabpanel", name="Sweep: many windows")
    panel.get_by_role("slider", name="Length (tokens)").press("End")
    panel.locator(f'[aria-valuetext="{MAX_LENGTH}"]').wait_for()
    panel.get_by_role("textbox", name="Seed").fill("3")
    panel.get_by_role("button", name="Sweep", exact=True).click()
    # the chart's first point comes once the first window is written and scored; the second one then writes
    page.locator(f".st-key-{screen.SWEEP} g.sweep_points_marks path").first.wait_for()
    # the status line moves on once the point is drawn: on a busy machine the first look can come between the two
    panel.get_by_text(re.compile(r"(2nd|3rd|4th) of 4")).first.wait_for()
    line = "[data-testid=stProgress], [data-testid=stAlert]"
    assert_in_view(page, screen.SWEEP, line, None, " of 4")
    page.screenshot(path=shot.with_name(shot.name.format(state="sweep-writing")))
    scroll_away(page)
    stop(page, "sweep_stop")
    panel.get_by_text("Sweep stopped").wait_for()
    assert_in_view(page, screen.SWEEP, line, None, None)
    assert sweep_plot_height(page) >= 120, "the sweep's plot is squeezed: its points cannot show their order"
    page.screenshot(path=shot.with_name(shot.name.format(state="sweep-stopped")))


# The height the sweep chart's y axis spans on screen (its labels' spread): a rotated axis title longer than the chart
# is tall squeezed the plot to one line, with every point on it, and no check of the element's box could see it.
PLOT_HEIGHT = """key => {
    const chart = document.querySelector(`.st-key-${key} [data-testid="stVegaLiteChart"] svg`);
    const columns = {};
    for (const label of chart.querySelectorAll('.role-axis-label text')) {
        const box = label.getBoundingClientRect();
        (columns[Math.round(box.right)] ??= []).push(box.top);
    }
    const spreads = Object.values(columns).map(tops => Math.max(...tops) - Math.min(...tops));
    return Math.max(0, ...spreads);  // the y axis: labels one above another, right-aligned to one column
}"""


def sweep_plot_height(page) -> float:
    return page.evaluate(PLOT_HEIGHT, screen.SWEEP)


@pytest.fixture(scope="module")
def seeds(engine) -> tuple[int, int]:
    """Seeds with which the Write run and Compare's first run (window 20) write all 1,000 tokens of the tutorial's
    phrase, the page's default: they are still writing when looked at."""
    from gpt2_engine import TUTORIAL_PHRASE

    return full_length_seed(engine, TUTORIAL_PHRASE), compare_seed(engine, TUTORIAL_PHRASE)


@pytest.mark.parametrize("presenting", [False, True], ids=["normal", "presenter"])
@pytest.mark.parametrize("size", SIZES)
def test_the_run_is_in_view_while_it_writes_and_nothing_is_cut_short(
    browser,  # noqa: F811
    server,  # noqa: F811
    seeds: tuple[int, int],
    shots: Path,  # noqa: F811
    size: str,
    presenting: bool,
) -> None:
    page = open_visit(browser, server, size, presenting)
    shot = shots / f"screen-{size}-{'presenter' if presenting else 'normal'}-{{state}}.png"
    check_the_header_and_the_sidebar(page, presenting)
    write_then_stop(page, seeds[0], presenting, shot)
    compare_then_stop(page, seeds[1], shot)
    sweep_then_stop(page, shot)
    page.get_by_role("tab", name="History").click()
    history = page.get_by_role("tabpanel", name="History")
    history.locator("strong", has_text=re.compile(r"^Run 1$")).wait_for()  # the oldest, drawn last on a busy machine
    titles = history.locator("strong", has_text="Run ").all_inner_texts()
    assert titles == [f"Run {n}" for n in range(len(titles), 0, -1)], titles  # 1..n, the runs shown
    assert f"{len(titles)} runs this visit" in history.inner_text()
    assert_nothing_cut_short(page, '[role="tabpanel"]', '[data-testid="stSidebar"]')
    page.screenshot(path=shot.with_name(shot.name.format(state="history")))
    page.close()


def compare_seed(engine, prompt: str) -> int:
    """A seed with which window 20, Compare's first run, writes all its tokens: it is still writing when looked at."""
    for seed in range(100):
        steps = engine.stream(prompt, max_new_tokens=MAX_LENGTH, seed=seed, top_p=0.7, window=20)
        if all(step.stop_reason != "eos" for step in steps):
            return seed
    raise AssertionError("no seed in 0..99 runs to the full length with window 20")
