import json

import numpy as np
import pytest

from wsss.data import (COCO_CLASSES, DataConfig, FolderDataset, VOCDataset, WsssDataError, build_dataset,
                       load_cls_labels, save_cls_labels)
from wsss.data.coco import COCODataset, COCO_CATEGORY_IDS
from wsss.io import write_image, write_mask

RNG = np.random.default_rng(0)


def _img(h=20, w=30):
    return RNG.integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def make_voc(root, with_labels=False):
    voc = root / "VOCdevkit" / "VOC2012"
    ids = ["2007_000032", "2007_000039", "2008_000002"]
    masks = {
        "2007_000032": np.pad(np.full((10, 10), 1, np.uint8), ((5, 5), (10, 10))),
        "2007_000039": np.pad(np.full((10, 10), 15, np.uint8), ((5, 5), (10, 10)), constant_values=2),
    }
    masks["2007_000032"][0, 0] = 255
    for i in ids:
        write_image(voc / "JPEGImages" / f"{i}.jpg", _img())
    for i, m in masks.items():
        write_mask(voc / "SegmentationClass" / f"{i}.png", m)
    aug = np.zeros((20, 30), np.uint8)
    aug[:5, :5] = 7
    write_mask(voc / "SegmentationClassAug" / "2008_000002.png", aug)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    if with_labels:
        lab = {i: np.zeros(20, np.float32) for i in ids}
        lab["2008_000002"][11] = 1  # dog, differs from the mask on purpose
        save_cls_labels(voc / "cls_labels.npy", lab)
    return voc


def test_voc_labels_from_masks_and_fallback_to_aug(tmp_path):
    make_voc(tmp_path)
    ds = VOCDataset(tmp_path, "train_aug")  # found through VOCdevkit/VOC2012
    assert ds.ids == ["2007_000032", "2007_000039", "2008_000002"] and ds.num_fg == 20
    s = ds[1]
    assert s.image.shape == (20, 30, 3) and s.mask.shape == (20, 30)
    assert np.flatnonzero(s.label).tolist() == [1, 14]  # bicycle (2) and person (15)
    assert ds.mask_path("2008_000002").parent.name == "SegmentationClassAug"
    assert np.flatnonzero(ds.label("2008_000002")).tolist() == [6]
    assert ds.mask_path("2007_000032").parent.name == "SegmentationClass"


def test_voc_cls_labels_irn_format(tmp_path):
    voc = make_voc(tmp_path, with_labels=True)
    raw = load_cls_labels(voc / "cls_labels.npy")
    assert 2008000002 in raw  # IRN's int keys
    ds = VOCDataset(voc, "train_aug")
    assert np.flatnonzero(ds.label("2008_000002")).tolist() == [11]
    assert isinstance(ds.ids[0], str)


def test_voc_errors(tmp_path):
    with pytest.raises(WsssDataError, match="no VOC tree"):
        VOCDataset(tmp_path / "missing")
    voc = make_voc(tmp_path)
    with pytest.raises(WsssDataError, match="split 'trian'.*train_aug"):
        VOCDataset(voc, "trian")
    write_mask(voc / "SegmentationClass" / "2007_000039.png", np.full((20, 30), 40, np.uint8))
    with pytest.raises(WsssDataError, match=r"class id\(s\) \[40\]"):
        VOCDataset(voc, "train_aug")[1]
    (voc / "JPEGImages" / "2007_000032.jpg").write_bytes(b"garbage")
    with pytest.raises(WsssDataError, match="2007_000032.jpg"):
        VOCDataset(voc, "val")[0]


def test_coco_layout_and_category_ids(tmp_path):
    root = tmp_path / "coco"
    ids = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    for i in ids:
        write_image(root / "train2014" / f"{i}.jpg", _img())
    m = np.zeros((20, 30), np.uint8)
    m[2:8, 2:8] = 1
    m[10:, 10:] = 80
    write_mask(root / "mask" / "train2014" / f"{ids[0]}.png", m)
    ds = COCODataset(root, "train", labels=None)
    assert ds.ids == ids and ds.num_fg == 80 and len(COCO_CLASSES) == 81
    assert np.flatnonzero(ds.label(ids[0])).tolist() == [0, 79]
    with pytest.raises(WsssDataError, match="no image-level label"):
        ds.label(ids[1])
    # masks that store COCO category ids (90 = toothbrush)
    write_mask(root / "catmask" / f"{ids[0]}.png", np.where(m == 80, 90, m).astype(np.uint8))
    ds2 = COCODataset(root, "train", masks=root / "catmask", category_ids=True)
    assert ds2.load(ids[0]).mask.max() == 80 and COCO_CATEGORY_IDS[-1] == 90
    # COCO label files keyed by the numeric image id
    save_cls_labels(root / "cls_labels.npy", {"9": np.eye(80, dtype=np.float32)[3], "25": np.eye(80, dtype=np.float32)[5]})
    ds3 = COCODataset(root, "train")
    assert np.flatnonzero(ds3.label(ids[1])).tolist() == [5]


