"""The README's pictures of the trade-off, made on the model that ships with the app: Compare (window 16 against
off) and a Sweep, at 1280x720, in Debian's Chromium driving a real `streamlit run app.py`.

    python -m bench.screenshots                      # writes docs/compare-shakespeare.png, docs/sweep-shakespeare.png
    python -m bench.screenshots --seed 4 --out /tmp  # another seed, elsewhere

Each picture is taken once its run has finished and been scored; the sentences under them are the page's own.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gpt2_engine

ROOT = Path(__file__).resolve().parent.parent
PHRASE = "ROMEO.\nBut soft, what light through yonder window breaks?"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
WAIT_MS = 600_000  # a busy machine writes slowly: wait for what is needed, bounded by this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model: str) -> subprocess.Popen:
    env = {**os.environ, "GPT2_STUDIO_MODEL": model, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return process
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise SystemExit("the server did not answer within 120 s")


def compare(page, seed: int, out: Path) -> None:
    page.get_by_role("tab", name="Compare windows").click()
    panel = page.get_by_role("tabpanel", name="Two windows")
    panel.locator(".st-key-compare_prompt textarea").fill(PHRASE)
    slider = panel.get_by_role("slider", name="Window A")
    slider.press("Home")
    for _ in range(15):  # 1 -> 16
        slider.press("ArrowRight")
    panel.locator('[aria-valuetext="16 tokens"]').wait_for()
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Compare").click()
    panel.get_by_text("Reread with the whole text in view").first.wait_for(timeout=WAIT_MS)
    time.sleep(1)  # the chart's last redraw
    page.screenshot(path=out / "compare-shakespeare.png")


def sweep(page, seed: int, out: Path) -> None:
    page.get_by_role("tab", name="Compare windows").click()
    page.get_by_role("tab", name="Sweep: many windows").click()
    panel = page.get_by_role("tabpanel", name="Sweep: many windows")
    panel.locator(".st-key-sweep_prompt textarea").fill(PHRASE)
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Sweep", exact=True).click()
    panel.get_by_text("Swept").first.wait_for(timeout=WAIT_MS)
    time.sleep(1)
    page.screenshot(path=out / "sweep-shakespeare.png")


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gpt2_engine.SHIPPED_MODEL)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    port = free_port()
    server = start_server(port, args.model)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            for make in (compare, sweep):
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(120_000)
                page.goto(f"http://localhost:{port}")
                page.get_by_role("button", name="Generate").wait_for()
                make(page, args.seed, args.out)
                page.close()
                print(f"wrote {args.out / f'{make.__name__}-shakespeare.png'}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
