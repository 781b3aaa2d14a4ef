"""What servers send, read as it is sent: the two forms of streamed logprobs and llama-server's /slots, from
answers recorded off llama.cpp's llama-server (b1-0c1e570, built from llama-cpp-python 0.3.36's source) serving
the gpt2-xl stand-in. The servers themselves are driven in tests/test_remote.py (llama-cpp-python's, in CI)."""

from __future__ import annotations

import math

from gpt2_engine.remote.answers import Chunk, slots_share

LLAMA_SERVER_CHUNK = {  # /v1/completions, stream, logprobs=2: the chat API's form, every id named
    "text": "WF",
    "index": 0,
    "logprobs": {
        "content": [
            {
                "id": 48397,
                "token": "WF",
                "bytes": [87, 70],
                "logprob": -10.446175575256348,
                "top_logprobs": [
                    {"id": 27411, "token": " Humans", "bytes": [32, 72, 117, 109, 97, 110, 115], "logprob": -7.4538},
                    {"id": 27752, "token": " Rally", "bytes": [32, 82, 97, 108, 108, 121], "logprob": -7.8427},
                ],
            }
        ]
    },
    "finish_reason": None,
}


def test_llama_servers_chat_form_names_the_token_and_its_candidates() -> None:
    chunk = Chunk.from_choice(LLAMA_SERVER_CHUNK)
    assert chunk.token_id == 48397 and chunk.finish is None
    text, logprob, top = chunk.token
    assert text == "WF" and math.isclose(logprob, -10.446175575256348)
    assert top == [(27411, " Humans", -7.4538), (27752, " Rally", -7.8427)]
    closing = Chunk.from_choice({"text": "", "index": 0, "logprobs": None, "finish_reason": "length"})
    assert closing.token is None and closing.finish == "length"


def test_the_completions_form_vllms_ids_and_llama_cpp_pythons_texts() -> None:
    vllm = Chunk.from_choice(
        {
            "text": " cat",
            "logprobs": {
                "tokens": ["token_id:3797"],
                "token_logprobs": [-1.5],
                "top_logprobs": [{"token_id:3797": -1.5, "token_id:3290": -2.0}],
            },
            "finish_reason": None,
        }
    )
    assert vllm.token_id == 3797 and vllm.token == (" cat", -1.5, [(3797, "", -1.5), (3290, "", -2.0)])
    texts = Chunk.from_choice(
        {
            "text": " cat",
            "logprobs": {"tokens": [" cat"], "token_logprobs": [-1.5], "top_logprobs": [{" cat": -1.5, " dog": -2.0}]},
        }
    )
    assert texts.token_id is None and texts.token == (" cat", -1.5, [(None, " cat", -1.5), (None, " dog", -2.0)])


def test_llama_servers_slots_say_the_share_of_context_its_busy_slots_hold() -> None:
    idle = {"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": False}
    busy = {
        "id": 7,
        "n_ctx": 1024,
        "is_processing": True,
        "id_task": 75,
        "n_prompt_tokens": 31,
        "next_token": [{"has_next_token": True, "n_remain": 32, "n_decoded": 28}],
    }
    assert slots_share([idle, busy]) == (31 + 28) / 2048
    assert slots_share([idle, idle]) == 0.0 and slots_share([]) is None
