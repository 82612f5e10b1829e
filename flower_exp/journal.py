"""Integrity of Optuna journal files, the default sweep storage.

Optuna's ``JournalFileBackend`` appends one JSON operation per line. Reading, it skips a last
line that lacks its newline (a writer killed mid-append, a full disk); but its next append
lands on that partial line, and from then on the journal no longer reads. So a journal is
checked before Optuna opens it: a file that is not a journal is refused, and a torn last line
is cut off, after a backup of the whole file, by processes that write. They do so holding the
lock Optuna takes for every append, so that an append in progress elsewhere is never taken for
a torn line, and they check again each time they take that lock to append.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation

from .errors import FlowerExpError

# Optuna writes json.dumps({"op_code": ..., "worker_id": ..., ...}, separators=(",", ":")):
# ASCII, and always this prefix.
_OP_PREFIX = b'{"op_code":'
_OP_CODES = frozenset(int(op) for op in JournalOperation)
_BLOCK = 1 << 16
# A reader may catch another process's append half-written: how long it waits for the rest
# before calling the last line torn.
_SETTLE_S = 1.0


def _to_stderr(message: str) -> None:
    """Where the sweep's own lines go (workers included), whoever opened the journal."""
    print(message, file=sys.stderr, flush=True)


def open_journal(path: Path, *, readonly: bool) -> JournalFileBackend:
    """An Optuna journal backend on ``path``, checked first (:func:`check`).

    To write (``readonly=False``), the file and its folder must be writable (Optuna locks the
    file by creating ``PATH.lock`` next to it) and a torn last line is cut off now; to read, the
    file must exist and is never changed: a torn last line, which Optuna skips, is reported.
    Either says so in one line on stderr."""
    torn = check(path)
    if readonly:
        if not path.exists():
            raise FlowerExpError(f"Optuna storage {path}: no such journal file")
        if torn and _still_torn(path):
            _to_stderr(
                f"Optuna journal {path}: the last line is torn ({torn} bytes of an interrupted write); Optuna skips it, "
                "and the next sweep cuts it off (keeping a backup of the file)"
            )
    else:
        _check_writable(path)
    backend = JournalFileBackend(str(path), lock_obj=RepairingLock(path, _to_stderr))
    if torn and not readonly:
        with get_lock_file(JournalFileSymlinkLock(str(path))):
            repair(path, _to_stderr)
    return backend


def check(path: Path) -> int:
    """The size in bytes of a torn last line of the journal ``path`` (0: none; a missing file is
    an empty journal). Raises :class:`FlowerExpError` for a directory, an unreadable file, or a
    file with a complete line that is not an Optuna journal operation."""
    if path.is_dir():
        raise FlowerExpError(
            f"Optuna storage {path}: is a directory; expected a journal file (e.g. {path / 'journal.log'}) "
            "or a sqlite:///, postgresql://, mysql:// URL"
        )
    try:
        with open(path, "rb") as f:
            if not _looks_like_operation(f.read(len(_OP_PREFIX))):
                raise _not_a_journal(path, 1, "not an Optuna journal operation")
            f.seek(0)
            return _check_lines(path, f)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise FlowerExpError(f"Optuna storage {path}: cannot read it ({exc.strerror or exc})") from None


def _check_lines(path: Path, f) -> int:
    """Every complete line of ``f`` an operation; returns the length of an unterminated last line."""
    for number, line in enumerate(f, start=1):
        if not line.endswith(b"\n"):
            if not _looks_like_operation(line):
                raise _not_a_journal(path, number, "not an Optuna journal operation")
            return len(line)
        reason = _operation_error(line)
        if reason is not None:
            raise _not_a_journal(path, number, reason)
    return 0


def _looks_like_operation(start: bytes) -> bool:
    """Whether ``start`` can be the beginning of a line Optuna wrote (or nothing at all)."""
    return start.isascii() and (start.startswith(_OP_PREFIX) or _OP_PREFIX.startswith(start))


