"""Helpers shared by the benchmark scripts: machine description, timing, result JSON.

Every script writes ``<out>/<name>.json`` with the same keys (see ``RESULT_KEYS``) so
``benchmarks/report.py`` can render them all into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"

RESULT_KEYS = (
    "name",
    "title",
    "goal",
    "goal_met",
    "measured",
    "command",
    "date",
    "machine",
    "smoke",
    "table_md",
    "plots",
    "notes_md",
)


def median(xs):
    """Median of a non-empty sequence of numbers."""
    return statistics.median(list(xs))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _package_versions() -> str:
    # Asked of a subprocess with importlib.metadata so a caller that never imports
    # TensorFlow (the start-up benchmark) does not pay for it here.
    from importlib import metadata

    parts = []
    for dist, label in (("tensorflow", "TF"), ("tensorflow-cpu", "TF"), ("keras", "Keras")):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        if not any(p.startswith(label + " ") for p in parts):
            parts.append(f"{label} {version}")
    return ", ".join(parts) or "TF not installed"


def _gpu() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"GPU: {out.splitlines()[0]}" if out else "no GPU"


def machine_info() -> str:
    """One line describing the machine: CPU model, cores, RAM, TF/Keras versions, GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()}, {cores} cores, {_ram_gib()}, Python {platform.python_version()}, {_package_versions()}, {_gpu()}"


def command_line() -> str:
    """The command that started this process, as typed from the repo root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def utc_now() -> str:
    """Current time as ISO-8601 UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_result(out_dir, **fields) -> Path:
    """Write ``<out_dir>/<name>.json`` with exactly the shared result keys.

    ``command``, ``date``, ``machine``, ``plots`` and ``notes_md`` get defaults; any other
    missing or unknown key is a programming error.
    """
    fields.setdefault("command", command_line())
    fields.setdefault("date", utc_now())
    fields.setdefault("machine", machine_info())
    fields.setdefault("plots", [])
    fields.setdefault("notes_md", "")
    missing = [k for k in RESULT_KEYS if k not in fields]
    unknown = [k for k in fields if k not in RESULT_KEYS]
    if missing or unknown:
        raise ValueError(f"result fields: missing {missing}, unknown {unknown}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{fields['name']}.json"
    path.write_text(json.dumps({k: fields[k] for k in RESULT_KEYS}, indent=2) + "\n")
    return path


def plot_path(out_dir, filename: str) -> tuple[Path, str]:
    """Where to write a plot next to the JSON, and the path to record in ``plots``.

    The recorded path is relative to the repo root when the output is inside it.
    """
    path = Path(out_dir).resolve() / filename
    try:
        rel = str(path.relative_to(REPO_ROOT))
    except ValueError:
        rel = str(path)
    return path, rel


def parse_args(description: str, argv=None) -> argparse.Namespace:
    """The ``[--smoke] [--out DIR]`` arguments every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run at the tiniest sizes (tests, CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for <name>.json and plots (default: benchmarks/results; "
        "with --smoke a new temporary folder, so a smoke run never replaces a result)",
    )
    args = parser.parse_args(argv)
    args.out = output_folder(args.out, args.smoke)
    return args


def output_folder(out: Path | None, smoke: bool) -> Path:
    """``out``, else benchmarks/results, or for a smoke run a new temporary folder (a smoke
    run must never replace a measured result)."""
    if out is not None:
        return out
    return Path(tempfile.mkdtemp(prefix="flower-exp-bench-smoke-")) if smoke else DEFAULT_OUT


def finish(args: argparse.Namespace, *, goal_met, draw=None, **fields) -> Path:
    """End a script run with ``args`` from ``parse_args``: plot, write the result, print the summary.

    ``goal_met`` is recorded as None in a smoke run. ``draw(path)``, if given, writes the
    plot ``<name>.png`` next to the JSON, in full runs only. ``fields`` are the other
    ``write_result`` keys (``smoke`` comes from ``args``). Prints ``measured`` and the JSON's path.
    """
    if draw is not None and not args.smoke:
        png, rel = plot_path(args.out, f"{fields['name']}.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        draw(png)
        fields["plots"] = [rel]
    path = write_result(args.out, goal_met=None if args.smoke else goal_met, smoke=args.smoke, **fields)
    print(f"{fields['measured']}\nwrote {path}")
    return path


def md_table(header, rows) -> str:
    """A markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def demo_data(sizes, per_class: int, classes: int = 6, shards: int = 4) -> str:
    """Demo data at ``sizes`` px, generated once into a cache folder outside the repo.

    ``$FLOWER_EXP_BENCH_CACHE`` picks the folder (default: the system temp dir).
    """
    import tempfile

    from flower_exp.data.demo import generate_demo

    base = Path(os.environ.get("FLOWER_EXP_BENCH_CACHE", Path(tempfile.gettempdir()) / "flower-exp-bench"))
    root = base / f"demo-{'-'.join(map(str, sizes))}-c{classes}-p{per_class}-s{shards}"
    if not (root / "classes.txt").exists():
        log(f"generating demo data at {list(sizes)} px into {root}")
        root.parent.mkdir(parents=True, exist_ok=True)
        generate_demo(str(root), classes=classes, per_class=per_class, sizes=tuple(sizes), seed=0, shards=shards, force=True)
    return str(root)


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries the summary)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json_atomic(path, data) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and a
    rename, so an interrupted write never leaves a half file that a resumed run would trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def code_version() -> str:
    """``git describe --always --dirty --tags`` of the repository ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
