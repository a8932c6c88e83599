"""Image transforms every stage shares: ImageNet normalisation, resizing with IRN's kernels, random crops.

Every resize of the training and extraction stages goes through :func:`resize_to`: IRN's
kernels (``misc/imutils.py: pil_resize``: PIL bicubic for images, PIL nearest for labels) by
default, or OpenCV's (``kernel="opencv"``), which wsss used before and which each stage still
offers as its ``resize`` setting.
"""
from __future__ import annotations

import cv2
import numpy as np

from wsss.config import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet colour normalisation."""
    return ((image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


RESIZE_KERNELS = ("pil", "opencv")


def check_resize_kernel(kernel: str) -> None:
    """Refuse a ``resize`` setting other than ``pil`` or ``opencv`` (a :class:`ConfigError`)."""
    if kernel not in RESIZE_KERNELS:
        raise ConfigError(f"resize must be 'pil' or 'opencv', got '{kernel}'")


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(width, height)`` of an ``h x w`` image at ``scale``: IRN's ``pil_rescale`` size
    (``np.round``, which, like Python's ``round``, rounds halves to even), at least 1 pixel."""
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_to(image: np.ndarray, size: tuple[int, int], kernel: str = "pil", *, order: int = 3,
              opencv: int = cv2.INTER_CUBIC) -> np.ndarray:
    """``image`` ((H, W, 3) uint8, or an (H, W) uint8 label) resized to ``size = (width, height)``.

    ``kernel="pil"``: IRN's ``imutils.pil_resize(img, size, order)``: PIL bicubic for ``order=3``
    (which widens its kernel when downscaling, i.e. antialiases), PIL nearest for ``order=0``;
    the input itself when the size already matches. ``kernel="opencv"``: ``cv2.resize`` with the
    interpolation ``opencv`` (what each stage called before the setting existed: cubic for images
    in extract-cam and train-irn, linear for train-cls, nearest for labels).
    """
    check_resize_kernel(kernel)
    if kernel == "opencv":
        return cv2.resize(image, size, interpolation=opencv)
    if order not in (0, 3):
        raise ValueError(f"order must be 3 (bicubic) or 0 (nearest), got {order}")
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    from PIL import Image

    resample = Image.BICUBIC if order == 3 else Image.NEAREST
    return np.asarray(Image.fromarray(image).resize(tuple(size), resample=resample))


def resize_long(image: np.ndarray, long_side: int, kernel: str = "pil", interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` with its long side resized to ``long_side``: IRN's ``random_resize_long`` once it
    has drawn the side (``pil_rescale(img, long_side / max(h, w), 3)``, PIL bicubic) by default, or
    ``cv2.resize`` with ``interp`` (``kernel="opencv"``, train-cls's kernel before: linear)."""
    h, w = image.shape[:2]
    return resize_to(image, scaled_size(h, w, long_side / max(h, w)), kernel, order=3, opencv=interp)


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
