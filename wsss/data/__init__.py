"""Datasets: PASCAL VOC 2012 (+SBD), MS COCO 2014, a plain folder, the synthetic set, and the
fully supervised scene-parsing sets Cityscapes, ADE20K and Pascal Context (59).

``build_dataset(DataConfig(...))`` is the one entry point the stages use.
"""
from __future__ import annotations

from dataclasses import dataclass

from wsss.data.base import Sample, SegDataset, read_id_list, require_background
from wsss.data.coco import COCO_CLASSES, COCODataset
from wsss.data.folder import FolderDataset
from wsss.data.scenes import ADE20KDataset, CityscapesDataset, PascalContextDataset
from wsss.data.labels import LabelTable, load_cls_labels, read_named_labels, save_cls_labels
from wsss.data.voc import VOC_CLASSES, VOCDataset
from wsss.io import WsssDataError
from wsss.registry import Registry

DATASETS: Registry = Registry("dataset kind", error=WsssDataError, sort_known=False, items=[
    ("voc", VOCDataset),
    ("coco", COCODataset),
    ("folder", FolderDataset),
    ("cityscapes", CityscapesDataset),
    ("ade20k", ADE20KDataset),
    ("pascal_context", PascalContextDataset),
])
DATA_KINDS = tuple(DATASETS)


@dataclass
class DataConfig:
    """Which images a stage reads.

    kind: ``voc`` (also the synthetic set, which is written as a VOC tree),
    ``coco`` or ``folder``; for train-seg, predict and eval also ``cityscapes``, ``ade20k`` and
    ``pascal_context`` (:mod:`wsss.data.scenes`). root: the dataset folder. split: split name
    (``train``, ``train_aug``, ``val``...). labels: image-level label file
    overriding the dataset's own (``cls_labels.npy``, or CSV/JSON for folder).
    masks: mask folder overriding the ground truth (pseudo masks for
    train-seg). list_file: an explicit image-id list. category_ids: COCO masks
    hold COCO category ids instead of contiguous indices. val_fraction: folder
    datasets without ``splits/``: write a seeded train/val split of this fraction.
    """

    kind: str = "voc"
    root: str = ""
    split: str = "train"
    labels: str | None = None
    masks: str | None = None
    list_file: str | None = None
    category_ids: bool = False
    val_fraction: float | None = None


def build_dataset(cfg: DataConfig, split: str | None = None) -> SegDataset:
    reader = DATASETS.lookup(cfg.kind)
    if not cfg.root:
        raise WsssDataError("no dataset root given: set data.root in the config or pass --data-root")
    kwargs = dict(labels=cfg.labels, masks=cfg.masks, list_file=cfg.list_file if split is None else None)
    if cfg.kind == "coco":
        kwargs["category_ids"] = cfg.category_ids
    if cfg.kind == "folder":
        kwargs["val_fraction"] = cfg.val_fraction
    return reader(cfg.root, split or cfg.split, **kwargs)


__all__ = [
    "ADE20KDataset", "COCO_CLASSES", "COCODataset", "CityscapesDataset", "DATA_KINDS", "DATASETS", "DataConfig", "FolderDataset", "LabelTable", "PascalContextDataset", "Sample", "SegDataset",
    "VOC_CLASSES", "VOCDataset", "WsssDataError", "build_dataset", "load_cls_labels", "read_id_list",
    "read_named_labels", "require_background", "save_cls_labels",
]
