"""``wsss eval``: score a folder of predicted masks against a folder of ground truth.

Both folders hold class-index PNGs named ``<id>.png`` (palette or grayscale).
Scored ids are, by default, every PNG in the prediction folder; ``ids`` names
an explicit list (an ImageSets file). A ground-truth mask missing for a scored
id is an error listing the ids, never a silent skip, so a figure always covers
the images it claims to.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data import DataConfig, build_dataset
from wsss.data.base import read_class_names, read_id_list
from wsss.data.coco import COCO_CLASSES
from wsss.data.voc import VOC_CLASSES
from wsss.io import IGNORE_INDEX, WsssDataError, read_mask, write_json
from wsss.eval.metrics import ConfusionMatrix, SegMetrics


@dataclass
class EvalConfig:
    """pred: folder of predicted masks. gt: folder of ground-truth masks.
    ids: optional image-list file. classes: ``voc``, ``coco``, a class-names
    file, or empty to look for ``class_names.txt`` beside/above ``gt`` and
    fall back to VOC's 21 classes. out: JSON path (default ``<pred>/eval.json``).
    workers: threads decoding PNGs.
    data: score against a dataset's own ground truth instead of a ``gt`` folder (``data.root``
    set): its reader finds and maps the masks (Cityscapes ``*_gtFine_labelIds.png`` to train
    ids, ADE20K / Pascal Context ``reduce_zero_label``, COCO category ids) and gives the class
    list; the scored ids are then the split's (every image must have a prediction)."""

    pred: str = ""
    gt: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    ids: str | None = None
    classes: str | None = None
    out: str | None = None
    workers: int = 4


def resolve_class_names(spec: str | None, gt_dir: Path) -> list[str]:
    if spec == "voc":
        return list(VOC_CLASSES)
    if spec == "coco":
        return list(COCO_CLASSES)
    if spec:
        path = Path(spec)
        if not path.is_file():
            raise WsssDataError(f"class-names file not found: {path} (or pass --classes voc / coco)")
        return read_class_names(path, background_first=True)
    found = _names_file(gt_dir)
    return read_class_names(found, background_first=True) if found is not None else list(VOC_CLASSES)


def _names_file(gt_dir: Path) -> Path | None:
    for cand in (gt_dir / "class_names.txt", gt_dir.parent / "class_names.txt", gt_dir.parent / "classes.txt"):
        if cand.is_file():
            return cand
    return None


def evaluate_folders(cfg: EvalConfig, progress: bool = True) -> SegMetrics:
    pred_dir = Path(cfg.pred)
    if not pred_dir.is_dir():
        raise WsssDataError(f"prediction folder not found: {pred_dir}")
    from wsss.engine.outputs import check_provenance

    gt_paths: dict[str, Path | None]
    if cfg.data.root:
        if cfg.gt:
            raise WsssDataError("give either a ground-truth folder (gt) or a dataset (data.root), not both")
        if cfg.data.masks:
            raise WsssDataError("data.masks would replace the dataset's ground truth: leave it unset to score against it")
        ds = build_dataset(cfg.data)
        class_names = ds.class_names
        gt_dir = ds.root
        check_provenance(pred_dir, class_names, "masks")
        ids = read_id_list(Path(cfg.ids)) if cfg.ids else ds.ids
        gt_paths = {i: ds.mask_path(i) for i in ids}
        read_gt = ds.read_checked_mask
    else:
        gt_dir = Path(cfg.gt)
        if not gt_dir.is_dir():
            raise WsssDataError(f"ground-truth folder not found: {gt_dir}")
        class_names = resolve_class_names(cfg.classes, gt_dir)
        if cfg.classes or _names_file(gt_dir) is not None:
            # masks made by wsss record their class list: refuse masks made for other classes
            check_provenance(pred_dir, class_names, "masks")
        ids = read_id_list(Path(cfg.ids)) if cfg.ids else sorted(p.stem for p in pred_dir.glob("*.png"))
        candidates = {i: gt_dir / f"{i}.png" for i in ids}
        gt_paths = {i: p if p.is_file() else None for i, p in candidates.items()}
        read_gt = read_mask
    if not ids:
        raise WsssDataError(f"no .png masks in {pred_dir}")
    missing_pred = [i for i in ids if not (pred_dir / f"{i}.png").is_file()]
    missing_gt = [i for i in ids if gt_paths[i] is None]
    if missing_pred or missing_gt:
        parts = []
        if missing_pred:
            parts.append(f"{len(missing_pred)} prediction(s) missing in {pred_dir}: {missing_pred[:10]}")
        if missing_gt:
            parts.append(f"{len(missing_gt)} ground-truth mask(s) missing in {gt_dir}: {missing_gt[:10]}")
        raise WsssDataError("; ".join(parts))

    k = len(class_names)
    cm = ConfusionMatrix(k)

    def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        gt = read_gt(gt_paths[image_id])
        pred = read_mask(pred_dir / f"{image_id}.png")
        if gt.shape != pred.shape:
            raise WsssDataError(f"'{image_id}': prediction is {pred.shape[::-1]} but ground truth is {gt.shape[::-1]}")
        bad = np.unique(gt[(gt >= k) & (gt != IGNORE_INDEX)])
        if bad.size:
            raise WsssDataError(f"ground truth '{image_id}' holds class id(s) {bad.tolist()} beyond the {k} classes")
        bad = np.unique(pred[(pred >= k) & (gt != IGNORE_INDEX)])
        if bad.size:
            hint = (" (255 marks unknown pixels, as in IR labels: only complete masks can be scored)"
                    if IGNORE_INDEX in bad.tolist() else "")
            raise WsssDataError(f"prediction '{image_id}' in {pred_dir} holds class id(s) {bad.tolist()} beyond "
                                f"the {k} classes of {gt_dir}{hint}")
        return gt, pred

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for gt, pred in tqdm(pool.map(load, ids), total=len(ids), desc="eval", disable=not progress, unit="img"):
            cm.update(gt, pred)
    metrics = cm.compute(class_names)
    out = Path(cfg.out) if cfg.out else pred_dir / "eval.json"
    result = metrics.to_dict()
    result.update({"num_images": len(ids), "pred": str(pred_dir), "gt": str(gt_dir)})
    write_json(out, result)
    return metrics
