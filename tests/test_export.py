"""Export folders: layout, ensemble.json, model card, round trip, MLflow pyfunc and registry,
atomic writes (force, failures, concurrent writers) and refused inputs."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from flower_exp import export as export_mod
from flower_exp import models
from flower_exp.errors import FlowerExpError
from flower_exp.export import ExportMember, write_export
from flower_exp.export_format import load_export
from flower_exp.fetch import MAX_BYTES
from flower_exp.predictor import predict_arrays, predict_sources
from servers import stop_group

CLASSES = ["daisy", "rose", "tulip", "iris"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
INFO = {
    "experiment": "demo",
    "study": "demo-demo",
    "method": "optuna",
    "ensemble_run_id": "ens123",
    "selected_runs": ["runa", "runb", "rune", "other"],
    "holdout": {"ensemble_macro_f1": 0.8125, "best_single_macro_f1": 0.75, "ensemble_wins": True},
}


@pytest.fixture(scope="module")
def member_models(tmp_path_factory):
    """Three untrained models saved as .keras: cnn 32 px, cnn 64 px, efficientnet_ns_b0 32 px."""
    folder = tmp_path_factory.mktemp("models")
    specs = {
        "runa": ("cnn", 32, dict(cnn_width=4, cnn_depth=1)),
        "runb": ("cnn", 64, dict(cnn_width=4, cnn_depth=2)),
        "rune": ("efficientnet_ns_b0", 32, {}),
    }
    out = {}
    for run_id, (arch, size, kw) in specs.items():
        model = models.create_model(arch, num_classes=len(CLASSES), image_size=size, **kw)
        path = folder / f"{run_id}-model.keras"
        model.save(path)
        out[run_id] = (arch, size, model, str(path))
    return out


def export_members(member_models, weights=None) -> list[ExportMember]:
    weights = weights or {"runa": 0.5, "runb": 0.3, "rune": 0.2}
    return [
        ExportMember(
            run_id=run_id,
            architecture=arch,
            image_size=size,
            normalization=models.normalization_for(arch),
            weight=weights[run_id],
            model_path=path,
            scores={"val_macro_f1": 0.7 + i / 100, "holdout_macro_f1": float("nan") if run_id == "rune" else 0.7},
        )
        for i, (run_id, (arch, size, _model, path)) in enumerate(member_models.items())
        if run_id in weights
    ]


@pytest.fixture(scope="module")
def exported(member_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "petals-v1"
    written = write_export(str(out), members=export_members(member_models), class_names=CLASSES, info=INFO)
    assert written == str(out)
    return out


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(80, 60), (64, 64), (40, 90)]):
        path = folder / f"img{i}.{'png' if i == 1 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (folder / "notes.jpg").write_text("not an image")
    return paths + [str(folder / "notes.jpg")]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# --------------------------------------------------------------------------- layout


def test_layout_and_ensemble_json(exported):
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    assert files == [
        "MLmodel",
        "README.md",
        "conda.yaml",
        "ensemble.json",
        "ensemble_pyfunc.py",
        "members/runa.keras",
        "members/runb.keras",
        "members/rune.keras",
        "python_env.yaml",
        "requirements.txt",
    ]
    assert leftovers(exported.parent, exported.name) == []

    doc = json.loads((exported / "ensemble.json").read_text())
    assert doc["format_version"] == 1
    assert doc["class_names"] == CLASSES
    assert [m["run_id"] for m in doc["members"]] == ["runa", "runb", "rune"]
    assert doc["members"][0] == {
        "run_id": "runa",
        "architecture": "cnn",
        "image_size": 32,
        "normalization": "unit",
        "weight": 0.5,
        "path": "members/runa.keras",
        "scores": {"val_macro_f1": 0.7, "holdout_macro_f1": 0.7},
    }
    assert doc["members"][2]["normalization"] == "torch"
    assert doc["members"][2]["scores"]["holdout_macro_f1"] is None  # NaN is not JSON
    assert sum(m["weight"] for m in doc["members"]) == pytest.approx(1.0)
    for key, value in INFO.items():
        assert doc[key] == value
    assert set(doc["versions"]) >= {"flower-exp", "tensorflow", "keras", "mlflow"}
    created = datetime.fromisoformat(doc["created"].replace("Z", "+00:00"))
    assert created.utcoffset().total_seconds() == 0

    mlmodel = (exported / "MLmodel").read_text()
    assert "python_function" in mlmodel and "mlflow.pyfunc.loaders.code_model" in mlmodel
    requirements = (exported / "requirements.txt").read_text()
    # What a fresh environment needs to load the members: TensorFlow and Keras, pinned.
    assert "flower-exp" in requirements and "keras==" in requirements
    assert any(line.split("==")[0] in ("tensorflow", "tensorflow-cpu") for line in requirements.splitlines())
    assert "EnsemblePyfunc" in (exported / "ensemble_pyfunc.py").read_text()


def test_model_card(exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("# petals-v1: flower classifier")
    assert "4 flower classes" in card and "weighted ensemble of 3 models" in card
    assert "| runa | cnn | 32 | unit | 0.5000 | 0.7000 | 0.7000 |" in card
    assert "| rune | efficientnet_ns_b0 | 32 | torch | 0.2000 | n/a | 0.7200 |" in card
    assert "ensemble 0.8125 vs best single member 0.7500" in card
    assert "flower-exp predict petals-v1 image.jpg" in card
    assert "flower-exp predict petals-v1 --test" in card
    assert 'mlflow.pyfunc.load_model("petals-v1")' in card
    assert "0 daisy, 1 rose, 2 tulip, 3 iris" in card
    assert "- tensorflow " in card and "- keras " in card


def test_round_trip_equals_in_memory_weighted_average(exported, member_models):
    ens = load_export(str(exported))
    assert ens.class_names == CLASSES
    assert [(m.run_id, m.image_size, m.normalization) for m in ens.members] == [
        ("runa", 32, "unit"),
        ("runb", 64, "unit"),
        ("rune", 32, "torch"),
    ]
    assert ens.info["experiment"] == "demo"
    rng = np.random.default_rng(1)
    images = {32: rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), 64: rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)}
    got = predict_arrays(ens, images)

    expected = np.zeros((5, len(CLASSES)))
    for run_id, weight in (("runa", 0.5), ("runb", 0.3), ("rune", 0.2)):
        arch, size, model, _path = member_models[run_id]
        x = images[size].astype(np.float64) / 255.0
        if models.normalization_for(arch) == "torch":
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
        expected += weight * model.predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- MLflow


def test_pyfunc_matches_predict_sources(exported, image_files):
    import mlflow.pyfunc
    import pandas as pd

    pyfunc = mlflow.pyfunc.load_model(str(exported))
    good, notes = image_files[:3], image_files[3]
    with open(good[1], "rb") as fh:
        png_bytes = fh.read()
    frame = pyfunc.predict(pd.DataFrame({"image": [good[0], png_bytes, good[2], notes]}))
    assert list(frame.columns) == ["label", "label_index", "probability", "error", *CLASSES]
    assert len(frame) == 4

    expected = predict_sources(load_export(str(exported)), good, top=4)
    for row, item in zip(range(3), expected):
        probs = frame.loc[row, CLASSES].to_numpy(dtype=float)
        np.testing.assert_allclose(probs, item.probabilities, atol=1e-6)
        assert frame.loc[row, "label"] == item.top[0][0]
        assert frame.loc[row, "label_index"] == CLASSES.index(item.top[0][0])
        assert frame.loc[row, "probability"] == pytest.approx(item.top[0][1], abs=1e-6)
        assert frame.loc[row, "error"] is None
    assert "not an image" in frame.loc[3, "error"]
    assert frame.loc[3, "label_index"] == -1 and np.isnan(frame.loc[3, "probability"])

    # A plain list of paths works too; URLs are not fetched by a served model.
    listed = pyfunc.predict([good[0], "http://127.0.0.1:9/x.jpg"])
    np.testing.assert_allclose(listed.loc[0, CLASSES].to_numpy(dtype=float), expected[0].probabilities, atol=1e-6)
    assert "not fetched" in listed.loc[1, "error"]


def test_exports_written_before_export_pyfunc_still_load(exported, image_files, tmp_path):
    """Older exports' code file imports the pyfunc class from flower_exp.export."""
    import mlflow.pyfunc

    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    code = old / "ensemble_pyfunc.py"
    text = code.read_text()
    assert "from flower_exp.export_pyfunc import EnsemblePyfunc" in text
    code.write_text(text.replace("from flower_exp.export_pyfunc import", "from flower_exp.export import"))
    frame = mlflow.pyfunc.load_model(str(old)).predict([image_files[0]])
    assert frame.loc[0, "error"] is None and frame.loc[0, "label"] in CLASSES


