"""Write a self-contained export folder (docs/architecture.md, "Export format")::

    OUT/
      ensemble.json          format, class names, members (run, architecture, size, weight,
                             scores), where it came from (``info``), versions, created time
      members/<run_id>.keras the member models (loaded back with safe_mode=True)
      README.md              model card
      MLmodel, ensemble_pyfunc.py, conda.yaml, python_env.yaml, requirements.txt
                             an MLflow pyfunc model: ``mlflow.pyfunc.load_model(OUT)``

The MLflow files and the pyfunc class live in :mod:`flower_exp.export_pyfunc`.
``flower-exp predict`` never runs ``ensemble_pyfunc.py``.

The folder is built beside ``OUT`` and renamed into place: readers never see half an export,
a failure leaves nothing behind, and of two writers racing for a new ``OUT`` exactly one wins
(renaming a folder onto a non-empty folder fails).
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow

from .errors import FlowerExpError
from .export_format import (
    ENSEMBLE_FILE,
    FORMAT_VERSION,
    INFO_KEYS,
    MEMBERS_DIR,
    RUN_ID_RE,
    check_document,
    check_weights,
    load_export,
    load_export_document,
)

# Exports written before export_pyfunc existed run `from flower_exp.export import EnsemblePyfunc`
# in their ensemble_pyfunc.py: this import keeps them loading.
from .export_pyfunc import EnsemblePyfunc  # noqa: F401
from .export_pyfunc import PYFUNC_CODE_FILE, save_pyfunc

README_FILE = "README.md"
DEFAULT_REGISTRY_EXPERIMENT = "flower-exp-exports"


@dataclass
class ExportMember:
    """A model to put in the export, with its weight in the ensemble."""

    run_id: str
    architecture: str
    image_size: int
    normalization: str
    weight: float
    model_path: str  # source .keras file (copied into the export)
    scores: dict[str, float] = field(default_factory=dict)  # e.g. val_macro_f1, holdout_macro_f1


def write_export(
    out_dir: str,
    *,
    members: list[ExportMember],
    class_names: list[str],
    info: dict,
    force: bool = False,
    register_name: str | None = None,
    tracking_uri: str | None = None,
    verify: bool = True,
) -> str:
    """Write the export folder ``out_dir`` atomically and return its absolute path.

    ``info`` keys (experiment, study, method, holdout, ...; see ``export_format.INFO_KEYS``) go to
    the top level of ``ensemble.json``. An existing ``out_dir`` is refused unless ``force``
    (then swapped out in one rename); a file there is always refused. ``verify`` loads the
    finished folder back with :func:`load_export` before it is moved into place. With
    ``register_name`` the export is also logged to ``tracking_uri`` and registered in the MLflow
    model registry under that name.
    """
    out = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    _check_target(out, force)
    doc = _document(members, class_names, info, str(out / ENSEMBLE_FILE))
    for m in members:
        if not os.path.isfile(m.model_path):
            raise FlowerExpError(f"{m.model_path}: model file of member {m.run_id} does not exist")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerExpError(f"{out_dir}: cannot create folder {out.parent} ({exc.strerror})") from None

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        save_pyfunc(tmp)  # first: MLflow wants an empty (or absent) folder
        (tmp / MEMBERS_DIR).mkdir()
        for m in members:
            target = tmp / MEMBERS_DIR / f"{m.run_id}.keras"
            try:
                shutil.copy2(m.model_path, target)
            except OSError as exc:
                raise FlowerExpError(f"{out_dir}: cannot copy {m.model_path} ({exc.strerror or exc}); nothing written") from None
        _write_json(tmp / ENSEMBLE_FILE, doc)
        (tmp / README_FILE).write_text(model_card(doc, out.name), encoding="utf-8")
        if verify:
            try:
                load_export(str(tmp))
            except FlowerExpError as exc:
                message = str(exc).replace(str(tmp), str(out))
                raise FlowerExpError(f"{out_dir}: not written, the export would not load: {message}") from None
        _commit(tmp, out, force)
    except OSError as exc:  # disk full, permissions: the user's to fix, and nothing was written
        raise FlowerExpError(f"{out_dir}: cannot write the export ({exc.strerror or exc}); nothing written") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    if register_name:
        try:
            register_export(str(out), register_name, tracking_uri=tracking_uri, experiment=info.get("experiment"))
        except FlowerExpError as exc:
            raise FlowerExpError(f"{out}: exported, but registering it as {register_name!r} failed: {exc}") from None
    return str(out)


# --------------------------------------------------------------------------- content


def _document(members: list[ExportMember], class_names: list[str], info: dict, where: str) -> dict[str, Any]:
    """The ``ensemble.json`` document, validated by the same schema the loader uses."""
    if not members:
        raise FlowerExpError("an export needs at least one member")
    reserved = {"format_version", "class_names", "members", "versions", "created"} & set(info)
    if reserved:
        raise FlowerExpError(f"info key(s) {sorted(reserved)} are written by flower-exp itself")
    unknown = sorted(set(info) - set(INFO_KEYS))
    if unknown:
        raise FlowerExpError(
            f"info key(s) {unknown} are not part of ensemble.json format {FORMAT_VERSION}; known: {', '.join(INFO_KEYS)}"
        )
    from .models import list_models, normalization_for

    for m in members:
        if not isinstance(m.run_id, str) or not RUN_ID_RE.match(m.run_id):
            raise FlowerExpError(f"run id {m.run_id!r}: cannot name a member file (letters, digits, '-', '_', '.')")
        # A wrong normalization would not fail anywhere: it would just predict garbage.
        if m.architecture in list_models() and m.normalization != normalization_for(m.architecture):
            raise FlowerExpError(
                f"member {m.run_id}: normalization {m.normalization!r} does not match {m.architecture} "
                f"(expects {normalization_for(m.architecture)!r})"
            )
        if isinstance(m.image_size, bool) or not isinstance(m.image_size, int) or m.image_size <= 0:
            raise FlowerExpError(f"member {m.run_id}: image_size must be a positive integer, got {m.image_size!r}")
    check_weights([m.weight for m in members], "export")
    # The tolerance lets optimiser output such as 0.9999999 through; store an exact sum of 1.
    total = float(sum(m.weight for m in members))
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "members": [
            {
                "run_id": m.run_id,
                "architecture": m.architecture,
                "image_size": m.image_size,
                "normalization": m.normalization,
                "weight": float(m.weight) / total,
                "path": f"{MEMBERS_DIR}/{m.run_id}.keras",
                "scores": {str(k): _finite(v) for k, v in m.scores.items()},
            }
            for m in members
        ],
        **_json_safe(info),
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    check_document(doc, where)
    return doc


def _finite(value: Any) -> float | None:
    # Strict JSON has no NaN: an unknown score is null.
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """``info`` as strict JSON: numpy scalars unwrapped, NaN/inf as null, tuples as lists."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite(value)
    return str(value)


