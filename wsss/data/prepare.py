"""Turn raw dataset downloads into the trees wsss reads (``wsss prepare voc|coco|cityscapes``).

* VOC 2012 + SBD: ``SegmentationClassAug/<id>.png`` for every image of ``train_aug`` and
  ``val`` (VOC's own ``SegmentationClass`` mask where VOC has one, with its 255 borders, else
  SBD's ``cls/<id>.mat``), ``ImageSets/Segmentation/train_aug.txt`` = (SBD train + SBD val +
  VOC train) - VOC val (10,582 ids), and ``cls_labels.npy`` in IRN's format.
* COCO 2014: ``mask/<split>/<stem>.png`` single-channel masks of contiguous class indices
  (0 background, 1..80 in ``COCO_CLASSES`` order) rendered from the instance annotations
  with pycocotools, ``train14.txt`` / ``val14.txt`` and ``cls_labels.npy``.
* Cityscapes: ``*_gtFine_labelTrainIds.png`` beside every ``*_gtFine_labelIds.png``.

Every stage is resumable: a mask that already exists is skipped (masks are written atomically,
so one that exists is complete), and the list and label files are rewritten only when their
content changes. Images are processed in a pool of ``workers`` processes.
"""
from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from wsss.data.base import read_id_list
from wsss.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from wsss.data.labels import irn_key, load_cls_labels
from wsss.data.scenes import cityscapes_lut
from wsss.data.voc import VOC_CLASSES, find_voc_root
from wsss.engine.workers import die_with_parent
from wsss.io import IGNORE_INDEX, WsssDataError, atomic_write, read_image_size, read_mask, write_mask, write_text

COCO_INSTALL_HINT = "pip install 'wsss[coco]'"


@dataclass
class PrepareReport:
    """What one ``prepare`` call did: masks ``written`` now, ``skipped`` (already there), and the
    one line the command prints (what was written and the wsss command that reads it)."""

    written: int
    skipped: int
    line: str


# -- shared helpers ---------------------------------------------------------------------------------

