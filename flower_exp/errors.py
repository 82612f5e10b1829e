"""User-facing failures.

Anything raised as a :class:`FlowerExpError` is the user's to fix (bad config, missing
data, corrupt file): the CLI prints its message on one line and exits 2, no traceback.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FlowerExpError(Exception):
    """A user error: the message says what is wrong, where, and how to fix it."""

    exit_code = 2


class ConfigError(FlowerExpError):
    """A configuration file, key or value is invalid."""


class DataError(FlowerExpError):
    """A dataset is missing, malformed or corrupt."""


class LeakageError(DataError):
    """The same image appears in training data and in validation/test data."""


class MissingDependencyError(FlowerExpError):
    """An optional dependency is not installed."""
