"""A deterministic synthetic dataset: a fair miniature of PASCAL VOC weak supervision.

Every image shows 1-4 large shapes (the foreground classes) over a cluttered,
textured background. Each class is a shape, and most objects (85%) also wear
shades of their class's own hue, as sky is blue and grass green on VOC:
backgrounds and distractors take any colour, so colour alone is ambiguous, but
the cue lets a tiny classifier trained from scratch on a CPU learn the classes
in minutes (with shape as the only cue it needs hours). Two context biases make weakly supervised
localisation as hard in the same ways as on VOC:

* ``triangle`` stands on a ``stripes`` background most of the time (boat on
  water), so a classifier may use the stripes as evidence for it and its CAM
  spreads onto them;
* ``cross`` is nearly always accompanied by a ``disc`` placed next to it
  (horse and person), so the CAM of one activates on the other.

Small distractor shapes that belong to no class lie in the background and
sometimes in front of objects. Masks mark a thin band along every object
boundary as ignore (255), like VOC's void borders, and image-level labels are
read off the final mask, so they always equal the classes present in it.

The tree written by :func:`make_toy` has VOC's layout plus IRN's
``cls_labels.npy``, so the VOC reader loads it unchanged.
"""
from __future__ import annotations

import colorsys
import contextlib
import functools
import json
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from wsss.io import IGNORE_INDEX, atomic_write, write_image, write_mask, write_text

TOY_VERSION = 2

TOY_CLASS_NAMES: list[str] = [
    "background", "disc", "square", "triangle", "cross", "ring", "star", "crescent", "ellipse",
]
SHAPES: list[str] = TOY_CLASS_NAMES[1:]

BACKGROUND_FAMILIES: list[str] = ["stripes", "noise", "checker", "gradient", "blobs"]
OBJECT_TEXTURES: list[str] = ["solid", "stripes", "checker", "noise", "gradient", "dots"]

# (class, background family, probability): the "boat on water" bias.
BACKGROUND_BIAS = ("triangle", "stripes", 0.8)
# (class, companion class, probability): the "horse with a rider" bias.
COMPANION_BIAS = ("cross", "disc", 0.85)

SPLITS = {"train": 0, "val": 1}
# VOC-like numeric ids ("2000_000123") so IRN's int(id without "_") keys are unique.
_ID_YEAR = {"train": 2000, "val": 2001}

# Number of objects per image: about half the images end up multi-label.
_NUM_OBJECTS_P = np.array([0.5, 0.3, 0.14, 0.06])
# Object radius as a fraction of the image side: diameters span 25-55% of it.
_RADIUS_RANGE = (0.125, 0.275)
# An object is kept only if this much of it stays visible (occlusion, border,
# ignore band), so every label is recognisable from what is left of it.
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_AREA = 0.012  # of the image area
_MIN_CONTRAST = 60.0  # RGB distance between an object's and its surround's mean colour
_CLASS_HUES = {name: i / len(SHAPES) for i, name in enumerate(SHAPES)}
_CLASS_HUE_P = 0.85


@dataclass
class ToyScene:
    """One rendered sample. ``image``: (H, W, 3) uint8 RGB; ``mask``: (H, W) uint8,
    0 background, ``k`` = ``TOY_CLASS_NAMES[k]``, 255 ignore; ``instances``:
    (H, W) uint8, 0 background (distractors included), ``k`` the visible part of
    ``objects[k - 1]``; ``background``: the background texture family;
    ``objects``: class names in painting order (a class may repeat)."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    background: str
    objects: list[str] = field(default_factory=list)

    @property
    def label(self) -> np.ndarray:
        """Multi-hot over the foreground classes present in the mask, ``(len(SHAPES),)`` float32."""
        return labels_from_mask(self.mask)


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """Multi-hot ``(len(SHAPES),)`` float32 of the classes in a mask (0 and 255 excluded)."""
    present = np.unique(mask)
    present = present[(present > 0) & (present != IGNORE_INDEX)]
    label = np.zeros(len(SHAPES), dtype=np.float32)
    label[present.astype(np.int64) - 1] = 1.0
    return label


def toy_id(split: str, index: int) -> str:
    """Image id of sample ``index`` of ``split``, e.g. ``2000_000042``."""
    return f"{_ID_YEAR[split]}_{index:06d}"


# -- drawing primitives ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each (size, size) float32 in pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """Any colour, or with ``hue`` a clearly saturated, bright colour of that hue."""
    if hue is None:
        hue = rng.random()
        s = rng.uniform(0.15, 1.0)
        v = rng.uniform(0.2, 1.0)
    else:
        s = rng.uniform(0.55, 1.0)
        v = rng.uniform(0.5, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, s, v), dtype=np.float32) * 255.0


def _colour_pair(rng: np.random.Generator, hue: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    c1 = _random_colour(rng, hue)
    # Half the time the second colour is a shade of the first (subtle texture),
    # otherwise unrelated (high-contrast texture); a class-coloured object is always in shades.
    if hue is not None or rng.random() < 0.5:
        c2 = np.clip(c1 * rng.uniform(0.4, 1.6) + rng.normal(0, 15, 3), 0, 255).astype(np.float32)
    else:
        c2 = _random_colour(rng)
    return c1, c2


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in [0, 1], (size, size) float32; ``cells`` sets the blob count."""
    coarse = rng.random((cells + 1, cells + 1), dtype=np.float32)
    noise = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(noise.min()), float(noise.max())
    return (noise - lo) / max(hi - lo, 1e-6)


