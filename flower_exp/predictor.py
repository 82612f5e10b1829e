"""Load an export and predict: image files, http(s) URLs, arrays, or the competition test split.

An export (written by :mod:`flower_exp.export`) is a folder with ``ensemble.json`` and
``members/<run_id>.keras``. :func:`load_export` trusts nothing in it: the JSON is parsed
strictly against :class:`EnsembleFile`, member paths must stay inside the folder, and models
load through :func:`flower_exp.models.load_model` (``safe_mode=True``: no pickled Python code,
a ``Lambda`` layer is refused). Nothing from the export is executed.

Every member sees the image the way it was trained: center-cropped square, resized to its own
``image_size``, scaled by its own normalization. The ensemble's answer is the weighted average
of the members' softmax outputs; TTA averages each image with its left-right flip.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.client
import io
import json
import math
import os
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._imports import tensorflow
from .data.importer import decode_square
from .errors import DataError, FlowerExpError

FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
URL_SCHEMES = ("http", "https")
MAX_PIXELS = 40_000_000
MAX_BYTES = 20 * 2**20
_READ_CHUNK = 16384  # bytes per read of a download: the deadline is checked between reads
WEIGHT_TOLERANCE = 1e-6
# A run id becomes a file name (members/<run_id>.keras): letters, digits, '-', '_' and '.'.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PREDICT_CHUNK = 64  # sources decoded and predicted together (bounds memory for long lists)


# --------------------------------------------------------------------------- format


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MemberEntry(_Strict):
    """One member of ``ensemble.json``."""

    run_id: str = Field(pattern=RUN_ID_RE.pattern)
    architecture: str = Field(min_length=1)
    image_size: int = Field(gt=0)
    normalization: Literal["raw", "unit", "tf", "torch"]
    weight: float = Field(ge=0.0, allow_inf_nan=False)
    path: str = Field(min_length=1)
    scores: dict[str, float | None] = Field(default_factory=dict)


class EnsembleFile(_Strict):
    """The schema of ``ensemble.json`` (format 1).

    The first block is the format itself; the optional block holds what ``flower-exp best``
    records about where the ensemble came from (``info`` of :func:`flower_exp.export.write_export`).
    Unknown keys are refused, so a typo or a newer format cannot be half-understood.
    """

    format_version: Literal[1]
    class_names: list[str] = Field(min_length=1)
    members: list[MemberEntry] = Field(min_length=1)
    versions: dict[str, str]
    created: str

    experiment: str | None = None
    study: str | None = None
    method: str | None = None
    metric: str | None = None
    ensemble_run_id: str | None = None
    selected_runs: list[str] | None = None
    refit_of: dict[str, str] | None = None
    holdout: dict[str, float | bool | None] | None = None
    notes: str | None = None


INFO_KEYS = tuple(k for k in EnsembleFile.model_fields if k not in ("format_version", "class_names", "members", "versions", "created"))


def check_document(doc: dict[str, Any], where: str) -> EnsembleFile:
    """Validate an ``ensemble.json`` document (already parsed) beyond JSON syntax; ``where``
    names the file in the one-line error."""
    if not isinstance(doc, dict):
        raise FlowerExpError(f"{where}: expected a JSON object at the top level")
    if "format_version" not in doc:
        raise FlowerExpError(f"{where}: format_version is missing; not a flower-exp export")
    version = doc["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise FlowerExpError(
            f"{where}: unsupported format_version {version!r} (this flower-exp reads {FORMAT_VERSION}); "
            "upgrade flower-exp or re-export"
        )
    try:
        parsed = EnsembleFile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise FlowerExpError(f"{where}: {loc}: {err['msg']}") from None
    names = parsed.class_names
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise FlowerExpError(f"{where}: class_names must be unique, non-empty names")
    run_ids = [m.run_id for m in parsed.members]
    if len(set(run_ids)) != len(run_ids):
        raise FlowerExpError(f"{where}: members: run ids must be unique")
    check_weights([m.weight for m in parsed.members], where)
    return parsed


def check_weights(weights: Sequence[float], where: str) -> None:
    """Member weights must be finite, non-negative and sum to 1."""
    if not weights:
        raise FlowerExpError(f"{where}: an ensemble needs at least one member")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise FlowerExpError(f"{where}: weight {w!r} is invalid; weights must be finite and >= 0")
    total = float(sum(weights))
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise FlowerExpError(f"{where}: weights sum to {total:.6g}; they must sum to 1")


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedMember:
    """One member model, ready to predict."""

    run_id: str
    architecture: str
    image_size: int
    normalization: str
    weight: float
    model: Any  # keras.Model
    path: str
    _step: Any = field(default=None, repr=False, compare=False)

    def probabilities(self, images: Any, tta: bool = False) -> np.ndarray:
        """``float64 [B, C]`` for a batch of 0..255 pixels ``[B, S, S, 3]`` (array or tensor),
        normalized the member's way; ``tta`` averages with the left-right flip."""
        from .data.pipeline import normalize

        tf = tensorflow()
        x = normalize(tf.convert_to_tensor(images), self.normalization)
        return self.predict_normalized(x, tta)

    def predict_normalized(self, x: Any, tta: bool = False) -> np.ndarray:
        """Like :meth:`probabilities` for an already normalized batch."""
        tf = tensorflow()
        if self._step is None:
            # Traced once per member with an open batch dimension, so a smaller last batch does
            # not retrace (model.predict_on_batch would). A partial, unlike a lambda, gives each
            # member its own key in TensorFlow's "frequent retracing" warning counter.
            spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
            self._step = tf.function(functools.partial(self.model, training=False), input_signature=[spec])
        probs = np.asarray(self._step(x), np.float64)
        if tta:
            probs = (probs + np.asarray(self._step(tf.reverse(x, axis=[2])), np.float64)) / 2.0
        return probs


