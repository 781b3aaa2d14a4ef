"""A GPT-2 served elsewhere (vLLM, llama.cpp's server), driven through the OpenAI-compatible completions API with
the same `stream(prompt, settings) -> Iterator[Step]` as the local `Engine`, so the page and the command line
change little.

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
- **Seeds.** Each request carries `seed` (the run's seed for the first, then seed + k for the k-th): on one
  server, one run at a time, the same seed and settings repeat the same text (tested on llama-cpp-python's
  server). vLLM's per-request seed repeats too on the same GPU and batch, not across versions or batch shapes.
- **Candidates** come from `logprobs` (the top K, with the model's own probabilities at temperature 1 as the
  server reports them); the top-p set among them is worked out here. llama-cpp-python's server gives them only
  with `--logits_all true` (its default); the check at connection says so otherwise.
- **Memory** is the server's, not this process's: Steps carry no RSS (0), and `server_kv_usage` is the share of
  the server's KV cache in use where it says it (vLLM's /metrics gauge; llama.cpp's llama-server's /slots, the
  tokens its busy slots hold over all its slots' context), else None.
- **Forms.** Streamed `logprobs` come in the completions API's form (vLLM, llama-cpp-python) or the chat API's
  (llama-server, which names every token's id); both are read (server_answers.py).

Every failure is a `RemoteError` (a StudioError) with a sentence a person can act on: a bad URL, a server that
does not answer, a model that is not a GPT-2, a refused request, a server that drops mid-run (the Steps so far
have been handed on already, so the text so far is kept by whoever keeps them).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .decoding import Candidate, Prompt, Step, length_stop
from .errors import SettingsError, StudioError
from .fast import Progress
from .server_answers import Chunk, Ranked, error_message, gauge, http_error_message, slots_share
from .settings import GenerationSettings

ENV_BACKEND = "GPT2_STUDIO_BACKEND"
GPT2_VOCAB = 50257  # GPT-2's vocabulary: <|endoftext|> is its last token, 50256
GPT2_POSITIONS = 1024  # GPT-2's context, taken when the server does not say its own
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # the longest wait for the next chunk: a long prompt's prefill on a slow server
SEED_STRIDE = 1_000_003  # the k-th request of a run is seeded seed + k * SEED_STRIDE (mod 2**31)


class RemoteError(StudioError):
    """The remote backend failed; the message says what to do."""


class BackendUnreachableError(RemoteError):
    """A URL that is not one, or a server that does not answer."""


class NotGPT2Error(RemoteError):
    """The server answers, but its model is not a GPT-2 (its tokenizer is not GPT-2's)."""


class BackendRefusedError(RemoteError):
    """The server answered a request with an error."""


class BackendDroppedError(RemoteError):
    """The server stopped answering in the middle of a run."""


def backend_from_env() -> str:
    return os.environ.get(ENV_BACKEND, "").strip()


def normalize_url(url: str) -> str:
    """`host:8000`, `http://host:8000` or `http://host:8000/v1/` as `http://host:8000/v1`; raises
    BackendUnreachableError for what cannot be a server's address."""
    text = url.strip().rstrip("/")
    if text and "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendUnreachableError(
            f"{url!r} is not a server's address: use one like http://localhost:8000/v1 (the server's OpenAI-compatible "
            "API), or leave the backend empty to run the model on this machine."
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise BackendUnreachableError(
            f"{url!r} has a port that is not a number: use one like http://localhost:8000/v1."
        ) from None
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class RequestLog:
    """One completions request of a run, as sent: what the tests and a curious reader check the window by."""

    prompt_tokens: int  # tokens the request's prompt held
    prompt_ids: tuple[int, ...]  # those tokens
    max_tokens: int
    seed: int
    as_ids: bool  # the prompt went as token ids (else as their text)
    first_index: int  # the index of the first Step it made


class RemoteEngine:
    """A GPT-2 behind an OpenAI-compatible completions API, with `Engine`'s `stream()`. Made with the API's base
    URL (`http://host:8000/v1`); checks at once that the server answers and serves a GPT-2."""

    remote = True
    precision = "remote"
    choice = None
    weight_bytes = 0  # the weights are the server's
    device = "remote"

    def __init__(self, url: str, timeout_s: float = READ_TIMEOUT_S):
        self.url = normalize_url(url)
        self.root = self.url.removesuffix("/v1")
        self.timeout_s = timeout_s
        self.requests: list[RequestLog] = []  # every completions request so far, oldest first
        self._vocab: dict[str, int] = {}
        models = self._get_json("/v1/models").get("data") or []
        if not models:
            raise NotGPT2Error(f"The server at {self.url} serves no model (its /v1/models list is empty).")
        model = models[0]
        self.model_id: str = str(model.get("id", ""))
        self.name = f"{self.model_id} at {self.root}"
        self.n_positions: int = int(model.get("max_model_len") or GPT2_POSITIONS)
        self._tokenize_path = self._find_tokenizer()
        eos = self.tokenize("<|endoftext|>")
        if len(eos) != 1 or not 0 <= eos[0] < GPT2_VOCAB:
            raise NotGPT2Error(
                f"The model at {self.url} ({self.model_id}) is not a GPT-2: its tokenizer "
                + ("has no <|endoftext|> token" if len(eos) != 1 else f"puts <|endoftext|> at {eos[0]:,}")
                + f", where GPT-2's {GPT2_VOCAB:,}-token vocabulary has it as one token, 50,256 at most. Serve a GPT-2 "
                "(vllm serve openai-community/gpt2-xl), or leave the backend empty to run one on this machine."
            )
        self.eos_token_id: int = eos[0]
        self.prompt_as_ids = self._takes_ids()
        self._kv_source = self._find_kv_source()  # once now: a server that says nothing is not asked again

    # what the page asks of an engine besides stream()
    def token_text(self, token_id: int) -> str:
        if token_id >= 0:
            return self.detokenize([token_id])
        return next((piece for piece, i in self._vocab.items() if i == token_id), "")

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
        return Prompt.fit(prompt, self.tokenize, self.eos_token_id, self.n_positions, window)

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        on_prompt: Progress | None = None,
        *,
        on_wait: Callable[[int], None] | None = None,
        **changes: Any,
    ) -> Iterator[Step]:
        """Yields one Step per generated token, as the local Engine's stream does (see the module's note for what
        differs). Closing the generator closes the request in flight: the server stops at its next token. The
        server queues and batches its own requests: `on_wait` (the local batch's place in line) is never called."""
        settings = self.settings_for(settings, **changes)

        def steps() -> Iterator[Step]:
            yield from self._run(prompt, settings, on_prompt)

        return steps()

    # the run
    def _run(self, prompt_text: str, settings: GenerationSettings, on_prompt: Progress | None) -> Iterator[Step]:
        start = time.perf_counter()
        seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
        prompt = self.prepare_prompt(prompt_text, settings.window)
        if on_prompt is not None:
            on_prompt(len(prompt.ids), len(prompt.ids))
        limit = settings.max_new_tokens + (settings.sentence_end_max_extra if settings.stop_at_sentence_end else 0)
        ids = list(prompt.ids)  # prompt + generated, as far as this side knows them (the window's tail)
        text = prompt.text or ""  # the text so far: a reset's prompt is its tail, where the server takes no ids
        held = list(prompt.ids)  # what the next request's prompt holds
        generated, request_number, reset = 0, 0, False
        pending: Step | None = None  # handed on when the next token (or the end) comes: the last Step says why
        while True:
            window = settings.window
            until_reset = window - generated % window if window else self.n_positions - len(held)
            max_tokens = max(1, min(until_reset, limit - generated))
            request_seed = (seed + request_number * SEED_STRIDE) % 2**31
            self.requests.append(
                RequestLog(len(held), tuple(held), max_tokens, request_seed, self.prompt_as_ids, generated)
            )
            got, finish = 0, None
            chunks = self._completion(held, max_tokens, request_seed, settings, generated)
            try:
                for chunk in chunks:
                    if chunk.finish is not None:
                        finish = chunk.finish
                    if chunk.token is None:
                        continue
                    if pending is not None:
                        yield pending
                    piece, logprob, top = chunk.token
                    token_id = self._token_id(chunk.token_id, piece)
                    generated += 1
                    got += 1
                    ids.append(token_id)
                    text += piece
                    stop = length_stop(settings, generated, lambda piece=piece: piece)
                    size, mass, candidates = self._candidates(top, settings)
                    pending = Step(
                        index=generated - 1,
                        token_id=token_id,
                        text=piece,
                        logprob=logprob,
                        reset=reset and got == 1,
                        context_tokens=len(held) + got - 1,
                        kv_bytes=0,
                        rss_bytes=0,
                        anon_bytes=0,
                        elapsed_s=time.perf_counter() - start,
                        seed=seed,
                        stop_reason=stop,
                        prompt_tokens=len(prompt.ids),
                        prompt_tokens_dropped=prompt.dropped,
                        nucleus_size=size,
                        nucleus_mass=mass,
                        candidates=candidates,
                        server_kv_usage=self._kv_usage() if got == 1 or got % 8 == 0 else None,
                    )
                    if stop:
                        yield pending
                        return
            except RemoteError:
                if pending is not None:  # the last token that came is part of the text so far
                    yield pending
                raise
            finally:
                chunks.close()  # a closed run (Stop) closes the connection: the server stops writing
            if finish == "stop" and got < max_tokens:  # the server ended the run: <|endoftext|>
                if pending is not None:
                    yield replace(pending, stop_reason="eos")
                return
            if got == 0:
                if pending is not None:
                    yield pending
                raise BackendDroppedError(self._dropped(generated, "ended a request without writing a token"))
            if finish == "length" and got < max_tokens:  # the server's context is smaller than it said
                self.n_positions = len(held) + got
            request_number += 1
            try:
                held, reset = self._tail(ids, text, window if window else self.n_positions // 2), True
            except BackendUnreachableError:  # the server died between two requests of the run
                if pending is not None:
                    yield pending
                raise BackendDroppedError(self._dropped(generated, "stopped answering")) from None

    def _tail(self, ids: list[int], text: str, keep: int) -> list[int]:
        """The last `keep` tokens of prompt + generated, for the next request. Counted with the server's
        tokenizer over the text so far (the ids the stream named may hold a -1 where the server sent a piece of a
        character with no text), so a prompt sent as text is exactly these tokens' text."""
        if all(i >= 0 for i in ids):  # the server named every id
            return ids[-keep:]
        return self.tokenize(text)[-keep:]

    def _candidates(self, top: Ranked | None, settings: GenerationSettings) -> tuple[int, float, tuple]:
        if not top or not settings.candidates:
            return 0, 0.0, ()
        out, mass, size = [], 0.0, 0
        for named_id, piece, logprob in sorted(top, key=lambda t: -t[2])[: settings.candidates]:
            probability = math.exp(logprob)
            in_top_p = mass < settings.top_p  # inside the smallest set whose mass reaches top_p
            if in_top_p:
                size, mass = size + 1, mass + probability
            shown = piece or f"#{named_id}"  # vLLM names ids, not their text
            out.append(Candidate(self._token_id(named_id, piece), shown, probability, in_top_p))
        if mass < settings.top_p:  # the set is larger than the candidates the server sent: its size is unknown
            size = 0
        return size, mass, tuple(out)

    def _token_id(self, token_id: int | None, piece: str) -> int:
        """The id of a streamed token: the server's where it names it (vLLM). Otherwise (llama-cpp-python's server,
        which also cuts a stream short when asked anything else while it streams) a negative number standing for
        the token's text, the same for the same text in this engine: enough to tell the candidates apart."""
        if token_id is not None:
            return token_id
        return self._vocab.setdefault(piece, -1 - len(self._vocab))

    # HTTP
    def _completion(
        self, held: list[int], max_tokens: int, seed: int, settings: GenerationSettings, generated: int
    ) -> Iterator[Chunk]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "prompt": held if self.prompt_as_ids else self.detokenize(held),
            "max_tokens": max_tokens,
            "stream": True,
            "seed": seed,
            "temperature": 0.0 if settings.sampler == "greedy" else settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k or 0,  # 0: no limit (llama.cpp's default is 40)
            "min_p": 0.0,  # llama.cpp's default 0.05 would cut the tail top-p keeps
            "repeat_penalty": 1.0,  # llama.cpp's default 1.1 would change the distribution
            "logprobs": max(1, settings.candidates),
            "return_tokens_as_token_ids": True,  # vLLM names each token "token_id:N"; others ignore it
        }
        if not settings.stop_at_eos:
            body["ignore_eos"] = True  # vLLM honours it; llama-cpp-python's server stops at <|endoftext|> anyway
        response = self._post("/v1/completions", body, stream=True, generated=generated)
        try:
            done = False
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as error:
                    raise BackendDroppedError(self._dropped(generated, f"broke off ({_reason(error)})")) from None
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank lines, comments and pings
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise BackendRefusedError(
                        f"The server at {self.url} sent what is not JSON: {data[:200]!r}."
                    ) from None
                if "error" in event:
                    raise BackendRefusedError(f"The server at {self.url} stopped with an error: {error_message(event)}")
                for choice in event.get("choices") or []:
                    chunk = Chunk.from_choice(choice)
                    if chunk.token is not None:
                        generated += 1
                    yield chunk
            if not done:
                raise BackendDroppedError(self._dropped(generated, "closed the connection before the end"))
        finally:
            response.close()

    def _dropped(self, generated: int, how: str) -> str:
        return (
            f"The server at {self.url} {how} after {generated:,} token{'' if generated == 1 else 's'}: the text so far "
            "is kept. Is it still running? Start it again, then press Generate."
        )

    def _post(self, path: str, body: dict, stream: bool = False, generated: int | None = None) -> Any:
        request = urllib.request.Request(
            self.root + path,
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
            },
        )
        return self._open(request, stream, generated)

    def _get_json(self, path: str) -> dict:
        """A GET that answers at once on any live server (the model list): a dead address is said in seconds."""
        return self._open(urllib.request.Request(self.root + path), False, None, CONNECT_TIMEOUT_S)

    def _open(
        self, request: urllib.request.Request, stream: bool, generated: int | None, timeout_s: float | None = None
    ) -> Any:
        # Every POST waits as long as a stream's next chunk may: a server that decodes one run at a time
        # (llama-cpp-python's) answers even a /tokenize only once the run before it has ended.
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s)  # noqa: S310 - http(s) only (normalize_url)
        except urllib.error.HTTPError as error:
            detail = http_error_message(error)
            if error.code == 404:
                raise BackendRefusedError(
                    f"The server at {self.root} has no {urllib.parse.urlsplit(request.full_url).path} (HTTP 404): is "
                    "it an OpenAI-compatible server (vLLM, llama.cpp's), and is the address its API's base, like "
                    "http://host:8000/v1?"
                ) from None
            raise BackendRefusedError(
                f"The server at {self.url} refused the request (HTTP {error.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            if generated is not None:
                raise BackendDroppedError(self._dropped(generated, f"stopped answering ({_reason(error)})")) from None
            raise BackendUnreachableError(
                f"Cannot reach the server at {self.url}: {_reason(error)}. Is it running, and is this its address "
                "and port? Start it (see the README: vLLM or llama.cpp's server), or leave the backend empty to run "
                "the model on this machine."
            ) from None
        if stream:
            return response
        with response:
            try:
                return json.loads(response.read())
            except ValueError:
                raise BackendRefusedError(
                    f"The server at {self.url} does not answer as an OpenAI-compatible API does (not JSON)."
                ) from None

    def _find_tokenizer(self) -> str:
        for path in ("/tokenize", "/extras/tokenize"):
            try:
                self._post(path, self._tokenize_body(path, "GPT-2"))
                return path
            except BackendRefusedError:
                continue
        raise BackendRefusedError(
            f"The server at {self.root} has no tokenizer endpoint (/tokenize or /extras/tokenize): the window needs it "
            "to count the last N tokens. vLLM and llama.cpp's servers have one."
        )

    def _tokenize_body(self, path: str, text: str) -> dict:
        if path == "/extras/tokenize":
            return {"input": text, "model": self.model_id}
        return {"model": self.model_id, "prompt": text, "content": text, "add_special_tokens": False}

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, by the server's own tokenizer."""
        answer = self._post(self._tokenize_path, self._tokenize_body(self._tokenize_path, text))
        return [int(i) for i in answer.get("tokens", [])]

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids, by the server's own tokenizer."""
        if self._tokenize_path == "/extras/tokenize":
            return str(self._post("/extras/detokenize", {"tokens": ids, "model": self.model_id}).get("text", ""))
        answer = self._post("/detokenize", {"model": self.model_id, "tokens": ids})
        return str(answer.get("prompt", answer.get("content", "")))

    def _takes_ids(self) -> bool:
        """Whether the server takes a list of token ids as `prompt` (vLLM and llama-server do), found with a
        one-token request that asks for `logprobs` as every run does; raises BackendRefusedError when it will not
        give them (llama-cpp-python's server started without --logits_all true)."""
        body = {"model": self.model_id, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
        try:
            self._post("/v1/completions", {**body, "prompt": [self.eos_token_id]})
            return True
        except BackendRefusedError:
            pass
        try:
            self._post("/v1/completions", {**body, "prompt": "<|endoftext|>"})
            return False
        except BackendRefusedError as error:
            raise BackendRefusedError(
                f"{error} The page asks for each token's probability (logprobs): llama-cpp-python's server gives "
                "them only with --logits_all true (its default)."
            ) from None

    def _kv_usage(self) -> float | None:
        """The share of the server's KV cache in use: vLLM's /metrics gauge, else llama-server's /slots (the tokens
        its busy slots hold over all slots' context). None where the server says neither (llama-cpp-python's)."""
        if self._kv_source is None:
            return None
        try:
            if self._kv_source == "/metrics":
                return gauge(self._read(self.root + "/metrics"))
            return slots_share(json.loads(self._read(self.root + "/slots")))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError, TypeError, KeyError):
            return None  # a missed reading: the chart has a gap there

    def _find_kv_source(self) -> str | None:
        """Where this server says its KV cache's use: "/metrics" (vLLM), "/slots" (llama-server), or None."""
        try:
            if gauge(self._read(self.root + "/metrics")) is not None:
                return "/metrics"
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            pass
        try:
            if slots_share(json.loads(self._read(self.root + "/slots"))) is not None:
                return "/slots"
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError, TypeError, KeyError):
            pass
        return None

    @staticmethod
    def _read(url: str) -> str:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return response.read().decode("utf-8", "replace")

    @property
    def memory_note(self) -> str:
        """What the memory chart can show of this server, in words."""
        if self._kv_source == "/metrics":
            return f"The server at {self.root} reports its KV cache in use (its /metrics); its other memory is not visible from here."
        if self._kv_source == "/slots":
            return (
                f"The server at {self.root} says what its busy slots hold (its /slots): the chart shows their tokens "
                "as a share of all its slots' context, every visitor's runs together; its other memory is not "
                "visible from here."
            )
        return (
            f"This model runs on the server at {self.root}, and that server reports no memory (llama-cpp-python's "
            "server has neither /metrics nor /slots; vLLM's /metrics and llama.cpp's llama-server's /slots say it): "
            "nothing here measures its memory, so no memory is charted. This computer's own memory is not the model's."
        )


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "no such host"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer in time"
    return str(reason) or type(reason).__name__
