"""The leakage guard: the same photo in training data and in validation/test data.

Every image gets a 64-bit perceptual hash (DCT pHash of the decoded pixels), so a photo is
recognised after resizing or JPEG re-encoding, which byte hashes would miss. Hashes whose
Hamming distance is at most ``max_distance`` count as the same photo. Checked pairs:

* main ``train`` ~ main ``val``, main ``train`` ~ main ``test``, main ``val`` ~ main ``test``
  (a leak inside the dataset itself: reported, the caller warns);
* each ``extra_data`` source's splits ~ main ``val`` and main ``test`` (fatal for training
  unless allowed: extra data that contains the images we evaluate on inflates every score).

Duplicates inside one split, or between an extra source and main ``train``, are not leakage.

Hashes are cached per shard under ``CACHE_DIR/hashes/`` and whole reports per data
fingerprint under ``CACHE_DIR/leakage/``, so a sweep pays for the check once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import DataError, LeakageError
from . import records

MAIN = "main"
EXTRA_PREFIX = "extra:"
HASH_VERSION = "phash-dct32-8x8-v1"  # part of every cache key: change it when image_hash changes
REPORT_VERSION = 1
_HASH_SIDE = 32  # pixels of the grayscale thumbnail the DCT runs on
_LOW = 8  # low-frequency block kept: 8x8 = 64 bits
_CHUNK_ELEMENTS = 1 << 22  # pairwise distances computed per block (4M uint64 = 32 MB)


# --------------------------------------------------------------------------- hashing


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``C @ x`` is the DCT of column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    mat[0] /= np.sqrt(2.0)
    return mat


_DCT = _dct_matrix(_HASH_SIDE)


def image_hash(data: bytes) -> int:
    """64-bit perceptual hash (DCT pHash) of JPEG/PNG bytes.

    Grayscale, 32x32 area resize, 2-D DCT, top-left 8x8 coefficients compared with their
    median (DC excluded from the median). Resizing and JPEG re-encoding move it by a few bits;
    unrelated photos differ in about 32 of 64.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.draft("L", (2 * _HASH_SIDE, 2 * _HASH_SIDE))  # JPEG: decode at 1/2..1/8 scale, luma only
    gray = img.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class HashedImage:
    """One hashed record: where it lives and its perceptual hash."""

    source: str  # "main" or "extra:<root>"
    split: str
    shard: str  # shard path
    index: int  # record index in the shard
    id: str
    hash: int

    @property
    def side(self) -> str:
        """Short label in pair kinds: the split for the main data, the source for extras."""
        return self.split if self.source == MAIN else self.source


@dataclass
class LeakPair:
    """Two records that look like the same photo (``a`` on the training side)."""

    a: HashedImage
    b: HashedImage
    distance: int

    @property
    def kind(self) -> str:
        return f"{self.a.side}~{self.b.side}"

    @property
    def involves_extra(self) -> bool:
        return self.a.source != MAIN or self.b.source != MAIN


