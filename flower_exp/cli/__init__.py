"""Command line: a thin Typer layer over importable functions.

Each command parses flags, loads the config and calls one function. TensorFlow (and other
heavy libraries) are imported inside commands, so ``flower-exp --help`` starts instantly.
User errors (:class:`FlowerExpError`) print one line and exit 2; Ctrl-C exits 130, and a sweep
stopped by SIGTERM or SIGHUP exits 128 + the signal (143, 129).

``core`` holds the app and what the commands share; each other module registers one group of
commands on it when imported, here, so importing the package gives the whole app. Their order
is the order of ``flower-exp --help``.
"""

from __future__ import annotations

# Imported for their side effect, registering their commands on `app`, in --help's order.
from . import run_commands, servers, registry, config_commands, data_commands  # noqa: F401
from .core import app, main

__all__ = ["app", "main"]
