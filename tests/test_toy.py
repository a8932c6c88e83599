"""The synthetic dataset: layout, determinism, the properties that make it a fair
miniature of VOC weak supervision (shape-defined classes, multi-label images,
ignore borders, context biases) and the skip-on-rerun behaviour."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsss.data.toy import BACKGROUND_BIAS, COMPANION_BIAS, SHAPES, TOY_CLASS_NAMES, make_toy, render_toy
from wsss.io import IGNORE_INDEX, read_image, read_mask

SIZE, NUM_TRAIN, NUM_VAL = 64, 40, 10


def _make(root: Path, **kw) -> Path:
    params = dict(size=SIZE, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0, workers=1, progress=False)
    params.update(kw)
    return make_toy(root, **params)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stamps(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def masks(toy) -> dict[str, np.ndarray]:
    return {i: read_mask(toy / "SegmentationClass" / f"{i}.png") for s in ("train", "val") for i in _ids(toy, s)}


def test_same_seed_gives_identical_files_whatever_the_workers(toy, tmp_path):
    # The second run uses worker processes: per-image seeding must make that invisible.
    again = _make(tmp_path / "again", workers=2)
    assert _files(again) == _files(toy)
    other = _make(tmp_path / "other", seed=1)
    a, b = _files(toy), _files(other)
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != b[k] for k in jpgs) == len(jpgs)


def test_tree_layout_and_formats(toy):
    names = (toy / "class_names.txt").read_text().splitlines()
    assert names == TOY_CLASS_NAMES and names[0] == "background" and len(names) >= 7
    train, val = _ids(toy, "train"), _ids(toy, "val")
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL and not set(train) & set(val)
    assert _ids(toy, "train_aug") == train
    all_ids = train + val
    assert sorted(p.stem for p in (toy / "JPEGImages").glob("*.jpg")) == sorted(all_ids)
    assert sorted(p.stem for p in (toy / "SegmentationClass").glob("*.png")) == sorted(all_ids)
    for image_id in all_ids[:5]:
        with Image.open(toy / "SegmentationClass" / f"{image_id}.png") as im:
            assert im.mode == "P"
        with Image.open(toy / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.format == "JPEG"
        assert read_image(toy / "JPEGImages" / f"{image_id}.jpg").shape == (SIZE, SIZE, 3)
        mask = read_mask(toy / "SegmentationClass" / f"{image_id}.png")
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= set(range(len(names))) | {IGNORE_INDEX}
    labels = np.load(toy / "cls_labels.npy", allow_pickle=True).item()
    assert set(labels) == {int(i.replace("_", "")) for i in all_ids}
    assert all(v.dtype == np.float32 and v.shape == (len(names) - 1,) for v in labels.values())
    info = json.loads((toy / "toy_info.json").read_text())
    assert (info["size"], info["num_train"], info["num_val"], info["seed"]) == (SIZE, NUM_TRAIN, NUM_VAL, 0)


def test_labels_match_masks_and_are_multi_label(toy, masks):
    labels = np.load(toy / "cls_labels.npy", allow_pickle=True).item()
    table = []
    for image_id, mask in masks.items():
        present = np.unique(mask)
        present = present[(present != 0) & (present != IGNORE_INDEX)]
        expected = np.zeros(len(SHAPES), np.float32)
        expected[present - 1] = 1
        np.testing.assert_array_equal(labels[int(image_id.replace("_", ""))], expected, err_msg=image_id)
        table.append(expected)
    table = np.array(table)
    assert len(SHAPES) >= 6
    assert table.sum(1).min() >= 1, "every image has a foreground label"
    assert table.sum(0).min() >= 1, "every class appears"
    assert (table.sum(1) >= 2).mean() >= 0.3


def test_ignore_band_follows_object_boundaries(masks):
    near_change = []
    for image_id, mask in masks.items():
        ignore = mask == IGNORE_INDEX
        assert ignore.any(), image_id
        # Every change of class is covered: no two 4-neighbours hold different classes.
        for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
            assert not ((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).any(), image_id
        assert ignore.mean() <= 0.2, image_id
        # A change of class lies within 3 px of nearly every ignore pixel; the rest
        # sit on thin parts (star tips, occluding distractor lines) or between two
        # objects of one class, which the instance test below covers exactly.
        values = mask.astype(np.int32)
        hi = ndimage.maximum_filter(np.where(ignore, -1, values), size=7, mode="nearest")
        lo = ndimage.minimum_filter(np.where(ignore, 256, values), size=7, mode="nearest")
        near_change.append((hi != lo)[ignore])
    assert np.concatenate(near_change).mean() >= 0.9


@pytest.mark.parametrize("size", [64, 128])
def test_ignore_band_is_the_instance_boundary(size):
    # Exactly the pixels within 1 px of a change of object instance: a 2 px band.
    for i in range(20):
        scene = render_toy(0, "train", i, size)
        footprint = np.ones((3, 3), bool)
        changes = ndimage.maximum_filter(scene.instances, footprint=footprint, mode="nearest") != ndimage.minimum_filter(
            scene.instances, footprint=footprint, mode="nearest"
        )
        np.testing.assert_array_equal(scene.mask == IGNORE_INDEX, changes)
        classes = np.array([0] + [TOY_CLASS_NAMES.index(c) for c in scene.objects])
        np.testing.assert_array_equal(scene.mask[~changes], classes[scene.instances[~changes]])


def test_context_biases_are_strong():
    scenes = [render_toy(0, "train", i, SIZE) for i in range(300)]
    labels = np.array([s.label for s in scenes]) > 0
    backgrounds = np.array([s.background for s in scenes])

    cls, family, _ = BACKGROUND_BIAS
    has = labels[:, SHAPES.index(cls)]
    on_family = backgrounds == family
    assert has.sum() >= 30
    assert on_family[has].mean() >= 0.65 and on_family[~has].mean() <= 0.35

    owner, companion, _ = COMPANION_BIAS
    has_owner, has_companion = labels[:, SHAPES.index(owner)], labels[:, SHAPES.index(companion)]
    assert has_owner.sum() >= 30
    assert has_companion[has_owner].mean() >= 0.7
    assert has_companion[has_owner].mean() >= 2.5 * has_companion[~has_owner].mean()


@pytest.mark.parametrize("size", [96, 160])
def test_other_sizes_scale_objects(size):
    for i in range(6):
        scene = render_toy(3, "val", i, size)
        assert scene.image.shape == (size, size, 3) and scene.mask.shape == (size, size)
        assert scene.label.sum() >= 1
        fg = ((scene.mask != 0) & (scene.mask != IGNORE_INDEX)).mean()
        assert 0.02 <= fg <= 0.8


def test_rerun_skips_and_missing_file_regenerates(tmp_path):
    root = _make(tmp_path / "t", num_train=6, num_val=3)
    stamps = _stamps(root)
    _make(root, num_train=6, num_val=3)
    assert _stamps(root) == stamps

    missing = root / "SegmentationClass" / "2001_000001.png"
    content = missing.read_bytes()
    missing.unlink()
    _make(root, num_train=6, num_val=3)
    assert missing.read_bytes() == content
    # Files are replaced, not edited, so a rewritten file has a new inode.
    assert _stamps(root)[root / "toy_info.json"] != stamps[root / "toy_info.json"]

    # Other parameters are another dataset: the info file must follow them.
    _make(root, num_train=6, num_val=4)
    assert json.loads((root / "toy_info.json").read_text())["num_val"] == 4
    assert len(_ids(root, "val")) == 4
