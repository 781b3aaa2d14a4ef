"""The served model's own tokenizer, asked over HTTP, and ids for the tokens a server names by their text only.

The window counts the last N tokens with the server's tokenizer (its /tokenize endpoint: vLLM's and llama.cpp's
`/tokenize`, llama-cpp-python's `/extras/tokenize`), so no tokenizer files are needed on this side and the ids are
always the served model's.
"""

from __future__ import annotations

import threading

from .server import BackendRefusedError, Server

TOKENIZE_PATHS = ("/tokenize", "/extras/tokenize")  # vLLM and llama-server; llama-cpp-python's server


class RemoteTokenizer:
    """Token ids of a text, and the text of ids, by the server's tokenizer at `path` (one of TOKENIZE_PATHS)."""

    def __init__(self, server: Server, model_id: str, path: str):
        self.server, self.model_id, self.path = server, model_id, path

    @classmethod
    def find(cls, server: Server, model_id: str) -> RemoteTokenizer:
        """The server's tokenizer, at the first of TOKENIZE_PATHS it answers; BackendRefusedError if none."""
        for path in TOKENIZE_PATHS:
            tokenizer = cls(server, model_id, path)
            try:
                tokenizer.tokenize("GPT-2")
                return tokenizer
            except BackendRefusedError:
                continue
        raise BackendRefusedError(
            f"The server at {server.root} has no tokenizer endpoint (/tokenize or /extras/tokenize): the window needs "
            "it to count the last N tokens. vLLM and llama.cpp's servers have one."
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, by the server's own tokenizer."""
        body: dict[str, object] = {"input": text, "model": self.model_id}
        if self.path != "/extras/tokenize":
            body = {"model": self.model_id, "prompt": text, "content": text, "add_special_tokens": False}
        answer = self.server.post(self.path, body)
        return [int(i) for i in answer.get("tokens", [])]

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids, by the server's own tokenizer."""
        if self.path == "/extras/tokenize":
            return str(self.server.post("/extras/detokenize", {"tokens": ids, "model": self.model_id}).get("text", ""))
        answer = self.server.post("/detokenize", {"model": self.model_id, "tokens": ids})
        return str(answer.get("prompt", answer.get("content", "")))


class PieceIds:
    """Negative ids standing for the texts of tokens a server sends without their id (llama-cpp-python's server,
    which also cuts a stream short when asked anything else while it streams): the same text always gets the same
    id, whichever thread asks first, enough to tell candidates apart. At most one per token text the model has."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: dict[int, str] = {}
        self._lock = threading.Lock()  # two runs naming two new pieces at once must not take the same id

    def id_of(self, piece: str) -> int:
        with self._lock:
            token_id = self._ids.get(piece)
            if token_id is None:
                token_id = self._ids[piece] = -1 - len(self._ids)
                self._pieces[token_id] = piece
            return token_id

    def piece(self, token_id: int) -> str:
        """The text a negative id stands for ("" for an id never given)."""
        with self._lock:
            return self._pieces.get(token_id, "")
