"""PASCAL VOC 2012 with the SBD augmentation, in the standard tree.

::

    VOC2012/                      (or VOCdevkit/VOC2012, or its parent: found either way)
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png      original masks, 255 on object borders
      SegmentationClassAug/<id>.png   SBD-augmented masks (10,582 train_aug images)
      ImageSets/Segmentation/{train,train_aug,val}.txt
      cls_labels.npy                  optional, IRN's image-level labels

Masks: ``SegmentationClass`` is used where it has the image (seeds and pseudo
labels are scored on VOC train with the original masks, as the papers do) and
``SegmentationClassAug`` otherwise; ``masks=`` names another folder (pseudo
masks for train-seg, say). Labels: the ``labels`` file if given, else
``cls_labels.npy`` in the root if present, else the classes in each mask.
"""
from __future__ import annotations

from pathlib import Path


from wsss.data.base import SegDataset, read_class_names, read_id_list
from wsss.data.labels import LabelTable
from wsss.io import WsssDataError

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def find_voc_root(root: str | Path) -> Path:
    """Accept ``VOC2012``, ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    root = Path(root).expanduser()
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise WsssDataError(
        f"no VOC tree found at {root}: expected a JPEGImages folder in it, in VOC2012/ or in VOCdevkit/VOC2012/"
        + (f". {root} has an images/ folder: for your own images use --data-kind folder (data.kind: folder)"
           if (Path(root) / "images").is_dir() else "")
    )


class VOCDataset(SegDataset):
    name = "voc"
    label_files = ("cls_labels.npy",)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        labels: str | Path | None = None,
        masks: str | Path | None = None,
        class_names: list[str] | None = None,
        list_file: str | Path | None = None,
    ):
        root = find_voc_root(root)
        if class_names is None:
            names_file = root / "class_names.txt"
            class_names = read_class_names(names_file) if names_file.is_file() else VOC_CLASSES
        if list_file is None:
            list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not Path(list_file).is_file():
                have = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
                raise WsssDataError(
                    f"split '{split}' not found: {list_file} does not exist. Splits here: {', '.join(have) or 'none'}"
                )
        super().__init__(root, split, read_id_list(Path(list_file)), class_names)
        self.mask_dirs = [Path(masks)] if masks is not None else [root / "SegmentationClass", root / "SegmentationClassAug"]
        self.mask_dirs = [d for d in self.mask_dirs if d.is_dir()]
        if masks is not None and not self.mask_dirs:
            raise WsssDataError(f"mask folder not found: {masks}")
        labels = self.find_labels_file(root, labels)
        self.labels = LabelTable.from_npy(labels, self.num_fg) if labels is not None else None

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        for d in self.mask_dirs:
            p = d / f"{image_id}.png"
            if p.is_file():
                return p
        return None

    def missing_label(self, image_id: str) -> str:
        where = f"{self.labels.source} or " if self.labels is not None else ""
        return (f"no image-level label for '{image_id}': it is not in {where}any mask folder "
                f"({', '.join(str(d) for d in self.mask_dirs) or 'none found'})")
