"""Sharing one model among several visitors: say what it will take, load it once, take turns where needed.

- `plan_load(name)`: the device, precision and memory a model needs, known before any weights are read.
- `SharedModel`: loads once, on a thread of its own, however many visitors ask at the same moment;
  a failed load is not remembered, so the next `start()` tries again (after a download, a fix).
- `TurnQueue`: one at a time, first come first served, and how many are ahead of a waiting one. Streams do not
  need it (the engine batches them: batching.py); the page keeps it for step mode and scoring.

Knows nothing of Streamlit: the page keeps one `TurnQueue` per server and one `SharedModel` per
model and precision. The turn is given back however the run ends (finished, stopped, raised).

    queue = TurnQueue()
    with queue.turn(waiting=lambda ahead: print(f"{ahead} ahead of you")):
        for step in engine.stream(prompt, settings):
            ...
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import autotune, capabilities
from .errors import ModelLoadError
from .finding import read_shape, resolve_name
from .generation import Engine
from .loading import load, resolve_device, resolve_precision
from .shapes import KNOWN_MODELS, ModelShape


@dataclass(frozen=True)
class LoadPlan:
    """What loading a model will take, known before any weights are read."""

    name: str  # as the user gave it
    source: str  # what from_pretrained gets: a hub id or an absolute folder
    is_local: bool
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "bf16", "fp16" or "int8"; "auto" while it is still to be measured
    shape: ModelShape
    weight_bytes: int
    memory_needed_bytes: int  # weights + a full KV cache + the runtime


def plan_load(name_or_path: str, dtype: str = "auto", device: str = "auto") -> LoadPlan:
    """Known names need nothing read; a folder or hub id has its config (a few kB) read.
    `auto` on a CPU is the precision measured at an earlier load, if any; else it stays "auto" (measured at
    the load), and the figures are those of the smallest precision that runs here.
    Raises ModelLoadError, with what to do, when the model cannot be found or the precision does not run."""
    source, is_local = resolve_name(name_or_path)
    torch_device = resolve_device(device)
    precision = resolve_precision(dtype, torch_device)
    name = str(name_or_path).strip()
    shape = KNOWN_MODELS[name].shape if name in KNOWN_MODELS else read_shape(source, is_local, name)[1]
    if precision == "auto":
        choice = autotune.remembered(autotune.key(source, is_local))
        precision = choice.precision if choice else "auto"
    sized = precision if precision != "auto" else min(capabilities.runnable(torch_device), key=shape.weight_bytes)
    return LoadPlan(
        name=name,
        source=source,
        is_local=is_local,
        device=torch_device.type,
        precision=precision,
        shape=shape,
        weight_bytes=shape.weight_bytes(sized),
        memory_needed_bytes=shape.memory_needed(sized),
    )


MOST_MODELS = 2  # models loaded by SharedModel alive in the process at once (each a few GB on gpt2-xl)
_ALIVE: weakref.WeakSet[Engine] = weakref.WeakSet()  # the engines SharedModel loaded that something still holds


def models_alive() -> list[Engine]:
    """The engines SharedModel loaded that are still held (by a page's cache, or by a visitor still using one the
    cache let go), after a collection so that only those truly held count."""
    gc.collect()
    return list(_ALIVE)


def _models_in_use(besides: str) -> list[str]:
    return [f"{engine.name} ({engine.precision})" for engine in models_alive() if engine.name != besides]


class SharedModel:
    """One model, loaded once on a thread of its own and then shared by every visitor who asks for it.

    At most MOST_MODELS of them are alive at once, whoever holds them: the page's cache lets a third model in only
    by letting go of one, but a visitor still writing with it (or in step mode) keeps it in memory. A load that
    would make a third alive fails, saying which models are in use, until one of them is let go.

    `start()` begins the load unless the model is loaded or loading; `wait()` hands out the engine
    once it is there. The load runs on its own thread so that a page can show its progress, and a
    visitor who clicks elsewhere meanwhile does not throw away a half-done load of gigabytes.
    A failed load is reported to everyone waiting on it, and the next `start()` tries again.
    """

    def __init__(
        self, name_or_path: str, dtype: str = "auto", device: str = "auto", loader: Callable[..., Engine] = load
    ):
        self.name, self.dtype, self.device = name_or_path, dtype, device
        self._loader = loader
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._error: BaseException | None = None
        self.progress: list[str] = []  # the current load's phases so far, as load() says them

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def start(self) -> None:
        """Starts loading, unless the model is loaded or a load is under way."""
        with self._lock:
            if self._engine is not None or (self._thread is not None and self._thread.is_alive()):
                return
            self._error, self.progress = None, []
            self._thread = threading.Thread(target=self._load, name=f"load {self.name}", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            in_use = _models_in_use(besides=self.name)  # names only: the error kept below must hold no engine
            if len(in_use) >= MOST_MODELS:
                raise ModelLoadError(
                    f"{' and '.join(in_use)} are in memory already, each still in use by a visitor (a run writing, "
                    f"or step mode): at most {MOST_MODELS} models at once. Pick one of them, or try again once their "
                    "runs end."
                )
            engine = self._loader(self.name, dtype=self.dtype, device=self.device, progress=self.progress.append)
        except Exception as error:  # noqa: BLE001 - handed to every waiter, who shows it
            with self._lock:
                self._error = error
        else:
            with self._lock:
                self._engine = engine
            if isinstance(engine, Engine):
                _ALIVE.add(engine)

    def wait(self, timeout_s: float | None = None) -> Engine | None:
        """The engine once loaded; None if still loading after `timeout_s`; raises the load's error
        (until `start()` tries again). Starts the first load if no one has."""
        with self._lock:
            thread = self._thread
        if thread is None:
            self.start()
            with self._lock:
                thread = self._thread
        assert thread is not None  # start() made one
        thread.join(timeout_s)
        with self._lock:
            if self._engine is not None:
                return self._engine
            if self._thread is thread and not thread.is_alive() and self._error is not None:
                raise self._error
        return None

    def get(self) -> Engine:
        """The engine, loading it (again, after a failure) and waiting as long as it takes."""
        self.start()
        engine = None
        while engine is None:
            engine = self.wait()
        return engine


class TurnQueue:
    """Hands out turns to use the model, first come first served."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._line: list[object] = []  # tickets in order; the first one's run has the model

    def __len__(self) -> int:
        with self._changed:
            return len(self._line)

    def join(self) -> object:
        """A ticket at the end of the line."""
        ticket = object()
        with self._changed:
            self._line.append(ticket)
            return ticket

    def ahead(self, ticket: object) -> int:
        """Runs ahead of this ticket: 0 when it is its turn."""
        with self._changed:
            return self._line.index(ticket)

    def wait(self, ticket: object, timeout_s: float | None = None) -> bool:
        """True once it is this ticket's turn; False if `timeout_s` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._line[0] is ticket, timeout_s)

    def leave(self, ticket: object) -> None:
        """Gives the turn (or the place in line) back. Leaving twice is harmless."""
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
                self._changed.notify_all()

    @contextmanager
    def turn(self, waiting: Callable[[int], None] | None = None, poll_s: float = 0.2) -> Iterator[None]:
        """Holds the turn for the `with` block. While waiting, calls `waiting(runs ahead)` every `poll_s`,
        which is also where a caller can give up by raising (the place in line is given back)."""
        ticket = self.join()
        try:
            while not self.wait(ticket, poll_s):
                if waiting is not None:
                    waiting(self.ahead(ticket))
            yield
        finally:
            self.leave(ticket)
