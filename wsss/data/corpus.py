"""A synthetic single-label pretraining corpus: the demo's stand-in for ImageNet.

The papers start every network from ImageNet weights (AD-CAM Fig. 2a and Sec. 4
step 1, IRN, PCAA); nothing can be downloaded on a first run, so ``wsss
pretrain`` trains the tiny backbones on this corpus instead. Its classes are
other shape families than :mod:`wsss.data.toy`'s eight classes (disc, square,
triangle, cross, ring, five-armed star, crescent, ellipse), none of them a near
copy of one, so the pretrained features know objects in general, not the
demo's classes:

* regular polygons with 5-7 sides, filled (``polygon5``..), and 5-6 as outlines (``outline5``..);
* stars with 6-12 arms (``star6``..);
* rings of 4-11 dots (``dots4``..);
* 42 Fourier blobs, each a fixed closed curve ``r(t) = 1 + sum_k a_k cos(k t + p_k)``
  with coefficients drawn once from a fixed seed (``blob00``..);
* glyphs: Hershey-font letters and digits drawn by OpenCV, without those that look
  like a toy class (O, Q, C, D, G, X, T, I, 0 and 1 are left out) (``glyph_A``..);
* spirals of 1-4 turns (``spiral1``..);
* material classes: a fixed irregular blob filled with one of ten textures that
  no toy object wears (hexagon grid, concentric rings, zigzag, ...), where the
  texture is the class (``material_hex``..).

Each image holds one object of its class, rotated, scaled, in (for the shape
classes) any of the toy's object textures. As in the toy set, and as ImageNet's
classes have typical colours, most objects (85%) wear shades of their class's hue
(the hues of the 102 classes are spread by the golden ratio, so the hue tells a
class's neighbourhood, not the class); the rest take any colour. With shape as the
only cue a tiny network trained on a CPU stays near chance for hundreds of steps
(top-1 5% after 954 steps, corpus version 1). Objects lie on the toy's cluttered
textured backgrounds with distractors in front and behind, at the toy's image
scale. A sample depends only on ``(seed, split, index, size)``, so the corpus is
deterministic whichever process renders it.
"""
from __future__ import annotations

import functools
import string

import cv2
import numpy as np

from wsss.data.toy import (
    BACKGROUND_FAMILIES, OBJECT_TEXTURES, _clutter_mask, _colour_pair, _grid, _texture,
)

CORPUS_VERSION = 2
_SPLITS = {"train": 0, "val": 1}
_CLASS_HUE_P = 0.85
_BLOB_SEED = 20261201

# Polygons stop at 7 sides and outlines at 6: more sides would pass for the toy's disc and ring.
_POLYGONS = list(range(5, 8))
_OUTLINES = list(range(5, 7))
_STARS = list(range(6, 13))
_DOT_RINGS = list(range(4, 12))
_NUM_BLOBS = 42
# Letters and digits whose outline could pass for a toy class (ring, disc, crescent, cross) are left out.
_GLYPH_EXCLUDED = set("OQCDGXTI01")
_GLYPHS = [c for c in string.ascii_uppercase + string.digits if c not in _GLYPH_EXCLUDED]
_SPIRALS = [1, 2, 3, 4]
MATERIALS = ["hex", "concentric", "zigzag", "crosshatch", "waves", "bricks", "scales", "speckle", "rays", "weave"]

CORPUS_CLASSES: list[str] = (
    [f"polygon{n}" for n in _POLYGONS]
    + [f"outline{n}" for n in _OUTLINES]
    + [f"star{n}" for n in _STARS]
    + [f"dots{n}" for n in _DOT_RINGS]
    + [f"blob{i:02d}" for i in range(_NUM_BLOBS)]
    + [f"glyph_{c}" for c in _GLYPHS]
    + [f"spiral{n}" for n in _SPIRALS]
    + [f"material_{m}" for m in MATERIALS]
)
"""Names of the corpus's classes, in label order (more than 100, disjoint from the toy's)."""

_FAMILIES = ("polygon", "outline", "star", "dots", "blob", "glyph", "spiral", "material")


@functools.lru_cache(maxsize=1)
def _blob_coefficients() -> np.ndarray:
    """(NUM_BLOBS, 4, 2): amplitude and phase of harmonics 2..5 of each blob class.

    Drawn once from a fixed seed and kept only when the curve differs enough from a
    circle (and so from the toy's disc and ellipse): the radius must vary by 40%.
    """
    rng = np.random.default_rng(_BLOB_SEED)
    t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    out = []
    while len(out) < _NUM_BLOBS:
        amp = rng.uniform(0.0, 0.3, 4) * (rng.random(4) < 0.75)
        phase = rng.uniform(0, 2 * np.pi, 4)
        r = 1 + sum(amp[i] * np.cos((i + 2) * t + phase[i]) for i in range(4))
        if r.min() > 0.3 and (r.max() - r.min()) / r.max() >= 0.4:
            out.append(np.stack([amp, phase], 1))
    return np.array(out, np.float32)


