"""IRN's classification augmentation, driven by an explicit random generator.

Each sample draws from ``np.random.default_rng([seed, epoch, index])``, so the
augmentation of an image depends only on those three numbers: a run resumed
mid-epoch, or split over several processes, sees exactly the same crops.

The transforms it is made of, shared by every stage, live in :mod:`wsss.data.transforms`
(re-exported here).
"""
from __future__ import annotations

import cv2
import numpy as np

from wsss.data.transforms import (  # noqa: F401  (re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_KERNELS,
    check_resize_kernel,
    normalize,
    random_crop,
    resize_long,
    resize_to,
    scaled_size,
)


def cls_train_transform(
    image: np.ndarray, rng: np.random.Generator, *, resize_range: tuple[int, int], crop: int, flip: bool = True,
    mask: np.ndarray | None = None, resize: str = "pil",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """IRN's recipe: random long-side resize, horizontal flip, normalise, random crop.

    Returns (3, crop, crop) float32; with ``mask`` ((H, W) uint8 class ids) also
    the mask put through the same resize (nearest), flip and crop, padded with
    255, as (crop, crop) int64 (partial pooling's region labels, PCAA Eq. 4).
    ``resize``: ``pil`` (IRN's ``random_resize_long``: PIL bicubic; the mask PIL nearest) or
    ``opencv`` (the kernels before this setting: OpenCV linear, the mask OpenCV nearest).
    """
    check_resize_kernel(resize)
    long_side = int(rng.integers(resize_range[0], resize_range[1] + 1))
    image = resize_long(image, long_side, resize, interp=cv2.INTER_LINEAR)
    if mask is not None:
        mask = resize_to(mask, (image.shape[1], image.shape[0]), resize, order=0, opencv=cv2.INTER_NEAREST)
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    hwc = normalize(np.ascontiguousarray(image)).transpose(1, 2, 0)
    if mask is None:
        (hwc,) = random_crop([hwc], crop, rng, [0.0])
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))
    hwc, mask = random_crop([hwc, mask], crop, rng, [0.0, 255])
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)), mask.astype(np.int64)