@dataclass
class LeakageReport:
    """Result of :func:`check_leakage`."""

    fingerprint: str
    pairs: list[LeakPair]
    checked: dict[str, int]  # "source:split" -> images hashed
    max_distance: int
    cached: bool = field(default=False, compare=False)  # loaded from the report cache

    def by_kind(self) -> dict[str, int]:
        """Pair counts per kind, e.g. ``{"train~val": 3, "extra:/x~test": 1}``."""
        return dict(Counter(p.kind for p in self.pairs))

    @property
    def extra_pairs(self) -> list[LeakPair]:
        """Pairs between an extra source and main val/test."""
        return [p for p in self.pairs if p.involves_extra]

    @property
    def internal_pairs(self) -> list[LeakPair]:
        """Pairs inside the main dataset (train/val/test overlap)."""
        return [p for p in self.pairs if not p.involves_extra]

    def summary(self) -> str:
        """One line, e.g. ``2 leaked pair(s): train~val 1, extra:/x~test 1``."""
        if not self.pairs:
            checked = sum(self.checked.values())
            return f"no leaked pairs among {checked} images (max distance {self.max_distance})"
        kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind().items())
        return f"{len(self.pairs)} leaked pair(s) (max distance {self.max_distance}): {kinds}"

    def to_json(self) -> dict:
        return {
            "version": REPORT_VERSION,
            "hash": HASH_VERSION,
            "fingerprint": self.fingerprint,
            "max_distance": self.max_distance,
            "checked": self.checked,
            "pairs": [{"a": asdict(p.a), "b": asdict(p.b), "distance": p.distance} for p in self.pairs],
        }

    @classmethod
    def from_json(cls, data: dict) -> LeakageReport:
        if data.get("version") != REPORT_VERSION or data.get("hash") != HASH_VERSION:
            raise ValueError("stale report format")
        pairs = [LeakPair(HashedImage(**p["a"]), HashedImage(**p["b"]), int(p["distance"])) for p in data["pairs"]]
        return cls(
            fingerprint=data["fingerprint"],
            pairs=pairs,
            checked={k: int(v) for k, v in data["checked"].items()},
            max_distance=int(data["max_distance"]),
        )


# --------------------------------------------------------------------------- data discovery


def _stored_size(root: str, size: int) -> int:
    """Stored size to hash for ``size``: as training reads it, else the largest there is.

    Hashes do not depend on resolution, so an extra source without a large enough folder
    can still be checked.
    """
    try:
        return records.source_size(root, size)
    except DataError:
        sizes = records.available_sizes(root) if size > 0 else []
        if not sizes:
            raise
        return sizes[-1]


def _splits_present(root: str, stored: int) -> list[str]:
    return [s for s in records.SPLITS if records.exists(records.join(records.size_dir(root, stored), s))]


def _stat(path: str) -> tuple[int, int]:
    """``(length, mtime_nsec)`` of a file."""
    from .._imports import tensorflow

    tf = tensorflow()
    try:
        st = tf.io.gfile.stat(path)
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot stat ({records._short(exc)})") from exc
    return int(st.length), int(getattr(st, "mtime_nsec", 0) or 0)


def _inventory(root: str, size: int) -> list[tuple[str, str, int, int]]:
    """``(path, name relative to root, length, mtime)`` of every shard of every split present."""
    stored = _stored_size(root, size)
    out = []
    for split in _splits_present(root, stored):
        for path in records.shard_files(root, stored, split):
            rel = f"tfrecords-jpeg-{stored}x{stored}/{split}/{path.rstrip('/').rsplit('/', 1)[-1]}"
            length, mtime = _stat(path)
            out.append((path, rel, length, mtime))
    return out


def _fingerprint(inventories: Sequence[list[tuple[str, str, int, int]]]) -> str:
    digest = hashlib.sha256()
    for i, inventory in enumerate(inventories):
        digest.update(f"[{MAIN if i == 0 else f'extra[{i - 1}]'}]\n".encode())
        for _path, rel, length, _mtime in inventory:
            digest.update(f"{rel}\t{length}\n".encode())
    return digest.hexdigest()[:16]


def data_fingerprint(root: str, size: int, extra: Sequence[str] = ()) -> str:
    """Cheap identity of the data (16 hex digits).

    SHA-256 over the shard names (relative to their root) and byte sizes of every split of
    ``root`` and of each ``extra`` root at the stored size ``size`` reads. Changes when a shard
    is added, removed or rewritten with another length; does not change when the same data
    is copied elsewhere (local ↔ gs://). Nothing is read but directory listings and stats.
    """
    return _fingerprint([_inventory(r, size) for r in [root, *extra]])


# --------------------------------------------------------------------------- hashing splits


def _cache_path(cache_dir: str, kind: str, key: str, suffix: str) -> str:
    return records.join(cache_dir, kind, f"{key}{suffix}")


