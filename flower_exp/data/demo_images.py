"""The pictures of the synthetic flower dataset (:mod:`flower_exp.data.demo` writes them out).

Each class is a "species" with its own petal count, petal shape, petal colour and centre
colour; neighbouring classes share some of them (same colour, different shape and count),
so telling them apart takes more than a colour histogram. Each image varies background,
clutter, pose, tilt, scale, position, lighting and noise, and sometimes shows a second flower
or a leaf in front of the main one.

An image depends only on (seed, label, index, canvas): every random draw comes from a
``numpy.random.default_rng`` seeded by them, and JPEG quality is fixed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

MAX_CLASSES = 104  # the competition's class count; also what the attribute grid below covers
JPEG_QUALITY = 90

# RNG stream tags, for the pixels here and the plan in demo.py (split, ids, file order): each
# purpose gets its own stream so changing one (e.g. the split) never shifts another (e.g. the
# pixels of an image).
STREAM_IMAGE, STREAM_SPLIT, STREAM_ID, STREAM_ORDER = 0, 1, 2, 3

# Palette order matters: the first classes (the default demo has 6) should cover clearly
# different hues, later ones add the confusable neighbours (orange vs red, pink vs magenta).
_PETAL_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (200, 30, 40)),
    ("yellow", (240, 205, 35)),
    ("blue", (55, 85, 205)),
    ("white", (238, 236, 228)),
    ("orange", (240, 125, 25)),
    ("purple", (115, 45, 155)),
    ("pink", (245, 150, 185)),
    ("magenta", (195, 35, 140)),
)
_CENTRE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (250, 195, 30),  # yellow
    (105, 60, 25),  # brown
    (40, 32, 28),  # near black
    (245, 240, 225),  # cream
    (120, 165, 45),  # green
)
# (kind name, petal profile); the kind word stands in for the shape in class names.
_SHAPES: tuple[tuple[str, str], ...] = (
    ("daisy", "ellipse"),
    ("starflower", "pointed"),
    ("buttercup", "round"),
    ("aster", "thin"),
)
_PETAL_COUNTS: tuple[int, ...] = (4, 5, 6, 8, 12)
_NUMBER_WORDS = {4: "four", 5: "five", 6: "six", 8: "eight", 12: "twelve"}
_BACKGROUNDS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((55, 105, 40), (150, 190, 90)),  # grass
    ((25, 55, 25), (85, 125, 60)),  # foliage
    ((105, 155, 215), (205, 228, 245)),  # sky
    ((90, 68, 45), (155, 122, 82)),  # soil
    ((85, 90, 85), (175, 172, 162)),  # stone
)


@dataclass(frozen=True)
class _Species:
    petal_rgb: tuple[int, int, int]
    centre_rgb: tuple[int, int, int]
    shape: str
    petals: int


def _species(index: int) -> tuple[str, _Species]:
    """Name and attributes of class ``index``.

    Classes come in pairs of one colour (different shape and petal count); the pair pattern
    repeats with the next colour, and every 16 classes the shape/count pairs move on. The map
    is injective on (colour, shape, count) for index < 160, so names are distinct.
    """
    colour = (index // 2) % len(_PETAL_COLOURS)
    combo = 2 * (index // 16) + index % 2  # 0..13 for 104 classes
    shape = combo % len(_SHAPES)
    count = (combo // len(_SHAPES) + shape) % len(_PETAL_COUNTS)
    centre = (index // 3 + index // 16) % len(_CENTRE_COLOURS)
    colour_name, rgb = _PETAL_COLOURS[colour]
    kind, profile = _SHAPES[shape]
    petals = _PETAL_COUNTS[count]
    name = f"{colour_name} {_NUMBER_WORDS[petals]}-petal {kind}"
    return name, _Species(rgb, _CENTRE_COLOURS[centre], profile, petals)


def class_names(n: int) -> list[str]:
    """Names of the first ``n`` synthetic classes, e.g. ``"red four-petal daisy"``.

    Deterministic and independent of the seed: class ``i`` always looks and is named the same.
    """
    if not 0 <= n <= MAX_CLASSES:
        raise DataError(f"demo classes must be between 2 and {MAX_CLASSES}, got {n}")
    return [_species(i)[0] for i in range(n)]


# --------------------------------------------------------------------------- drawing


def _rgb(values) -> tuple[int, int, int]:
    r, g, b = (int(round(min(255.0, max(0.0, float(v))))) for v in values)
    return r, g, b


def _transform(points: np.ndarray, matrix: np.ndarray, cx: float, cy: float) -> list[tuple[float, float]]:
    moved = points @ matrix.T + (cx, cy)
    return [tuple(p) for p in moved.tolist()]


def _petal_outline(profile: str, length: float, width: float, inner: float) -> np.ndarray:
    """Closed outline of one petal lying along +x, as (k, 2) points."""
    t = np.linspace(0.0, 1.0, 14)
    if profile == "pointed":
        half = np.sqrt(t) * (1.0 - t) * 2.6  # widest at a third, sharp tip
    elif profile == "round":
        half = np.sqrt(np.sin(np.pi * t**0.6))  # spoon: widest near the blunt end
    else:  # ellipse, thin
        half = np.sin(np.pi * t)
    r = inner + t * (length - inner)
    w = half * width
    xs = np.concatenate([r, r[::-1]])
    ys = np.concatenate([w, -w[::-1]])
    return np.stack([xs, ys], axis=1)


def _draw_flower(draw, rng: np.random.Generator, sp: _Species, cx: float, cy: float, radius: float) -> None:
    rotation = rng.uniform(0.0, 2 * math.pi)
    # A flower seen at an angle: squash along a random axis.
    tilt_axis = rng.uniform(0.0, math.pi)
    squash = rng.uniform(0.65, 1.0)
    c, s = math.cos(tilt_axis), math.sin(tilt_axis)
    rot = np.array([[c, -s], [s, c]])
    tilt = rot @ np.diag([1.0, squash]) @ rot.T

    base = np.array(sp.petal_rgb, dtype=float) + rng.normal(0.0, 10.0, 3)
    width_scale = {"ellipse": 1.0, "pointed": 1.0, "round": 1.25, "thin": 0.38}[sp.shape]
    length_scale = 1.1 if sp.shape == "thin" else 1.0
    half_width = radius * min(0.42, 1.4 / sp.petals) * width_scale
    inner = radius * 0.12
    for i in range(sp.petals):
        angle = rotation + 2 * math.pi * i / sp.petals + rng.normal(0.0, 0.06)
        length = radius * length_scale * rng.uniform(0.85, 1.05)
        outline = _petal_outline(sp.shape, length, half_width * rng.uniform(0.9, 1.1), inner)
        ca, sa = math.cos(angle), math.sin(angle)
        matrix = tilt @ np.array([[ca, -sa], [sa, ca]])
        shade = base * rng.uniform(0.82, 1.08)
        draw.polygon(_transform(outline, matrix, cx, cy), fill=_rgb(shade), outline=_rgb(shade * 0.7))

    centre_r = radius * rng.uniform(0.16, 0.24)
    theta = np.linspace(0.0, 2 * math.pi, 24, endpoint=False)
    disc = np.stack([np.cos(theta), np.sin(theta)], axis=1) * centre_r
    centre = np.array(sp.centre_rgb, dtype=float) + rng.normal(0.0, 8.0, 3)
    draw.polygon(_transform(disc, tilt, cx, cy), fill=_rgb(centre), outline=_rgb(centre * 0.6))
    # Stippled seeds give the centre texture that survives downscaling as a colour shift.
    dot = max(1.0, centre_r * 0.12)
    for _ in range(int(rng.integers(4, 12))):
        r, a = centre_r * 0.75 * math.sqrt(rng.random()), rng.uniform(0.0, 2 * math.pi)
        [(x, y)] = _transform(np.array([[r * math.cos(a), r * math.sin(a)]]), tilt, cx, cy)
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=_rgb(centre * rng.uniform(0.55, 0.8)))


def _leaf(draw, rng: np.random.Generator, cx: float, cy: float, length: float, rgb) -> None:
    t = np.linspace(0.0, 1.0, 10)
    half = np.sin(np.pi * t) * length * rng.uniform(0.18, 0.32)
    xs = np.concatenate([t, t[::-1]]) * length - length / 2
    ys = np.concatenate([half, -half[::-1]])
    angle = rng.uniform(0.0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    draw.polygon(_transform(np.stack([xs, ys], axis=1), np.array([[ca, -sa], [sa, ca]]), cx, cy), fill=_rgb(rgb))


def _background(rng: np.random.Generator, n: int):
    """Gradient, leaves and grass, out of focus as behind a close-up.

    Drawn at a third of the size and upscaled: it is blurred anyway, and blurring at full size
    would cost more than everything else in an image.
    """
    from PIL import Image, ImageDraw, ImageFilter

    m = max(48, n // 3)
    low, high = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    a = np.array(low, dtype=np.float32) + rng.normal(0.0, 18.0, 3).astype(np.float32)
    b = np.array(high, dtype=np.float32) + rng.normal(0.0, 18.0, 3).astype(np.float32)
    axis = np.arange(m, dtype=np.float32) / m
    if rng.random() < 0.6:
        angle = rng.uniform(0.0, 2 * math.pi)
        t = axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)
    else:  # a light falling off around a random point
        x0, y0 = rng.uniform(-0.2, 1.2, 2)
        t = np.sqrt((axis[None, :] - x0) ** 2 + (axis[:, None] - y0) ** 2)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = t ** np.float32(rng.uniform(0.5, 2.0))
    pixels = a + (b - a) * t[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    # Large soft patches of light and shade: the coarse layout differs from photo to photo,
    # as it does in real photos (and as perceptual-hash leakage checks assume).
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(-0.1, 1.1, 2) * m
        rx, ry = rng.uniform(0.1, 0.45, 2) * m
        tone = (a + b) / 2 + rng.uniform(-90.0, 90.0) + rng.normal(0.0, 15.0, 3)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_rgb(tone))
    image = image.filter(ImageFilter.GaussianBlur(radius=m * 0.08))

    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 11))):
        green = np.array((50, 110, 40), dtype=float) * rng.uniform(0.5, 1.5) + rng.normal(0.0, 12.0, 3)
        _leaf(draw, rng, *rng.uniform(-0.1, 1.1, 2) * m, m * rng.uniform(0.12, 0.4), green)
    for _ in range(int(rng.integers(0, 8))):
        x = rng.uniform(0.0, m)
        blade = [(x, m), (x + rng.normal(0.0, 0.12) * m, m * rng.uniform(0.3, 0.9))]
        draw.line(blade, fill=_rgb(np.array((70, 130, 50)) * rng.uniform(0.6, 1.3)), width=max(1, round(m * 0.012)))
    image = image.filter(ImageFilter.GaussianBlur(radius=max(0.8, m * rng.uniform(0.004, 0.02))))
    return image.resize((n, n), Image.Resampling.BILINEAR)


_NOISE_LEVELS = (1.5, 3.0, 4.5, 6.0)  # sensor noise standard deviations, in 0-255 units
_NOISE: dict[int, list] = {}


def _noise_images(n: int) -> list:
    """Per noise level, a fixed (2n)x(2n) RGB image of 128 + Gaussian noise.

    Fresh noise per image would cost more than drawing the image; a random crop of a shared
    field looks the same to a model, is just as deterministic, and lets Pillow add it in C.
    """
    from PIL import Image

    if n not in _NOISE:
        unit = np.random.default_rng(20200101).standard_normal((2 * n, 2 * n, 3), dtype=np.float32)
        _NOISE.clear()  # one canvas size per dataset; keep memory flat
        _NOISE[n] = [Image.fromarray(np.clip(unit * sigma + 128.5, 0, 255).astype(np.uint8), "RGB") for sigma in _NOISE_LEVELS]
    return _NOISE[n]


def _render(seed: int, label: int, index: int, canvas: int):
    """One image (PIL, ``canvas`` px) of class ``label``; depends only on its arguments."""
    from PIL import ImageChops, ImageDraw

    rng = np.random.default_rng([seed, STREAM_IMAGE, label, index])
    sp = _species(label)[1]
    n = canvas
    image = _background(rng, n)
    draw = ImageDraw.Draw(image)

    if rng.random() < 0.35:  # a smaller flower of the same species further back
        _draw_flower(draw, rng, sp, *rng.uniform(-0.05, 1.05, 2) * n, n * rng.uniform(0.1, 0.2))
    cx, cy = n * (0.5 + rng.uniform(-0.14, 0.14, 2))
    radius = n * rng.uniform(0.24, 0.4)
    if rng.random() < 0.7:
        foot = (cx + rng.uniform(-0.3, 0.3) * n, n * 1.05)
        stem = _rgb(np.array((60, 120, 45)) * rng.uniform(0.7, 1.2))
        draw.line([(cx, cy), foot], fill=stem, width=max(1, round(n * 0.03)))
    _draw_flower(draw, rng, sp, cx, cy, radius)
    if rng.random() < 0.25:  # a leaf in front hides part of the flower
        angle = rng.uniform(0.0, 2 * math.pi)
        x, y = cx + radius * math.cos(angle), cy + radius * math.sin(angle)
        _leaf(draw, rng, x, y, radius * rng.uniform(0.6, 1.1), np.array((55, 115, 40)) * rng.uniform(0.7, 1.3))

    # Exposure and white balance of a different camera/day for every photo, then sensor noise.
    gains = rng.uniform(0.75, 1.15) * rng.uniform(0.92, 1.08, 3)
    image = image.point([min(255, int(v * g + 0.5)) for g in gains.tolist() for v in range(256)])
    noise = _noise_images(n)[int(rng.integers(len(_NOISE_LEVELS)))]
    x, y = (int(v) for v in rng.integers(0, n, 2))
    return ImageChops.add(image, noise.crop((x, y, x + n, y + n)), scale=1.0, offset=-128)


def encode(job: tuple[int, int, int, int, tuple[int, ...]]) -> dict[int, bytes]:
    """JPEG bytes of one image at every size (a process-pool task, hence one tuple argument)."""
    from PIL import Image

    seed, label, index, canvas, sizes = job
    image = _render(seed, label, index, canvas)
    out = {}
    for size in sizes:
        scaled = image if size == canvas else image.resize((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        scaled.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out[size] = buffer.getvalue()
    return out
