"""gpt2_engine: run GPT-2 token by token, with top-p sampling, a KV cache and a context window N.

    import gpt2_engine
    engine = gpt2_engine.load("gpt2-xl")                      # or a hub id, or a local folder
    for step in engine.stream("The cat sat", max_new_tokens=20, top_p=0.7, window=50):
        print(step.text, end="", flush=True)
    engine.speak("The cat sat")                              # the tutorial's API: the whole text

Knows nothing of Streamlit: the page (app.py, studio/) and the command line (python -m gpt2_engine) use it,
through the names below and nothing else; an engine, local (`Engine`) or on a server (`RemoteEngine`), through
what `TextEngine` says.
"""

from . import passages  # coherence on a real passage, read with a window: passages.for_model, passages.reading
from .capabilities import runnable, supported
from .decoding import STOP_REASONS, Candidate, Decoder, Prompt, Step
from .detokenize import TextStream
from .errors import ModelLoadError, NotEnoughMemoryError, PrecisionUnavailableError, SettingsError, StudioError
from .generation import Engine
from .hub import SMALLEST as SMALLEST_MODEL
from .hub import cached_models, look_ahead
from .loading import load, resolve_device
from .memory import GB, MB, available_bytes, format_bytes
from .records import SWEEP_CSV_COLUMNS, memory_csv, record_json, run_record, settings_from_record, sweep_csv, sweep_rows
from .remote import (
    BackendDroppedError,
    BackendRefusedError,
    BackendUnreachableError,
    NotGPT2Error,
    RemoteEngine,
    RemoteError,
)
from .scoring import Coherence, coherence
from .serving import LoadPlan, SharedModel, TurnQueue, plan_load
from .settings import SAMPLERS, TUTORIAL_PHRASE, GenerationSettings, max_window, parse_seed
from .shapes import DEFAULT_MODEL, DTYPE_CHOICES, KNOWN_MODELS, SHIPPED_MODEL, ModelShape, Precision
from .stats import RunStats, generated_text, memory_rows, reset_points
from .stepping import StepMode
from .text_engine import TextEngine

__all__ = [
    # loading a model, and what it will take
    "DEFAULT_MODEL",
    "DTYPE_CHOICES",
    "KNOWN_MODELS",
    "ModelShape",
    "Precision",
    "load",
    "plan_load",
    "LoadPlan",
    "SharedModel",
    "TurnQueue",
    "resolve_device",
    # a GPT-2 served elsewhere (vLLM, llama.cpp's server), with the same stream()
    "RemoteEngine",
    "cached_models",
    "look_ahead",
    "SHIPPED_MODEL",
    "SMALLEST_MODEL",
    "runnable",
    "supported",
    # generating: what the page needs of any engine (TextEngine), and the local one
    "TextEngine",
    "Engine",
    "GenerationSettings",
    "SAMPLERS",
    "TUTORIAL_PHRASE",
    "max_window",
    "parse_seed",
    "Decoder",
    "StepMode",
    "Step",
    "Candidate",
    "Prompt",
    "STOP_REASONS",
    "TextStream",
    # what a run was: numbers, records, coherence
    "RunStats",
    "generated_text",
    "memory_rows",
    "reset_points",
    "run_record",
    "record_json",
    "memory_csv",
    "settings_from_record",
    "sweep_rows",
    "sweep_csv",
    "SWEEP_CSV_COLUMNS",
    "Coherence",
    "coherence",
    "passages",
    # memory, in the units the page shows
    "GB",
    "MB",
    "available_bytes",
    "format_bytes",
    # errors: every one a StudioError, with a message to show as it is
    "StudioError",
    "ModelLoadError",
    "NotEnoughMemoryError",
    "PrecisionUnavailableError",
    "SettingsError",
    "RemoteError",
    "BackendUnreachableError",
    "NotGPT2Error",
    "BackendRefusedError",
    "BackendDroppedError",
]
