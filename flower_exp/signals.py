"""Stop signals: Ctrl-C, SIGTERM and SIGHUP end a sweep or a training run the same way.

SIGTERM is what ``timeout``, Slurm, Kubernetes and a shutting-down VM send, SIGHUP what a
closed terminal sends. Each becomes :class:`Interrupted` (a KeyboardInterrupt) in the main
thread, so everything that marks an interrupted trial or run on Ctrl-C marks it for all three.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Interrupted

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def exit_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a process stopped by ``exc`` (a plain KeyboardInterrupt is SIGINT's)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


@contextmanager
def interrupt_once() -> Iterator[None]:
    """Ctrl-C, SIGTERM or SIGHUP stops the sweep (:class:`Interrupted`); further ones while the
    interrupted trial, its MLflow run and the parent run are being marked are ignored, so an
    impatient second press cannot leave them half-written. A signal the caller ignores
    (``nohup``: SIGHUP, ``&``: SIGINT) stays ignored; previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler}
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    ours = [sig for sig, handler in previous.items() if handler is defaults.get(sig, signal.SIG_DFL)]

    def again(_signum, _frame) -> None:
        # A signal handler must not print(): it may interrupt a print of the main thread.
        os.write(2, b"still stopping: marking the interrupted trial and runs\n")

    def first(signum, _frame) -> None:
        for sig in ours:
            signal.signal(sig, again)
        raise Interrupted(signum)

    for sig in ours:
        signal.signal(sig, first)
    try:
        yield
    finally:
        for sig in ours:
            signal.signal(sig, previous[sig])
