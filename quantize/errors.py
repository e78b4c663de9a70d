"""Faults a user of the offline tool can cause and fix; the CLI prints them as one line and exits 2."""

from __future__ import annotations

from edge.contract import UserError


class QuantizeError(UserError):
    """A data set, teacher, checkpoint or option is missing, corrupt or inconsistent."""
