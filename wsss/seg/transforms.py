"""Segmentation training augmentation (mmseg's pipeline, as PCAA trains with it),
driven by an explicit random generator so that item ``i`` of epoch ``e`` is fixed
by ``(seed, e, i)`` like every other stage.

Steps: resize so the image fits ``(4 * base, base)`` (mmseg's ``img_scale``
``(2048, 512)`` for VOC and the PCAA recipes) times a random ratio in
``scale_range``; random crop with ``cat_max_ratio`` 0.75 (up to 10 tries to
find a crop where no single class covers more than 75% of the labelled pixels);
horizontal flip; photometric distortion; normalisation; padding to the crop
(image 0 after normalisation, label 255).
"""
from __future__ import annotations

import cv2
import numpy as np

from wsss.data.transforms import normalize
from wsss.io import IGNORE_INDEX


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion.convert``: ``img * alpha + beta``, clipped, back to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` (also PCAA's ``base_dataset.py``), each step with
    probability 0.5: brightness +-32, contrast x[0.5, 1.5] (before or after the colour steps),
    saturation x[0.5, 1.5], hue +-18 steps of OpenCV's 8-bit hue (0-180, so +-36 degrees). As
    there, every step clips and rounds down to uint8, and saturation and hue each convert to HSV
    and back on their own. (H, W, 3) uint8 RGB in and out (OpenCV's RGB<->HSV on RGB is its
    BGR<->HSV on BGR). Before this matched mmseg, hue moved +-18 degrees (half the range) and the
    image stayed in float between the brightness and contrast steps."""
    img = np.asarray(image, np.uint8)
    if rng.random() < 0.5:
        img = _convert(img, beta=rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        img = _convert(img, alpha=contrast)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = int(rng.integers(-18, 19)) if rng.random() < 0.5 else None
    if saturation is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast is not None and not contrast_first:
        img = _convert(img, alpha=contrast)
    return img


def _crop_box(label: np.ndarray, crop: int, rng: np.random.Generator, cat_max_ratio: float) -> tuple[int, int]:
    h, w = label.shape
    y0 = x0 = 0
    for _ in range(10):
        y0 = int(rng.integers(0, max(h - crop, 0) + 1))
        x0 = int(rng.integers(0, max(w - crop, 0) + 1))
        if cat_max_ratio >= 1:
            break
        counts = np.bincount(label[y0 : y0 + crop, x0 : x0 + crop].ravel(), minlength=256)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y0, x0


def seg_train_transform(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    base_size: int,
    scale_range: tuple[float, float],
    crop: int,
    cat_max_ratio: float = 0.75,
    photometric: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8, ``label`` (H, W) uint8 -> (3, crop, crop) float32
    and (crop, crop) int64 with 255 for void and padding."""
    h, w = label.shape
    fit = min(4 * base_size / max(h, w), base_size / min(h, w))
    scale = fit * float(rng.uniform(*scale_range))
    size = (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    y0, x0 = _crop_box(label, crop, rng, cat_max_ratio)
    image, label = image[y0 : y0 + crop, x0 : x0 + crop], label[y0 : y0 + crop, x0 : x0 + crop]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    x = np.zeros((3, crop, crop), np.float32)
    y = np.full((crop, crop), IGNORE_INDEX, np.int64)
    ch, cw = label.shape
    x[:, :ch, :cw] = normalize(np.ascontiguousarray(image))
    y[:ch, :cw] = label
    return x, y
