"""Your own photos, end to end: the README's three commands on a folder of class subfolders.

A generated folder of JPEGs and PNGs (mixed sizes, one unreadable file, one class folder with a
space in its name) goes through `data import-folder --experiment`, the sweep that command
prints, the `best --export` the sweep prints and the two `predict` commands `best` prints, each
run as a real subprocess and each taken from the previous command's own "next:" line.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import assert_one_line_error

CLASSES = ["daisy", "red rose", "tulip"]
PER_CLASS = 12
# What the sweep adds to the command import-folder prints, to fit a test: 2 trials of 2 epochs.
SHRINK = ["--trials", "2", "--set", "epochs=2", "--quiet"]


def photo(label: int, index: int) -> Image.Image:
    """A small picture whose class shows in its colours and shape (a learnable toy problem)."""
    rng = np.random.default_rng(label * 1000 + index)
    size = [(48, 40), (64, 64), (40, 72), (90, 60)][index % 4]
    base = np.array([(200, 200, 60), (190, 30, 40), (120, 60, 160)][label], dtype=float)
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype("uint8")
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(0, 20, 2))
    shape = draw.ellipse if label != 2 else draw.rectangle
    shape([x, y, x + 20, y + 20], fill=(255, 255, 255) if label == 0 else (20, 120, 20))
    return image


@pytest.fixture
def photos(tmp_path) -> Path:
    """3 classes x 12 photos, JPEG and PNG of four sizes, one unreadable file."""
    root = tmp_path / "my photos"
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(PER_CLASS):
            if index % 3 == 0:
                photo(label, index).save(folder / f"IMG_{index:03d}.png", "PNG")
            else:
                photo(label, index).save(folder / f"IMG_{index:03d}.jpg", "JPEG", quality=90)
    (root / "tulip" / "IMG_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


def next_command(stdout: str, command: str, *having: str) -> list[str]:
    """The argv (after "flower-exp") of the printed next ``command`` that has all of ``having``."""
    for line in stdout.splitlines():
        for part in line.removeprefix("next:").split("|"):
            if not part.strip().startswith("flower-exp "):
                continue
            words = shlex.split(part.split("#")[0])[1:]
            if words[:1] == [command] and all(word in words for word in having):
                return words
    raise AssertionError(f"no next command {command!r} with {having} in:\n{stdout}")


def test_import_sweep_export_predict_as_the_readme_says(cli, photos, tmp_path):
    project = tmp_path / "project"
    project.mkdir()

    # 1. import-folder --experiment: a dataset, an experiment, and the sweep to run next.
    imported = cli("data", "import-folder", str(photos), "--experiment", "mine", cwd=project)
    assert imported.returncode == 0, imported.stderr
    assert "skipped" in imported.stderr and "IMG_broken.jpg" in imported.stderr
    assert "3 classes" in imported.stdout and "1 skipped" in imported.stdout
    config = (project / "experiments.yaml").read_text()
    assert "# mine: written by flower-exp data import-folder from" in config
    assert "  demo:" in config  # a new file starts from the packaged one: demo and petals stay available
    assert "data_dir: data/mine" in config
    assert (project / "data" / "mine" / "classes.txt").read_text().splitlines() == CLASSES
    sweep = next_command(imported.stdout, "sweep")
    assert sweep == ["sweep", "-e", "mine", "-s", "cpu", "--budget", "30m"]

    # 2. The sweep, shrunk to fit a test with --set; it prints the export command.
    swept = cli(*sweep, *SHRINK, cwd=project)
    assert swept.returncode == 0, swept.stderr[-3000:]
    counts = re.search(r"study mine-cpu: (\d+) complete, (\d+) pruned, (\d+) failed", swept.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 2 and counts[3] == "0", swept.stdout
    best = next_command(swept.stdout, "best")
    assert best == ["best", "-e", "mine", "--study", "mine-cpu", "--export", "exports/mine-cpu"]
    parent = _parent_params(project)
    assert json.loads(parent["set"]) == ["epochs=2"]
    assert json.loads(parent["fixed"])["epochs"] == 2  # --set wins over cpu.yaml's fixed epochs: 15

    # 3. best --export, then the two predictions it prints.
    exported = cli(*best, cwd=project)
    assert exported.returncode == 0, exported.stderr[-3000:]
    export = project / "exports" / "mine-cpu"
    predict_test = next_command(exported.stdout, "predict", str(export), "--test")
    predicted = cli(*predict_test, cwd=project)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(project / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    test_ids = [line.split(",")[0] for line in (project / "data" / "mine" / "test_labels.csv").read_text().splitlines()[1:]]
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == test_ids
    assert all(r[1] in {"0", "1", "2"} for r in rows[1:])

    image = photos / "red rose" / "IMG_001.jpg"
    predict_one = next_command(exported.stdout, "predict", str(export), "IMAGE_OR_URL")
    one = cli(*[str(image) if w == "IMAGE_OR_URL" else w for w in predict_one], "--top", "2", cwd=project)
    assert one.returncode == 0, one.stderr[-3000:]
    line = one.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{image}: ")
    top = line.removeprefix(f"{image}: ").split(", ")
    assert len(top) == 2 and all(entry.rsplit(" ", 1)[0] in CLASSES for entry in top), line


def _parent_params(project: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mine")
    runs = client.search_runs([experiment.experiment_id], "tags.`flower_exp.kind` = 'sweep'")
    assert len(runs) == 1
    return runs[0].data.params


# --------------------------------------------------------------------------- error paths: exit 2, one line, nothing written


def test_existing_experiment_is_not_replaced_without_force(cli, photos, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    # No experiments.yaml here yet: the packaged copy it would start from has a `demo`.
    result = cli("data", "import-folder", str(photos), "--experiment", "demo", cwd=project)
    assert_one_line_error(result, f"{project / 'experiments.yaml'}: experiments.demo: already exists (in the packaged", "--force")
    assert list(project.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--experiment", "my photos"], "--experiment 'my photos': not a valid experiment name; allowed: letters"),
        (["--experiment=-x"], "not a valid experiment name"),
        ([], "give --experiment NAME"),
    ],
)
def test_bad_import_arguments(cli, photos, tmp_path, args, fragment):
    project = tmp_path / "project"
    project.mkdir()
    assert_one_line_error(cli("data", "import-folder", str(photos), *args, cwd=project), fragment)
    assert list(project.iterdir()) == []


def test_broken_experiments_yaml_is_named_before_importing(cli, photos, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    config = project / "experiments.yaml"
    config.write_text("experiments:\n  a: {data_dir: .}\n  a: {data_dir: ..}\n")
    result = cli("data", "import-folder", str(photos), "--experiment", "mine", cwd=project)
    assert_one_line_error(result, f"{config}: line 3: duplicate key 'a'")
    assert sorted(p.name for p in project.iterdir()) == ["experiments.yaml"]