def _read_bytes(path: str) -> bytes | None:
    from .._imports import tensorflow

    tf = tensorflow()
    try:
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as fh:
            return fh.read()
    except tf.errors.OpError:
        return None


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file renamed into place (local or remote)."""
    from .._imports import tensorflow

    tf = tensorflow()
    folder = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
    if folder:
        tf.io.gfile.makedirs(folder)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    with tf.io.gfile.GFile(tmp, "wb") as fh:
        fh.write(data)
    try:
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except Exception:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def _write_cache(path: str, data: bytes) -> None:
    """Best effort: a cache that cannot be written costs time next run, never this one."""
    try:
        _write_atomic(path, data)
    except Exception:  # noqa: BLE001 - read-only or full cache folder
        pass


def _hash_records(shard: str, recs: list[tuple[int, records.Record]]) -> list[int]:
    hash_fn = image_hash  # looked up now, so tests can monkeypatch the module attribute

    def one(item: tuple[int, records.Record]) -> int:
        index, rec = item
        try:
            return hash_fn(rec.image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{shard}: record {index} (id {rec.id}): cannot decode image ({exc})") from None

    if len(recs) < 16:
        return [one(item) for item in recs]
    # Pillow releases the GIL while decoding, so threads use the cores.
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, recs))


def hash_split(root: str, size: int, split: str, cache_dir: str | None, *, source: str = MAIN) -> list[HashedImage]:
    """Perceptual hashes of every record of ``split`` (at the stored size ``size`` reads).

    With ``cache_dir``, each shard's hashes are cached in ``cache_dir/hashes/`` under a key of
    its path, length and modification time, so only new or rewritten shards are decoded.
    """
    stored = _stored_size(root, size)
    out: list[HashedImage] = []
    for shard in records.shard_files(root, stored, split):
        length, mtime = _stat(shard)
        key = hashlib.sha256(f"{HASH_VERSION}\n{shard}\n{length}\n{mtime}".encode()).hexdigest()[:32]
        cached = _load_shard_hashes(_cache_path(cache_dir, "hashes", key, ".npz")) if cache_dir else None
        if cached is None:
            recs = list(records.iter_shard(shard))
            indices = [i for i, _ in recs]
            ids = [r.id for _, r in recs]
            hashes = _hash_records(shard, recs)
            if cache_dir:
                buf = io.BytesIO()
                np.savez(
                    buf,
                    index=np.asarray(indices, dtype=np.int64),
                    id=np.asarray(ids, dtype=str),
                    hash=np.asarray(hashes, dtype=np.uint64),
                )
                _write_cache(_cache_path(cache_dir, "hashes", key, ".npz"), buf.getvalue())
        else:
            indices, ids, hashes = cached
        out.extend(
            HashedImage(source=source, split=split, shard=shard, index=int(i), id=str(d), hash=int(h))
            for i, d, h in zip(indices, ids, hashes)
        )
    return out


def _load_shard_hashes(path: str) -> tuple[list[int], list[str], list[int]] | None:
    raw = _read_bytes(path)
    if raw is None:
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return npz["index"].tolist(), npz["id"].tolist(), npz["hash"].tolist()
    except Exception:  # a damaged cache entry is recomputed, never fatal
        return None


# --------------------------------------------------------------------------- comparing


def near_pairs(a: Sequence[HashedImage], b: Sequence[HashedImage], max_distance: int) -> list[LeakPair]:
    """All ``(x, y)`` with ``x`` in ``a``, ``y`` in ``b`` and Hamming distance <= ``max_distance``.

    Vectorised over uint64 arrays in row blocks, so memory stays bounded
    (13k x 7k comparisons take well under a second).
    """
    if not a or not b:
        return []
    ha = np.fromiter((x.hash for x in a), dtype=np.uint64, count=len(a))
    hb = np.fromiter((y.hash for y in b), dtype=np.uint64, count=len(b))
    rows = max(1, _CHUNK_ELEMENTS // len(hb))
    pairs = []
    for start in range(0, len(ha), rows):
        dist = np.bitwise_count(ha[start : start + rows, None] ^ hb[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        pairs.extend(LeakPair(a[start + i], b[j], int(dist[i, j])) for i, j in zip(ii.tolist(), jj.tolist()))
    return pairs


def _report_key(roots: Sequence[tuple[str, Sequence[str] | None]], inventories: Sequence[list], max_distance: int) -> str:
    """Report cache key: shard paths + lengths + mtimes of everything compared, and the settings."""
    parts = {
        "version": REPORT_VERSION,
        "hash": HASH_VERSION,
        "max_distance": max_distance,
        "roots": [
            {"root": r, "splits": sorted(s) if s is not None else None, "shards": inv} for (r, s), inv in zip(roots, inventories)
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def check_leakage(
    root: str,
    *,
    size: int,
    extra: Sequence[tuple[str, Sequence[str]]] = (),
    max_distance: int = 6,
    cache_dir: str | None = None,
) -> LeakageReport:
    """Find the same photo across main train/val/test and between extra sources and main val/test.

    ``extra`` holds ``(root, splits)`` per extra source. With ``cache_dir``, the report is
    cached in ``cache_dir/leakage/`` per data fingerprint and ``max_distance`` (a second call
    on unchanged data reads one JSON file), and image hashes per shard in ``cache_dir/hashes/``.
    """
    if not 0 <= max_distance <= 64:
        raise DataError(f"leakage max_distance must be in 0..64, got {max_distance}")
    extra = [(r, (s,) if isinstance(s, str) else tuple(s)) for r, s in extra]
    inventories = [_inventory(r, size) for r in [root] + [r for r, _ in extra]]
    fingerprint = _fingerprint(inventories)
    report_path = None
    if cache_dir:
        key = _report_key([(root, None), *extra], inventories, max_distance)
        report_path = _cache_path(cache_dir, "leakage", f"{fingerprint}-{key}", ".json")
        raw = _read_bytes(report_path)
        if raw is not None:
            try:
                report = LeakageReport.from_json(json.loads(raw))
                report.cached = True
                return report
            except (ValueError, KeyError, TypeError):
                pass  # damaged or stale entry: recompute

    stored = _stored_size(root, size)
    main_splits = [s for s in _splits_present(root, stored) if s in records.SPLITS]
    for required in records.LABELED_SPLITS:
        if required not in main_splits:
            records.shard_files(root, stored, required)  # raises the standard "split missing" error
    hashed = {split: hash_split(root, size, split, cache_dir) for split in main_splits}
    checked = {f"{MAIN}:{split}": len(items) for split, items in hashed.items()}

    pairs: list[LeakPair] = []
    for split_a, split_b in (("train", "val"), ("train", "test"), ("val", "test")):
        if split_a in hashed and split_b in hashed:
            pairs.extend(near_pairs(hashed[split_a], hashed[split_b], max_distance))
    for src_root, splits in extra:
        source = f"{EXTRA_PREFIX}{src_root}"
        for split in splits:
            items = hash_split(src_root, size, split, cache_dir, source=source)
            checked[f"{source}:{split}"] = len(items)
            for target in ("val", "test"):
                if target in hashed:
                    pairs.extend(near_pairs(items, hashed[target], max_distance))

    pairs.sort(key=lambda p: (not p.involves_extra, p.distance, p.a.source, p.a.split, p.a.id, p.b.split, p.b.id))
    report = LeakageReport(fingerprint=fingerprint, pairs=pairs, checked=checked, max_distance=max_distance)
    if report_path:
        _write_cache(report_path, json.dumps(report.to_json()).encode())
    return report


def ensure_no_leakage(
    root: str,
    *,
    size: int,
    extra: Sequence[tuple[str, Sequence[str]]],
    max_distance: int,
    cache_dir: str | None,
    allow: bool = False,
) -> LeakageReport:
    """:func:`check_leakage` for training: an extra source that leaks into val/test is fatal.

    Raises :class:`LeakageError` unless ``allow``. Leaks inside the main dataset are only
    returned (see ``report.internal_pairs``); the caller warns about them.
    """
    report = check_leakage(root, size=size, extra=extra, max_distance=max_distance, cache_dir=cache_dir)
    leaking = report.extra_pairs
    if leaking and not allow:
        per_source = Counter(p.a.source for p in leaking)
        source = next(f"{EXTRA_PREFIX}{r}" for r, _ in extra if f"{EXTRA_PREFIX}{r}" in per_source)
        example = next(p for p in leaking if p.a.source == source)
        more = len(per_source) - 1
        raise LeakageError(
            f"extra_data {source[len(EXTRA_PREFIX) :]}: {per_source[source]} image pair(s) match main val/test images "
            f"of {root} (e.g. {example.a.split} id {example.a.id} ~ {example.b.split} id {example.b.id}, "
            f"distance {example.distance} <= {max_distance})"
            + (f", and {more} more leaking source(s)" if more else "")
            + "; pass --allow-leakage to train anyway or remove it from extra_data"
        )
    return report


# --------------------------------------------------------------------------- plotting


def _load_images(items: Sequence[HashedImage]) -> dict[tuple[str, int], bytes]:
    """Image bytes of ``items``, reading each shard once."""
    wanted: dict[str, set[int]] = {}
    for item in items:
        wanted.setdefault(item.shard, set()).add(item.index)
    found: dict[tuple[str, int], bytes] = {}
    for shard, indices in wanted.items():
        last = max(indices)
        for index, rec in records.iter_shard(shard):
            if index in indices:
                found[(shard, index)] = rec.image
            if index >= last:
                break
    return found


def _ellipsize(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def plot_pairs(
    report: LeakageReport,
    path: str,
    root_images: Callable[[HashedImage], bytes] | None = None,
    max_pairs: int = 16,
) -> None:
    """Write a PNG with each leaked pair side by side (ids, splits, distance).

    Images are read back from their shards (``root_images(item) -> bytes`` overrides that).
    The file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    shown = report.pairs[: max(0, max_pairs)]
    if root_images is None:
        cache = _load_images([x for p in shown for x in (p.a, p.b)])

        def root_images(item: HashedImage) -> bytes:
            return cache[(item.shard, item.index)]

    rows = max(1, len(shown))
    fig = Figure(figsize=(5.2, 2.8 * rows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    title = f"{len(report.pairs)} leaked pair(s), Hamming distance <= {report.max_distance}"
    if len(report.pairs) > len(shown):
        title += f" (first {len(shown)} shown)"
    fig.suptitle(title, fontsize=9)
    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, f"no leaked pairs among {sum(report.checked.values())} images", ha="center", va="center")
    for row, pair in enumerate(shown):
        for col, item in enumerate((pair.a, pair.b)):
            ax = fig.add_subplot(rows, 2, 2 * row + col + 1)
            ax.axis("off")
            try:
                pixels = np.asarray(Image.open(io.BytesIO(root_images(item))).convert("RGB"))
                ax.imshow(pixels)
            except Exception as exc:  # noqa: BLE001 - a missing image must not lose the plot
                ax.text(0.5, 0.5, f"cannot load\n{type(exc).__name__}", ha="center", va="center", fontsize=7)
            shard_name = item.shard.rstrip("/").rsplit("/", 1)[-1]
            where = item.split if item.source == MAIN else f"{_ellipsize(item.source, 32)}:{item.split}"
            ax.set_title(f"{where}  id {item.id}\n{shard_name}#{item.index}  d={pair.distance}", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _write_atomic(path, buf.getvalue())