def _polygon_points(n: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    a = angle + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], 1)


def _fill(size: int, pts: np.ndarray) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _curve(rng: np.random.Generator, name: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean (size, size) mask of one object of class ``name``."""
    angle = rng.uniform(0, 2 * np.pi)
    family = next(f for f in _FAMILIES if name.startswith(f))
    if family == "polygon":
        return _fill(size, _polygon_points(int(name[7:]), cx, cy, radius, angle))
    if family == "outline":
        canvas = np.zeros((size, size), np.uint8)
        pts = _polygon_points(int(name[7:]), cx, cy, radius, angle)
        thick = max(2, int(round(radius * rng.uniform(0.18, 0.28))))
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], True, 1, thick, cv2.LINE_8)
        return canvas.astype(bool)
    if family == "star":
        n = int(name[4:])
        inner = rng.uniform(0.4, 0.55)
        a = angle + np.arange(2 * n) * np.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner) * radius
        return _fill(size, np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1))
    if family == "dots":
        n = int(name[4:])
        dot = radius * rng.uniform(0.17, 0.24) * (8 / max(n, 8)) ** 0.5
        canvas = np.zeros((size, size), np.uint8)
        for p in _polygon_points(n, cx, cy, radius - dot, angle):
            cv2.circle(canvas, (int(round(p[0])), int(round(p[1]))), max(1, int(round(dot))), 1, -1)
        return canvas.astype(bool)
    if family == "blob":
        coef = _blob_coefficients()[int(name[4:])]
        t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        jitter = rng.normal(1.0, 0.05, 4)
        r = 1 + sum(coef[i, 0] * jitter[i] * np.cos((i + 2) * t + coef[i, 1]) for i in range(4))
        r = r / r.max() * radius
        return _fill(size, np.stack([cx + r * np.cos(t + angle), cy + r * np.sin(t + angle)], 1))
    if family == "glyph":
        return _glyph(rng, name[6:], size, cx, cy, radius, angle)
    if family == "spiral":
        turns = int(name[6:])
        t = np.linspace(0, 2 * np.pi * turns, 120 * turns)
        r = radius * (0.15 + 0.85 * t / t[-1])
        pts = np.stack([cx + r * np.cos(t + angle), cy + r * np.sin(t + angle)], 1)
        canvas = np.zeros((size, size), np.uint8)
        thick = max(2, int(round(radius * 0.5 / (turns + 1))))
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 1, thick, cv2.LINE_8)
        return canvas.astype(bool)
    if family == "material":
        # One fixed kind of outline for every material: the texture alone tells them apart.
        t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        r = radius * (1 + 0.15 * np.cos(3 * t + rng.uniform(0, 6.3)) + rng.normal(0, 0.03, t.size))
        return _fill(size, np.stack([cx + r * np.cos(t + angle), cy + r * np.sin(t + angle)], 1))
    raise ValueError(f"unknown corpus class {name!r}")


def _glyph(rng: np.random.Generator, char: str, size: int, cx: float, cy: float, radius: float,
           angle: float) -> np.ndarray:
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)
    font = fonts[int(rng.integers(len(fonts)))]
    (w, h), _ = cv2.getTextSize(char, font, 1.0, 1)
    scale = 2 * radius / max(w, h)
    thick = max(2, int(round(scale * rng.uniform(2.5, 4.0))))
    (w, h), base = cv2.getTextSize(char, font, scale, thick)
    side = int(2 * max(w, h + base)) + 4
    tile = np.zeros((side, side), np.uint8)
    cv2.putText(tile, char, ((side - w) // 2, (side + h) // 2), font, scale, 1, thick, cv2.LINE_8)
    # Rotate within +-35 degrees: a glyph keeps its reading direction, so 'N' and 'Z' stay apart.
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), float(np.degrees(angle) % 70 - 35), 1.0)
    rot[:, 2] += (cx - side / 2, cy - side / 2)
    return cv2.warpAffine(tile, rot, (size, size), flags=cv2.INTER_NEAREST).astype(bool)


def _material(rng: np.random.Generator, kind: str, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 texture of one material class, frequencies relative to the image side."""
    yy, xx = _grid(size)
    y, x = yy / size, xx / size
    a = rng.uniform(0, np.pi)
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    p = rng.uniform(0.06, 0.1)
    if kind == "hex":
        q = np.stack([u / p, (u * 0.5 + v * np.sqrt(3) / 2) / p, (-u * 0.5 + v * np.sqrt(3) / 2) / p])
        t = (np.abs(np.sin(np.pi * q)).min(0) < 0.25).astype(np.float32)
    elif kind == "concentric":
        r = np.sqrt((x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2)
        t = (np.sin(2 * np.pi * r / p) > 0).astype(np.float32)
    elif kind == "zigzag":
        t = (np.sin(2 * np.pi * (v + 0.5 * p * np.abs(((u / p) % 2) - 1)) / (0.5 * p)) > 0).astype(np.float32)
    elif kind == "crosshatch":
        t = ((np.abs(np.sin(np.pi * (u + v) / p)) < 0.3) | (np.abs(np.sin(np.pi * (u - v) / p)) < 0.3)).astype(np.float32)
    elif kind == "waves":
        t = (np.sin(2 * np.pi * (v + 0.3 * p * np.sin(2 * np.pi * u / (2 * p))) / p) > 0.3).astype(np.float32)
    elif kind == "bricks":
        row = np.floor(v / p)
        shift = (row % 2) * 0.5
        t = (((v / p) % 1 < 0.18) | (((u / (2 * p) + shift) % 1) < 0.09)).astype(np.float32)
    elif kind == "scales":
        row = np.floor(v / p)
        uu = (u / p + 0.5 * (row % 2)) % 1 - 0.5
        vv = (v / p) % 1
        t = ((uu * uu + vv * vv) < 0.25).astype(np.float32)
    elif kind == "speckle":
        t = (rng.random((size, size)) < 0.12).astype(np.float32)
    elif kind == "rays":
        ang = np.arctan2(y - 0.5, x - 0.5)
        t = (np.sin(ang * int(rng.integers(10, 16)) + a) > 0).astype(np.float32)
    elif kind == "weave":
        t = np.where((np.floor(u / p) + np.floor(v / p)) % 2 == 0, (np.sin(np.pi * v / (p / 3)) > 0),
                     (np.sin(np.pi * u / (p / 3)) > 0)).astype(np.float32)
    else:
        raise ValueError(f"unknown material {kind!r}")
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def render_corpus_sample(seed: int, split: str, index: int, size: int = 128) -> tuple[np.ndarray, int]:
    """Sample ``index`` of ``split``: a (size, size, 3) uint8 RGB image and its class index.

    Classes cycle with ``index`` (balanced splits); everything else is drawn from a
    stream seeded by ``(seed, split, index, size)`` alone.
    """
    label = index % len(CORPUS_CLASSES)
    name = CORPUS_CLASSES[label]
    rng = np.random.default_rng([seed, 7_000 + _SPLITS[split], index, size])
    c1, c2 = _colour_pair(rng)
    canvas = _texture(rng, BACKGROUND_FAMILIES[int(rng.integers(len(BACKGROUND_FAMILIES)))], size, c1, c2)
    for _ in range(int(rng.integers(2, 8))):
        clutter = _clutter_mask(rng, size)
        cc1, cc2 = _colour_pair(rng)
        canvas[clutter] = _texture(rng, "solid" if rng.random() < 0.6 else "noise", size, cc1, cc2)[clutter]

    radius = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    shape = _curve(rng, name, size, cx, cy, radius)
    surround = canvas[shape].mean(axis=0) if shape.any() else canvas.reshape(-1, 3).mean(0)
    best, best_contrast = None, -1.0
    hue = (label * 0.6180339887) % 1.0 if rng.random() < _CLASS_HUE_P else None
    for _ in range(6):
        o1, o2 = _colour_pair(rng, None if hue is None else hue + rng.normal(0, 0.02))
        if name.startswith("material_"):
            # a material is seen by its pattern: its two colours always contrast
            o2 = 255.0 - o1 * rng.uniform(0.6, 1.0)
            tex = _material(rng, name[len("material_"):], size, o1, o2)
        else:
            tex = _texture(rng, OBJECT_TEXTURES[int(rng.integers(len(OBJECT_TEXTURES)))], size, o1, o2)
        contrast = float(np.linalg.norm(tex[shape].mean(axis=0) - surround)) if shape.any() else 0.0
        if contrast > best_contrast:
            best, best_contrast = tex, contrast
        if contrast >= 60.0:
            break
    canvas[shape] = best[shape]
    for _ in range(int(rng.integers(0, 3))):
        clutter = _clutter_mask(rng, size)
        cc1, cc2 = _colour_pair(rng)
        canvas[clutter] = _texture(rng, "solid", size, cc1, cc2)[clutter]

    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.3) * ((xx * np.cos(a) + yy * np.sin(a)) / size - 0.5)
    image = canvas * light[..., None] + rng.normal(0, rng.uniform(2, 6), canvas.shape).astype(np.float32)
    image = cv2.GaussianBlur(np.clip(image, 0, 255), (0, 0), 0.6 * max(1.0, size / 128))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label
