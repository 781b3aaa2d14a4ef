"""The pictures of the trade-off (docs/memory-and-coherence.md, "The pictures"), made on the model that ships
with the app: Write (window 16), Compare (window 16 against off) and a Sweep (its defaults), at 1280x720, in Debian's Chromium driving a real
`streamlit run app.py`.

    python -m bench.screenshots                      # writes docs/{write,compare,sweep}-shakespeare.png
    python -m bench.screenshots --seed 4 --out /tmp  # another seed, elsewhere
    python -m bench.screenshots --model bench/models/gpt2-xl --label gpt2-xl-standin --only write,compare

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

import bench
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


def set_slider(panel, name: str, value: int, unit: str = "tokens") -> None:
    slider = panel.get_by_role("slider", name=name)
    slider.press("Home")
    for _ in range(value - 1):
        slider.press("ArrowRight")
    panel.locator(f'[aria-valuetext="{value} {unit}"]').first.wait_for()


def write(page, seed: int, out: Path, label: str) -> None:
    panel = page.get_by_role("tabpanel", name="Write")
    panel.locator(".st-key-prompt textarea").fill(PHRASE)
    page.get_by_text("Advanced").first.click()
    page.locator(".st-key-seed input").fill(str(seed))
    set_slider(panel, "Window", 16)
    panel.get_by_role("button", name="Generate").click()
    page.get_by_text("Done:").first.wait_for(timeout=WAIT_MS)
    time.sleep(1)  # the chart's last redraw
    page.screenshot(path=out / f"write-{label}.png")


def compare(page, seed: int, out: Path, label: str) -> None:
    page.get_by_role("tab", name="Compare windows").click()
    panel = page.get_by_role("tabpanel", name="Two windows")
    panel.locator(".st-key-compare_prompt textarea").fill(PHRASE)
    set_slider(panel, "Window A", 16)
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Compare").click()
    panel.get_by_text("Their own texts").first.wait_for(timeout=WAIT_MS)
    time.sleep(1)  # the chart's last redraw
    page.screenshot(path=out / f"compare-{label}.png")


def sweep(page, seed: int, out: Path, label: str) -> None:
    page.get_by_role("tab", name="Compare windows").click()
    page.get_by_role("tab", name="Sweep: many windows").click()
    panel = page.get_by_role("tabpanel", name="Sweep: many windows")
    panel.locator(".st-key-sweep_prompt textarea").fill(PHRASE)
    panel.get_by_role("textbox", name="Seed").fill(str(seed))
    panel.get_by_role("button", name="Sweep", exact=True).click()
    started = time.monotonic()
    panel.get_by_text("Swept").first.wait_for(timeout=WAIT_MS)
    print(f"the sweep took {time.monotonic() - started:.0f} s from the click", flush=True)
    time.sleep(1)
    page.screenshot(path=out / f"sweep-{label}.png")


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=gpt2_engine.SHIPPED_MODEL)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--label", default="shakespeare", help="the pictures' names: write-LABEL.png, ...")
    parser.add_argument("--only", default="write,compare,sweep", help="which pictures (default all three)")
    args = parser.parse_args(argv)
    port = free_port()
    server = start_server(port, args.model)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            for make in [{"write": write, "compare": compare, "sweep": sweep}[name] for name in args.only.split(",")]:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(120_000)
                page.goto(f"http://localhost:{port}")
                page.get_by_role("button", name="Generate").wait_for()
                make(page, args.seed, args.out, args.label)
                page.close()
                print(f"wrote {args.out / f'{make.__name__}-{args.label}.png'}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    bench.run(main)
