"""User-facing failures, in one place so callers and tests import them from one module.

Anything raised as a :class:`FlowerExpError` is the user's to fix (bad config, missing
data, corrupt file, a configuration too big for the device): the CLI prints its message on
one line and exits 2, no traceback. Everything else is a bug and keeps its traceback, except
:class:`Interrupted` (a stop signal), which exits ``128 + signum``.

No project imports: every module may raise these.
"""

from __future__ import annotations

import signal


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


class MemoryTooLarge(FlowerExpError):
    """The configuration clearly cannot fit in the memory of the device (refused up front)."""


class OutOfMemory(FlowerExpError):
    """Training ran out of memory (the estimate let it through)."""


class NonFiniteLoss(FlowerExpError):
    """The training loss became NaN or infinite."""


class RecordingFailed(FlowerExpError):
    """A run's results could not be recorded: the tracking server is unreachable, the store or
    the artifact folder is full or unwritable. An environment problem, not the configuration's:
    a sweep marks the trial FAILED, queues it again and stops (rerun once it is fixed)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class Interrupted(KeyboardInterrupt):
    """A sweep or run stopped by Ctrl-C, SIGTERM or SIGHUP (``signals.STOP_SIGNALS``); a
    KeyboardInterrupt, so that everything that marks an interrupted trial or run on Ctrl-C does
    so for all of them. Processes exit with ``128 + signum``, the shell's status for a death by
    that signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
