"""Peak memory of loading a model and (optionally) writing with it, in this process, from its start.

Run it as a fresh process: the benchmark does, per precision, and the loader-memory tests do. It prints
one JSON line, in bytes: the baseline taken after torch and transformers are imported, the peak of the
anonymous memory (polled every 2 ms), the peak RSS (the kernel's own high-water mark, mapped weight files
included), the anonymous memory after, the engine's weight bytes and its largest KV cache.

    python -m bench.peaks bench/models/gpt2-xl bf16 cpu 200
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(args: list[str], what: str) -> dict:
    """Runs `python <args>` in a process of its own (from the project's root) and returns the JSON object on
    its last line of output; a failure raises with `what` failed and the end of its stderr."""
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def status(field: str) -> int:
    """A /proc/self/status field in bytes. VmHWM, not ru_maxrss: that keeps the forking parent's peak across exec."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakWatch:
    """Polls the anonymous memory in a thread while the `with` block runs."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s, self.peak_anon, self._done = every_s, 0, threading.Event()

    def _poll(self) -> None:
        while not self._done.is_set():
            self.peak_anon = max(self.peak_anon, status("RssAnon"))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakWatch:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, status("RssAnon"))


def main() -> None:
    model, precision, device, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    import transformers  # noqa: F401 - imported before the baseline, as the engine's load would
    from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: F401

    import gpt2_engine

    base_anon, base_rss = status("RssAnon"), status("VmRSS")
    with PeakWatch() as watch:
        engine = gpt2_engine.load(model, dtype=precision, device=device)
        steps = engine.stream("The", max_new_tokens=tokens, window=50, stop_at_eos=False) if tokens else []
        kv = [step.kv_bytes for step in steps]
    report = {
        "base_anon": base_anon,
        "base_rss": base_rss,
        "peak_anon": watch.peak_anon,
        "peak_rss": status("VmHWM"),
        "after_anon": status("RssAnon"),
        "weights": engine.weight_bytes,
        "kv": max(kv, default=0),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
