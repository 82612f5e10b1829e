"""Wall-clock budgets: ``--budget 30m`` for ``sweep`` and ``train``.

A budget is a deadline: the command is over by then, including the run that is training at
that moment. A run stops at the last epoch boundary that still leaves it time to finish (restore
its best epoch, score and save it, close its MLflow run), using the epoch times it has measured
and a reserve for that finishing work (measured on the previous run where there is one).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from .errors import FlowerExpError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([smh]?)\s*$", re.IGNORECASE)


def parse_minutes(text: str, option: str = "--budget") -> float:
    """``"90s"``, ``"30m"``, ``"1.5h"`` or a plain number of minutes, as minutes (> 0)."""
    match = _DURATION.match(str(text))
    if not match:
        raise FlowerExpError(
            f"{option} {text!r}: not a duration; allowed: a number with s, m or h (e.g. 90s, 30m, 1.5h; plain numbers are minutes)"
        )
    value = float(match.group(1)) * _UNITS[(match.group(2) or "m").lower()] / 60.0
    if not math.isfinite(value) or value <= 0:
        raise FlowerExpError(f"{option} {text!r}: must be more than 0")
    return value


def check_minutes(minutes: float | None, option: str = "--budget") -> float | None:
    """A budget given as a number (Python API): None, or finite and > 0."""
    if minutes is None:
        return None
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not math.isfinite(minutes) or minutes <= 0:
        raise FlowerExpError(f"{option} {minutes!r}: must be a number of minutes > 0")
    return float(minutes)


@dataclass(frozen=True)
class Deadline:
    """The moment (``time.time()``) a budgeted command must be over, and when it started."""

    at: float
    started: float

    @classmethod
    def in_minutes(cls, minutes: float) -> Deadline:
        now = time.time()
        return cls(at=now + 60.0 * minutes, started=now)

    def left_s(self) -> float:
        return self.at - time.time()

    def used_s(self) -> float:
        return time.time() - self.started

    def describe(self) -> str:
        """``"budget 12m04s of 30m used, 17m56s left"``."""
        total = self.at - self.started
        return f"budget {fmt_s(self.used_s())} of {fmt_s(total)} used, {fmt_s(max(0.0, self.left_s()))} left"


def fmt_s(seconds: float) -> str:
    """``95`` -> ``"1m35s"``; whole hours and minutes without the smaller units."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"
