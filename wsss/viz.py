"""Pictures of CAMs and masks: one row per image, so a user can see why a figure
is what it is (image | a heatmap per class | seed mask | boundary map | IR label |
pseudo mask | ground truth)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from wsss.cam.files import load_cam
from wsss.data.base import SegDataset
from wsss.io import WsssDataError, read_mask, voc_palette, write_image
from wsss.eval.metrics import cam_to_mask

_PALETTE = voc_palette()


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the VOC colours (255 = cream border)."""
    return _PALETTE[mask]


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map over an RGB image with the jet colour map."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (image * (1 - alpha) + heat * alpha).astype(np.uint8)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    scale = max(0.3, tile.shape[1] / 400)
    cv2.putText(tile, text, (3, int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (3, int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def boundary_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A boundary map PNG (stride 4, ``ceil(H/4) x ceil(W/4)``, or full size) as an (H, W) uint8
    picture: upsampled x4 bilinearly (as the walk's scores are) and cropped to ``size``."""
    b = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if b is None:
        raise WsssDataError(f"cannot read the boundary map {path}: is it a make-pseudo --refine irn boundary/ folder?")
    h, w = size
    if b.shape == (h, w):
        return b
    if b.shape != (-(-h // 4), -(-w // 4)):
        raise WsssDataError(f"boundary map {path} is {b.shape[1]}x{b.shape[0]}; the image ({w}x{h}) needs "
                            f"{-(-w // 4)}x{-(-h // 4)} (stride 4): were they made from these images?")
    up = cv2.resize(b, (4 * b.shape[1], 4 * b.shape[0]), interpolation=cv2.INTER_LINEAR)
    return up[:h, :w]


def cam_grid(
    ds: SegDataset,
    ids: Sequence[str],
    out: str | Path,
    *,
    cam_dirs: dict[str, str | Path] | None = None,
    mask_dirs: dict[str, str | Path] | None = None,
    boundary_dirs: dict[str, str | Path] | None = None,
    threshold: float = 0.25,
    tile: int = 160,
) -> Path:
    """Write a PNG grid: per image, the image, for each named CAM folder the
    heatmap of each of the image's classes and the seed at ``threshold``, each
    named boundary folder (``make-pseudo --refine irn``'s ``boundary/``: 8-bit
    PNGs at stride 4, white = boundary), each named mask folder (IR labels,
    pseudo masks, predictions; 255 in cream) and the ground truth."""
    rows = []
    for image_id in ids:
        sample = ds.load(image_id)
        img = sample.image
        tiles = [_label(img, image_id)]
        for name, cdir in (cam_dirs or {}).items():
            c = load_cam(cdir, image_id)
            for plane, key in zip(c["high_res"], c["keys"]):
                tiles.append(_label(heatmap_overlay(img, plane), f"{name}: {ds.class_names[key + 1]}"))
            seed = cam_to_mask(c["high_res"], c["keys"] + 1, threshold)
            tiles.append(_label(colorize_mask(seed), f"{name} seed @{threshold:g}"))
        for name, bdir in (boundary_dirs or {}).items():
            b = boundary_image(Path(bdir) / f"{image_id}.png", img.shape[:2])
            tiles.append(_label(np.repeat(b[..., None], 3, axis=2), name))
        for name, mdir in (mask_dirs or {}).items():
            tiles.append(_label(colorize_mask(read_mask(Path(mdir) / f"{image_id}.png")), name))
        if sample.mask is not None:
            tiles.append(_label(colorize_mask(sample.mask), "ground truth"))
        rows.append(tiles)
    width = max(len(r) for r in rows)
    blank = np.full((tile, tile, 3), 255, np.uint8)
    grid_rows = []
    for r in rows:
        scaled = [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_NEAREST) for t in r]
        scaled += [blank] * (width - len(scaled))
        grid_rows.append(np.concatenate(scaled, axis=1))
    grid = np.concatenate(grid_rows, axis=0)
    return write_image(out, grid)

