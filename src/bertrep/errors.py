"""The one error type for input a user can fix: a data file, a parameter, a spec key, a
model name. Its message names the thing and the problem; command lines print it as one
line and exit 1, with no traceback (any other exception keeps its traceback)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message says which and why."""


class UnavailableError(InputError):
    """Input that could not be fetched (a hub model): another attempt may succeed, so a
    sweep retries it, where it does not retry other bad input."""