def test_pyfunc_takes_base64_and_refuses_unreadable_input(exported, image_files):
    import base64

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    pyfunc = mlflow.pyfunc.load_model(str(exported))
    raw = Path(image_files[0]).read_bytes()
    encoded = base64.b64encode(raw).decode()
    frame = pyfunc.predict(pd.DataFrame({"image_base64": [encoded, "data:image/jpeg;base64," + encoded, "%%%"]}))
    expected = predict_sources(load_export(str(exported)), [image_files[0]], top=4)[0].probabilities
    for row in (0, 1):
        np.testing.assert_allclose(frame.loc[row, CLASSES].to_numpy(dtype=float), expected, atol=1e-6)
    assert frame.loc[2, "error"] == "image_base64 is not valid base64"
    # Nothing readable at all: an invalid-parameter error (HTTP 400 when served), naming why.
    with pytest.raises(MlflowException, match="no image could be read: row 0: .*not an image") as caught:
        pyfunc.predict(pd.DataFrame({"image_base64": [base64.b64encode(b"hello").decode()]}))
    assert caught.value.get_http_status_code() == 400


@pytest.mark.slow
def test_served_export_answers_base64_requests_on_loopback(exported, image_files, tmp_path):
    """A real `mlflow models serve --env-manager local` process and real HTTP requests."""
    import base64
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", str(exported), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # The server execs `uvicorn` from PATH, as in an activated virtual environment.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    url = f"http://127.0.0.1:{port}"

    def post(rows: list[str], column: str = "image_base64") -> tuple[int, dict]:
        body = json.dumps({"dataframe_split": {"columns": [column], "data": [[r] for r in rows]}}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(1)
        encoded = base64.b64encode(Path(image_files[0]).read_bytes()).decode()
        status, answer = post([encoded])
        assert status == 200, answer
        (row,) = answer["predictions"]
        expected = predict_sources(load_export(str(exported)), [image_files[0]], top=4)[0]
        assert row["label"] == expected.top[0][0] and row["probability"] == pytest.approx(expected.top[0][1], abs=1e-5)
        # A non-image and an oversized payload: 400 with the reason, no stack trace.
        too_big = "A" * (4 * (MAX_BYTES // 3) + 8)
        for rows, reason in (([base64.b64encode(b"not an image").decode()], "not an image"), ([too_big], "above the limit")):
            status, answer = post(rows)
            assert status == 400, answer
            assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and reason in answer["message"]
            assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
        # A file path on the server is not read for a request.
        status, answer = post([image_files[0]], column="image")
        assert status == 400 and "reads no file paths" in answer["message"], answer
    finally:
        stop_group(proc, timeout=30)
        log.close()


def test_register_in_sqlite_store(member_models, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    out = tmp_path / "exports" / "reg"
    members = export_members(member_models, {"runa": 0.6, "runb": 0.4})
    write_export(
        str(out), members=members, class_names=CLASSES, info={"experiment": "demo"}, register_name="flowers", tracking_uri=uri
    )
    write_export(
        str(out),
        members=members,
        class_names=CLASSES,
        info={"experiment": "demo"},
        force=True,
        register_name="flowers",
        tracking_uri=uri,
    )

    client = MlflowClient(tracking_uri=uri)
    versions = sorted(int(v.version) for v in client.search_model_versions("name='flowers'"))
    assert versions == [1, 2]
    version = client.get_model_version("flowers", "2")
    run = client.get_run(version.run_id)
    assert run.data.tags["flower_exp.kind"] == "export" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "demo"
    # Artifacts sit beside the database, as in the project's default store.
    assert (tmp_path / "mlruns" / "artifacts").is_dir()

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        registered = mlflow.pyfunc.load_model("models:/flowers/2")
    finally:
        mlflow.set_tracking_uri(previous)
    images = {32: np.zeros((1, 32, 32, 3), np.uint8), 64: np.zeros((1, 64, 64, 3), np.uint8)}
    ens = load_export(str(out))
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    frame = registered.predict([str(tmp_path / "black.png")])
    np.testing.assert_allclose(frame.loc[0, CLASSES].to_numpy(dtype=float), predict_arrays(ens, images)[0], atol=1e-6)


# --------------------------------------------------------------------------- atomic writes


def test_existing_dir_refused_without_force_replaced_with_force(member_models, tmp_path):
    out = tmp_path / "exp"
    write_export(str(out), members=export_members(member_models, {"runa": 1.0}), class_names=CLASSES, info={})
    with pytest.raises(FlowerExpError, match=r"already exists; pass --force to replace it"):
        write_export(str(out), members=export_members(member_models, {"runb": 1.0}), class_names=CLASSES, info={})
    assert json.loads((out / "ensemble.json").read_text())["members"][0]["run_id"] == "runa"

    write_export(str(out), members=export_members(member_models, {"runb": 1.0}), class_names=CLASSES, info={}, force=True)
    doc = json.loads((out / "ensemble.json").read_text())
    assert [m["run_id"] for m in doc["members"]] == ["runb"]
    assert sorted(p.name for p in (out / "members").iterdir()) == ["runb.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp or old folders left

    (tmp_path / "empty").mkdir()
    with pytest.raises(FlowerExpError, match="already exists"):
        write_export(str(tmp_path / "empty"), members=export_members(member_models, {"runa": 1.0}), class_names=CLASSES, info={})


def test_file_target_refused_even_with_force(member_models, tmp_path):
    target = tmp_path / "exp"
    target.write_text("keep me")
    for force in (False, True):
        with pytest.raises(FlowerExpError, match="exists and is not a folder"):
            write_export(
                str(target), members=export_members(member_models, {"runa": 1.0}), class_names=CLASSES, info={}, force=force
            )
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


@pytest.mark.parametrize("force", [False, True])
def test_failure_mid_write_leaves_nothing(member_models, tmp_path, monkeypatch, force):
    out = tmp_path / "exp"
    if force:
        write_export(str(out), members=export_members(member_models, {"runa": 1.0}), class_names=CLASSES, info={})
    copied = []
    real_copy2 = shutil.copy2

    def failing_copy2(src, dst, *args, **kwargs):
        if str(src).endswith(".keras"):
            if copied:
                raise OSError(28, "No space left on device")
            copied.append(src)
        return real_copy2(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", failing_copy2)
    with pytest.raises(FlowerExpError, match="No space left on device"):
        write_export(
            str(out), members=export_members(member_models, {"runa": 0.5, "runb": 0.5}), class_names=CLASSES, info={}, force=force
        )
    assert len(copied) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["exp"] if force else [])
    if force:  # the previous export is untouched
        assert [m["run_id"] for m in json.loads((out / "ensemble.json").read_text())["members"]] == ["runa"]


def test_concurrent_writers_exactly_one_wins(member_models, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    barrier = threading.Barrier(2, timeout=60)
    real_commit = export_mod._commit

    def commit_together(tmp, target, force):
        barrier.wait()  # both folders are complete and both writers passed the up-front check
        return real_commit(tmp, target, force)

    monkeypatch.setattr(export_mod, "_commit", commit_together)
    results: dict[str, object] = {}

    def writer(run_id: str) -> None:
        try:
            results[run_id] = write_export(
                str(out), members=export_members(member_models, {run_id: 1.0}), class_names=CLASSES, info={}, verify=False
            )
        except Exception as exc:  # collected and checked below
            results[run_id] = exc

    threads = [threading.Thread(target=writer, args=(r,)) for r in ("runa", "runb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wins = [r for r, v in results.items() if v == str(out)]
    losses = [v for v in results.values() if isinstance(v, FlowerExpError)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert "already exists" in str(losses[0])
    doc = json.loads((out / "ensemble.json").read_text())
    assert [m["run_id"] for m in doc["members"]] == wins
    assert sorted(p.name for p in (out / "members").iterdir()) == [f"{wins[0]}.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


# --------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    "weights,match",
    [
        ({"runa": 0.5, "runb": 0.4}, "weights sum to 0.9"),
        ({"runa": 1.2, "runb": -0.2}, "weight -0.2 is invalid"),
        ({"runa": float("nan"), "runb": 1.0}, "weight nan is invalid"),
    ],
)
def test_invalid_weights_refused(member_models, tmp_path, weights, match):
    with pytest.raises(FlowerExpError, match=match):
        write_export(str(tmp_path / "exp"), members=export_members(member_models, weights), class_names=CLASSES, info={})
    assert list(tmp_path.iterdir()) == []


def test_other_bad_inputs_refused(member_models, tmp_path):
    one = export_members(member_models, {"runa": 1.0})
    cases = [
        (dict(members=[], class_names=CLASSES, info={}), "at least one member"),
        (
            dict(members=one, class_names=CLASSES, info={"colour": "red"}),
            r"info key\(s\) \['colour'\] are not part of ensemble.json",
        ),
        (dict(members=one, class_names=CLASSES, info={"members": []}), "written by flower-exp itself"),
        (dict(members=one, class_names=["a", "a", "b", "c"], info={}), "class_names must be unique"),
        (dict(members=one, class_names=CLASSES[:3], info={}), "model outputs 4 classes but ensemble.json lists 3"),
    ]
    for kwargs, match in cases:
        with pytest.raises(FlowerExpError, match=match):
            write_export(str(tmp_path / "exp"), **kwargs)
    bad_id = ExportMember("../evil", "cnn", 32, "unit", 1.0, one[0].model_path)
    with pytest.raises(FlowerExpError, match="cannot name a member file"):
        write_export(str(tmp_path / "exp"), members=[bad_id], class_names=CLASSES, info={})
    wrong_norm = ExportMember("runa", "cnn", 32, "torch", 1.0, one[0].model_path)
    with pytest.raises(FlowerExpError, match="normalization 'torch' does not match cnn \\(expects 'unit'\\)"):
        write_export(str(tmp_path / "exp"), members=[wrong_norm], class_names=CLASSES, info={})
    missing = ExportMember("runz", "cnn", 32, "unit", 1.0, str(tmp_path / "nope.keras"))
    with pytest.raises(FlowerExpError, match="model file of member runz does not exist"):
        write_export(str(tmp_path / "exp"), members=[missing], class_names=CLASSES, info={})
    assert list(tmp_path.iterdir()) == []
