"""Run every benchmark, then render the report.

    .venv/bin/python benchmarks/run_all.py [--smoke] [--out DIR]

Runs each ``benchmarks/<name>.py`` that exists (one process each, one after another: they
measure the machine, so never in parallel; ``search`` only with ``--smoke``, as its real run
takes hours over several sittings), and ``bash benchmarks/gpu.sh`` when a GPU is
present (with ``--smoke``: always, as its CPU check). Results go to ``--out`` (default
benchmarks/results); the report goes to BENCHMARKS.md at the repo root for the default
folder, else to ``<out>/BENCHMARKS.md`` so a smoke run never replaces the real report.
Exits non-zero if any benchmark failed (after running the others and the report).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OUT, REPO_ROOT, log, parse_args  # noqa: E402

SCRIPTS = ("pipeline", "overhead", "search", "memory", "startup")
# Run on their own, in several sittings; a full run_all reports their latest results.
SITTINGS = ("search",)


def commands(smoke: bool, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every benchmark to run, in order."""
    bench = REPO_ROOT / "benchmarks"
    flags = (["--smoke"] if smoke else []) + ["--out", str(out)]
    found = [
        (name, [sys.executable, str(bench / f"{name}.py"), *flags])
        for name in SCRIPTS
        if (bench / f"{name}.py").exists() and (smoke or name not in SITTINGS)
    ]
    for name in SITTINGS if not smoke else ():
        log(
            f"{name}: skipped (hours on real photos, resumable over several sittings); run "
            f"`FLOWER_EXP_BENCH_DATA=<photos> .venv/bin/python benchmarks/{name}.py` on its own"
        )
    has_gpu = shutil.which("nvidia-smi") is not None
    if (bench / "gpu.sh").exists() and (smoke or has_gpu):
        found.append(("gpu", ["bash", str(bench / "gpu.sh"), *flags]))
    elif (bench / "gpu.sh").exists():
        log("gpu: skipped (no nvidia-smi here); run `bash benchmarks/gpu.sh` on a GPU machine")
    return found


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    out = args.out.resolve()
    failed = []
    for name, cmd in commands(args.smoke, out):
        log(f"{name}: {' '.join(cmd)}")
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=REPO_ROOT).returncode
        log(f"{name}: exit {code} after {time.perf_counter() - start:.0f} s")
        if code != 0:
            failed.append(name)
    report = REPO_ROOT / "BENCHMARKS.md" if out == DEFAULT_OUT.resolve() else out / "BENCHMARKS.md"
    code = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "report.py"), "--results", str(out), "--output", str(report)],
        cwd=REPO_ROOT,
    ).returncode
    if code != 0:
        failed.append("report")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