@dataclass
class LoadedEnsemble:
    """An export in memory: class names, members with their models, and ``ensemble.json``."""

    root: str
    class_names: list[str]
    members: list[LoadedMember]
    info: dict[str, Any]  # the whole ensemble.json document

    @property
    def image_sizes(self) -> list[int]:
        """Distinct member image sizes, ascending."""
        return sorted({m.image_size for m in self.members})


def load_export(path: str) -> LoadedEnsemble:
    """Load and check an export folder; every problem is a one-line :class:`FlowerExpError`
    naming the file."""
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise FlowerExpError(f"{path}: {what}; expected an export folder written by flower-exp best --export")
    json_path = os.path.join(root, ENSEMBLE_FILE)
    if not os.path.isfile(json_path):
        raise FlowerExpError(f"{json_path}: missing; {path} is not a flower-exp export (write one with flower-exp best --export)")
    doc = read_json_strict(json_path)
    parsed = check_document(doc, json_path)
    real_root = os.path.realpath(root)
    members = []
    for entry in parsed.members:
        file = _member_file(real_root, entry.path, json_path)
        model = _load_member_model(file)
        _check_model_shape(model, entry, len(parsed.class_names), file)
        members.append(
            LoadedMember(entry.run_id, entry.architecture, entry.image_size, entry.normalization, float(entry.weight), model, file)
        )
    return LoadedEnsemble(root=root, class_names=list(parsed.class_names), members=members, info=doc)


def read_json_strict(path: str) -> Any:
    """Parse a JSON file strictly: no NaN/Infinity, no duplicate keys; one-line errors."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowerExpError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise FlowerExpError(f"{path}: malformed JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:
        raise FlowerExpError(f"{path}: malformed JSON ({exc})") from None


def _member_file(real_root: str, rel: str, json_path: str) -> str:
    """The member's file, which must be a relative path that stays inside the export."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise FlowerExpError(f"{json_path}: member path {rel!r} is absolute; it must be relative to the export folder")
    if ".." in re.split(r"[\\/]", rel):
        raise FlowerExpError(f"{json_path}: member path {rel!r} leaves the export folder")
    # realpath also resolves symlinks: a link inside the export pointing elsewhere is refused.
    full = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([full, real_root]) != real_root:
        raise FlowerExpError(f"{json_path}: member path {rel!r} resolves outside the export folder (symlink?)")
    if not os.path.isfile(full):
        raise FlowerExpError(f"{json_path}: member file {rel} is missing from the export")
    return full


