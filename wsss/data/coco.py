"""MS COCO 2014 in the layout WSSS code uses (IRN/ReCAM-style).

::

    ROOT/
      train2014/COCO_train2014_000000000009.jpg ...
      val2014/COCO_val2014_000000000042.jpg ...
      mask/train2014/COCO_train2014_000000000009.png    single-channel class index 0..80
      mask/val2014/...                                   (0 = background, 255 = ignore)
      train.txt, val.txt (or train14.txt / val14.txt)  optional image lists
      cls_labels.npy (or cls_labels_coco.npy)            optional image-level labels

Masks hold contiguous class indices (0 background, 1..80 in the order of
``COCO_CLASSES``). Masks that store the original COCO category ids (1..90,
with gaps) are read with ``category_ids=True``. Without an image list, every
image of the split's folder is used, sorted by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.data.base import SegDataset, read_id_list
from wsss.data.labels import LabelTable
from wsss.io import IGNORE_INDEX, WsssDataError

COCO_CLASSES = [
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]

# COCO category ids of the 80 classes, in COCO_CLASSES order (the official ids skip 11 numbers).
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]


def _category_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[0] = 0
    for contiguous, cat in enumerate(COCO_CATEGORY_IDS, start=1):
        lut[cat] = contiguous
    return lut


class COCODataset(SegDataset):
    name = "coco"
    label_files = ("cls_labels.npy", "cls_labels_coco.npy")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        labels: str | Path | None = None,
        masks: str | Path | None = None,
        list_file: str | Path | None = None,
        category_ids: bool = False,
        class_names: list[str] | None = None,
    ):
        root = Path(root).expanduser()
        year_split = split if split.endswith("2014") else f"{split}2014"
        self.image_dir = root / year_split
        if not self.image_dir.is_dir():
            raise WsssDataError(f"COCO image folder not found: {self.image_dir} (expected ROOT/{year_split}/*.jpg)")
        if list_file is None:
            base = split.replace("2014", "")
            for cand in (f"{base}.txt", f"{base}14.txt", f"{base}2014.txt"):
                if (root / cand).is_file():
                    list_file = root / cand
                    break
        if list_file is not None:
            ids = read_id_list(Path(list_file))
        else:
            ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
            if not ids:
                raise WsssDataError(f"no .jpg images in {self.image_dir}")
        super().__init__(root, split, ids, class_names or COCO_CLASSES)
        self.mask_dir = Path(masks) if masks is not None else root / "mask" / year_split
        if masks is not None and not self.mask_dir.is_dir():
            raise WsssDataError(f"mask folder not found: {masks}")
        self.mask_lut = _category_lut() if category_ids else None
        labels = self.find_labels_file(root, labels)
        self.labels = LabelTable.from_npy(labels, self.num_fg) if labels is not None else None

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        p = self.mask_dir / f"{image_id}.png"
        return p if p.is_file() else None

    def missing_label(self, image_id: str) -> str:
        return f"no image-level label for '{image_id}': no labels file entry and no mask at {self.mask_dir}"
