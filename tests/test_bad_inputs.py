"""Bad inputs through the real CLI: exit 2, one error line, and nothing written.

"Nothing written" is checked on the whole project folder (no ``mlruns/``: no Optuna study, no
MLflow run), the export folder and the working folder. Cases already proven elsewhere
without the "nothing written" part are repeated here only where that part matters; see
docs/reliability.md for the map. Also here: corrupt data under ``train``/``sweep`` (fault 7)
and two processes exporting to the same folder (fault 9).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error
from servers import QuietHandler, http_server

TINY = {
    "image_size": 32,
    "batch_size_per_replica": 16,
    "shuffle_buffer": 32,
    "architecture": "cnn",
    "cnn_width": 4,
    "cnn_depth": 1,
    "epochs": 1,
    "lr_rampup_epochs": 0,
    "lr_sustain_epochs": 0,
}
SWEEP = {
    "trials": 1,
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "none"},
    "params": {"lr_max": {"low": 1.0e-3, "high": 5.0e-3, "log": True}},
    "fixed": {"epochs": 1},
}
CLASSES = ["c0", "c1", "c2", "c3"]  # the demo_root fixture's 4 classes


def tree(*folders: Path) -> set[str]:
    """Every file and folder under ``folders`` (with sizes: a rewritten file counts too)."""
    out = set()
    for folder in folders:
        for path in folder.rglob("*"):
            out.add(f"{path}:{path.stat().st_size if path.is_file() else 'dir'}")
    return out


def write_project(folder: Path, data_dir: str, experiment: dict | None = None, sweep: dict | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    config = {"default": "tiny", "experiments": {"tiny": {"data_dir": data_dir, **TINY, **(experiment or {})}}}
    (folder / "experiments.yaml").write_text(yaml.safe_dump(config))
    (folder / "sweeps").mkdir(exist_ok=True)
    (folder / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump({**SWEEP, **(sweep or {})}, sort_keys=False))
    return folder


# --------------------------------------------------------------------------- config, sweep, storage

# name: (experiments.yaml text or None for the tiny one, sweep file text or None, extra argv, error fragment)
SWEEP_CASES = {
    "malformed_yaml": ("experiments:\n  tiny: [unclosed\n", None, [], "malformed YAML"),
    "unknown_key": ({"epochz": 2}, None, [], "experiments.tiny.epochz: unknown key"),
    "unknown_key_in_file": ({"augment": {"flipp": True}}, None, [], "experiments.tiny.augment.flipp: unknown key"),
    "wrong_type": ({"image_size": "big"}, None, [], "experiments.tiny.image_size: Input should be a valid integer"),
    "zero_epochs": ({"epochs": 0}, None, [], "experiments.tiny.epochs: Input should be greater than 0"),
    "negative_epochs": ({"epochs": -3}, None, [], "experiments.tiny.epochs: Input should be greater than 0"),
    "image_size_zero": ({"image_size": 0}, None, [], "experiments.tiny.image_size: Input should be greater than 0"),
    "epochs_range_zero": (None, "params: {epochs: {low: 0, high: 2}}\n", [], "params.epochs: value 0 is invalid"),
    "empty_search_space": (None, "params: {}\n", [], "params:"),
    "low_above_high": (None, "params: {lr_max: {low: 1.0, high: 0.1}}\n", [], "params.lr_max: low > high"),
    "unknown_architecture": ({"architecture": "resnet9000"}, None, [], "architecture"),
    "enqueue_wrong_type": (
        None,
        "params: {cnn_width: {choices: [4, 8]}}\nenqueue: [{cnn_width: '8'}]\n",
        [],
        "enqueue.0.cnn_width: '8' is not one of the choices; allowed: [4, 8]",
    ),
    "duplicate_key": (
        None,
        "params: {cnn_width: {choices: [4, 8]}}\nparams: {}\n",
        [],
        "bad.yaml: line 2: duplicate key 'params' (first on line 1)",
    ),
    "unknown_sampler": (None, "sampler: {name: cmaes}\nparams: {epochs: {low: 1, high: 2}}\n", [], "unknown sampler 'cmaes'"),
    "unknown_pruner": (None, "pruner: {name: asha}\nparams: {epochs: {low: 1, high: 2}}\n", [], "unknown pruner 'asha'"),
    "unknown_strategy": ({"strategy": "quantum"}, None, [], "strategy"),
    "unknown_experiment": (None, None, ["-e", "nope"], "experiments.nope: unknown experiment; allowed: tiny"),
    "timeout_negative": (None, None, ["--timeout", "-5"], "--timeout -5: must be a positive number of minutes"),
    "timeout_zero": (None, None, ["--timeout", "0"], "--timeout 0: must be a positive number of minutes"),
    "storage_in_memory": (None, None, ["--storage", "sqlite://"], "--storage sqlite://: an in-memory database is lost"),
    "study_name_with_quote": (None, None, ["--study", "bob's"], '--study "bob\'s": not a valid study name; allowed: letters'),
    "study_name_traversal": (None, None, ["--study", "../../etc/x"], "--study '../../etc/x': not a valid study name"),
    "storage_bad_scheme": (None, None, ["--storage", "redis://bob:hunter2@127.0.0.1/0"], "unknown scheme 'redis'"),
    # Port 1 on loopback refuses at once; a dropping host is bounded by connect_timeout.
    "storage_unreachable": (
        None,
        None,
        ["--storage", "postgresql://bob:hunter2@127.0.0.1:1/optuna"],
        "Optuna storage postgresql://bob:***@127.0.0.1:1/optuna: unavailable",
    ),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_bad_input_exits_2_and_writes_nothing(cli, tmp_path, demo_root, case):
    experiment, sweep_text, argv, fragment = SWEEP_CASES[case]
    project = write_project(tmp_path / "p", demo_root, experiment if isinstance(experiment, dict) else None)
    if isinstance(experiment, str):
        (project / "experiments.yaml").write_text(experiment)
    sweep = "tiny"
    if sweep_text is not None:
        (project / "sweeps" / "bad.yaml").write_text(sweep_text)
        sweep = "bad"
    before = tree(project)
    result = cli("sweep", "-s", sweep, "--trials", "1", *argv, cwd=project, timeout=120)
    assert_one_line_error(result, fragment)
    assert "hunter2" not in result.stderr + result.stdout
    assert tree(project) == before  # no mlruns/: no study, no MLflow run, no journal


def test_train_bad_input_writes_nothing(cli, tmp_path, demo_root):
    project = write_project(tmp_path / "p", demo_root)
    before = tree(project)
    assert_one_line_error(cli("train", "--set", "epochs=0", cwd=project), "epochs: Input should be greater than 0")
    assert_one_line_error(cli("train", "-e", "nope", cwd=project), "experiments.nope: unknown experiment")
    assert tree(project) == before


def test_export_dir_that_is_a_file(cli, tmp_path, demo_root):
    project = write_project(tmp_path / "p", demo_root)
    target = project / "exports"
    target.write_text("keep me")
    before = tree(project)
    for force in ([], ["--force"]):
        result = cli("best", "--export", str(target), *force, cwd=project)
        assert_one_line_error(result, f"{target}: exists and is not a folder")
    assert target.read_text() == "keep me"
    assert tree(project) == before  # refused before any MLflow store or ensemble run exists


# --------------------------------------------------------------------------- predict


def jpeg_bytes(size: int = 40) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size + 10), (200, 30, 90)).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class _Handler(QuietHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        routes = {
            "/flower.jpg": lambda: self.reply(200, jpeg_bytes(), "image/jpeg"),
            "/to-file": lambda: self.reply(302, b"", "text/plain", location="file:///etc/passwd"),
            "/to-ftp": lambda: self.reply(301, b"", "text/plain", location="ftp://127.0.0.1/x.jpg"),
            "/ten-gb": lambda: self.reply(200, b"x" * 100, "image/jpeg", length=10 * 2**30),
            "/bomb.png": lambda: self.reply(200, png_bomb(), "image/png"),
            "/text.jpg": lambda: self.reply(200, b"<html>not an image</html>", "image/jpeg"),
        }
        routes.get(self.path, lambda: self.reply(404, b"not found", "text/plain"))()


@pytest.fixture(scope="module")
def server():
    with http_server(_Handler) as url:
        yield url


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A one-member export (untrained 32 px cnn)."""
    from flower_exp import models
    from flower_exp.export import ExportMember, write_export

    folder = tmp_path_factory.mktemp("bad-inputs-model")
    model = models.create_model("cnn", num_classes=len(CLASSES), image_size=32, cnn_width=4, cnn_depth=1)
    model.save(folder / "m.keras")
    out = tmp_path_factory.mktemp("bad-inputs-export") / "exp"
    write_export(
        str(out),
        members=[ExportMember("m1", "cnn", 32, "unit", 1.0, str(folder / "m.keras"), {})],
        class_names=CLASSES,
        info={"experiment": "demo"},
        verify=False,
    )
    return out