def versions() -> dict[str, str]:
    """Versions of the packages an export depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"flower-exp": __version__}
    for key, dists in (
        ("tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
        ("keras", ("keras",)),
        ("mlflow", ("mlflow",)),
        ("efficientnet", ("efficientnet",)),
    ):
        for dist in dists:
            try:
                out[key] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    import json

    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def model_card(doc: dict[str, Any], name: str) -> str:
    """README.md of an export, from its ``ensemble.json`` document."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "n/a" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    members = doc["members"]
    classes = doc["class_names"]
    score_keys = sorted({k for m in members for k in m["scores"]})
    kind = "single model" if len(members) == 1 else f"weighted ensemble of {len(members)} models"
    lines = [
        f"# {name}: flower classifier",
        "",
        f"A {kind} (Keras) that classifies a photo into one of {len(classes)} flower classes, "
        f"exported by flower-exp {doc['versions'].get('flower-exp', '?')} on {doc['created']}. "
        "Each member sees the image center-cropped to a square and resized to its own image size; "
        "the prediction is the weighted average of the members' class probabilities.",
        "",
    ]
    origin = [(k, doc.get(k)) for k in ("experiment", "study", "method", "ensemble_run_id") if doc.get(k)]
    if origin:
        lines += ["Source: " + ", ".join(f"{k} `{v}`" for k, v in origin) + ".", ""]
    lines += [
        "## Members",
        "",
        "| run | architecture | image size | normalization | weight | " + " | ".join(score_keys) + " |",
        "|---|---|---|---|---|" + "---|" * len(score_keys),
    ]
    for m in members:
        scores = " | ".join(cell(m["scores"].get(k)) for k in score_keys)
        lines.append(
            f"| {cell(m['run_id'])} | {cell(m['architecture'])} | {m['image_size']} | {m['normalization']} | "
            f"{m['weight']:.4f} | {scores} |"
        )
    lines.append("")
    holdout = doc.get("holdout") or {}
    lines += ["## Held-out score", ""]
    if holdout.get("ensemble_macro_f1") is not None or holdout.get("best_single_macro_f1") is not None:
        wins = holdout.get("ensemble_wins")
        verdict = "" if wins is None else (" The ensemble wins." if wins else " The ensemble does not beat its best member.")
        lines += [
            f"Macro-F1 on held-out validation data (not used to choose the weights): ensemble "
            f"{cell(holdout.get('ensemble_macro_f1'))} vs best single member {cell(holdout.get('best_single_macro_f1'))} (the member best on the fitting half, scored on the other).{verdict}",
            "",
        ]
    else:
        lines += ["No held-out comparison was recorded for this export.", ""]
    lines += [
        "## Classes",
        "",
        f"{len(classes)} classes, in label order (label index = position): "
        + ", ".join(f"{i} {cell(c)}" for i, c in enumerate(classes)),
        "",
        "## How to predict",
        "",
        "```",
        f"flower-exp predict {name} image.jpg https://example.org/flower.jpg   # top classes per image",
        f"flower-exp predict {name} --test --out submission.csv             # competition test split",
        "```",
        "",
        "From Python, through MLflow (column `image`: file paths or image bytes; the result has",
        "`label`, `label_index`, `probability`, `error` and one probability column per class):",
        "",
        "```python",
        "import mlflow.pyfunc, pandas as pd",
        f'model = mlflow.pyfunc.load_model("{name}")',
        'model.predict(pd.DataFrame({"image": ["rose.jpg"]}))',
        "```",
        "",
        f'or `flower_exp.predict("{name}", ["rose.jpg"])`.',
        "",
        "## Files",
        "",
        "- `ensemble.json`: members, weights, class names, scores, versions (read by flower-exp)",
        "- `members/*.keras`: the member models (loaded with Keras `safe_mode=True`)",
        f"- `MLmodel`, `{PYFUNC_CODE_FILE}`, `requirements.txt`, `conda.yaml`, `python_env.yaml`: MLflow pyfunc wrapper",
        "",
        "## Versions",
        "",
        *[f"- {k} {v}" for k, v in doc["versions"].items()],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def _check_target(out: Path, force: bool) -> None:
    if out.is_symlink() and not out.exists():
        raise FlowerExpError(f"{out}: is a dangling symlink; remove it or choose another path")
    if out.exists() and not out.is_dir():
        raise FlowerExpError(f"{out}: exists and is not a folder; remove it or choose another path")
    if out.exists() and not force:
        raise FlowerExpError(f"{out}: already exists; pass --force to replace it")


def _commit(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` to ``out`` with renames (the commit point)."""
    if not force:
        try:
            os.rename(tmp, out)  # fails when another writer's non-empty folder (or a file) is there
        except OSError:
            if out.exists() or out.is_symlink():
                raise FlowerExpError(f"{out}: already exists (written meanwhile?); pass --force to replace it") from None
            raise
        return
    trash: Path | None = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(out, trash)
    except FileNotFoundError:
        trash = None  # nothing to replace (or another writer moved it away first)
    except NotADirectoryError:
        raise FlowerExpError(f"{out}: exists and is not a folder; remove it or choose another path") from None
    try:
        os.rename(tmp, out)
    except OSError:
        if trash is not None:
            try:
                os.rename(trash, out)  # put the old export back
                trash = None
            except OSError:
                pass  # another writer's export took the place: ours loses, theirs stays
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        raise FlowerExpError(f"{out}: replaced by another export at the same time; this one was not written") from None
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def register_export(export_dir: str, name: str, *, tracking_uri: str | None = None, experiment: str | None = None) -> Any:
    """Log ``export_dir`` as an MLflow model (in a run of ``experiment``) and register it as a
    new version of ``name``; returns the ``ModelVersion``.

    The uploaded folder is the export itself, so ``mlflow.pyfunc.load_model("models:/NAME/V")``
    behaves like loading the folder.
    """
    from .tracking import TAG_KIND, TAG_PREFIX, Tracker, TrackingTarget, redact

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    tracker = Tracker(TrackingTarget(uri, _local_artifact_root(uri)), experiment or DEFAULT_REGISTRY_EXPERIMENT)
    client = tracker.client
    doc = load_export_document(export_dir)
    parent = doc.get("ensemble_run_id")
    try:
        with tracker.run(f"export-{Path(export_dir).name}", {TAG_KIND: "export"}, parent) as run_id:
            tracker.log_params(
                run_id,
                {
                    "export_dir": export_dir,
                    "members": ",".join(m["run_id"] for m in doc["members"]),
                    "weights": ",".join(f"{m['weight']:.6f}" for m in doc["members"]),
                },
            )
            logged = client.create_logged_model(tracker.experiment_id, name=name, source_run_id=run_id, tags={TAG_KIND: "export"})
            client.log_model_artifacts(logged.model_id, export_dir)
            client.finalize_logged_model(logged.model_id, "READY")
            try:
                client.get_registered_model(name)
            except Exception:
                try:
                    client.create_registered_model(name, description="flower-exp ensemble export")
                except Exception:
                    client.get_registered_model(name)  # created meanwhile by another process
            # Source is the artifact location, not models:/<id>: the registry resolves models:/
            # through the process-global tracking URI, which may be another store.
            return client.create_model_version(
                name,
                source=logged.artifact_location,
                run_id=run_id,
                model_id=logged.model_id,
                tags={TAG_PREFIX + "export_dir": export_dir},
            )
    except FlowerExpError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FlowerExpError(f"MLflow {redact(uri)}: {redact(first)}") from None


def _local_artifact_root(uri: str) -> str | None:
    # A local sqlite store keeps artifacts beside the database, as the project default does
    # (mlruns/mlflow.db + mlruns/artifacts); a server decides for itself.
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).resolve().parent / "artifacts")
    return None
