"""Faults a user can cause and fix. The CLI prints them as one line and exits with status 2."""

# `edge run --once`: the source ended, but the broker did not take every event (they stay in the spool).
EXIT_EVENTS_UNSENT = 3


class UserError(Exception):
    """A fault with a one-line explanation naming the cause and the fix; never shown as a traceback."""

    exit_status = 2


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""


class ModelError(UserError):
    """The expression model or its card is missing, corrupt or inconsistent."""


class SourceError(UserError):
    """The frame source cannot be opened at all (a live source that drops later reconnects instead)."""
