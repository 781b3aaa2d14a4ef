"""End to end, exposure: markup typed into the page is shown as text in a real browser, and the browser
fetches nothing and runs nothing because of it (the real Streamlit server, the tiny model, headless Chromium).

Every request the page makes is recorded: the only host it may reach is the Streamlit server itself.
A script, an `<img>` with an `onerror`, a Markdown image, an iframe and a `javascript:` link go in the
Write tab, then show again in the History tab and in the Step-by-step tab.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_page import (  # noqa: F401 - fixtures used by name
    CHROMIUM,
    browser,
    full_length_seed,
    open_page,
    screenshot,
    server,
    shots,
    type_seed,
    write_tab,
)

# Port 9 on 127.0.0.2 answers nothing: a request there can only come from the injected markup.
TRAP = "http://127.0.0.2:9"
PAYLOAD = (
    "<script>window.__injected = 'script'; alert('script')</script> "
    f'<img src="{TRAP}/img.png" onerror="window.__injected = \'img\'"> '
    f"![a picture]({TRAP}/markdown.png) "
    f'<iframe src="{TRAP}/frame"></iframe> '
    "[click](javascript:window.__injected='link') **bold** $x^2$"
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def test_markup_in_the_text_is_shown_and_never_fetched_or_run(browser, server, engine, shots: Path) -> None:  # noqa: F811
    page = open_page(browser, server)
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def nothing_fetched_or_run() -> None:
        own = urlsplit(server).netloc
        strangers = [url for url in requests if urlsplit(url).scheme in ("http", "https", "ws", "wss")]
        strangers = [url for url in strangers if urlsplit(url).netloc != own]
        assert strangers == [], f"the page fetched {strangers}"
        assert dialogs == [], f"a script ran and opened {dialogs}"
        assert page.evaluate("window.__injected") is None
        assert page.locator(f'img[src^="{TRAP}"], iframe[src^="{TRAP}"], a[href^="javascript:"]').count() == 0

    page.get_by_role("textbox", name="Your phrase").fill(PAYLOAD)
    type_seed(page, full_length_seed(engine, PAYLOAD, 100))
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").wait_for()
    assert write_tab(page).locator(".studio-text .prompt").inner_text() == PAYLOAD  # every character, as text
    page.wait_for_timeout(1000)  # time for an image or a frame to start loading, were one made
    nothing_fetched_or_run()
    screenshot(page, shots / "10-markup-shown-as-text.png")

    page.get_by_role("tab", name="History").click()
    history = page.get_by_role("tabpanel", name="History")
    history.get_by_text("Whole text and memory").click()  # the run's text, unfolded
    history.locator(".studio-text .prompt").wait_for()
    assert history.locator(".studio-text .prompt").inner_text() == PAYLOAD
    page.wait_for_timeout(500)
    nothing_fetched_or_run()

    page.get_by_role("tab", name="Step by step").click()
    step = page.get_by_role("tabpanel", name="Step by step")
    short = f'<img src="{TRAP}/step.png" onerror="alert(\'img\')">'  # the tiny model's 128 positions hold it
    step.get_by_role("textbox", name="Your phrase").fill(short)
    step.get_by_role("button", name="Show what GPT-2 would write next").click()
    page.locator(".st-key-step_pick_0 button").first.wait_for()
    assert page.locator(".step-text").inner_text().removesuffix("▁") == short
    page.wait_for_timeout(500)
    nothing_fetched_or_run()
    assert len(requests) > 0  # the recorder saw the page's own traffic: an empty list proves nothing