def _operation_error(line: bytes) -> str | None:
    """Why ``line`` is not a journal operation as Optuna writes it, or None if it is one."""
    try:
        op = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return "not JSON"
    if not isinstance(op, dict) or type(op.get("op_code")) is not int or not isinstance(op.get("worker_id"), str):
        return "not an Optuna journal operation"
    if op["op_code"] not in _OP_CODES:
        return f"unknown op_code {op['op_code']}"
    return None


def _not_a_journal(path: Path, line: int, reason: str) -> FlowerExpError:
    what = "not an Optuna journal file" if line == 1 else "damaged Optuna journal"
    return FlowerExpError(
        f"Optuna storage {path}: {what} (line {line}: {reason}); nothing was changed. "
        "--storage takes a journal file written by flower-exp sweep, or a sqlite:///, postgresql://, mysql:// URL"
    )


def _check_writable(path: Path) -> None:
    """A sweep appends to ``path`` and creates ``PATH.lock`` beside it: both must be allowed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerExpError(f"Optuna storage {path}: cannot create its folder ({exc.strerror or exc})") from None
    if path.exists() and not os.access(path, os.W_OK):
        problem = "the file is read-only"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"its folder {path.parent} is read-only"
    else:
        return
    raise FlowerExpError(
        f"Optuna storage {path}: {problem}; a sweep appends to the journal and locks it with {path.name}.lock "
        "beside it (flower-exp status reads it as it is)"
    )


def _complete_end(f, size: int) -> int:
    """The offset just past the last newline of the open file ``f`` of ``size`` bytes (0: none)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        f.seek(start)
        cut = f.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _torn_tail(path: Path) -> tuple[int, int]:
    """(size, end of the last complete line) of ``path``; equal when the last line is whole."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0, 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return size, size
        return size, _complete_end(f, size)


def _still_torn(path: Path) -> bool:
    """Whether the last line of ``path`` stays torn for a moment (else it was being appended)."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        size, end = _torn_tail(path)
        if size == end or time.monotonic() >= deadline:
            return size != end
        time.sleep(0.1)


def repair(path: Path, log: Callable[[str], None]) -> None:
    """Cut a torn last line off the journal ``path``, after copying the whole file to
    ``PATH.torn-<UTC time>``; one line to ``log`` says so. Call it holding the journal lock."""
    size, end = _torn_tail(path)
    if size == end:
        return  # the append seen in progress has finished
    with open(path, "r+b") as f:
        f.seek(end)
        if not _looks_like_operation(f.read(len(_OP_PREFIX))):
            raise FlowerExpError(f"Optuna storage {path}: the last line is not an Optuna journal operation; nothing was changed")
        backup = _backup(path)
        f.truncate(end)
        os.fsync(f.fileno())
    log(
        f"Optuna journal {path}: cut off a torn last line ({size - end} bytes of an interrupted write); "
        f"the file as it was is in {backup}"
    )


def _backup(path: Path) -> Path:
    """A durable copy of ``path`` beside it, under a name not taken yet."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = path.with_name(f"{path.name}.torn-{stamp}")
    counter = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.torn-{stamp}-{counter}")
        counter += 1
    with open(path, "rb") as src, open(backup, "xb") as dst:
        while block := src.read(_BLOCK):
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return backup


class RepairingLock(JournalFileSymlinkLock):
    """Optuna's default journal lock, which ``JournalFileBackend`` takes for each append, and
    which once held also cuts off a torn last line, so that no append ever lands on one (a
    process may die mid-append while this one runs)."""

    def __init__(self, path: Path, log: Callable[[str], None]):
        super().__init__(str(path))
        self._path, self._log = path, log

    def acquire(self) -> bool:
        super().acquire()
        try:
            repair(self._path, self._log)
        except BaseException:
            self.release()
            raise
        return True
