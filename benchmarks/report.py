"""Render BENCHMARKS.md (repo root) from every ``benchmarks/results/*.json``.

    .venv/bin/python benchmarks/report.py [--results DIR] [--output FILE]

Whatever result files exist are rendered, in a fixed order for the known benchmarks and by
name for the others; a file that is not a benchmark result stops the report with its name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OUT, REPO_ROOT, RESULT_KEYS  # noqa: E402

ORDER = ("pipeline", "overhead", "search", "memory", "startup", "gpu")

INTRO = """\
# Benchmarks

Measured answers to the benchmarks issue: is the input pipeline near its limit, what does the
harness cost over a bare `model.fit`, does the search beat a stock tuner, does a sweep worker
leak memory, does the CLI start fast, and does a GPU run work. This file is generated — edit
`benchmarks/report.py` or rerun the benchmarks, not this file.

**Rerun everything** from the repository root (about {total} on 2 cores; `--smoke` for a
seconds-long check that writes elsewhere):

```bash
.venv/bin/python benchmarks/run_all.py            # every benchmark, then this report
.venv/bin/python benchmarks/<name>.py             # one benchmark -> benchmarks/results/<name>.json
.venv/bin/python benchmarks/report.py             # only re-render this file
```

**How to read the numbers.** They come from a shared, noisy machine (2 CPU cores used by
other jobs at the same time), so absolute times vary by tens of percent from run to run.
Every comparison is therefore made *within one run*: the compared variants alternate, are
repeated, and the figures are medians of the repeats; the ratios are what to trust, not the
seconds. Each section names the exact command, date and machine.
"""


def load_results(results_dir: Path) -> list[dict]:
    """Every result JSON in ``results_dir``, known benchmarks first in issue order."""
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}: not valid JSON ({exc})") from None
        missing = [k for k in RESULT_KEYS if not isinstance(data, dict) or k not in data]
        if missing:
            raise SystemExit(f"{path}: not a benchmark result (missing {', '.join(missing)})")
        results.append(data)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["name"], len(ORDER)), r["name"]))


def _met(value) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[value]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _image_link(plot: str, output: Path) -> str:
    """A plot path (relative to the repo root, or absolute) as a link relative to ``output``."""
    target = Path(plot) if Path(plot).is_absolute() else REPO_ROOT / plot
    return Path(os.path.relpath(target, output.resolve().parent)).as_posix()


def render(results: list[dict], output: Path) -> str:
    """The markdown of BENCHMARKS.md for ``results``, image links relative to ``output``."""
    lines = [INTRO.format(total="25 minutes")]
    if not results:
        lines.append("No results yet: run the benchmarks above.\n")
        return "\n".join(lines)
    lines += ["## Summary", "", "| benchmark | goal | measured | met? |", "|---|---|---|---|"]
    for r in results:
        title = f"[{_cell(r['title'])}](#{_anchor(r['title'])})"
        smoke = " (smoke run)" if r["smoke"] else ""
        lines.append(f"| {title}{smoke} | {_cell(r['goal'])} | {_cell(r['measured'])} | {_met(r['goal_met'])} |")
    lines.append("")
    for r in results:
        lines += [f"## {r['title']}", ""]
        if r["smoke"]:
            lines += ["> Smoke run: tiny sizes, numbers mean nothing.", ""]
        lines += [
            f"- **Goal:** {r['goal']}",
            f"- **Measured:** {r['measured']}",
            f"- **Goal met:** {_met(r['goal_met'])}",
            f"- **Command:** `{r['command']}`",
            f"- **Date:** {r['date']}",
            f"- **Machine:** {r['machine']}",
            "",
        ]
        if r["table_md"].strip():
            lines += [r["table_md"].strip(), ""]
        for plot in r["plots"]:
            lines += [f"![{r['title']}]({_image_link(plot, output)})", ""]
        if r["notes_md"].strip():
            lines += [r["notes_md"].strip(), ""]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_OUT, help="folder of <name>.json results")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="markdown file to write")
    args = parser.parse_args(argv)
    text = render(load_results(args.results), args.output)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
