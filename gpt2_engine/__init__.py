"""gpt2_engine: run GPT-2 token by token, with top-p sampling, a KV cache and a context window N.

    import gpt2_engine
    engine = gpt2_engine.load("gpt2-xl")                      # or a hub id, or a local folder
    for step in engine.stream("The cat sat", max_new_tokens=20, top_p=0.7, window=50):
        print(step.text, end="", flush=True)
    engine.speak("The cat sat")                              # the tutorial's API: the whole text

Knows nothing of Streamlit: the page (app.py) and the command line (python -m gpt2_engine) use it.
"""

from .errors import ModelLoadError, NotEnoughMemoryError, PrecisionUnavailableError, SettingsError, StudioError
from .generation import STOP_REASONS, Candidate, Engine, Prompt, Step
from .loading import DEFAULT_MODEL, DTYPE_CHOICES, KNOWN_MODELS, ModelShape, load
from .scoring import Coherence, coherence
from .settings import SAMPLERS, GenerationSettings, max_window, parse_seed
from .stepping import StepMode

__all__ = [
    "STOP_REASONS",
    "Candidate",
    "Coherence",
    "StepMode",
    "coherence",
    "DEFAULT_MODEL",
    "DTYPE_CHOICES",
    "KNOWN_MODELS",
    "SAMPLERS",
    "Engine",
    "GenerationSettings",
    "ModelLoadError",
    "ModelShape",
    "NotEnoughMemoryError",
    "PrecisionUnavailableError",
    "Prompt",
    "SettingsError",
    "Step",
    "StudioError",
    "load",
    "max_window",
    "parse_seed",
]
