"""Benchmarks: each is `python -m bench.NAME --help`; docs/measurements.md holds what they measured."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable


def run(main: Callable[[], int | None]) -> None:
    """Runs a benchmark's `main` and ends the process as the command line does (`gpt2_engine.__main__.exit_now`):
    without the interpreter's teardown, where a batch thread's last C++ clean-up once aborted a finished soak
    ("terminate called without an active exception", exit status -6) in a suite run beside a busy process."""
    from gpt2_engine.__main__ import exit_now

    try:
        code = main()
    except SystemExit as stop:  # argparse's errors and --help, sys.exit("message")
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = 1 if isinstance(stop.code, str) else stop.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_now(code or 0)
