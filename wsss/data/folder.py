"""A plain folder dataset for a user's own data.

::

    ROOT/
      images/<id>.jpg|.jpeg|.png     any name; the id is the file name without extension
      masks/<id>.png                 optional class-index masks (palette or grayscale PNG)
      classes.txt                    one class name per line (background first, or it is added)
      labels.csv | labels.json       image id -> class names (see wsss.data.labels.read_named_labels)
      splits/<split>.txt             id lists; split 'all' is every image

Without ``splits/`` no split name is guessed (a misspelt one must not quietly train
on every image, the validation images included): ask for ``all`` explicitly, or give
``val_fraction`` to have a seeded train/val split written to ``splits/`` (and said).

An image without any label is an error: weak supervision needs at least one
class per image (add the class, or leave the image out of the split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.data.base import SegDataset, read_class_names, read_id_list
from wsss.data.labels import read_named_labels
from wsss.io import WsssDataError, write_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class FolderDataset(SegDataset):
    name = "folder"
    label_files = ("labels.csv", "labels.json")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        labels: str | Path | None = None,
        masks: str | Path | None = None,
        list_file: str | Path | None = None,
        class_names: list[str] | None = None,
        val_fraction: float | None = None,
    ):
        root = Path(root).expanduser()
        image_dir = root / "images"
        if not image_dir.is_dir():
            raise WsssDataError(f"folder dataset: {image_dir} not found (expected ROOT/images/, see the README)")
        self._images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if not self._images:
            raise WsssDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        if class_names is None:
            names_file = root / "classes.txt"
            if not names_file.is_file():
                raise WsssDataError(f"folder dataset: {names_file} not found; list the class names there, one per line")
            class_names = read_class_names(names_file, background_first=True)
        elif not class_names or class_names[0] != "background":
            class_names = ["background"] + [c for c in class_names if c != "background"]
        if list_file is None and split != "all":
            list_file = self._split_file(root, split, val_fraction)
        ids = read_id_list(Path(list_file)) if list_file is not None else sorted(self._images)
        missing = [i for i in ids if i not in self._images]
        if missing:
            raise WsssDataError(f"{len(missing)} id(s) of split '{split}' have no image in {image_dir}: {missing[:10]}")
        super().__init__(root, split, ids, class_names)
        self.mask_dir = Path(masks) if masks is not None else root / "masks"
        if masks is not None and not self.mask_dir.is_dir():
            raise WsssDataError(f"mask folder not found: {masks}")
        labels = self.find_labels_file(root, labels)
        self.labels = read_named_labels(labels, self.class_names) if labels is not None else None
        self.labels_source = str(labels) if labels is not None else None

    def _split_file(self, root: Path, split: str, val_fraction: float | None) -> Path:
        splits = root / "splits"
        if not splits.is_dir() and val_fraction is not None:
            write_random_split(splits, sorted(self._images), val_fraction)
        if not splits.is_dir():
            raise WsssDataError(
                f"folder dataset {root} has no splits/ folder, so split '{split}' does not exist. Use --split all "
                f"for every image (validation images included), or --val-fraction 0.1 to write a seeded "
                f"train/val split to {splits}/"
            )
        path = splits / f"{split}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in splits.glob("*.txt"))
            raise WsssDataError(
                f"split '{split}' not found: {path} does not exist. Splits here: {', '.join(have + ['all'])}"
            )
        return path

    def image_path(self, image_id: str) -> Path:
        return self._images[image_id]

    def mask_path(self, image_id: str) -> Path | None:
        p = self.mask_dir / f"{image_id}.png"
        return p if p.is_file() else None

    def missing_label(self, image_id: str) -> str:
        return (f"image '{image_id}' has no label: add it to {self.labels_source or 'ROOT/labels.csv'} "
                f"or give it a mask in {self.mask_dir}")

    def label(self, image_id: str) -> np.ndarray:
        """The labels file's entry or the mask's classes (:meth:`SegDataset.label`); an image
        with no foreground class is refused."""
        vec = super().label(image_id).copy()
        if not vec.any():
            raise WsssDataError(
                f"image '{image_id}' has no foreground class; weak supervision needs at least one label per image "
                f"(fix its entry, or leave it out of the split)"
            )
        return vec


def write_random_split(splits: Path, ids: list[str], val_fraction: float, seed: int = 0) -> None:
    """Write ``splits/train.txt`` and ``splits/val.txt``: a ``val_fraction`` of ``ids`` (at least one
    image, seeded) for validation, the rest for training; says so, since it changes the tree."""
    if not 0 < val_fraction < 1:
        raise WsssDataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(ids) < 2:
        raise WsssDataError(f"cannot split {len(ids)} image(s) into train and val")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    write_text(splits / "val.txt", "\n".join(val) + "\n")
    write_text(splits / "train.txt", "\n".join(train) + "\n")
    print(f"wrote a seeded split to {splits}/: {len(train)} train, {len(val)} val images")
