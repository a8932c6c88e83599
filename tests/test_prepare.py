"""wsss prepare voc|coco|cityscapes on tiny raw downloads built here (real file formats:
JPEGs, VOC palette PNGs, SBD .mat structs, COCO json with polygons and RLE, Cityscapes labelIds)."""
import json

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from wsss.cli import main
from wsss.data import COCO_CLASSES, COCODataset, VOCDataset
from wsss.data.labels import load_cls_labels
from wsss.data.prepare import prepare_cityscapes, prepare_coco, prepare_voc, read_sbd_mask
from wsss.io import WsssDataError, read_mask, write_mask

# ---------------------------------------------------------------- VOC + SBD fixture

SIZES = {  # (H, W); not square, so a transposed mask would be caught
    "2007_000001": (12, 16), "2007_000002": (10, 14), "2007_000003": (12, 16),
    "2007_000004": (8, 12), "2008_000005": (14, 10), "2008_000006": (9, 11),
}
VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002"], ["2007_000003", "2007_000004"]
SBD_TRAIN, SBD_VAL = ["2007_000001", "2007_000003", "2008_000005"], ["2008_000006", "2007_000004"]
TRAIN_AUG = ["2007_000001", "2007_000002", "2008_000005", "2008_000006"]  # (SBD all + VOC train) - VOC val


def _block(image_id, cls, rows, cols, border=False):
    m = np.zeros(SIZES[image_id], np.uint8)
    m[rows, cols] = cls
    if border:  # VOC's 255 outline around the object
        r, c = rows, cols
        m[r.start - 1, c.start - 1:c.stop + 1] = 255
        m[r.stop, c.start - 1:c.stop + 1] = 255
        m[r.start - 1:r.stop + 1, c.start - 1] = 255
        m[r.start - 1:r.stop + 1, c.stop] = 255
    return m


def _voc_sbd(tmp_path):
    """VOCdevkit/VOC2012 with 6 JPEGs and 3 SegmentationClass masks; benchmark_RELEASE/dataset
    with 5 cls/*.mat. Returns (voc folder given to prepare, SBD folder, expected output masks)."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for image_id, (h, w) in SIZES.items():
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    voc_masks = {
        "2007_000001": _block("2007_000001", 15, slice(2, 8), slice(3, 10), border=True),  # person
        "2007_000002": _block("2007_000002", 12, slice(1, 9), slice(0, 6)),                # dog
        "2007_000004": _block("2007_000004", 20, slice(2, 6), slice(2, 9), border=True),   # tvmonitor
    }
    for image_id, m in voc_masks.items():
        write_mask(voc / "SegmentationClass" / f"{image_id}.png", m)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")

    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    sbd_masks = {
        "2007_000001": np.full(SIZES["2007_000001"], 7, np.uint8),                   # car: VOC's mask must win
        "2007_000003": _block("2007_000003", 3, slice(0, 5), slice(4, 12)),           # bird
        "2007_000004": np.full(SIZES["2007_000004"], 9, np.uint8),                   # chair: VOC's mask must win
        "2008_000005": _block("2008_000005", 1, slice(0, 6), slice(0, 10)) + _block("2008_000005", 2, slice(8, 14), slice(2, 5)),
        "2008_000006": np.zeros(SIZES["2008_000006"], np.uint8),                     # background only
    }
    for image_id, m in sbd_masks.items():
        _save_sbd_mat(sbd / "cls" / f"{image_id}.mat", m)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    expected = {**sbd_masks, **voc_masks}
    return tmp_path / "VOCdevkit", sbd, expected


def _save_sbd_mat(path, seg):
    """SBD's cls/<id>.mat: a struct GTcls with Segmentation, Boundaries (a cell per class), CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(seg.shape, np.uint8)
    present = np.array([c for c in np.unique(seg) if 0 < c < 21], np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}})


VOC_LABELS = {"2007_000001": [15], "2007_000002": [12], "2007_000003": [3], "2007_000004": [20],
              "2008_000005": [1, 2], "2008_000006": []}


def _vec(classes, num_fg):
    v = np.zeros(num_fg, np.float32)
    v[[c - 1 for c in classes]] = 1.0
    return v


def _mtimes(*folders_or_files):
    out = {}
    for p in folders_or_files:
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file():
                out[f] = f.stat().st_mtime_ns
    return out


def test_sbd_mat_reads_back(tmp_path):
    seg = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _save_sbd_mat(tmp_path / "a.mat", seg)
    got = read_sbd_mask(tmp_path / "a.mat")
    assert got.dtype == np.uint8 and np.array_equal(got, seg)