def _local_file(folder: Path, name: str) -> str:
    path = folder / name
    if name == "notes.jpg":
        path.write_text("this is text, not a JPEG")
    elif name == "bomb.png":
        path.write_bytes(png_bomb())
    elif name == "sparse-3gb.jpg":
        path.touch()
        os.truncate(path, 3 * 2**30)  # costs no disk; must not be read into memory
    return str(path)


# name: (source; "{server}" is the local http server, "local:NAME" a file made in the work folder, fragment)
PREDICT_CASES = {
    "file_url": ("file:///etc/passwd", "unsupported URL scheme file:// (http/https only)"),
    "ftp_url": ("ftp://127.0.0.1/x.jpg", "unsupported URL scheme ftp:// (http/https only)"),
    "redirect_to_file": ("{server}/to-file", "redirect to file:///etc/passwd refused (http/https only)"),
    "redirect_to_ftp": ("{server}/to-ftp", "redirect to ftp://127.0.0.1/x.jpg refused (http/https only)"),
    "ten_gb_content_length": ("{server}/ten-gb", "10737418240 bytes is above the limit of 20971520 bytes; not downloaded"),
    "png_bomb_url": ("{server}/bomb.png", "refused as a decompression bomb"),
    "png_bomb_file": ("local:bomb.png", "refused as a decompression bomb"),
    "text_named_jpg": ("local:notes.jpg", "not an image (unrecognised format)"),
    "local_file_over_size_cap": ("local:sparse-3gb.jpg", "3221225472 bytes is above the limit of 20971520 bytes; not read"),
    "text_url_named_jpg": ("{server}/text.jpg", "not an image"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_predict_single_bad_input(cli, tmp_path, server, export_dir, case):
    source, fragment = PREDICT_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    if source.startswith("local:"):
        source = _local_file(work, source.removeprefix("local:"))
    source = source.format(server=server)
    before = tree(work, export_dir)
    result = cli("predict", str(export_dir), source, cwd=work, timeout=120)
    assert_one_line_error(result, source, fragment)
    assert tree(work, export_dir) == before


def test_predict_several_inputs_reports_bad_ones_and_predicts_the_rest(cli, tmp_path, server, export_dir):
    work = tmp_path / "work"
    work.mkdir()
    good = work / "flower.jpg"
    good.write_bytes(jpeg_bytes())
    sources = [str(good), _local_file(work, "notes.jpg"), "file:///etc/passwd", f"{server}/flower.jpg"]
    before = tree(work, export_dir)
    result = cli("predict", str(export_dir), *sources, "--top", "2", cwd=work, timeout=120)
    assert result.returncode == 1, result.stderr
    predicted = [line.split(": ")[0] for line in result.stdout.splitlines() if line.strip()]
    assert predicted == [sources[0], sources[3]]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        f"{sources[1]}: not an image (unrecognised format)",
        f"{sources[2]}: unsupported URL scheme file:// (http/https only)",
    ]
    assert tree(work, export_dir) == before


def _tampered(export_dir: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "tampered"
    shutil.copytree(export_dir, folder)
    doc = json.loads((folder / "ensemble.json").read_text())
    change(doc, folder)
    (folder / "ensemble.json").write_text(json.dumps(doc))
    return folder


def _lambda_member(doc: dict, folder: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x)).save(folder / doc["members"][0]["path"])


def _truncated_member(doc: dict, folder: Path) -> None:
    member = folder / doc["members"][0]["path"]
    member.write_bytes(member.read_bytes()[: member.stat().st_size // 2])


TAMPERED = {
    "truncated_member": (_truncated_member, "not a readable .keras file (truncated or not a zip archive)"),
    "path_traversal": (lambda d, f: d["members"][0].update(path="../../outside.keras"), "leaves the export folder"),
    "absolute_path": (lambda d, f: d["members"][0].update(path="/etc/passwd"), "is absolute; it must be relative"),
    "unknown_top_key": (lambda d, f: d.update(colour="red"), "colour: Extra inputs are not permitted"),
    "unknown_member_key": (lambda d, f: d["members"][0].update(shape="round"), "members.0.shape: Extra inputs are not permitted"),
    "lambda_layer": (_lambda_member, "cannot load model safely"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_predict_refuses_tampered_export(cli, tmp_path, export_dir, case):
    change, fragment = TAMPERED[case]
    folder = _tampered(export_dir, tmp_path, change)
    image = tmp_path / "flower.jpg"
    image.write_bytes(jpeg_bytes())
    before = tree(tmp_path)
    result = cli("predict", str(folder), str(image), cwd=tmp_path, timeout=120)
    assert_one_line_error(result, fragment)
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- fault 7: corrupt data


@pytest.fixture
def data_copy(tmp_path, demo_root) -> Path:
    """A private copy of the demo data's 32 px shards, to damage."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns("tfrecords-jpeg-64x64"))
    return root


def _first_train_shard(root: Path) -> Path:
    return sorted((root / "tfrecords-jpeg-32x32" / "train").glob("*.tfrec"))[0]


def _truncate(root: Path) -> Path:
    shard = _first_train_shard(root)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def _zero_bytes(root: Path) -> Path:
    shard = _first_train_shard(root)
    shard.write_bytes(b"")
    return shard


def _wrong_schema(root: Path) -> Path:
    """Records keyed ``label`` instead of ``class`` (another notebook's layout), same file name."""
    import tensorflow as tf

    shard = _first_train_shard(root)
    count = int(shard.stem.rsplit("-", 1)[1])
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for i in range(count):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg_bytes(32)])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"x{i}".encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return shard


def _with_one_record_changed(root: Path, index: int, *, image: bytes | None = None, label: int | None = None) -> Path:
    """The first train shard rewritten with record ``index``'s image and/or label replaced."""
    import tensorflow as tf

    from flower_exp.data import records

    shard = _first_train_shard(root)
    kept = [record for _, record in records.iter_shard(str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for i, record in enumerate(kept):
            changed = i == index
            writer.write(
                records.encode_example(
                    image if changed and image else record.image,
                    record.id,
                    label if changed and label is not None else record.label,
                )
            )
    return shard


def _odd_size_image(root: Path) -> Path:
    """Record 1 of a 32x32 shard holds a 32x42 image (a notebook that forgot to resize one)."""
    return _with_one_record_changed(root, 1, image=jpeg_bytes(32))


def _label_out_of_range(root: Path) -> Path:
    """Record 2 of a shard says class 99 (a shard from a dataset with more classes)."""
    return _with_one_record_changed(root, 2, label=99)


def _runs(project: Path) -> list:
    from mlflow.tracking import MlflowClient

    db = project / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_error_last_line(result, *fragments: str) -> None:
    """Exit 2 and the run's last stderr line is the one-line error (progress lines may precede it)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def test_cli_train_on_truncated_shard_names_the_file(cli, tmp_path, data_copy):
    shard = _truncate(data_copy)
    project = write_project(tmp_path / "p", str(data_copy))
    result = cli("train", "-q", cwd=project, timeout=180)
    assert_error_last_line(result, str(shard), "record ", "corrupt or truncated shard")
    runs = _runs(project)
    assert [r.info.status for r in runs] == ["FAILED"]  # the run exists, marked FAILED, no model
    assert str(shard) in runs[0].data.tags["flower_exp.error"]


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (_zero_bytes, "records but the shard holds an empty file"),
        (_wrong_schema, "record 0: no class in a labeled split"),
        (_odd_size_image, "record 1 ("),
        (_odd_size_image, "image is 32x42, not 32x32 like its folder"),
        (_label_out_of_range, "record 2 ("),
        (_label_out_of_range, "label 99 is outside [0, "),
    ],
    ids=["zero_bytes", "wrong_schema", "odd_size_names_record", "odd_size_says_sizes", "label_names_record", "label_says_range"],
)
def test_train_on_damaged_shard_names_the_file(tmp_path, data_copy, damage, fragment):
    from flower_exp.config import load_experiment
    from flower_exp.errors import DataError
    from flower_exp.train import run

    shard = damage(data_copy)
    project = write_project(tmp_path / "p", str(data_copy))
    with pytest.raises(DataError) as exc:
        run(load_experiment(config=project / "experiments.yaml"), progress=None)
    assert str(exc.value).startswith(f"{shard}: ") and fragment in str(exc.value) and "\n" not in str(exc.value)
    assert [r.info.status for r in _runs(project)] == ["FAILED"]


def test_sweep_on_truncated_shard_stops_naming_the_file(tmp_path, data_copy):
    import optuna

    from flower_exp.errors import DataError
    from flower_exp.study import SweepOptions, run_sweep

    shard = _truncate(data_copy)
    project = write_project(tmp_path / "p", str(data_copy), sweep={"trials": 3})
    with pytest.raises(DataError, match="corrupt or truncated shard") as exc:
        run_sweep(SweepOptions(sweep="tiny", config=project / "experiments.yaml", quiet=True), log=lambda m: None)
    assert str(exc.value).startswith(f"{shard}: ")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "mlruns" / "optuna" / "journal.log"))
    )
    trials = optuna.load_study(study_name="tiny-tiny", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL"]  # stopped at the first trial, not after 3
    assert not [r for r in _runs(project) if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags]
    # The sweep's parent run is closed FAILED with the reason, not left RUNNING.
    parent = next(r for r in _runs(project) if r.data.tags.get("flower_exp.kind") == "sweep")
    assert parent.info.status == "FAILED" and parent.data.tags["flower_exp.state"] == "failed"
    assert parent.data.tags["flower_exp.error"].startswith(f"{shard}: ")


def test_missing_split_names_the_folder(tmp_path, data_copy):
    from flower_exp.config import load_experiment
    from flower_exp.errors import DataError
    from flower_exp.train import run

    shutil.rmtree(data_copy / "tfrecords-jpeg-32x32" / "val")
    project = write_project(tmp_path / "p", str(data_copy))
    before = tree(project)
    with pytest.raises(DataError, match=r"tfrecords-jpeg-32x32/val: no \.tfrec shards \(split 'val' missing\)"):
        run(load_experiment(config=project / "experiments.yaml"), progress=None)
    assert tree(project) == before  # refused before a run exists


# --------------------------------------------------------------------------- fault 9: two exporting processes


def _export_process(out: str, model_path: str, run_id: str, barrier, results) -> None:
    from flower_exp import export as export_mod
    from flower_exp.errors import FlowerExpError

    real_commit = export_mod._commit

    def commit_together(tmp, target, force):
        barrier.wait()  # both folders complete, both past the up-front check: commit at once
        return real_commit(tmp, target, force)

    export_mod._commit = commit_together
    member = export_mod.ExportMember(run_id, "cnn", 32, "unit", 1.0, model_path, {})
    try:
        results.put((run_id, export_mod.write_export(out, members=[member], class_names=CLASSES, info={}, verify=False)))
    except FlowerExpError as exc:
        results.put((run_id, f"refused: {exc}"))


def test_two_processes_export_to_one_folder_exactly_one_wins(tmp_path, export_dir):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2, timeout=120), context.Queue()
    out = tmp_path / "exp"
    model = str(export_dir / "members" / "m1.keras")
    procs = [context.Process(target=_export_process, args=(str(out), model, r, barrier, results)) for r in ("runa", "runb")]
    for proc in procs:
        proc.start()
    outcome = dict(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    wins = [r for r, v in outcome.items() if v == str(out)]
    losses = [v for v in outcome.values() if v.startswith("refused: ")]
    assert len(wins) == 1 and len(losses) == 1, outcome
    assert "already exists" in losses[0]
    doc = json.loads((out / "ensemble.json").read_text())
    assert [m["run_id"] for m in doc["members"]] == wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # the loser left no temp folder


# --------------------------------------------------------------------------- a trial whose configuration is invalid


def test_trial_with_invalid_configuration_is_not_counted_and_stops_the_sweep(tmp_path, demo_root):
    """A sweep file that slips past validation (here: loaded without the experiment check, so
    ``epochs`` is sampled as a float) fails its first trial, which is not counted, and stops."""
    import optuna

    from flower_exp.config import load_experiment, load_sweep
    from flower_exp.errors import ConfigError
    from flower_exp.study.names import ATTR_CONFIG_ERROR
    from flower_exp.study.objective import _Objective
    from flower_exp.study.options import SweepSpec
    from flower_exp.study.scoring import _count
    from flower_exp.study.workers import _worker_loop

    project = write_project(tmp_path / "p", demo_root, sweep={"params": {"epochs": {"low": 1, "high": 2.0}}, "fixed": {}})
    sweep_path = project / "sweeps" / "tiny.yaml"
    exp = load_experiment(config=project / "experiments.yaml")
    spec = SweepSpec(
        config_path=str(project / "experiments.yaml"),
        experiment="tiny",
        sweep_path=str(sweep_path),
        study_name="s",
        storage_url=":memory:",
        tracking=None,
        parent_run_id="",
        total_trials=3,
        deadline=None,
        quiet=True,
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    objective = _Objective(spec, exp, load_sweep(sweep_path), None, lambda m: None, lambda e: None)
    with pytest.raises(ConfigError) as exc:
        _worker_loop(spec, study, objective, lambda m: None, "", poll_s=1)
    message = str(exc.value)
    assert message.startswith(f"{sweep_path}: trial 0") and "epochs" in message and "\n" not in message
    assert message.endswith("trial 0 stopped the sweep and is not counted")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # stopped at once, not after 3 trials
    assert ATTR_CONFIG_ERROR in study.trials[0].user_attrs
    assert _count(study)["failed_counted"] == 0  # a rerun after the fix still runs all 3
    assert not (project / "mlruns").exists()  # no MLflow run was started


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:", "sqlite:///file::memory:?cache=shared&uri=true"]
)
def test_in_memory_sqlite_storage_is_refused(url):
    from flower_exp.errors import FlowerExpError
    from flower_exp.study.storage import _refuse_in_memory_storage

    with pytest.raises(FlowerExpError, match="an in-memory database is lost when the sweep exits"):
        _refuse_in_memory_storage(url)
    _refuse_in_memory_storage("sqlite:///mlruns/optuna.db")  # a file is fine


def test_status_refuses_a_bad_study_name_before_reading_anything(tmp_path):
    from flower_exp.errors import ConfigError
    from flower_exp.study import study_status

    with pytest.raises(ConfigError, match=r"^--study 'a/../b': not a valid study name; allowed: letters"):
        study_status(study_name="a/../b", storage=str(tmp_path / "journal.log"))
    assert list(tmp_path.iterdir()) == []
