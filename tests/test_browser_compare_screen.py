"""Compare windows at 1280x720 with the sidebar open (the default), end to end: once a comparison has finished, its
evidence is in one window after the page's own scroll into view (studio/screen.py): both runs' texts, each box at
least five lines tall and scrolled to where the two texts part, the chart, the table and the sentence that reads it.

One server (the tiny model) for the module; the test waits only for what the page draws (a selector, or the measure
polled until it holds or a deadline passes). Screenshots go to $GPT2_STUDIO_SCREENSHOTS (default: a temporary
folder).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser_page import CHROMIUM, browser, server, shots  # noqa: F401 - fixtures used by name
from playwright.sync_api import expect
from test_browser_compare import full_length_seed

from studio import screen

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

WIDTH, HEIGHT = 1280, 720
LENGTH = 100  # the form's default length
MIN_LINES = 5  # each text box shows at least this many lines of text
SETTLE_S = 15.0  # how long the finished comparison may take to settle in view before the test says it is not
# What must be in view, measured in one go, drawn by this script run (not a stale copy of the last one): the boxes,
# the header's bottom (what is under it is hidden), each text box's height in lines, and whether the first line of
# the part where the texts differ (the tinted span) shows inside its box.
EVIDENCE = """([area, evidence, summary]) => {
  const root = document.querySelector('.st-key-' + area);
  const fresh = (el) => el.getClientRects().length > 0 && !el.closest('[data-stale="true"]');
  const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const all = (css) => [...root.querySelectorAll(css)].filter(fresh);
  const texts = all('.compare-text');
  return {
    header: document.querySelector('[data-testid="stHeader"]').getBoundingClientRect().bottom,
    width: window.innerWidth, height: window.innerHeight,
    texts: texts.map(box),
    charts: all('[data-testid="stVegaLiteChart"]').map(box),
    tables: all('.st-key-' + evidence + ' [data-testid="stDataFrame"]').map(box),
    summary: all('.st-key-' + summary).map(box),
    said: all('.st-key-' + summary).map((el) => el.innerText).join(' '),
    lines: texts.map((el) => {
      const style = getComputedStyle(el);
      const inner = el.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
      return inner / parseFloat(getComputedStyle(el.firstElementChild).lineHeight);
    }),
    parted: texts.map((el) => {
      const span = el.querySelector('.parted');
      if (!span) return null;
      const outer = el.getBoundingClientRect(), first = span.getClientRects()[0];
      return first.top >= outer.top - 1 && first.bottom <= outer.bottom + 1;
    }),
  };
}"""
MUST_SHOW = {"texts": 2, "charts": 1, "tables": 1, "summary": 1}


def outside(seen: dict) -> list[tuple[str, dict]]:
    """The boxes that are not wholly inside the window, under the header."""
    return [
        (what, box)
        for what in MUST_SHOW
        for box in seen[what]
        if box["top"] < seen["header"] - 1
        or box["bottom"] > seen["height"] + 1
        or box["left"] < -1
        or box["right"] > seen["width"] + 1
    ]


def settled(seen: dict) -> bool:
    drawn = all(len(seen[what]) == n for what, n in MUST_SHOW.items())
    return drawn and not outside(seen) and min(seen["lines"]) >= MIN_LINES and all(seen["parted"])


def test_a_finished_comparison_shows_its_texts_chart_table_and_summary_in_one_window(
    browser,  # noqa: F811
    server,  # noqa: F811
    engine,
    shots: Path,  # noqa: F811
) -> None:
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    page.set_default_timeout(60_000)  # the machine may be busy
    page.goto(server)
    page.get_by_text("Type a phrase, then press").wait_for()
    expect(page.locator('[data-testid="stSidebar"]')).to_have_attribute("data-collapsed", "false")  # open: the default
    page.get_by_role("tab", name="Compare windows").click()
    panel = page.get_by_role("tabpanel", name="Two windows")
    prompt = panel.get_by_role("textbox", name="Your phrase").input_value()
    seed = full_length_seed(engine, prompt, LENGTH)  # both runs write all their tokens, so the two texts part
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Compare").click()
    panel.get_by_role("button", name="Keep this seed").wait_for()  # both runs written and scored
    page.locator(f".st-key-{screen.COMPARE_SUMMARY}").wait_for()

    deadline = time.monotonic() + SETTLE_S
    while True:  # a busy machine draws the tab in pieces: poll until it has settled in view, or the deadline
        seen = page.evaluate(EVIDENCE, [screen.COMPARE, screen.COMPARE_EVIDENCE, screen.COMPARE_SUMMARY])
        if settled(seen) or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    page.screenshot(path=shots / "compare-evidence-1280x720.png")
    assert all(len(seen[what]) == n for what, n in MUST_SHOW.items()), {what: len(seen[what]) for what in MUST_SHOW}
    assert not outside(seen), (outside(seen), seen)
    assert min(seen["lines"]) >= MIN_LINES, seen["lines"]  # each text box shows at least five lines
    assert "kept the KV cache" in seen["said"] and "perplexity" in seen["said"], seen["said"]
    assert all(seen["parted"]), seen["parted"]  # the texts part within 100 tokens, and each box shows where
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()