def test_prepare_voc_writes_masks_list_and_labels(tmp_path):
    voc_dir, sbd, expected = _voc_sbd(tmp_path)
    report = prepare_voc(voc_dir, sbd, workers=1)
    root = voc_dir / "VOC2012"
    assert (report.written, report.skipped) == (6, 0)
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text().splitlines() == TRAIN_AUG
    aug = root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(SIZES)
    for image_id, m in expected.items():
        with Image.open(aug / f"{image_id}.png") as im:
            assert im.mode == "P"
        assert np.array_equal(read_mask(aug / f"{image_id}.png"), m), image_id
    # VOC's mask won over SBD's, 255 border included
    got = read_mask(aug / "2007_000001.png")
    assert (got == 255).sum() == 2 * 9 + 2 * 6 and not (got == 7).any()
    labels = load_cls_labels(root / "cls_labels.npy")
    assert sorted(labels) == sorted(int(i.replace("_", "")) for i in SIZES)
    for image_id, classes in VOC_LABELS.items():
        v = labels[int(image_id.replace("_", ""))]
        assert v.dtype == np.float32 and np.array_equal(v, _vec(classes, 20)), image_id

    ds = VOCDataset(voc_dir, "train_aug")
    assert ds.ids == TRAIN_AUG
    for image_id in ds.ids:
        s = ds.load(image_id)
        assert s.image.shape[:2] == SIZES[image_id]
        assert np.array_equal(s.mask, expected[image_id]) and np.array_equal(s.label, _vec(VOC_LABELS[image_id], 20))
    val = VOCDataset(voc_dir, "val")
    for image_id in VOC_VAL:
        assert np.array_equal(val.load(image_id).mask, expected[image_id])


def test_prepare_voc_is_resumable(tmp_path):
    voc_dir, sbd, expected = _voc_sbd(tmp_path)
    root = voc_dir / "VOC2012"
    prepare_voc(voc_dir, sbd, workers=1)
    outputs = [root / "SegmentationClassAug", root / "ImageSets/Segmentation/train_aug.txt", root / "cls_labels.npy"]
    before = _mtimes(*outputs)
    assert len(before) == 8
    report = prepare_voc(voc_dir, sbd, workers=1)
    assert (report.written, report.skipped) == (0, 6)
    assert _mtimes(*outputs) == before
    # an interrupted run: one mask is missing; only it is written again
    lost = root / "SegmentationClassAug" / "2008_000005.png"
    lost.unlink()
    report = prepare_voc(voc_dir, sbd, workers=1)
    assert (report.written, report.skipped) == (1, 5)
    assert np.array_equal(read_mask(lost), expected["2008_000005"])
    after = _mtimes(*outputs)
    assert {f: t for f, t in after.items() if f != lost} == {f: t for f, t in before.items() if f != lost}
    assert not list((root / "SegmentationClassAug").glob(".*"))  # no temporary files left


def test_prepare_voc_refuses_missing_mat(tmp_path):
    voc_dir, sbd, _ = _voc_sbd(tmp_path)
    (sbd / "cls" / "2008_000005.mat").unlink()
    with pytest.raises(WsssDataError, match=r"1 image\(s\) listed in .* have no mask in .*cls: 2008_000005"):
        prepare_voc(voc_dir, sbd, workers=1)
    assert not (voc_dir / "VOC2012" / "SegmentationClassAug").exists()


def test_prepare_voc_refuses_mask_of_another_size(tmp_path):
    voc_dir, sbd, _ = _voc_sbd(tmp_path)
    _save_sbd_mat(sbd / "cls" / "2008_000006.mat", np.zeros((11, 9), np.uint8))  # transposed
    with pytest.raises(WsssDataError, match=r"'2008_000006' .* is 9x11 but its image .* is 11x9"):
        prepare_voc(voc_dir, sbd, workers=1)


def test_prepare_voc_refuses_missing_voc_tree(tmp_path):
    _, sbd, _ = _voc_sbd(tmp_path)
    with pytest.raises(WsssDataError, match="no VOC tree found"):
        prepare_voc(tmp_path / "nowhere", sbd)


