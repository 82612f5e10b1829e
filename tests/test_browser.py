"""What a user sees: `flower-exp ui` and `flower-exp dashboard` on a finished sweep, loaded in
headless Chromium (the Debian package; `.ci/run` installs it). The pages are JavaScript apps,
so only a real browser shows whether the trials and their searched parameters are there."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from projects import write_project
from servers import free_port, stop_group

SWEEP = {
    "trials": 2,
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "none"},
    "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}},
    "fixed": {"epochs": 1},
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

pytestmark = pytest.mark.slow


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser ({', '.join(BROWSERS)}); on Debian: apt-get install chromium")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, demo_root) -> Path:
    """A project with one finished two-trial sweep (study tiny-tiny)."""
    folder = write_project(tmp_path_factory.mktemp("browser"), demo_root, "tiny", sweep=SWEEP)
    done = subprocess.run(
        [sys.executable, "-m", "flower_exp.cli", "sweep", "-s", "tiny", "--quiet"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr
    return folder


def _serve(folder: Path, command: str, port: int, ready_path: str):
    """Start ``flower-exp COMMAND --port PORT``; return the process and its stderr once
    ``ready_path`` answers."""
    log = folder / f"{command}.log"
    # The servers exec or start helpers from the virtual environment's bin (uvicorn).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "400"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flower_exp.cli", command, "--port", str(port)],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2).read()
            return proc, log.read_text()
        except OSError:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(1)


def _rendered_text(url: str, folder: Path) -> str:
    """The page's text after its scripts ran (headless Chromium's DOM dump, tags stripped)."""
    argv = [
        _browser(),
        "--headless",
        "--disable-gpu",
        "--virtual-time-budget=30000",
        f"--user-data-dir={folder / 'profile'}",
        "--dump-dom",
        url,
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=180).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def _link(stderr: str, label: str) -> str:
    """The URL on the printed line that has ``label``."""
    found = [re.search(r"https?://\S+", line) for line in stderr.splitlines() if label in line]
    assert found and found[0], stderr
    return found[0].group(0)


def test_ui_compare_page_shows_the_trials_and_their_searched_parameters(swept):
    port = free_port()
    proc, stderr = _serve(swept, "ui", port, "/health")
    try:
        runs_text = _rendered_text(_link(stderr, "tiny: runs"), swept)
        # Model-training mode: the runs table with the sweep's parent run, not the GenAI overview.
        assert "Run Name" in runs_text and "tiny-tiny" in runs_text, runs_text[:2000]
        compare_text = _rendered_text(_link(stderr, "compare its 2 trials"), swept)
        assert "Comparing 2 Runs" in compare_text, compare_text[:2000]
        for name in ("trial-0", "trial-1", "search.lr_max", "best_val_macro_f1"):
            assert name in compare_text, (name, compare_text[:2000])
    finally:
        stop_group(proc)


def test_dashboard_shows_the_study_and_its_trials(swept):
    port = free_port()
    proc, stderr = _serve(swept, "dashboard", port, "/dashboard")
    try:
        study_url = _link(stderr, "tiny-tiny (2 trials)")
        assert study_url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/")
        text = _rendered_text(study_url + "/trials", swept)
        assert "tiny-tiny" in text and "lr_max" in text, text[:2000]
    finally:
        stop_group(proc)
