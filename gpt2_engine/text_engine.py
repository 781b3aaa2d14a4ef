"""What the page and the command line need of an engine, local (`generation.Engine`) or served elsewhere
(`remote.RemoteEngine`): one typed protocol, so that both are used the same way and the page asks an engine what
it can do (`runs_here`) rather than which class it is.

    def write(engine: TextEngine, prompt: str) -> str:
        with closing(engine.stream(prompt, engine.settings_for(max_new_tokens=20))) as steps:
            return "".join(step.text for step in steps)
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol

from .decoding import Step
from .fast import Progress
from .settings import GenerationSettings


class TextEngine(Protocol):
    """An engine that streams a GPT-2's text one token at a time (structural: no base class to inherit)."""

    @property
    def runs_here(self) -> bool:
        """True when the model is in this process: its memory is this process's, and step mode, the comparisons,
        the sweep and coherence scoring can read it. False for a model on a server."""

    @property
    def name(self) -> str:
        """The model, as the page names it."""

    @property
    def precision(self) -> str:
        """fp32, bf16, fp16, int8 or q8 on this machine; "remote" on a server."""

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights this process holds (0 for a model on a server)."""

    @property
    def n_positions(self) -> int:
        """The model's context, in tokens."""

    @property
    def memory_note(self) -> str:
        """What the memory chart can show of a model elsewhere, in words; "" when it is this process's memory."""

    def token_text(self, token_id: int) -> str:
        """A token as text (a Step's `token_id`, a Candidate's), for showing it."""

    def settings_for(self, settings: GenerationSettings | None = None, **changes: Any) -> GenerationSettings:
        """`settings` with `changes`, checked for this model (raises SettingsError)."""

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        on_prompt: Progress | None = None,
        *,
        on_wait: Callable[[int], None] | None = None,
        **changes: Any,
    ) -> Generator[Step, None, None]:
        """One Step per generated token, a plain generator: closing it stops the work. `on_prompt(read, total)` as
        the prompt is read; `on_wait(runs ahead)` while the run waits for a place."""