def _run_jobs(fn: Callable, jobs: Sequence, workers: int, desc: str, progress: bool) -> list:
    """``[fn(job) for job in jobs]`` in ``workers`` processes (each ends with its parent), with a
    progress bar; in this process when one worker is asked for or there is one job."""
    from wsss.engine.loop import tracked

    if not jobs:
        return []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=die_with_parent))
            chunk = max(1, min(32, len(jobs) // (8 * workers)))
            results = pool.imap(fn, jobs, chunksize=chunk)
        else:
            results = map(fn, jobs)
        return list(tracked(results, desc, progress, total=len(jobs)))


def _write_text_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def _update_cls_labels(path: Path, labels: Mapping[str, np.ndarray], num_fg: int) -> bool:
    """Write ``labels`` into ``path`` (IRN's format, keys as :func:`irn_key` makes them). Entries of
    an existing file for other images are kept (COCO's train and val files can be prepared in two
    calls); the file is not touched when nothing changes. Returns whether it was written."""
    new = {irn_key(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in labels.items()}
    merged: dict = {}
    old: dict = {}
    if path.is_file():
        old = load_cls_labels(path)
        replaced = set(new) | set(labels)  # the int key and the string id name the same image
        for key, value in old.items():
            if key in replaced:
                continue
            vec = np.asarray(value, dtype=np.float32).reshape(-1)
            if vec.shape[0] != num_fg:
                raise WsssDataError(
                    f"{path} already exists and its label of '{key}' has {vec.shape[0]} classes, not {num_fg}: "
                    "it belongs to another dataset. Move it away and rerun."
                )
            merged[key] = vec
    merged.update(new)
    if old and old.keys() == merged.keys() and all(
            np.array_equal(np.asarray(old[k], dtype=np.float32).reshape(-1), merged[k]) for k in merged):
        return False
    atomic_write(path, lambda tmp: np.save(tmp, merged, allow_pickle=True))
    return True


def _multi_hot(classes: Iterable[int], num_fg: int) -> np.ndarray:
    """Foreground multi-hot of mask values ``classes`` (value c -> index c - 1)."""
    vec = np.zeros(num_fg, dtype=np.float32)
    for c in classes:
        if 0 < c <= num_fg:
            vec[c - 1] = 1.0
    return vec


def _some(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


# -- PASCAL VOC 2012 + SBD --------------------------------------------------------------------------

def find_sbd_root(sbd: str | Path) -> Path:
    """The SBD ``dataset`` folder (``cls/``, ``train.txt``, ``val.txt``): given itself, its parent
    ``benchmark_RELEASE``, or the folder holding ``benchmark_RELEASE``."""
    sbd = Path(sbd).expanduser()
    cands = [sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"]
    for cand in cands:
        if (cand / "cls").is_dir() and (cand / "train.txt").is_file():
            if not (cand / "val.txt").is_file():
                raise WsssDataError(f"SBD folder {cand} has train.txt but no val.txt: is the download fully extracted?")
            return cand
    raise WsssDataError(
        f"no SBD dataset found at {sbd}: expected a cls/ folder and train.txt (benchmark_RELEASE/dataset "
        f"of the SBD download); looked in {', '.join(str(c) for c in cands)}"
    )


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """SBD's class mask: the ``Segmentation`` field (HxW class indices 0..20) of the MATLAB struct
    ``GTcls`` in ``cls/<id>.mat``."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise WsssDataError(f"cannot read SBD mask {path}: {e}. Replace the file (extract it again).") from e
    gt = mat.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        raise WsssDataError(f"{path} holds no GTcls.Segmentation: is it an SBD cls/ file (not inst/)?")
    seg = np.asarray(gt.Segmentation)
    if seg.ndim != 2:
        raise WsssDataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected a 2-D class map")
    return seg.astype(np.uint8)


def _voc_one(job: tuple) -> tuple[str, tuple[int, ...], bool]:
    """Write one ``SegmentationClassAug`` mask (or read the one already there); returns
    ``(id, classes present, written)``."""
    image_id, jpeg, voc_mask, sbd_mat, out, index = job
    out = Path(out)
    if out.is_file():
        mask, written = read_mask(out), False
    else:
        source = voc_mask or sbd_mat
        mask = read_mask(voc_mask) if voc_mask else read_sbd_mask(sbd_mat)
        h, w = read_image_size(jpeg)
        if mask.shape != (h, w):
            raise WsssDataError(
                f"mask of '{image_id}' ({source}) is {mask.shape[1]}x{mask.shape[0]} but its image {jpeg} is {w}x{h}")
        bad = np.unique(mask[(mask >= len(VOC_CLASSES)) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise WsssDataError(f"mask of '{image_id}' ({source}) holds class id(s) {bad.tolist()}: VOC has 0..20 and 255")
        write_mask(out, mask, index=index)
        written = True
    present = np.unique(mask)
    return image_id, tuple(int(c) for c in present if 0 < c < len(VOC_CLASSES)), written


def prepare_voc(voc: str | Path, sbd: str | Path, *, workers: int = 2, mask_format: str = "palette",
                progress: bool = False) -> PrepareReport:
    """VOC 2012 + SBD -> ``SegmentationClassAug``, ``train_aug.txt`` and ``cls_labels.npy`` in the VOC root."""
    from wsss.config import shell_command

    if mask_format not in ("palette", "index"):
        raise WsssDataError(f"mask format '{mask_format}' is not palette or index")
    root = find_voc_root(voc)
    sets = root / "ImageSets" / "Segmentation"
    for name in ("train.txt", "val.txt"):
        if not (sets / name).is_file():
            raise WsssDataError(f"VOC tree {root} has no {sets / name}: is the VOC2012 trainval download fully extracted?")
    seg_dir = root / "SegmentationClass"
    if not seg_dir.is_dir():
        raise WsssDataError(f"VOC tree {root} has no SegmentationClass/ folder (looked for {seg_dir})")
    voc_train, voc_val = read_id_list(sets / "train.txt"), read_id_list(sets / "val.txt")

    sbd_root = find_sbd_root(sbd)
    cls_dir = sbd_root / "cls"
    sbd_ids = set(read_id_list(sbd_root / "train.txt")) | set(read_id_list(sbd_root / "val.txt"))
    no_mat = sorted(i for i in sbd_ids if not (cls_dir / f"{i}.mat").is_file())
    if no_mat:
        raise WsssDataError(
            f"{len(no_mat)} image(s) listed in {sbd_root}/train.txt or val.txt have no mask in {cls_dir}: "
            f"{_some(no_mat)} (expected {cls_dir / (no_mat[0] + '.mat')}); is the SBD download fully extracted?"
        )

    val_set = set(voc_val)
    train_aug = sorted((sbd_ids | set(voc_train)) - val_set)
    targets = sorted(set(train_aug) | val_set)
    out_dir = root / "SegmentationClassAug"
    jobs, no_mask = [], []
    for image_id in targets:
        voc_mask = seg_dir / f"{image_id}.png"
        voc_mask = str(voc_mask) if voc_mask.is_file() else None
        sbd_mat = str(cls_dir / f"{image_id}.mat") if image_id in sbd_ids else None
        if voc_mask is None and sbd_mat is None:
            no_mask.append(image_id)
        jobs.append((image_id, str(root / "JPEGImages" / f"{image_id}.jpg"), voc_mask, sbd_mat,
                     str(out_dir / f"{image_id}.png"), mask_format == "index"))
    if no_mask:
        raise WsssDataError(
            f"{len(no_mask)} image(s) of VOC train/val have no mask in {seg_dir} and are not in SBD's lists: {_some(no_mask)}")

    results = _run_jobs(_voc_one, jobs, workers, "prepare voc", progress)
    written = sum(1 for _, _, w in results if w)
    _write_text_if_changed(sets / "train_aug.txt", "\n".join(train_aug) + "\n")
    num_fg = len(VOC_CLASSES) - 1
    _update_cls_labels(root / "cls_labels.npy", {i: _multi_hot(c, num_fg) for i, c, _ in results}, num_fg)
    line = (f"voc: {len(results)} masks in {out_dir} ({written} written, {len(results) - written} already there), "
            f"{sets / 'train_aug.txt'} ({len(train_aug)} ids), {root / 'cls_labels.npy'} ({len(results)} images); next: "
            + shell_command("train-cls", "--data-kind", "voc", "--data-root", root, "--split", "train_aug"))
    return PrepareReport(written, len(results) - written, line)


# -- MS COCO 2014 ----------------------------------------------------------------------------------

def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise WsssDataError(f"wsss prepare coco renders masks with pycocotools, which is not installed: {COCO_INSTALL_HINT}") from e
    return COCO


def render_coco_mask(height: int, width: int, anns: Sequence[tuple]) -> np.ndarray:
    """One image's mask from its annotations ``(segmentation, iscrowd, class, annotation id)``
    (``class`` contiguous, 1..80): instances drawn with pycocotools' ``annToMask``; a pixel of two
    or more different classes is 255, one of a crowd region and of no other instance is 255, a
    pixel of several instances of one class keeps the class, the rest is background (0)."""
    COCO = _require_pycocotools()
    coco = COCO()  # no file: annToMask only needs the image's size
    coco.imgs = {0: {"height": height, "width": width}}
    mask = np.zeros((height, width), dtype=np.uint8)
    clash = np.zeros((height, width), dtype=bool)
    crowd = np.zeros((height, width), dtype=bool)
    for segmentation, iscrowd, cls, ann_id in anns:
        try:
            m = coco.annToMask({"image_id": 0, "segmentation": segmentation}).astype(bool)
        except Exception as e:  # pycocotools raises bare Exceptions/TypeErrors on malformed polygons or RLE
            raise WsssDataError(f"cannot render COCO annotation {ann_id}: {e}") from e
        if m.shape != mask.shape:
            raise WsssDataError(
                f"COCO annotation {ann_id} is {m.shape[1]}x{m.shape[0]} but its image is {width}x{height}")
        if iscrowd:
            crowd |= m
            continue
        clash |= m & (mask != 0) & (mask != cls)
        mask[m & (mask == 0)] = cls
    covered = mask != 0
    mask[clash] = IGNORE_INDEX
    mask[crowd & ~covered] = IGNORE_INDEX
    return mask


def _coco_one(job: tuple) -> bool:
    height, width, anns, out = job
    write_mask(out, render_coco_mask(height, width, anns), index=True)
    return True


_SPLIT_IN_NAME = re.compile(r"(train|val|test)(\d{4})")


def coco_split(path: Path, images: Sequence[dict]) -> str:
    """``train2014`` or ``val2014``: from the annotation file's name, else from its images' file names."""
    found = _SPLIT_IN_NAME.search(path.name)
    if found is None:
        names = {m.group(0) for m in (_SPLIT_IN_NAME.search(str(im.get("file_name", ""))) for im in images) if m}
        if len(names) > 1:
            raise WsssDataError(f"{path} holds images of several splits ({', '.join(sorted(names))}): give one file per split")
        found = _SPLIT_IN_NAME.search(names.pop()) if names else None
    if found is None:
        raise WsssDataError(
            f"cannot tell the split of {path}: neither its name nor its images' file names say train2014 or val2014 "
            "(name it instances_train2014.json or instances_val2014.json)")
    if found.group(1) not in ("train", "val") or found.group(2) != "2014":
        raise WsssDataError(f"{path} is COCO {found.group(0)}; wsss reads COCO 2014 (train2014 and val2014)")
    return found.group(0)


def _load_coco(path: Path):
    COCO = _require_pycocotools()
    if not path.is_file():
        raise WsssDataError(f"COCO annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its loading steps
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WsssDataError(f"{path} is not valid JSON: {e}") from e
    except (AssertionError, KeyError, TypeError) as e:
        raise WsssDataError(f"{path} is not a COCO annotation file (images, annotations): {e!r}") from e


def prepare_coco(root: str | Path, annotations: Sequence[str | Path], *, workers: int = 2,
                 progress: bool = False) -> PrepareReport:
    """COCO instance annotations -> ``ROOT/mask/<split>/<stem>.png``, ``ROOT/<train|val>14.txt`` and
    ``ROOT/cls_labels.npy`` (every image of every file; classes of crowd annotations included)."""
    from wsss.config import shell_command

    _require_pycocotools()
    if not annotations:
        raise WsssDataError("no COCO annotation file given (--annotations instances_train2014.json)")
    root = Path(root).expanduser()
    lut = {cat: i for i, cat in enumerate(COCO_CATEGORY_IDS, start=1)}
    num_fg = len(COCO_CLASSES) - 1
    labels: dict[str, np.ndarray] = {}
    stems: dict[str, set[str]] = {}
    written = skipped = 0
    for ann_path in annotations:
        ann_path = Path(ann_path).expanduser()
        coco = _load_coco(ann_path)
        images = coco.dataset.get("images")
        if not images:
            raise WsssDataError(f"{ann_path} lists no images")
        split = coco_split(ann_path, images)
        unknown = sorted({a["category_id"] for a in coco.dataset.get("annotations", []) if a["category_id"] not in lut})
        if unknown:
            raise WsssDataError(f"{ann_path} has annotations of category id(s) {unknown[:10]}, not among COCO's 80 classes")
        mask_dir = root / "mask" / split
        jobs = []
        for info in images:
            stem = Path(info["file_name"]).stem
            stems.setdefault(split, set()).add(stem)
            anns = coco.imgToAnns.get(info["id"], [])
            labels[stem] = _multi_hot({lut[a["category_id"]] for a in anns}, num_fg)
            out = mask_dir / f"{stem}.png"
            if out.is_file():
                skipped += 1
                continue
            # Only what the worker needs: the size and the annotations' shapes and classes.
            jobs.append((int(info["height"]), int(info["width"]),
                         [(a["segmentation"], int(a.get("iscrowd", 0)), lut[a["category_id"]], a.get("id")) for a in anns],
                         str(out)))
        del coco
        written += sum(_run_jobs(_coco_one, jobs, workers, f"prepare coco {split}", progress))
    lists = []
    for split, names in sorted(stems.items()):
        list_path = root / f"{split.replace('2014', '')}14.txt"
        _write_text_if_changed(list_path, "\n".join(sorted(names)) + "\n")
        lists.append(f"{list_path} ({len(names)} ids)")
    _update_cls_labels(root / "cls_labels.npy", labels, num_fg)
    first = "train" if "train2014" in stems else "val"
    missing_images = [s for s in sorted(stems) if not (root / s).is_dir()]
    note = f" (the images are still to be put in {', '.join(str(root / s) for s in missing_images)})" if missing_images else ""
    shadowing = [root / f"{s.replace('2014', '')}.txt" for s in sorted(stems)]
    shadowing = [str(p) for p in shadowing if p.is_file()]
    if shadowing:
        note += f" (wsss reads {', '.join(shadowing)} before the *14.txt lists: remove it to use them)"
    line = (f"coco: {written + skipped} masks in {root / 'mask'} ({written} written, {skipped} already there), "
            f"{', '.join(lists)}, {root / 'cls_labels.npy'} ({len(labels)} images){note}; next: "
            + shell_command("train-cls", "--data-kind", "coco", "--data-root", root, "--split", first))
    return PrepareReport(written, skipped, line)


# -- Cityscapes -----------------------------------------------------------------------------------

def _cityscapes_one(job: tuple) -> bool:
    src, out = job
    write_mask(out, _CITYSCAPES_LUT[read_mask(src)], index=True)
    return True


_CITYSCAPES_LUT = cityscapes_lut()


def prepare_cityscapes(root: str | Path, *, workers: int = 2, progress: bool = False) -> PrepareReport:
    """``*_gtFine_labelTrainIds.png`` beside every ``ROOT/gtFine/<split>/<city>/*_gtFine_labelIds.png``."""
    root = Path(root).expanduser()
    gt = root / "gtFine"
    if not gt.is_dir() and root.name == "gtFine":
        gt = root
    if not gt.is_dir():
        raise WsssDataError(f"no Cityscapes gtFine folder at {root}: expected {gt}/<split>/<city>/*_gtFine_labelIds.png")
    sources = sorted(gt.glob("*/*/*_gtFine_labelIds.png"))
    if not sources:
        raise WsssDataError(f"no *_gtFine_labelIds.png files in {gt}/<split>/<city>/: is gtFine_trainvaltest fully extracted?")
    jobs = []
    for src in sources:
        out = src.with_name(src.name[: -len("_gtFine_labelIds.png")] + "_gtFine_labelTrainIds.png")
        if not out.is_file():
            jobs.append((str(src), str(out)))
    written = sum(_run_jobs(_cityscapes_one, jobs, workers, "prepare cityscapes", progress))
    skipped = len(sources) - written
    line = (f"cityscapes: {len(sources)} *_gtFine_labelTrainIds.png masks beside their labelIds files in {gt} "
            f"({written} written, {skipped} already there; 19 classes 0..18, 255 ignore). wsss has no Cityscapes "
            "reader: these are the masks Cityscapes segmentation code (cityscapesScripts, mmsegmentation) reads")
    return PrepareReport(written, skipped, line)
