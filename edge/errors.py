"""Faults a user can cause and fix. The CLI prints them as one line and exits with status 2.

UserError and ModelError live in edge.contract, which the quantize tool shares; the daemon's own faults are here.
"""

from edge.contract import ModelError, UserError

__all__ = ["EXIT_EVENTS_UNSENT", "EXIT_MAY_CLEAR", "ConfigError", "ModelError", "SourceError", "UserError"]

# `edge run --once`: the source ended, but the broker did not take every event (they stay in the spool, or were
# lost with a spool whose disk stayed full).
EXIT_EVENTS_UNSENT = 3
# A fault found at start that may clear by itself (a full disk, no network for a first download): EX_TEMPFAIL,
# which systemd/edge-mood.service restarts, where 2 (a user error) it does not.
EXIT_MAY_CLEAR = 75


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""


class SourceError(UserError):
    """The frame source cannot be opened at all (a live source that drops later reconnects instead)."""
