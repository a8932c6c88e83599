"""The dataset contract every reader (VOC, COCO, folder, synthetic, Cityscapes, ADE20K,
Pascal Context) follows.

A dataset is a list of string ids plus three lookups: image path, mask path
(optional) and image-level label. Mask value ``c`` is class ``class_names[c]``; 255 is ignore.

The weakly supervised datasets (``background = True``: VOC, COCO, folder, synthetic) have
``class_names[0] == "background"``, and their image-level labels are multi-hot over the
*foreground* classes only (length ``num_fg``), as IRN's ``cls_labels.npy`` stores them, so label
index ``k`` is mask value ``k + 1``. The fully supervised scene-parsing sets (``background =
False``: Cityscapes, ADE20K, Pascal Context 59) have no background class: every class is a
label entry (index ``k`` is mask value ``k``); they serve train-seg, predict and eval, and the
WSSS stages refuse them (:func:`require_background`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wsss.io import IGNORE_INDEX, WsssDataError, read_image, read_mask


@dataclass
class Sample:
    """One image. ``image``: (H, W, 3) uint8 RGB; ``label``: (num_fg,) float32
    multi-hot; ``mask``: (H, W) uint8 class indices with 255 ignore, or None."""

    id: str
    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None


class SegDataset:
    """Base class: subclasses fill ``ids``, ``class_names`` and the three lookups."""

    name = "base"
    # False for the fully supervised scene-parsing sets, whose classes include no background
    background = True
    # (256,) uint8 table from the values the masks store to class indices (COCO category ids,
    # Cityscapes label ids, ADE20K's reduce_zero_label), or None: masks hold class indices
    mask_lut: np.ndarray | None = None
    # image-level labels read from a labels file (anything with .get(id) -> vector or None), looked
    # up before the mask; None: the classes in each image's mask
    labels = None
    # the labels files a reader looks for in its root when none is given, first found wins
    label_files: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: str, ids: Sequence[str], class_names: Sequence[str]):
        self.root = Path(root)
        self.split = split
        self.ids = [str(i) for i in ids]
        self.class_names = list(class_names)
        if not self.class_names:
            raise WsssDataError(f"{self.name} dataset at {self.root}: empty class list")
        if self.background and self.class_names[0] != "background":
            raise WsssDataError(
                f"{self.name} dataset at {self.root}: the class list must start with 'background', "
                f"got {self.class_names[:3]}"
            )
        if len(self.class_names) > 255:
            raise WsssDataError(f"{len(self.class_names)} classes do not fit in a uint8 mask (at most 255)")

    # -- lookups subclasses provide -------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        """Path of the ground-truth mask, or None when this dataset has none for the id."""
        raise NotImplementedError

    def missing_label(self, image_id: str) -> str:
        """The message for an image with neither a labels-file entry nor a mask: where to add one."""
        return f"no image-level label for '{image_id}': no labels file entry and no mask"

    # -- shared behaviour ------------------------------------------------------------
    def label(self, image_id: str) -> np.ndarray:
        """Image-level multi-hot label, ``(num_fg,)`` float32: the labels file's entry
        (:attr:`labels`), else the classes in the image's mask; neither is an error saying where to
        add one (:meth:`missing_label`)."""
        vec = self.labels.get(image_id) if self.labels is not None else None
        if vec is not None:
            return vec
        mp = self.mask_path(image_id)
        if mp is None:
            raise WsssDataError(self.missing_label(image_id))
        return self.label_from_mask(self.read_checked_mask(mp))

    def find_labels_file(self, root: Path, given: str | Path | None) -> Path | None:
        """The labels file to read: ``given``, else the first of :attr:`label_files` in ``root``."""
        if given is not None:
            return Path(given)
        return next((root / name for name in self.label_files if (root / name).is_file()), None)

    @property
    def num_classes(self) -> int:
        """Classes in a mask, background included."""
        return len(self.class_names)

    @property
    def num_fg(self) -> int:
        """Entries of an image-level label (the classifier's output size): the foreground classes,
        or every class of a dataset without background."""
        return len(self.class_names) - int(self.background)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        return self.load(image_id)

    def load(self, image_id: str, with_mask: bool = True) -> Sample:
        image = read_image(self.image_path(image_id))
        mask = None
        if with_mask:
            mp = self.mask_path(image_id)
            if mp is not None:
                mask = self.read_checked_mask(mp, image.shape[:2])
        return Sample(id=image_id, image=image, label=self.sample_label(image_id, mask), mask=mask)

    def sample_label(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        """The label :meth:`load` returns, given the mask it has just read (None: not read or none):
        :meth:`label`. A reader whose labels come from the mask itself uses that mask instead of
        reading it again."""
        return self.label(image_id)

    def read_checked_mask(self, path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Read a mask, map it through :attr:`mask_lut` when the dataset has one, and check its size
        and class ids against this dataset (a stored value beyond the classes is named as stored)."""
        raw = read_mask(path)
        mask = raw if self.mask_lut is None else self.mask_lut[raw]
        if shape is not None and mask.shape != tuple(shape):
            raise WsssDataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}")
        bad = np.unique(raw[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size and self.mask_lut is not None:
            raise WsssDataError(f"annotation {path} holds value(s) {bad.tolist()} outside this {self.name} layout's "
                                f"{self.num_classes} classes")
        if bad.size:
            raise WsssDataError(
                f"mask {path} holds class id(s) {bad.tolist()} but the dataset has {self.num_classes} classes "
                f"(0..{self.num_classes - 1}, 255 = ignore)"
            )
        return mask

    def label_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """Multi-hot foreground label of the classes present in ``mask``."""
        label = np.zeros(self.num_fg, dtype=np.float32)
        present = np.unique(mask)
        first = int(self.background)
        present = present[(present >= first) & (present < self.num_classes)]
        label[present.astype(np.int64) - first] = 1.0
        return label

    def has_masks(self) -> bool:
        return bool(self.ids) and self.mask_path(self.ids[0]) is not None


def require_background(ds: SegDataset, stage: str) -> None:
    """Refuse a dataset without a background class in a weakly supervised stage (CAMs, seeds and
    pseudo masks put background at mask value 0 and class ``k`` at ``k + 1``)."""
    if not ds.background:
        raise WsssDataError(
            f"{stage} needs a dataset with a background class (voc, coco, folder); {ds.name} is a fully "
            f"supervised scene-parsing set without one: use it with train-seg, predict and eval"
        )


def find_dir(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, which must be a folder: the error names it and says what belongs there."""
    path = root / rel
    if not path.is_dir():
        raise WsssDataError(f"{what}: {path} not found (expected ROOT/{rel}/)")
    return path


def read_class_names(path: Path, background_first: bool = False) -> list[str]:
    """The class names of a class-names file, one per line (surrounding spaces and blank lines
    dropped). ``background_first``: make ``background`` the first class, adding it when the file
    does not list it (the folder layout's ``classes.txt``, ``wsss eval --classes``)."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if background_first and (not names or names[0] != "background"):
        names = ["background"] + [n for n in names if n != "background"]
    return names


def read_id_list(path: Path) -> list[str]:
    """Read an image-list file: one id per line (first whitespace-separated token,
    path prefix and extension stripped, so IRN/COCO-style lists work too)."""
    if not path.is_file():
        raise WsssDataError(f"image list not found: {path}")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        ids.append(Path(token).stem)
    if not ids:
        raise WsssDataError(f"image list {path} is empty")
    return ids
