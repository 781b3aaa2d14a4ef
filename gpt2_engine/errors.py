"""The engine's own errors: each one is a sentence a person can act on, never a traceback."""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error the engine raises on purpose; its message is meant to be shown as is."""


class SettingsError(StudioError, ValueError):
    """A generation setting is out of range. Names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field} = {value!r} is not allowed: {allowed}.")


class ModelLoadError(StudioError):
    """A model could not be loaded. Says what was tried and what to do next."""


class NotEnoughMemoryError(ModelLoadError):
    """Loading (or running) would take more memory than the machine has available."""


class PrecisionUnavailableError(ModelLoadError):
    """The asked-for precision does not run on this machine's CPU or GPU. Says why, and what does."""
