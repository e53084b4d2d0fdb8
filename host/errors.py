"""Errors meant for the user: the CLI prints their message without a traceback (exit code 2).

Raise UserError where a message names what was wrong and how to fix it (a bad flag, a missing
file, an unreachable device); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A user-facing failure: printed by the CLI without a traceback, exit code 2."""