def _load_member_model(file: str) -> Any:
    from . import models

    # Keras reports a truncated archive as "File not found", which sends users looking for the
    # file instead of replacing it.
    if not zipfile.is_zipfile(file):
        raise FlowerExpError(f"{file}: not a readable .keras file (truncated or not a zip archive); export it again")
    try:
        return models.load_model(file)
    except FlowerExpError:
        raise
    except Exception as exc:  # a truncated or foreign file raises zipfile/OSError/KeyError/...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FlowerExpError(f"{file}: cannot load model ({first})") from None


def _check_model_shape(model: Any, entry: MemberEntry, num_classes: int, file: str) -> None:
    outputs = model.outputs
    inputs = model.inputs
    if len(outputs) != 1 or len(inputs) != 1:
        raise FlowerExpError(f"{file}: expected one image input and one probability output")
    classes = outputs[0].shape[-1]
    if classes != num_classes:
        raise FlowerExpError(f"{file}: model outputs {classes} classes but ensemble.json lists {num_classes} class names")
    shape = tuple(inputs[0].shape[1:])
    if shape[:2] not in ((entry.image_size, entry.image_size), (None, None)):
        raise FlowerExpError(f"{file}: model input is {shape} but ensemble.json says image_size {entry.image_size}")


# --------------------------------------------------------------------------- arrays


def predict_arrays(
    ens: LoadedEnsemble, images_by_size: dict[int, np.ndarray], *, tta: bool = False, batch_size: int = 32
) -> np.ndarray:
    """Weighted average of the members' probabilities, ``float32 [N, C]``.

    ``images_by_size[S]``: ``[N, S, S, 3]`` pixels in 0..255 (uint8 or float) for every member
    image size ``S``; each member normalizes them its own way. ``tta`` averages each image
    with its left-right flip.
    """
    counts = {len(images_by_size[s]) for s in ens.image_sizes if s in images_by_size}
    missing = [s for s in ens.image_sizes if s not in images_by_size]
    if missing:
        raise ValueError(f"images_by_size lacks image size(s) {missing} (members need {ens.image_sizes})")
    if len(counts) != 1:
        raise ValueError(f"images_by_size holds different image counts per size: {sorted(counts)}")
    n = counts.pop()
    total = np.zeros((n, len(ens.class_names)), np.float64)
    for member in ens.members:
        if member.weight == 0:
            continue
        x = images_by_size[member.image_size]
        for start in range(0, n, batch_size):
            total[start : start + batch_size] += member.weight * member.probabilities(x[start : start + batch_size], tta)
    return total.astype(np.float32)


# --------------------------------------------------------------------------- images


def load_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes → ``uint8 [size, size, 3]`` RGB: center-cropped square, LANCZOS-resized.

    The same recipe as ``flower-exp data import-folder``. The pixel count is checked from the
    header before anything is decoded; anything Pillow cannot read is a :class:`FlowerExpError`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise FlowerExpError(f"image size must be a positive integer, got {size!r}")
    return _resize(decode_square(data, size, max_pixels), size)