def _texture(rng: np.random.Generator, kind: str, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """A (size, size, 3) float32 texture in [0, 255] mixing colours ``c1`` and ``c2``.

    Frequencies are relative to the image side so the look does not change with ``size``.
    """
    yy, xx = _grid(size)
    y, x = yy / size, xx / size
    angle = rng.uniform(0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    if kind == "solid":
        t = np.zeros((size, size), np.float32)
    elif kind == "stripes":
        period = rng.uniform(0.05, 0.16)
        wave = np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        t = np.clip(wave * rng.uniform(1.0, 4.0), -1, 1) * 0.5 + 0.5
    elif kind == "checker":
        cell = rng.uniform(0.05, 0.15)
        across = -x * np.sin(angle) + y * np.cos(angle)
        t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    elif kind == "noise":
        t = _smooth_noise(rng, size, int(rng.integers(4, 14)))
        t = np.clip(t + rng.normal(0, 0.12, (size, size)).astype(np.float32), 0, 1)
    elif kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "blobs":
        t = _smooth_noise(rng, size, int(rng.integers(3, 7)))
        t = np.clip((t - 0.5) * rng.uniform(4, 12) + 0.5, 0, 1)
    elif kind == "dots":
        pitch = rng.uniform(0.08, 0.16)
        across = -x * np.sin(angle) + y * np.cos(angle)
        du = (along / pitch) % 1.0 - 0.5
        dv = (across / pitch) % 1.0 - 0.5
        t = (du * du + dv * dv < rng.uniform(0.05, 0.18)).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    t = t.astype(np.float32)[..., None]
    return c1 * (1 - t) + c2 * t


def _shape_mask(rng: np.random.Generator, kind: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean (size, size) mask of one class shape, no anti-aliasing.

    The shape is defined implicitly in rotated coordinates ``(u, v)`` normalised
    by ``radius``, so every class covers roughly the same extent.
    """
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(a) + dy * np.sin(a)) / radius
    v = (-dx * np.sin(a) + dy * np.cos(a)) / radius
    if kind == "disc":
        u = u * rng.uniform(0.92, 1.08)
        return u * u + v * v <= 1.0
    if kind == "ellipse":
        minor = rng.uniform(0.42, 0.58)
        return u * u + (v / minor) ** 2 <= 1.0
    if kind == "square":
        half = 0.8
        aspect = rng.uniform(0.85, 1.15)
        return np.maximum(np.abs(u) * aspect, np.abs(v)) <= half
    if kind == "triangle":
        v = v * rng.uniform(0.8, 1.2)
        inside = np.ones((size, size), bool)
        for k in range(3):
            phi = np.pi / 2 + k * 2 * np.pi / 3
            # Edge normals of an equilateral triangle with circumradius 1: inradius 0.5.
            inside &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
        return inside
    if kind == "cross":
        arm = rng.uniform(0.28, 0.38)
        au, av = np.abs(u), np.abs(v)
        return ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0))
    if kind == "ring":
        r2 = u * u + v * v
        inner = rng.uniform(0.35, 0.55)
        return (r2 <= 1.0) & (r2 >= inner * inner)
    if kind == "star":
        points = 5
        half_step = np.pi / points
        inner = rng.uniform(0.38, 0.5)
        r = np.sqrt(u * u + v * v)
        # Fold the angle onto one half-spike [0, half_step]: the edge runs from the
        # tip (1, 0) to the inner vertex at angle half_step.
        theta = np.abs((np.arctan2(v, u) + half_step) % (2 * half_step) - half_step)
        px, py = r * np.cos(theta), r * np.sin(theta)
        ix, iy = inner * np.cos(half_step), inner * np.sin(half_step)
        return (ix - 1.0) * py - iy * (px - 1.0) >= 0
    if kind == "crescent":
        # Thick enough that the ignore band leaves a body at 64 px.
        offset = rng.uniform(0.45, 0.6)
        bite = rng.uniform(0.7, 0.85)
        return (u * u + v * v <= 1.0) & ((u - offset) ** 2 + v * v > bite * bite)
    raise ValueError(f"unknown shape {kind!r}")


def _clutter_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a small distractor that belongs to no class:
    a thick line, a short zigzag or an irregular blob, 4-14% of the image side."""
    extent = rng.uniform(0.04, 0.14) * size
    cx, cy = rng.uniform(0, size, 2)
    canvas = np.zeros((size, size), np.uint8)
    kind = rng.integers(3)
    thickness = max(1, int(round(rng.uniform(0.008, 0.025) * size)))
    if kind == 0:
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * extent
        p0 = np.round([cx - d[0], cy - d[1]]).astype(int)
        p1 = np.round([cx + d[0], cy + d[1]]).astype(int)
        cv2.line(canvas, tuple(int(c) for c in p0), tuple(int(c) for c in p1), 1, thickness, cv2.LINE_8)
    elif kind == 1:
        n = int(rng.integers(3, 6))
        pts = np.stack([cx + np.linspace(-extent, extent, n), cy + rng.uniform(-0.5, 0.5, n) * extent], 1)
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    else:
        n = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.3, 1.0, n) * extent * 0.6
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    return canvas.astype(bool)


def _ignore_band(instances: np.ndarray, size: int) -> np.ndarray:
    """Pixels within ~1 px (scaled with ``size``) of a change of instance id: a band
    about 2 px wide at 128 px, on both sides of every object boundary."""
    r = max(1, int(round(size / 128)))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


# -- scene composition ---------------------------------------------------------------------


def _choose_classes(rng: np.random.Generator) -> list[tuple[str, bool]]:
    """Classes to place, each with a flag "place next to the previous object"."""
    n = int(rng.choice(len(_NUM_OBJECTS_P), p=_NUM_OBJECTS_P)) + 1
    classes = [(SHAPES[int(i)], False) for i in rng.integers(len(SHAPES), size=n)]
    owner, companion, p = COMPANION_BIAS
    names = [c for c, _ in classes]
    if owner in names and companion not in names and rng.random() < p:
        at = names.index(owner)
        # The companion is painted right after its owner so it can sit beside it;
        # another object makes room when the image is already full.
        others = (classes[:at] + classes[at + 1:])[: len(_NUM_OBJECTS_P) - 2]
        at = min(at, len(others))
        classes = others[:at] + [(owner, False), (companion, True)] + others[at:]
    return classes


def _choose_background(rng: np.random.Generator, classes: list[str]) -> str:
    cls, family, p = BACKGROUND_BIAS
    if cls in classes and rng.random() < p:
        return family
    return BACKGROUND_FAMILIES[int(rng.integers(len(BACKGROUND_FAMILIES)))]


def _visible_ok(instances: np.ndarray, size: int, full_areas: list[int]) -> bool:
    """True when every object keeps enough pixels outside the ignore band."""
    band = _ignore_band(instances, size)
    counts = np.bincount(instances[~band], minlength=len(full_areas) + 1)
    min_area = _MIN_VISIBLE_AREA * size * size
    return all(
        counts[k + 1] >= max(_MIN_VISIBLE_FRACTION * area, min_area) for k, area in enumerate(full_areas)
    )


def _object_appearance(
    rng: np.random.Generator, cls: str, size: int, shape: np.ndarray, canvas: np.ndarray
) -> np.ndarray:
    """Texture for one object that stands out from what lies under it: the best
    of a few draws by contrast of mean colour, (size, size, 3) float32."""
    surround = canvas[shape].mean(axis=0)
    best, best_contrast = None, -1.0
    for _ in range(6):
        hue = None
        if rng.random() < _CLASS_HUE_P:
            hue = _CLASS_HUES[cls] + rng.normal(0, 0.04)
        c1, c2 = _colour_pair(rng, hue)
        kind = OBJECT_TEXTURES[int(rng.integers(len(OBJECT_TEXTURES)))]
        tex = _texture(rng, kind, size, c1, c2)
        # Shading across the object gives it some volume and varies its mean colour.
        yy, xx = _grid(size)
        a = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(a) + yy * np.sin(a)) / size
        tex = tex * (1.0 + rng.uniform(0.0, 0.5) * (ramp - ramp.mean()))[..., None]
        contrast = float(np.linalg.norm(tex[shape].mean(axis=0) - surround))
        if contrast > best_contrast:
            best, best_contrast = tex, contrast
        if contrast >= _MIN_CONTRAST:
            break
    return best


def render_toy(seed: int, split: str, index: int, size: int = 128) -> ToyScene:
    """Render sample ``index`` of ``split`` ('train' or 'val').

    The random stream is seeded from ``(seed, split, index, size)`` alone, so a
    sample does not depend on which worker renders it or in which order.
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, size])
    plan = _choose_classes(rng)
    background = _choose_background(rng, [c for c, _ in plan])

    c1, c2 = _colour_pair(rng)
    canvas = _texture(rng, background, size, c1, c2)
    for _ in range(int(rng.integers(2, 8))):
        clutter = _clutter_mask(rng, size)
        if clutter.any():
            cc1, cc2 = _colour_pair(rng)
            canvas[clutter] = _texture(rng, "solid" if rng.random() < 0.6 else "noise", size, cc1, cc2)[clutter]

    instances = np.zeros((size, size), np.uint8)
    placed: list[str] = []
    areas: list[int] = []
    centres: list[tuple[float, float, float]] = []
    for cls, beside_previous in plan:
        for attempt in range(12):
            lo, hi = _RADIUS_RANGE
            if not placed and attempt >= 6:
                # Small thin shapes can vanish under the ignore band at small sizes;
                # a central object at full size always survives, so no image is unlabelled.
                lo = hi
            radius = rng.uniform(lo, hi) * size
            if beside_previous and centres:
                px, py, pr = centres[-1]
                a = rng.uniform(0, 2 * np.pi)
                dist = (pr + radius) * rng.uniform(0.6, 0.95)
                cx, cy = px + dist * np.cos(a), py + dist * np.sin(a)
                # Centres stay near the image, as for other objects, so the
                # border never leaves just a sliver of the companion.
                if not (-0.05 * size <= min(cx, cy) and max(cx, cy) <= 1.05 * size):
                    continue
            elif not placed:
                # The first object stays central so every image has a clearly visible one.
                cx, cy = rng.uniform(0.3, 0.7, 2) * size
            else:
                cx, cy = rng.uniform(-0.05, 1.05, 2) * size
            shape = _shape_mask(rng, cls, size, cx, cy, radius)
            trial = instances.copy()
            trial[shape] = len(placed) + 1
            if shape.any() and _visible_ok(trial, size, areas + [int(shape.sum())]):
                break
        else:
            continue  # no attempt left it visible: leave the object out
        canvas[shape] = _object_appearance(rng, cls, size, shape, canvas)[shape]
        instances = trial
        placed.append(cls)
        areas.append(int(shape.sum()))
        centres.append((cx, cy, radius))

    # Distractors in front of objects: they occlude and belong to the background.
    for _ in range(int(rng.integers(0, 3))):
        clutter = _clutter_mask(rng, size)
        trial = instances.copy()
        trial[clutter] = 0
        if clutter.any() and _visible_ok(trial, size, areas):
            cc1, cc2 = _colour_pair(rng)
            canvas[clutter] = _texture(rng, "solid", size, cc1, cc2)[clutter]
            instances = trial

    class_of_instance = np.array([0] + [TOY_CLASS_NAMES.index(c) for c in placed], np.uint8)
    mask = class_of_instance[instances]
    mask[_ignore_band(instances, size)] = IGNORE_INDEX

    # Camera-like finish: uneven lighting, sensor noise and slight blur.
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.3) * ((xx * np.cos(a) + yy * np.sin(a)) / size - 0.5)
    image = canvas * light[..., None] + rng.normal(0, rng.uniform(2, 6), canvas.shape).astype(np.float32)
    image = cv2.GaussianBlur(np.clip(image, 0, 255), (0, 0), 0.6 * max(1.0, size / 128))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return ToyScene(image=image, mask=mask, instances=instances, background=background, objects=placed)


# -- writing the tree ----------------------------------------------------------------------


def _write_sample(job: tuple[str, int, int, int, str]) -> tuple[str, list[int]]:
    """Render and write one sample (runs in workers); returns its id and the
    indices of its label's foreground classes.

    Plain ints rather than the label array travel back, because an array
    unpickled from a worker pickles to other bytes than a local one and
    ``cls_labels.npy`` must not depend on ``workers``.
    """
    split, index, seed, size, root = job
    scene = render_toy(seed, split, index, size)
    image_id = toy_id(split, index)
    write_image(Path(root) / "JPEGImages" / f"{image_id}.jpg", scene.image, quality=95)
    write_mask(Path(root) / "SegmentationClass" / f"{image_id}.png", scene.mask)
    return image_id, np.flatnonzero(scene.label).tolist()


def _init_worker() -> None:
    # Workers are already one per core; OpenCV's own threads would oversubscribe; and they end with their parent.
    from wsss.engine.workers import init_render_worker

    init_render_worker()


def _expected_files(root: Path, ids: dict[str, list[str]]) -> list[Path]:
    files = [root / "class_names.txt", root / "cls_labels.npy"]
    files += [root / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val", "train_aug")]
    for split_ids in ids.values():
        for image_id in split_ids:
            files.append(root / "JPEGImages" / f"{image_id}.jpg")
            files.append(root / "SegmentationClass" / f"{image_id}.png")
    return files


def make_toy(
    out: str | Path,
    *,
    size: int = 128,
    num_train: int = 2000,
    num_val: int = 300,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Generate the toy dataset under ``out`` in VOC layout and return ``out``.

    Writes ``JPEGImages/<id>.jpg`` (size x size RGB), ``SegmentationClass/<id>.png``
    (VOC-palette class indices, 255 ignore band on boundaries),
    ``ImageSets/Segmentation/{train,val,train_aug}.txt``, ``class_names.txt``,
    ``cls_labels.npy`` (IRN's dict: int id -> (num_fg,) float32 multi-hot) and
    ``toy_info.json``. The output depends only on ``size``, the counts and
    ``seed``, not on ``workers``. When ``toy_info.json`` matches these parameters
    and every file exists the call returns at once; the info file is written
    last, so an interrupted run is regenerated. Files of an earlier, larger run
    are left in place; the split lists name the current ones.

    ``workers`` > 1 renders in spawned processes, which re-import the caller's
    ``__main__``: a script calling this needs an ``if __name__ == "__main__":`` guard.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one train and one val image, got {num_train} and {num_val}")
    root = Path(out)
    info = {
        "generator": "wsss.data.toy",
        "version": TOY_VERSION,
        "size": size,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "class_names": TOY_CLASS_NAMES,
    }
    ids = {
        "train": [toy_id("train", i) for i in range(num_train)],
        "val": [toy_id("val", i) for i in range(num_val)],
    }
    info_path = root / "toy_info.json"
    if info_path.is_file():
        try:
            previous = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == info and all(p.is_file() for p in _expected_files(root, ids)):
            return root
        # Drop the stale marker first: a run interrupted from here on must not pass as complete.
        info_path.unlink()

    jobs = [(split, i, seed, size, str(root)) for split in ("train", "val") for i in range(len(ids[split]))]
    labels: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(jobs), desc=f"toy dataset {size}px", unit="img", disable=not progress)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker))
            results = pool.imap(_write_sample, jobs, chunksize=32)
        else:
            results = map(_write_sample, jobs)
        for image_id, present in results:
            label = np.zeros(len(SHAPES), dtype=np.float32)
            label[present] = 1.0
            labels[int(image_id.replace("_", ""))] = label
            bar.update()
    bar.close()

    lists = root / "ImageSets" / "Segmentation"
    write_text(lists / "train.txt", "\n".join(ids["train"]) + "\n")
    write_text(lists / "train_aug.txt", "\n".join(ids["train"]) + "\n")
    write_text(lists / "val.txt", "\n".join(ids["val"]) + "\n")
    write_text(root / "class_names.txt", "\n".join(TOY_CLASS_NAMES) + "\n")
    atomic_write(root / "cls_labels.npy", lambda tmp: np.save(tmp, labels, allow_pickle=True))
    write_text(info_path, json.dumps(info, indent=2) + "\n")
    return root
