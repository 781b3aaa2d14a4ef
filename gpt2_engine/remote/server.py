"""HTTP to an OpenAI-compatible server, and its failures as sentences: the one place that opens a connection.

`Server(url)` holds the address and the waits; `post`, `get_json` and `read` ask it something, and `events` reads a
streamed answer (server-sent events) as JSON objects. Every failure is a `RemoteError` (a StudioError) that says
what to do: an address that is not one, a server that does not answer, a refused request, a server that drops in
the middle of a run. What the answers mean is answers.py's; what to ask, probe.py's and run.py's.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator
from typing import Any

from ..errors import StudioError
from .answers import error_message, http_error_message

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # the longest wait for the next chunk: a long prompt's prefill on a slow server
NOT_ANSWERED = (urllib.error.URLError, OSError, http.client.HTTPException)  # no answer, or a broken one


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


class Server:
    """An OpenAI-compatible server's address (`url`, its API's base; `root`, the server's) and its waits. Holds no
    state between requests: any number of threads may use one."""

    def __init__(self, url: str, timeout_s: float = READ_TIMEOUT_S):
        self.url = normalize_url(url)
        self.root = self.url.removesuffix("/v1")
        self.timeout_s = timeout_s

    def post(self, path: str, body: dict, stream: bool = False, generated: int | None = None) -> Any:
        """The JSON answer to a POST of `body` to `path` (the open response when `stream`). With `generated` (the
        tokens a run has so far), a server that does not answer has dropped that run (BackendDroppedError)."""
        request = urllib.request.Request(
            self.root + path,
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
            },
        )
        return self._open(request, stream, generated)

    def get_json(self, path: str) -> Any:
        """A GET that answers at once on any live server (the model list): a dead address is said in seconds."""
        return self._open(urllib.request.Request(self.root + path), False, None, CONNECT_TIMEOUT_S)

    def read(self, path: str) -> str:
        """The text of a GET, as it comes (a /metrics page); raises what urllib raises (NOT_ANSWERED)."""
        with urllib.request.urlopen(self.root + path, timeout=CONNECT_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return response.read().decode("utf-8", "replace")

    def events(self, response: Any, generated: Callable[[], int]) -> Generator[dict, None, None]:
        """A streamed answer's events (`data: {...}` lines) as JSON objects, until `data: [DONE]`; closes the
        response however it ends. `generated()`: the run's tokens so far, for the message if the server drops it."""
        try:
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as error:
                    raise BackendDroppedError(self.dropped(generated(), f"broke off ({_reason(error)})")) from None
                if not line:
                    raise BackendDroppedError(self.dropped(generated(), "closed the connection before the end"))
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank lines, comments and pings
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise BackendRefusedError(
                        f"The server at {self.url} sent what is not JSON: {data[:200]!r}."
                    ) from None
                if "error" in event:
                    raise BackendRefusedError(f"The server at {self.url} stopped with an error: {error_message(event)}")
                yield event
        finally:
            response.close()

    def dropped(self, generated: int, how: str) -> str:
        return (
            f"The server at {self.url} {how} after {generated:,} token{'' if generated == 1 else 's'}: the text so far "
            "is kept. Is it still running? Start it again, then press Generate."
        )

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
        except NOT_ANSWERED as error:
            if generated is not None:
                raise BackendDroppedError(self.dropped(generated, f"stopped answering ({_reason(error)})")) from None
            raise BackendUnreachableError(
                f"Cannot reach the server at {self.url}: {_reason(error)}. Is it running, and is this its address "
                "and port? Start it (see docs/remote.md: vLLM or llama.cpp's server), or leave the backend empty to run "
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


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "no such host"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer in time"
    return str(reason) or type(reason).__name__
