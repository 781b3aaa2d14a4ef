"""A small OpenAI-compatible server in this process, on 127.0.0.1 only, for the remote engine's tests that need
no model: concurrency, the run's own state. It answers as llama-cpp-python's server does (a text prompt, tokens
named by their text, /extras/tokenize), or with `names_ids` as vLLM does (a prompt of ids, "token_id:N").

Its "model" writes by a rule, not by weights: one character per token (ids 0-255; <|endoftext|> is 256), each
the next letter after the previous one shifted by the request's seed, so a run is a pure function of its prompt,
seed and window, whoever else is streaming. `context` tokens at most (prompt + written, per request); `says`
is the context /v1/models reports (more than `context`: a server that says more than it has).
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EOS = 256
EOS_TEXT = "<|endoftext|>"


def tokenize(text: str) -> list[int]:
    ids: list[int] = []
    for i, part in enumerate(text.split(EOS_TEXT)):
        if i:
            ids.append(EOS)
        ids.extend(min(ord(c), 255) for c in part)
    return ids


def detokenize(ids: list[int]) -> str:
    return "".join(EOS_TEXT if i == EOS else chr(i) for i in ids)


def next_token(last: int, seed: int) -> int:
    """The letter after `last`'s, shifted by the seed (a..z)."""
    return ord("a") + (last + 1 + seed) % 26


class FakeServer:
    """Serves until `stop()`; `url` is its API's base (…/v1). `completions` counts the streamed requests."""

    def __init__(self, context: int = 128, says: int | None = None, names_ids: bool = False):
        self.context, self.says, self.names_ids = context, says or context, names_ids
        self.completions = 0
        self._count = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _json(self, answer: object, code: int = 200) -> None:
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._json({"data": [{"id": "fake-gpt2", "max_model_len": server.says}]})
                else:
                    self._json({"error": {"message": "not found"}}, 404)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/extras/tokenize":
                    self._json({"tokens": tokenize(body["input"])})
                elif self.path == "/extras/detokenize":
                    self._json({"text": detokenize(body["tokens"])})
                elif self.path == "/v1/completions":
                    self._complete(body)
                else:
                    self._json({"error": {"message": "not found"}}, 404)

            def _complete(self, body: dict) -> None:
                prompt = body["prompt"]
                if isinstance(prompt, list) != server.names_ids:
                    self._json({"error": {"message": "prompt: wrong type"}}, 400)
                    return
                ids = list(prompt) if isinstance(prompt, list) else tokenize(prompt)
                room = server.context - len(ids)
                if not body.get("stream"):
                    self._json({"choices": [{"text": "a", "finish_reason": "length"}]})
                    return
                with server._count:
                    server.completions += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                last = ids[-1]
                for _ in range(max(0, min(body["max_tokens"], room))):  # then "length": asked for, or the context's
                    last = next_token(last, body["seed"])
                    self._send({"text": chr(last), "logprobs": self._logprobs(last), "finish_reason": None})
                self._send({"text": "", "logprobs": None, "finish_reason": "length"})
                self.wfile.write(b"data: [DONE]\n\n")

            def _logprobs(self, token: int) -> dict:
                other = ord("a") + (token - ord("a") + 13) % 26
                name = (lambda i: f"token_id:{i}") if server.names_ids else chr
                return {
                    "tokens": [name(token)],
                    "token_logprobs": [math.log(0.6)],
                    "top_logprobs": [{name(token): math.log(0.6), name(other): math.log(0.3)}],
                }

            def _send(self, choice: dict) -> None:
                self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
                self.wfile.flush()

        return Handler
