"""The fully supervised scene-parsing sets the segmentation papers report on: Cityscapes, ADE20K
and Pascal Context (59 classes), read in their distributed trees (mmseg's and PCAA's layouts).

None of them has a background class (``SegDataset.background = False``): their classes are mask
values ``0 .. K-1`` and 255 is ignore, as mmseg trains them. They serve train-seg, predict and
eval; the weakly supervised stages refuse them.

Cityscapes (19 classes, mmseg's ``CityscapesDataset``; PCAA README)::

    ROOT/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   if present
                                      <city>_<seq>_<frame>_gtFine_labelIds.png       otherwise

  The id of an image is ``<city>_<seq>_<frame>``. ``*_labelTrainIds.png`` (written by
  cityscapesScripts' ``createTrainIdLabelImgs``) is read as it is; ``*_labelIds.png`` is mapped
  to the 19 train ids with the official table (:data:`CITYSCAPES_TRAIN_IDS`, every other id
  -> 255). ``test`` has no public labels: its masks are missing, and predict needs none.

ADE20K (ADEChallengeData2016, 150 classes, mmseg's ``ADE20KDataset``; PCAA README)::

    ROOT/                                 (ADEChallengeData2016, or the folder holding it)
      images/{training,validation}/ADE_train_00000001.jpg
      annotations/{training,validation}/ADE_train_00000001.png

  Splits ``train`` / ``val`` (or ``training`` / ``validation``). Annotation 0 ("other") becomes
  255 and class ``c`` (1..150) becomes ``c - 1``: mmseg's ``reduce_zero_label``.

Pascal Context, 59 classes (mmseg's ``PascalContextDataset59``)::

    ROOT/                                 (VOC2010, VOCdevkit/VOC2010, or the folder holding it)
      JPEGImages/<id>.jpg
      SegmentationClassContext/<id>.png   0 = background (not a class), 1..59
      ImageSets/SegmentationContext/{train,val}.txt

  Annotation 0 becomes 255 and ``c`` (1..59) becomes ``c - 1`` (``reduce_zero_label``), so the
  59 classes score without background, as in PCAA's Table (55.6 mIoU with R-101).

``masks=`` names a folder of ``<id>.png`` masks already in train-id space (0..K-1, 255), a
prediction folder say: they are read as they are, without the mapping above.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.data.base import SegDataset, find_dir, read_id_list
from wsss.io import IGNORE_INDEX, WsssDataError

# Cityscapes label id -> train id: the ``trainId`` column of cityscapesScripts'
# ``helpers/labels.py``. The 19 evaluated classes get 0..18 (in CITYSCAPES_CLASSES order);
# every other id (unlabeled 0, ego vehicle 1, ..., ground 6, parking 9, rail track 10,
# guard rail 14, bridge 15, tunnel 16, polegroup 18, caravan 29, trailer 30, license plate -1)
# is 255, ignored in training and evaluation.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]

PASCAL_CONTEXT59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]


def cityscapes_lut() -> np.ndarray:
    """``(256,)`` uint8 lookup table label id -> train id (:data:`CITYSCAPES_TRAIN_IDS`, else 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def reduce_zero_label_lut() -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255, ``c`` -> ``c - 1``, 255 stays 255; a value beyond
    the dataset's classes stays beyond them, so the mask check names it."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut.astype(np.uint8)


class SceneDataset(SegDataset):
    """Shared behaviour of the scene-parsing readers: no background class, a label-id mapping for
    the dataset's own annotations, image-level labels read off the masks."""

    background = False

    def __init__(self, root: Path, split: str, ids: list[str], class_names: list[str], *,
                 masks: str | Path | None, gt_lut: np.ndarray | None, labels: str | Path | None):
        super().__init__(root, split, ids, class_names)
        if labels is not None:
            raise WsssDataError(
                f"{self.name}: image-level label files do not apply (a fully supervised set: the labels are "
                "read off its masks); leave data.labels unset"
            )
        self.user_masks = Path(masks) if masks is not None else None
        if self.user_masks is not None and not self.user_masks.is_dir():
            raise WsssDataError(f"mask folder not found: {masks}")
        # a user's mask folder holds class indices already; the dataset's own annotations are mapped
        self.mask_lut = gt_lut if self.user_masks is None else None

    def gt_mask_path(self, image_id: str) -> Path | None:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        if self.user_masks is not None:
            p = self.user_masks / f"{image_id}.png"
            return p if p.is_file() else None
        return self.gt_mask_path(image_id)

    def label(self, image_id: str) -> np.ndarray:
        """The classes in the image's mask; all zeros where it has none (Cityscapes test): the stages
        that read these sets never use image-level labels, and a missing mask is refused where a
        mask is needed."""
        mp = self.mask_path(image_id)
        if mp is None:
            return np.zeros(self.num_fg, dtype=np.float32)
        return self.label_from_mask(self.read_checked_mask(mp))

    def sample_label(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        return self.label(image_id) if mask is None else self.label_from_mask(mask)


class CityscapesDataset(SceneDataset):
    name = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", *, labels: str | Path | None = None,
                 masks: str | Path | None = None, list_file: str | Path | None = None):
        root = Path(root).expanduser()
        image_dir = find_dir(root, f"leftImg8bit/{split}", f"Cityscapes split '{split}'")
        self._images = {p.name[: -len("_leftImg8bit.png")]: p
                        for p in sorted(image_dir.glob("*/*_leftImg8bit.png"))}
        if not self._images:
            raise WsssDataError(f"no <city>/*_leftImg8bit.png images in {image_dir}")
        ids = read_id_list(Path(list_file)) if list_file is not None else sorted(self._images)
        missing = [i for i in ids if i not in self._images]
        if missing:
            raise WsssDataError(f"{len(missing)} id(s) have no image in {image_dir}: {missing[:10]}")
        self.gt_dir = root / "gtFine" / split
        if masks is None and split != "test" and not self.gt_dir.is_dir():
            raise WsssDataError(f"Cityscapes annotations not found: {self.gt_dir} (expected ROOT/gtFine/{split}/)")
        # labelTrainIds when the first image has them (createTrainIdLabelImgs ran), else labelIds
        first = ids[0]
        self.train_ids = (self.gt_dir / first.split("_")[0] / f"{first}_gtFine_labelTrainIds.png").is_file()
        lut = None if self.train_ids else cityscapes_lut()
        super().__init__(root, split, ids, CITYSCAPES_CLASSES, masks=masks, gt_lut=lut, labels=labels)

    def image_path(self, image_id: str) -> Path:
        return self._images[image_id]

    def gt_mask_path(self, image_id: str) -> Path | None:
        suffix = "labelTrainIds" if self.train_ids else "labelIds"
        p = self.gt_dir / image_id.split("_")[0] / f"{image_id}_gtFine_{suffix}.png"
        return p if p.is_file() else None


_ADE_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20KDataset(SceneDataset):
    name = "ade20k"

    def __init__(self, root: str | Path, split: str = "train", *, labels: str | Path | None = None,
                 masks: str | Path | None = None, list_file: str | Path | None = None):
        root = Path(root).expanduser()
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in _ADE_SPLITS:
            raise WsssDataError(f"ADE20K split '{split}' unknown: use train or val (training / validation)")
        folder = _ADE_SPLITS[split]
        self.image_dir = find_dir(root, f"images/{folder}", "ADE20K images")
        ids = (read_id_list(Path(list_file)) if list_file is not None
               else sorted(p.stem for p in self.image_dir.glob("*.jpg")))
        if not ids:
            raise WsssDataError(f"no .jpg images in {self.image_dir}")
        self.gt_dir = root / "annotations" / folder
        if masks is None and not self.gt_dir.is_dir():
            raise WsssDataError(f"ADE20K annotations not found: {self.gt_dir} (expected ROOT/annotations/{folder}/)")
        super().__init__(root, split, ids, ADE20K_CLASSES, masks=masks, gt_lut=reduce_zero_label_lut(),
                         labels=labels)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def gt_mask_path(self, image_id: str) -> Path | None:
        p = self.gt_dir / f"{image_id}.png"
        return p if p.is_file() else None


class PascalContextDataset(SceneDataset):
    name = "pascal_context"

    def __init__(self, root: str | Path, split: str = "train", *, labels: str | Path | None = None,
                 masks: str | Path | None = None, list_file: str | Path | None = None):
        root = Path(root).expanduser()
        for cand in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
            if (cand / "SegmentationClassContext").is_dir() or (cand / "ImageSets" / "SegmentationContext").is_dir():
                root = cand
                break
        else:
            raise WsssDataError(
                f"no Pascal Context tree at {root}: expected SegmentationClassContext/ and "
                "ImageSets/SegmentationContext/ in it, in VOC2010/ or in VOCdevkit/VOC2010/ (mmseg's layout)"
            )
        find_dir(root, "JPEGImages", "Pascal Context images")
        if list_file is None:
            list_file = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
            if not Path(list_file).is_file():
                have = sorted(p.stem for p in (root / "ImageSets" / "SegmentationContext").glob("*.txt"))
                raise WsssDataError(f"split '{split}' not found: {list_file} does not exist. "
                                    f"Splits here: {', '.join(have) or 'none'}")
        self.gt_dir = root / "SegmentationClassContext"
        if masks is None and not self.gt_dir.is_dir():
            raise WsssDataError(f"Pascal Context annotations not found: {self.gt_dir}")
        super().__init__(root, split, read_id_list(Path(list_file)), PASCAL_CONTEXT59_CLASSES, masks=masks,
                         gt_lut=reduce_zero_label_lut(), labels=labels)

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def gt_mask_path(self, image_id: str) -> Path | None:
        p = self.gt_dir / f"{image_id}.png"
        return p if p.is_file() else None
