"""Exceptions raised by vision-pipe.

Every error a user can cause derives from :class:`VisionPipeError` and says
what it is about (file, YAML key, stage) and how to fix it. The CLI prints the
message of a ``VisionPipeError`` without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VisionPipeError(Exception):
    """Base class of every error vision-pipe raises on purpose."""


class ConfigError(VisionPipeError):
    """A pipeline YAML (or dict / override) is invalid.

    ``location`` is ``"file:line"`` (or ``"<override>"``) and ``key`` the dotted
    path of the offending value, when known.
    """

    def __init__(self, message: str, *, location: str | None = None, key: str | None = None) -> None:
        self.location = location
        self.key = key
        prefix = ""
        if location:
            prefix += f"{location}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class PluginError(VisionPipeError):
    """A plugin failed to load, or registered something invalid."""


class StageError(VisionPipeError):
    """A stage could not be built or failed its contract; names the stage."""


class ContractError(StageError):
    """A stage broke its kind's contract (:mod:`vision_pipe.testing` checks); names the stage and the rule."""


class ChainError(VisionPipeError):
    """Two stages of a pipeline do not fit together; names both stages."""


class DataError(VisionPipeError):
    """Input data is missing, unreadable or inconsistent; names the file."""


class TrainingError(VisionPipeError):
    """A run was stopped because training went wrong (a non-finite loss or weights); names the epoch and step."""


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
