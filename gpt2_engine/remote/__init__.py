"""A GPT-2 served elsewhere (vLLM, llama.cpp's server), driven through the OpenAI-compatible completions API with
the same `stream(prompt, settings) -> Iterator[Step]` as the local `Engine`, so the page and the command line
change little. Its parts, one job each: server.py (HTTP and its errors), probe.py (what the server
is), tokens.py (its tokenizer), run.py (a run: its state and loop); answers.py reads what
servers send.

    engine = RemoteEngine("http://gpu-box:8000/v1")     # checks the server and its model at once
    for step in engine.stream("The cat sat", max_new_tokens=20, window=50, seed=7, candidates=5):
        print(step.text, end="")

What stays on this side, and why:
- **Window N.** The server keeps its own cache; the window is kept here by asking for at most the tokens up to
  the next reset in one request (`max_tokens`), and starting the next request from the last N tokens of
  prompt + generated. Steps N, 2N, ... say `reset`, as the local engine's do. The last N tokens are counted
  with the server's own tokenizer (its /tokenize endpoint: vLLM's and llama.cpp's `/tokenize`, llama-cpp-python's
  `/extras/tokenize`), so no tokenizer files are needed here and the ids are always the served model's. They go
  as token ids where the server takes a list of ids as `prompt` (vLLM, llama.cpp's llama-server); otherwise
  (llama-cpp-python's server) as the text of those ids, which the server tokenizes again.
- **Stops.** The length, a sentence's end and <|endoftext|> (the server's `finish_reason` "stop") end the run as
  locally; a Step is handed on when the next chunk (or the end) has come, so the last Step carries its reason.
- **Seeds.** Each request carries `seed` (the run's seed for the first, then seed + k x 1,000,003 for the k-th:
  remote.run.SEED_STRIDE): on one server, one run at a time, the same seed and settings repeat the same text (tested on llama-cpp-python's
  server). vLLM's per-request seed repeats too on the same GPU and batch, not across versions or batch shapes.
- **Candidates** come from `logprobs` (the top K, with the model's own probabilities at temperature 1 as the
  server reports them); the top-p set among them is worked out here. llama-cpp-python's server gives them only
  with `--logits_all true` (its default); the check at connection says so otherwise.
- **Memory** is the server's, not this process's: Steps carry no RSS (0), and `server_kv_usage` is the share of
  the server's KV cache in use where it says it (vLLM's /metrics gauge; llama.cpp's llama-server's /slots, the
  tokens its busy slots hold over all its slots' context), else None.
- **Forms.** Streamed `logprobs` come in the completions API's form (vLLM, llama-cpp-python) or the chat API's
  (llama-server, which names every token's id); both are read (answers.py).

Every failure is a `RemoteError` (a StudioError) with a sentence a person can act on: a bad URL, a server that
does not answer, a model that is not a GPT-2, a refused request, a server that drops mid-run (the Steps so far
have been handed on already, so the text so far is kept by whoever keeps them).

One RemoteEngine serves every visitor: it holds only what the server is (found once, never changed); each run's
state is its own (`RemoteRun`), so runs streamed from several threads at once do not touch each other's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from ..decoding import Prompt, Step
from ..errors import SettingsError
from ..fast import Progress
from ..settings import GenerationSettings
from ..window import Window
from .probe import memory_note, probe
from .run import RemoteRun, RequestLog
from .server import (
    READ_TIMEOUT_S,
    BackendDroppedError,
    BackendRefusedError,
    BackendUnreachableError,
    NotGPT2Error,
    RemoteError,
    Server,
)
from .tokens import PieceIds

__all__ = [
    "ENV_BACKEND",
    "BackendDroppedError",
    "BackendRefusedError",
    "BackendUnreachableError",
    "NotGPT2Error",
    "RemoteEngine",
    "RemoteError",
    "RemoteRun",
    "RequestLog",
    "backend_from_env",
]

ENV_BACKEND = "GPT2_STUDIO_BACKEND"


def backend_from_env() -> str:
    return os.environ.get(ENV_BACKEND, "").strip()


class RemoteEngine:
    """A GPT-2 behind an OpenAI-compatible completions API, with `Engine`'s `stream()` (a `TextEngine`). Made with
    the API's base URL (`http://host:8000/v1`); checks at once that the server answers and serves a GPT-2."""

    runs_here = False  # the model is on the server: no step mode, comparison, sweep or scoring from here
    precision = "remote"
    choice = None
    weight_bytes = 0  # the weights are the server's
    device = "remote"

    def __init__(self, url: str, timeout_s: float = READ_TIMEOUT_S):
        self.server = Server(url, timeout_s)
        self.url, self.root = self.server.url, self.server.root
        self.facts, self.tokenizer = probe(self.server)
        self.model_id = self.facts.model_id
        self.name = f"{self.model_id} at {self.root}"
        self.n_positions = self.facts.n_positions
        self.eos_token_id: int = self.facts.eos_token_id
        self.prompt_as_ids = self.facts.prompt_as_ids
        self._pieces = PieceIds()  # ids for the token texts the server does not name by id, one for every run

    @property
    def memory_note(self) -> str:
        """What the memory chart can show of this server, in words."""
        return memory_note(self.root, self.facts.kv_source)

    def token_text(self, token_id: int) -> str:
        if token_id >= 0:
            return self.detokenize([token_id])
        return self._pieces.piece(token_id)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, by the server's own tokenizer."""
        return self.tokenizer.tokenize(text)

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids, by the server's own tokenizer."""
        return self.tokenizer.detokenize(ids)

    def settings_for(self, settings: GenerationSettings | None = None, **changes: Any) -> GenerationSettings:
        """`settings` with `changes`, checked for this server (raises SettingsError)."""
        settings = settings or GenerationSettings()
        settings = settings.with_(**changes) if changes else settings
        settings.check_for(self.n_positions)
        if settings.sampler == "tutorial":
            raise SettingsError(
                "sampler", "tutorial", "a remote server samples by weight (nucleus) or takes the likeliest (greedy)"
            )
        if settings.autograd:
            raise SettingsError("autograd", True, "tutorial mode needs the model on this machine, not on a server")
        return settings

    def prepare_prompt(self, prompt: str, window: int | None) -> Prompt:
        """Token ids for a prompt (Prompt.fit), by the server's tokenizer."""
        return Prompt.fit(prompt, self.tokenize, self.eos_token_id, Window(window, self.n_positions))

    def run(
        self, prompt: str, settings: GenerationSettings | None = None, on_prompt: Progress | None = None, **changes: Any
    ) -> RemoteRun:
        """A run of its own (settings checked now, nothing sent yet): `run.steps()` streams it, and `run.requests`
        says what it asked the server."""
        settings = self.settings_for(settings, **changes)
        return RemoteRun(self.server, self.tokenizer, self.facts, self._pieces, prompt, settings, on_prompt)

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        on_prompt: Progress | None = None,
        *,
        on_wait: Callable[[int], None] | None = None,
        **changes: Any,
    ) -> Generator[Step, None, None]:
        """Yields one Step per generated token, as the local Engine's stream does (see the module's note for what
        differs). Closing the generator closes the request in flight: the server stops at its next token. The
        server queues and batches its own requests: `on_wait` (the local batch's place in line) is never called."""
        return self.run(prompt, settings, on_prompt, **changes).steps()
