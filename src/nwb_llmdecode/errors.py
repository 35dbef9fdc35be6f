"""Exception types of nwb-llmdecode.

Every error we raise on bad user input subclasses :class:`LLMDecodeError`, so the command
line can print it as one line and exit with status 2. Messages name the file, the object
inside it and what would fix the problem.
"""

from __future__ import annotations

__all__ = [
    "AlignmentError",
    "BackboneError",
    "ConfigError",
    "DataError",
    "LLMDecodeError",
    "MissingDependencyError",
    "NotFittedError",
    "OutputExistsError",
    "RemoteError",
    "SelectionError",
    "SourceError",
]


class LLMDecodeError(Exception):
    """Base class of the errors that are the user's to fix (exit code 2 on the CLI)."""

    exit_code = 2


class SourceError(LLMDecodeError, ValueError):
    """The source cannot be opened as NWB (missing, not HDF5, not NWB, truncated...)."""


class SelectionError(LLMDecodeError, ValueError):
    """A named series does not exist, or a default choice is ambiguous."""


class AlignmentError(LLMDecodeError, ValueError):
    """Behaviour and imaging cannot be put on one time base."""


class DataError(LLMDecodeError, ValueError):
    """The data are unusable as they are (NaN in activity, too few frames...)."""


class ConfigError(LLMDecodeError, ValueError):
    """An option has a value we cannot use."""


class BackboneError(LLMDecodeError, ValueError):
    """A backbone cannot be loaded or does not accept ``inputs_embeds``."""


class OutputExistsError(LLMDecodeError, FileExistsError):
    """The output exists and ``overwrite`` was not given."""


class RemoteError(LLMDecodeError, RuntimeError):
    """A remote source (DANDI, HTTP) failed after retries."""


class MissingDependencyError(LLMDecodeError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


class NotFittedError(LLMDecodeError, ValueError, AttributeError):
    """A decoder was used before ``fit`` (scikit-learn's ``NotFittedError`` contract)."""
