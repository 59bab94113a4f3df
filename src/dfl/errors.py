"""The one error type users see.

Everything that is the user's to fix (a missing or corrupt file, a bad config key, a layer
whose shapes do not fit, a diverged run) raises `DflError`. The CLI prints its message on one
line and exits with `exit_code`; nothing else is allowed to escape as a traceback.
"""

from __future__ import annotations


class DflError(Exception):
    """A problem the user can fix, with a one-line message that says what and how."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(DflError):
    """A config key that is unknown, mistyped or out of range."""


class DataError(DflError):
    """A data file that is missing, corrupt or fails its checksum."""


class ShapeError(DflError):
    """A layer that cannot take the shape of its input."""


class TrainingDiverged(DflError):
    """A non-finite loss: the run stops and is recorded as failed."""

    exit_code = 3