def test_folder_dataset_csv_json_and_errors(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "images" / "a.png", _img())
    write_image(root / "images" / "b.jpg", _img())
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("id,labels\na,cat;dog\nb,dog\n")
    ds = FolderDataset(root, "all")
    assert ds.class_names == ["background", "cat", "dog"]
    assert ds.label("a").tolist() == [1.0, 1.0] and ds.label("b").tolist() == [0.0, 1.0]
    assert ds[0].mask is None

    (root / "labels.csv").unlink()
    (root / "labels.json").write_text(json.dumps({"a": ["cat"], "b": ["dgo"]}))
    with pytest.raises(WsssDataError, match="'dgo'.*Did you mean 'dog'"):
        FolderDataset(root, "all")
    (root / "labels.json").write_text(json.dumps({"a": ["cat"], "b": []}))
    with pytest.raises(WsssDataError, match="'b' has no foreground class"):
        FolderDataset(root, "all").label("b")
    (root / "labels.json").write_text(json.dumps({"a": ["cat"]}))
    with pytest.raises(WsssDataError, match="'b' has no label"):
        FolderDataset(root, "all").label("b")


def test_build_dataset_factory(tmp_path):
    voc = make_voc(tmp_path)
    ds = build_dataset(DataConfig(kind="voc", root=str(voc), split="val"))
    assert ds.ids == ["2007_000032"]
    with pytest.raises(WsssDataError, match="unknown dataset kind 'vco'"):
        build_dataset(DataConfig(kind="vco", root=str(voc)))
    with pytest.raises(WsssDataError, match="no dataset root"):
        build_dataset(DataConfig())


def test_one_class_names_reader_for_every_class_names_file(tmp_path):
    """VOC's class_names.txt, the folder layout's classes.txt, eval --classes, a train-seg run's
    class_names.txt and convert-weights --classes all read through read_class_names."""
    from wsss.data.base import read_class_names
    from wsss.eval.masks import resolve_class_names

    f = tmp_path / "names.txt"
    f.write_text("  cat \n\ndog\nbackground\n\n")
    assert read_class_names(f) == ["cat", "dog", "background"]
    # background first, listed once: added when missing, moved when elsewhere
    assert read_class_names(f, background_first=True) == ["background", "cat", "dog"]
    assert resolve_class_names(str(f), tmp_path) == ["background", "cat", "dog"]
    (tmp_path / "plain.txt").write_text("cat\ndog\n")
    assert read_class_names(tmp_path / "plain.txt", background_first=True) == ["background", "cat", "dog"]


def test_a_reader_gets_its_labels_and_mask_fallback_from_the_base_class(tmp_path):
    """SegDataset.label: the labels table first, then the mask's classes, else the reader's own message."""
    from wsss.data.base import SegDataset
    from wsss.io import WsssDataError, write_mask

    write_mask(tmp_path / "b.png", np.array([[0, 2], [2, 255]], np.uint8))

    class Tiny(SegDataset):
        name = "tiny"

        def mask_path(self, image_id):
            p = tmp_path / f"{image_id}.png"
            return p if p.is_file() else None

        def missing_label(self, image_id):
            return f"tiny has nothing for {image_id}"

    ds = Tiny(tmp_path, "train", ["a", "b", "c"], ["background", "x", "y"])
    ds.labels = {"a": np.array([1, 0], np.float32)}
    np.testing.assert_array_equal(ds.label("a"), [1, 0])  # from the table
    np.testing.assert_array_equal(ds.label("b"), [0, 1])  # from the mask: class 2 = y
    with pytest.raises(WsssDataError, match="^tiny has nothing for c$"):
        ds.label("c")
