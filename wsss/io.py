"""File I/O shared by every stage: atomic writes, images, palette masks.

Every file a stage produces goes through :func:`atomic_write` (temp file in the
same folder + ``os.replace``), so an interrupted run never leaves a truncated
output behind and a rerun can trust that every file it finds is complete.
Masks are palette PNGs read and written with Pillow: OpenCV returns the
palette's colours, not the class indices, so it must not be used for masks.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255


class WsssDataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(256, 3)`` uint8, index 0 black, 255 ``(224, 224, 192)``."""
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


_PALETTE_BYTES = voc_palette().reshape(-1).tolist()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file keeps the destination's suffix so libraries that pick the
    format from the extension (Pillow, numpy) behave. On error it is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a metrics log); the line is written in a single call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as ``(H, W, 3)`` uint8; a missing or corrupt file raises
    :class:`WsssDataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise WsssDataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise WsssDataError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image from its header, without decoding the pixels; a missing
    or unreadable file raises :class:`WsssDataError` naming it, like :func:`read_image`."""
    path = Path(path)
    if not path.is_file():
        raise WsssDataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise WsssDataError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index mask as ``(H, W)`` uint8 (255 = ignore).

    Palette ("P") and single-channel ("L") PNGs hold indices directly. An RGB
    mask is refused: its colours would have to be mapped back to classes.
    """
    path = Path(path)
    if not path.is_file():
        raise WsssDataError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("I", "I;16"):
                arr = np.array(im)
                if arr.max() > 255:
                    raise WsssDataError(f"mask {path} has values above 255; class-index masks must fit in uint8")
                return arr.astype(np.uint8)
            raise WsssDataError(
                f"mask {path} is a {im.mode} image; wsss needs class indices in a palette (P) or grayscale (L) PNG"
            )
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise WsssDataError(f"cannot read mask {path}: {e}. Replace or remove the file.") from e


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Encode a ``(H, W)`` class-index array as a VOC-palette PNG."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must be in [0, 255]")
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE_BYTES)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_mask(path: str | os.PathLike, mask: np.ndarray, index: bool = False) -> Path:
    """Write a class-index mask as a palette PNG (atomic), so it does not "look black"; with
    ``index``, as a single-channel 8-bit PNG of the indices (what code reading masks with
    ``imageio`` or OpenCV, such as IRN, gets back as indices: imageio returns RGB for palettes)."""
    if index:
        return write_gray(path, np.asarray(mask, dtype=np.uint8))
    return write_bytes(path, encode_mask_png(mask))


def write_gray(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W)`` uint8 map (boundary maps, scores) as an 8-bit grayscale PNG."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f"a grayscale map must be (H, W), got shape {image.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(image, mode="L").save(tmp, format="PNG"))


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB image; the format follows the suffix (JPEG or PNG)."""
    image = np.asarray(image, dtype=np.uint8)

    def _save(tmp: Path) -> None:
        fmt = "JPEG" if tmp.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray(image).save(tmp, format=fmt, **kwargs)

    return atomic_write(path, _save)
