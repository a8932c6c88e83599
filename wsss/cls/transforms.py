"""IRN's classification augmentation, driven by an explicit random generator.

Each sample draws from ``np.random.default_rng([seed, epoch, index])``, so the
augmentation of an image depends only on those three numbers: a run resumed
mid-epoch, or split over several processes, sees exactly the same crops.
"""
from __future__ import annotations

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet colour normalisation."""
    return ((image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def resize_long(image: np.ndarray, long_side: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interp)


def random_crop(arrays: list[np.ndarray], crop: int, rng: np.random.Generator, fills: list[float]) -> list[np.ndarray]:
    """Crop (or pad, then crop) all arrays to ``crop x crop`` at one random place.

    Arrays are (H, W, ...) with equal H, W; padding uses each array's fill value
    (0 for a normalised image, i.e. the mean colour; 255 for masks).
    """
    h, w = arrays[0].shape[:2]
    ph, pw = max(crop, h), max(crop, w)
    top_pad = int(rng.integers(0, ph - h + 1))
    left_pad = int(rng.integers(0, pw - w + 1))
    y0 = int(rng.integers(0, ph - crop + 1))
    x0 = int(rng.integers(0, pw - crop + 1))
    out = []
    for a, fill in zip(arrays, fills):
        canvas = np.full((ph, pw) + a.shape[2:], fill, dtype=a.dtype)
        canvas[top_pad : top_pad + h, left_pad : left_pad + w] = a
        out.append(canvas[y0 : y0 + crop, x0 : x0 + crop])
    return out


def cls_train_transform(
    image: np.ndarray, rng: np.random.Generator, *, resize_range: tuple[int, int], crop: int, flip: bool = True,
    mask: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """IRN's recipe: random long-side resize, horizontal flip, normalise, random crop.

    Returns (3, crop, crop) float32; with ``mask`` ((H, W) uint8 class ids) also
    the mask put through the same resize (nearest), flip and crop, padded with
    255, as (crop, crop) int64 (partial pooling's region labels, PCAA Eq. 4).
    """
    long_side = int(rng.integers(resize_range[0], resize_range[1] + 1))
    image = resize_long(image, long_side)
    if mask is not None:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    hwc = normalize(np.ascontiguousarray(image)).transpose(1, 2, 0)
    if mask is None:
        (hwc,) = random_crop([hwc], crop, rng, [0.0])
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))
    hwc, mask = random_crop([hwc, mask], crop, rng, [0.0, 255])
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)), mask.astype(np.int64)