def test_cli_prepare_voc(tmp_path):
    voc_dir, sbd, expected = _voc_sbd(tmp_path)
    root = voc_dir / "VOC2012"
    # SBD given as benchmark_RELEASE (dataset/ found inside); default --workers 2 runs the pool
    res = CliRunner().invoke(main, ["prepare", "voc", "--voc", str(voc_dir), "--sbd", str(sbd.parent), "--mask-format", "index"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"voc: 6 masks in {root / 'SegmentationClassAug'} (6 written, 0 already there)")
    assert "(4 ids)" in lines[0]
    assert lines[0].endswith(f"next: wsss train-cls --data-kind voc --data-root {root} --split train_aug")
    for image_id, m in expected.items():
        with Image.open(root / "SegmentationClassAug" / f"{image_id}.png") as im:
            assert im.mode == "L"
            assert np.array_equal(np.array(im), m)


def test_cli_prepare_voc_without_sbd_is_one_line(tmp_path):
    voc_dir, _, _ = _voc_sbd(tmp_path)
    res = CliRunner().invoke(main, ["prepare", "voc", "--voc", str(voc_dir), "--sbd", str(tmp_path / "missing")])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: no SBD dataset found at {tmp_path / 'missing'}"), res.output
    assert "cls/" in lines[0] and "train.txt" in lines[0]


# ---------------------------------------------------------------- COCO

def _rect(x0, y0, x1, y1):
    """A polygon whose pycocotools raster is rows y0..y1-1, columns x0..x1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


PERSON, BICYCLE, CAR, DOG = 1, 2, 3, 17  # contiguous ids (COCO category ids 1, 2, 3, 18)
TV = COCO_CLASSES.index("tv")  # COCO category id 72


def _coco(tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    crowd = np.zeros((6, 7), np.uint8)
    crowd[0:4, 0:5] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")
    train = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 8, "width": 10},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 6, "width": 7},
            {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "height": 5, "width": 5},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _rect(0, 0, 6, 4)},
            {"id": 11, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": _rect(4, 2, 9, 7)},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _rect(0, 3, 3, 6)},
            {"id": 20, "image_id": 2, "category_id": 3, "iscrowd": 1, "segmentation": rle},
            {"id": 21, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": _rect(3, 2, 6, 5)},
        ],
        "categories": [{"id": c, "name": n} for c, n in ((1, "person"), (2, "bicycle"), (3, "car"), (18, "dog"), (72, "tv"))],
    }
    val = {
        "images": [{"id": 4, "file_name": "COCO_val2014_000000000004.jpg", "height": 4, "width": 6}],
        "annotations": [{"id": 40, "image_id": 4, "category_id": 72, "iscrowd": 0, "segmentation": _rect(1, 1, 5, 3)}],
        "categories": train["categories"],
    }
    (tmp_path / "annotations").mkdir()
    train_json = tmp_path / "annotations" / "instances_train2014.json"
    val_json = tmp_path / "annotations" / "minival.json"  # the split comes from the images' file names
    train_json.write_text(json.dumps(train))
    val_json.write_text(json.dumps(val))
    for split, data in (("train2014", train), ("val2014", val)):
        (root / split).mkdir(parents=True)
        for info in data["images"]:
            Image.new("RGB", (info["width"], info["height"]), (90, 120, 30)).save(root / split / info["file_name"])

    m1 = np.zeros((8, 10), np.uint8)
    m1[0:4, 0:6] = PERSON
    m1[2:7, 4:9] = DOG
    m1[2:4, 4:6] = 255          # person and dog overlap
    m1[3:6, 0:3] = PERSON       # two persons overlap at rows 3, columns 0..2: still person
    m2 = np.zeros((6, 7), np.uint8)
    m2[0:4, 0:5] = 255          # crowd car, not covered by an instance
    m2[2:5, 3:6] = BICYCLE      # the bicycle keeps its pixels inside the crowd region too
    m3 = np.zeros((5, 5), np.uint8)
    m4 = np.zeros((4, 6), np.uint8)
    m4[1:3, 1:5] = TV
    masks = {"COCO_train2014_000000000001": m1, "COCO_train2014_000000000002": m2,
             "COCO_train2014_000000000003": m3, "COCO_val2014_000000000004": m4}
    labels = {"COCO_train2014_000000000001": [PERSON, DOG], "COCO_train2014_000000000002": [BICYCLE, CAR],
              "COCO_train2014_000000000003": [], "COCO_val2014_000000000004": [TV]}
    return root, [train_json, val_json], masks, labels


def test_prepare_coco_masks_lists_labels(tmp_path):
    root, anns, masks, labels = _coco(tmp_path)
    report = prepare_coco(root, anns, workers=2)
    assert (report.written, report.skipped) == (4, 0)
    for stem, m in masks.items():
        path = root / "mask" / stem.split("_")[1] / f"{stem}.png"
        with Image.open(path) as im:
            assert im.mode == "L"
        assert np.array_equal(read_mask(path), m), stem
    assert (root / "train14.txt").read_text().splitlines() == sorted(s for s in masks if "train" in s)
    assert (root / "val14.txt").read_text().splitlines() == ["COCO_val2014_000000000004"]
    stored = load_cls_labels(root / "cls_labels.npy")
    assert sorted(stored) == sorted(masks)
    for stem, classes in labels.items():
        assert np.array_equal(stored[stem], _vec(classes, 80)), stem

    for split in ("train", "val"):
        ds = COCODataset(root, split)
        assert ds.ids == sorted(s for s in masks if split in s)
        for image_id in ds.ids:
            s = ds.load(image_id)
            assert np.array_equal(s.mask, masks[image_id]) and np.array_equal(s.label, _vec(labels[image_id], 80))

    before = _mtimes(root / "mask", root / "train14.txt", root / "val14.txt", root / "cls_labels.npy")
    report = prepare_coco(root, anns, workers=2)
    assert (report.written, report.skipped) == (0, 4)
    assert _mtimes(root / "mask", root / "train14.txt", root / "val14.txt", root / "cls_labels.npy") == before
    assert "next: wsss train-cls --data-kind coco --data-root" in report.line


def test_prepare_coco_in_two_calls_keeps_both_splits_labels(tmp_path):
    root, (train_json, val_json), masks, labels = _coco(tmp_path)
    prepare_coco(root, [train_json], workers=1)
    prepare_coco(root, [val_json], workers=1)
    assert sorted(load_cls_labels(root / "cls_labels.npy")) == sorted(masks)


def test_prepare_coco_without_pycocotools(tmp_path, monkeypatch):
    root, anns, _, _ = _coco(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "pycocotools", None)
    monkeypatch.setitem(__import__("sys").modules, "pycocotools.coco", None)
    with pytest.raises(WsssDataError, match=r"pip install 'wsss\[coco\]'"):
        prepare_coco(root, anns)
    assert not (root / "mask").exists()


def test_prepare_coco_refuses_unknown_split_and_category(tmp_path):
    ann = tmp_path / "anns.json"
    ann.write_text(json.dumps({"images": [{"id": 9, "file_name": "000000000009.jpg", "height": 4, "width": 4}],
                               "annotations": []}))
    with pytest.raises(WsssDataError, match="cannot tell the split"):
        prepare_coco(tmp_path / "coco", [ann], workers=1)
    ann = tmp_path / "instances_train2014.json"
    ann.write_text(json.dumps({"images": [{"id": 9, "file_name": "a.jpg", "height": 4, "width": 4}],
                               "annotations": [{"id": 1, "image_id": 9, "category_id": 12, "iscrowd": 0,
                                                "segmentation": _rect(0, 0, 2, 2)}]}))
    with pytest.raises(WsssDataError, match=r"category id\(s\) \[12\]"):
        prepare_coco(tmp_path / "coco", [ann], workers=1)


# ---------------------------------------------------------------- Cityscapes

def test_prepare_cityscapes_train_ids(tmp_path):
    label_ids = np.array([[0, 1, 7, 8, 11], [12, 13, 17, 19, 20], [21, 22, 23, 24, 25],
                          [26, 27, 28, 31, 32], [33, 6, 9, 30, 255]], np.uint8)
    train_ids = np.array([[255, 255, 0, 1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11, 12],
                          [13, 14, 15, 16, 17], [18, 255, 255, 255, 255]], np.uint8)
    files = [tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
             tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True)
        Image.fromarray(np.rot90(label_ids, i).copy(), mode="L").save(f)
    report = prepare_cityscapes(tmp_path, workers=1)
    assert (report.written, report.skipped) == (2, 0)
    for i, f in enumerate(files):
        out = f.with_name(f.name.replace("_labelIds.png", "_labelTrainIds.png"))
        with Image.open(out) as im:
            assert im.mode == "L"
            assert np.array_equal(np.array(im), np.rot90(train_ids, i))
    before = _mtimes(tmp_path / "gtFine")
    assert prepare_cityscapes(tmp_path, workers=1).written == 0
    assert _mtimes(tmp_path / "gtFine") == before
    with pytest.raises(WsssDataError, match="no Cityscapes gtFine folder"):
        prepare_cityscapes(tmp_path / "elsewhere")
