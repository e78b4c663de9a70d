"""Faults a user can cause and fix. The CLI prints them as one line and exits with status 2.

UserError and ModelError live in edge.contract, which the quantize tool shares; the daemon's own faults are here.
"""

from edge.contract import ModelError, UserError

__all__ = ["ConfigError", "ModelError", "SourceError", "UserError"]


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""


class SourceError(UserError):
    """The frame source cannot be opened at all (a live source that drops later reconnects instead)."""