def _resize(square: Any, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def fetch_image(url: str, *, timeout: float = 10.0, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> bytes:
    """Download an image over http(s) and check it is one; returns its bytes.

    Refused (one-line :class:`FlowerExpError`): other schemes (``file://``, ``ftp://``, ...) and
    redirects to them; a ``Content-Length`` above ``max_bytes`` (before reading the body); a
    body that grows past ``max_bytes`` (the read stops there); no answer within ``timeout``
    seconds (connect, each read, and the whole download); content that is not an image or has
    more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    from PIL import Image

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FlowerExpError(f"{url}: only http(s) URLs are fetched (got {scheme + '://' if scheme else 'no scheme'})")
    data = _download(url, timeout, max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # header only
            width, height = img.size
            if width * height > max_pixels:
                raise FlowerExpError(
                    f"{url}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                )
            img.verify()  # structure and checksums, without decoding the pixels
        except FlowerExpError:
            raise
        except Image.DecompressionBombError as exc:
            raise FlowerExpError(f"{url}: refused as a decompression bomb ({exc})") from None
        except Exception as exc:  # Pillow raises many types for non-images and corrupt files
            detail = "unrecognised format" if type(exc).__name__ == "UnidentifiedImageError" else f"{type(exc).__name__}: {exc}"
            raise FlowerExpError(f"{url}: not an image ({str(detail).splitlines()[0][:200]})") from None
    return data


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"flower-exp/{__version__}", "Accept": "image/*"})
    deadline = _Deadline(timeout)
    try:
        with deadline, _opener(deadline).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise FlowerExpError(f"{url}: {int(length)} bytes is above the limit of {max_bytes} bytes; not downloaded")
            data = _read_body(response, deadline, url, max_bytes)
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        if deadline.expired() or isinstance(exc, (TimeoutError, socket.timeout)) or (
            isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (TimeoutError, socket.timeout))
        ):
            raise FlowerExpError(f"{url}: timed out after {timeout:g} s") from None
        raise _fetch_error(url, exc) from None
    return data


def _read_body(response: Any, deadline: _Deadline, url: str, max_bytes: int) -> bytes:
    """The body in small reads (``read1``: whatever one recv brings), each allowed only the time
    left, the size cap checked as it grows. A plain ``read(64 KiB)`` waits for 64 KiB: a server
    dripping a byte a second would hold it for 18 hours, deadline unchecked."""
    chunks, total = [], 0
    while True:
        deadline.before_read()
        chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise FlowerExpError(f"{url}: body exceeds the limit of {max_bytes} bytes; download stopped")
        chunks.append(chunk)
    if deadline.expired():  # the watchdog's shutdown reads as an early end of the body
        raise TimeoutError
    return b"".join(chunks)


def _fetch_error(url: str, exc: OSError | HTTPException | ValueError) -> FlowerExpError:
    """One line for a failed download that is not a timeout."""
    if isinstance(exc, urllib.error.HTTPError):
        return FlowerExpError(f"{url}: HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return FlowerExpError(f"{url}: cannot fetch ({exc.reason})")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return FlowerExpError(f"{url}: cannot fetch ({type(exc).__name__}: {detail})")


class _Deadline:
    """A download's total time limit, enforced on its socket. Each read may block only for the
    time left, and a watchdog shuts the socket down when the time is up, so a server that drips
    bytes (into the headers, which http.client reads in its own loop, or the body) cannot hold
    the download past the limit: a socket timeout alone restarts with every byte."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._timer.cancel()

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def attach(self, sock: socket.socket) -> socket.socket:
        """Watch ``sock`` (the raw one, then its TLS wrapper); returns it."""
        self._sock = sock
        if self.expired():
            self._expire()
        return sock

    def before_read(self) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if self._sock is not None:
            self._sock.settimeout(left)

    def _expire(self) -> None:
        if self._sock is not None:
            # socket.socket's own shutdown: it wakes a blocked read, TLS or not.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


class _Watched:
    """Mixin for http.client connections: hands every socket they open to the download's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        create = self._create_connection
        self._create_connection = lambda *a, **k: deadline.attach(create(*a, **k))

    def connect(self) -> None:
        super().connect()
        self._deadline.attach(self.sock)  # after TLS wrapping, the socket reads go through


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _DeadlineHandler:
    """Mixin for urllib's HTTP(S) handlers: their connections are :class:`_Watched`."""

    def __init__(self, deadline: _Deadline, **kwargs: Any):
        super().__init__(**kwargs)
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        watched = _WatchedHTTPS if issubclass(http_class, http.client.HTTPSConnection) else _WatchedHTTP
        return super().do_open(functools.partial(watched, deadline=self._deadline), req, **kwargs)


class _DeadlineHTTPHandler(_DeadlineHandler, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_DeadlineHandler, urllib.request.HTTPSHandler):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only; anything else (``file:``, ``ftp:``) is refused."""

    max_redirections = 5

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: D102 - urllib hook
        target = headers.get("location") or headers.get("uri")
        if target:
            new = urllib.parse.urljoin(req.full_url, target)
            scheme = urllib.parse.urlsplit(new).scheme.lower()
            if scheme not in URL_SCHEMES:
                fp.close()
                raise FlowerExpError(f"{req.full_url}: redirect to {new} refused (http/https only)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    # Built by hand: build_opener() would also add file://, ftp:// and data: handlers.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _DeadlineHTTPHandler(deadline),
        _DeadlineHTTPSHandler(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


# --------------------------------------------------------------------------- sources


@dataclass
class ItemPrediction:
    """The prediction for one file or URL: ``top`` classes with probabilities, or ``error``."""

    source: str
    error: str | None
    top: list[tuple[str, float]]
    probabilities: list[float] | None = None  # every class, in class order (None on error)


def predict_sources(
    ens: LoadedEnsemble,
    sources: list[str],
    *,
    top: int = 5,
    tta: bool = False,
    fetch: Callable[[str], bytes] = fetch_image,
) -> list[ItemPrediction]:
    """Predict image files and http(s) URLs, one :class:`ItemPrediction` each, in order.

    A source that cannot be read, fetched or decoded gets an ``error``; the others still predict.
    """
    if top < 1:
        raise FlowerExpError(f"top must be >= 1, got {top}")
    results: list[ItemPrediction] = []
    for start in range(0, len(sources), _PREDICT_CHUNK):
        chunk = sources[start : start + _PREDICT_CHUNK]
        payloads: list[bytes | str] = []
        for source in chunk:
            try:
                payloads.append(read_source(source, fetch))
            except FlowerExpError as exc:
                payloads.append(_without_prefix(str(exc), source))
        results.extend(predict_payloads(ens, chunk, payloads, top=top, tta=tta))
    return results


def read_source(source: str, fetch: Callable[[str], bytes] = fetch_image, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a local file (at most ``max_bytes``, like a download) or an http(s) URL
    (other URL schemes are refused)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", source)
    if match:
        if match.group(1).lower() not in URL_SCHEMES:
            raise FlowerExpError(f"{source}: unsupported URL scheme {match.group(1)}:// (http/https only)")
        return fetch(source)
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        raise FlowerExpError(f"{source}: no such file")
    if not os.path.isfile(path):
        raise FlowerExpError(f"{source}: not a file")
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise FlowerExpError(f"{source}: {size} bytes is above the limit of {max_bytes} bytes; not read")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since the stat
    except OSError as exc:
        raise FlowerExpError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise FlowerExpError(f"{source}: more than the limit of {max_bytes} bytes; not read")
    return data


def read_image(source: str, fetch: Callable[[str], bytes] = fetch_image, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of one image file or http(s) URL, checked to decode as an image (pixel count
    first); anything else is a one-line :class:`FlowerExpError` naming ``source``."""
    data = read_source(source, fetch)
    try:
        decode_square(data, 1, max_pixels)  # size 1: JPEGs decode at reduced scale, cheaply
    except DataError as exc:
        raise FlowerExpError(f"{source}: {exc}") from None
    return data


def predict_payloads(
    ens: LoadedEnsemble,
    names: Sequence[str],
    payloads: Sequence[bytes | str],
    *,
    top: int = 5,
    tta: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> list[ItemPrediction]:
    """Predict image bytes; a ``str`` payload is an error already (kept as the item's error)."""
    sizes = ens.image_sizes
    errors: list[str | None] = []
    pixels: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    for payload in payloads:
        if isinstance(payload, str):
            errors.append(payload)
            continue
        try:
            square = decode_square(payload, max(sizes), max_pixels)
            resized = {s: _resize(square, s) for s in sizes}
        except FlowerExpError as exc:
            errors.append(str(exc))
            continue
        errors.append(None)
        for s in sizes:
            pixels[s].append(resized[s])
    row_of = {item: row for row, item in enumerate(i for i, e in enumerate(errors) if e is None)}
    probs = predict_arrays(ens, {s: np.stack(v) for s, v in pixels.items()}, tta=tta) if row_of else None
    out = []
    k = min(top, len(ens.class_names))
    for i, (name, error) in enumerate(zip(names, errors)):
        if error is not None:
            out.append(ItemPrediction(source=name, error=error, top=[]))
            continue
        p = probs[row_of[i]]
        order = np.argsort(-p, kind="stable")[:k]
        out.append(
            ItemPrediction(
                source=name,
                error=None,
                top=[(ens.class_names[c], float(p[c])) for c in order],
                probabilities=[float(v) for v in p],
            )
        )
    return out


def _without_prefix(message: str, source: str) -> str:
    # Errors name their source for standalone use; an ItemPrediction already carries it.
    prefix = f"{source}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


# --------------------------------------------------------------------------- test split


def predict_test(
    ens: LoadedEnsemble,
    data_root: str,
    out_csv: str,
    *,
    batch_size: int = 64,
    tta: bool = False,
    labels_csv: str | None = None,
) -> tuple[str, float | None]:
    """Predict the competition test split and write ``out_csv`` (``id,label``, the sample
    submission's format: one row per test record in stored order, label = class index).

    Each member reads the split at its own image size and normalization; predictions are
    aligned by id. With ``labels_csv`` (default ``<data_root>/test_labels.csv`` when present)
    also returns the macro-F1 against it, else ``None``. The CSV is replaced atomically.
    """
    from .data import pipeline, records
    from .ensemble import macro_f1

    if batch_size < 1:
        raise FlowerExpError(f"batch size must be >= 1, got {batch_size}")
    ids: list[str] | None = None
    total: np.ndarray | None = None
    for member in ens.members:
        ds = pipeline.make_dataset(
            data_root, "test", image_size=member.image_size, batch_size=batch_size, normalization=member.normalization
        )
        member_ids: list[str] = []
        parts = []
        with pipeline.shard_errors_named(pipeline.split_files(data_root, "test", member.image_size)):
            for images, batch_ids in ds:
                member_ids.extend(i.decode("utf-8") for i in batch_ids.numpy())
                parts.append(member.predict_normalized(images, tta))
        probs = np.concatenate(parts) if parts else np.zeros((0, len(ens.class_names)))
        if ids is None:
            ids, total = member_ids, np.zeros_like(probs)
        elif member_ids != ids:
            raise DataError(
                f"{data_root}: the test split holds different ids at {member.image_size}px than at "
                f"{ens.members[0].image_size}px; the size folders must hold the same records in the same order"
            )
        total += member.weight * probs
    assert ids is not None and total is not None
    predicted = total.argmax(axis=1)
    written = _write_submission(out_csv, ids, predicted)

    if labels_csv is None:
        default = records.join(data_root, records.TEST_LABELS_FILE)
        labels_csv = default if records.exists(default) else None
    if labels_csv is None:
        return written, None
    labels = read_labels(labels_csv, len(ens.class_names))
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(f"{labels_csv}: no label for {len(missing)} test id(s), e.g. {missing[0]}; is it this dataset's file?")
    truth = np.array([labels[i] for i in ids], np.int64)
    return written, macro_f1(total, truth, len(ens.class_names))


def read_labels(path: str, num_classes: int) -> dict[str, int]:
    """An ``id,label`` CSV → ``{id: label}``; malformed rows are one-line errors."""
    tf = tensorflow()
    try:
        with tf.io.gfile.GFile(path, "r") as fh:
            text = fh.read()
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot read labels ({exc.message.splitlines()[0] if exc.message else exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["id", "label"]:
        raise DataError(f"{path}: expected a header line 'id,label'")
    labels: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
            raise DataError(f"{path}: line {line}: expected 'id,label' with an integer label, got {','.join(row)!r}")
        label = int(row[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{path}: line {line}: label {label} is outside 0..{num_classes - 1}")
        labels[row[0].strip()] = label
    return labels


def _write_submission(out_csv: str, ids: list[str], predicted: np.ndarray) -> str:
    """Write ``id,label`` rows to ``out_csv`` through a temp file and a rename."""
    out = os.path.abspath(os.path.expanduser(out_csv))
    if os.path.isdir(out):
        raise FlowerExpError(f"{out_csv}: is a folder; give a file name such as submission.csv")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise FlowerExpError(f"{out_csv}: cannot create folder {parent} ({exc.strerror})") from None
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write("id,label\n")
            fh.writelines(f"{i},{int(p)}\n" for i, p in zip(ids, predicted))
        os.replace(tmp, out)
    except OSError as exc:
        raise FlowerExpError(f"{out_csv}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
