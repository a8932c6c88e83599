"""The fully supervised scene-parsing readers (Cityscapes, ADE20K, Pascal Context 59) on tiny
trees built here in each dataset's distributed layout."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cam.evaluate import EvalCamConfig, evaluate_cams
from wsss.cli import main
from wsss.data import DataConfig, build_dataset
from wsss.data.scenes import ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_TRAIN_IDS, PASCAL_CONTEXT59_CLASSES
from wsss.evaluate import EvalConfig, evaluate_folders
from wsss.io import IGNORE_INDEX, WsssDataError, write_image, write_mask

RNG = np.random.default_rng(0)


def _gray(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(array, np.uint8))


def _image(path, h=12, w=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))


# every Cityscapes label id once, with the train id the official labels.py gives it (255: not evaluated)
CITYSCAPES_TRAIN_ID = {i: CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(34)}


def _cityscapes(root, train_ids=False):
    values = np.array(list(CITYSCAPES_TRAIN_ID), np.uint8)  # 0..33
    ids = {"train": ["aachen_000000_000019", "bremen_000001_000019"], "val": ["frankfurt_000000_000294"]}
    for split, names in ids.items():
        for k, name in enumerate(names):
            city = name.split("_")[0]
            _image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", 12, 16)
            label_ids = np.resize(np.roll(values, k), (12, 16))
            _gray(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", label_ids)
            if train_ids:
                _gray(root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png",
                      np.vectorize(CITYSCAPES_TRAIN_ID.get)(label_ids))
    return root


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    ds = build_dataset(DataConfig(kind="cityscapes", root=str(root), split="train"))
    assert ds.ids == ["aachen_000000_000019", "bremen_000001_000019"]
    assert ds.class_names == CITYSCAPES_CLASSES and ds.num_classes == 19 and not ds.background
    assert ds.image_path(ds.ids[1]) == root / "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png"
    raw = cv2.imread(str(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"), cv2.IMREAD_GRAYSCALE)
    s = ds.load(ds.ids[0])
    expected = np.vectorize(CITYSCAPES_TRAIN_ID.get)(raw)
    assert np.array_equal(s.mask, expected)
    assert set(np.unique(s.mask)) == set(range(19)) | {IGNORE_INDEX}
    # the image-level label has one entry per class (no background to leave out)
    assert s.label.shape == (19,) and s.label.sum() == 19
    assert [CITYSCAPES_CLASSES[i] for i in (0, 13, 18)] == ["road", "car", "bicycle"]
    assert CITYSCAPES_TRAIN_ID[7] == 0 and CITYSCAPES_TRAIN_ID[26] == 13 and CITYSCAPES_TRAIN_ID[33] == 18


def test_cityscapes_prefers_label_train_ids_when_present(tmp_path):
    root = _cityscapes(tmp_path / "cs", train_ids=True)
    ds = build_dataset(DataConfig(kind="cityscapes", root=str(root), split="val"))
    assert ds.mask_path(ds.ids[0]).name.endswith("_gtFine_labelTrainIds.png")
    raw = cv2.imread(str(ds.mask_path(ds.ids[0])), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(ds.load(ds.ids[0]).mask, raw)  # read as it is


def test_cityscapes_errors_name_what_is_missing(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    with pytest.raises(WsssDataError, match="leftImg8bit/test"):
        build_dataset(DataConfig(kind="cityscapes", root=str(root), split="test"))
    _image(root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png")
    ds = build_dataset(DataConfig(kind="cityscapes", root=str(root), split="test"))  # no public labels: fine
    assert ds.mask_path(ds.ids[0]) is None and ds.load(ds.ids[0], with_mask=False).mask is None
    (root / "gtFine" / "train").rename(root / "gtFine" / "moved")
    with pytest.raises(WsssDataError, match="gtFine/train"):
        build_dataset(DataConfig(kind="cityscapes", root=str(root), split="train"))


def _ade(root):
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for k in range(2):
            _image(root / "ADEChallengeData2016" / "images" / folder / f"{prefix}_{k + 1:08d}.jpg")
            ann = np.resize(np.arange(151, dtype=np.uint8), (12, 16))  # 0 ("other") and 1..150
            _gray(root / "ADEChallengeData2016" / "annotations" / folder / f"{prefix}_{k + 1:08d}.png", ann)
    return root


def test_ade20k_reduces_the_zero_label(tmp_path):
    root = _ade(tmp_path / "ade")  # the folder holding ADEChallengeData2016 is found as well
    ds = build_dataset(DataConfig(kind="ade20k", root=str(root), split="val"))
    assert ds.ids == ["ADE_val_00000001", "ADE_val_00000002"] and ds.num_classes == 150 == len(ADE20K_CLASSES)
    raw = np.resize(np.arange(151, dtype=np.uint8), (12, 16))
    mask = ds.load(ds.ids[0]).mask
    assert np.array_equal(mask[raw == 0], np.full((raw == 0).sum(), IGNORE_INDEX))
    assert np.array_equal(mask[raw > 0], raw[raw > 0] - 1)
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[149] == "flag"
    assert build_dataset(DataConfig(kind="ade20k", root=str(root), split="training")).ids[0] == "ADE_train_00000001"
    with pytest.raises(WsssDataError, match="use train or val"):
        build_dataset(DataConfig(kind="ade20k", root=str(root), split="test"))
    bad = root / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000002.png"
    _gray(bad, np.full((12, 16), 151))
    with pytest.raises(WsssDataError, match=r"value\(s\) \[151\]"):
        ds.load("ADE_val_00000002")


def _context(root):
    voc = root / "VOCdevkit" / "VOC2010"
    for k in range(3):
        _image(voc / "JPEGImages" / f"2008_{k:06d}.jpg")
        _gray(voc / "SegmentationClassContext" / f"2008_{k:06d}.png", np.resize(np.arange(60, dtype=np.uint8), (12, 16)))
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000000\n2008_000001\n")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    return root


def test_pascal_context_59_reduces_the_zero_label(tmp_path):
    root = _context(tmp_path / "ctx")
    ds = build_dataset(DataConfig(kind="pascal_context", root=str(root), split="val"))
    assert ds.ids == ["2008_000002"] and ds.class_names == PASCAL_CONTEXT59_CLASSES and ds.num_classes == 59
    raw = np.resize(np.arange(60, dtype=np.uint8), (12, 16))
    mask = ds.load("2008_000002").mask
    assert (mask[raw == 0] == IGNORE_INDEX).all() and np.array_equal(mask[raw > 0], raw[raw > 0] - 1)
    with pytest.raises(WsssDataError, match="Splits here: train, val"):
        build_dataset(DataConfig(kind="pascal_context", root=str(root), split="trainval"))
    with pytest.raises(WsssDataError, match="SegmentationClassContext"):
        build_dataset(DataConfig(kind="pascal_context", root=str(tmp_path / "nothing"), split="val"))


def test_user_masks_are_read_in_train_id_space(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    pseudo = tmp_path / "pseudo"
    write_mask(pseudo / "aachen_000000_000019.png", np.full((12, 16), 18, np.uint8))
    write_mask(pseudo / "bremen_000001_000019.png", np.full((12, 16), 255, np.uint8))
    ds = build_dataset(DataConfig(kind="cityscapes", root=str(root), split="train", masks=str(pseudo)))
    assert (ds.load("aachen_000000_000019").mask == 18).all()  # not mapped as a label id (18 -> 255)


def test_weakly_supervised_stages_refuse_a_set_without_background(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    with pytest.raises(WsssDataError, match="eval-cam needs a dataset with a background class"):
        evaluate_cams(EvalCamConfig(data=DataConfig(kind="cityscapes", root=str(root), split="train"),
                                    cam_dir=str(tmp_path)), progress=False)


def test_eval_scores_against_the_datasets_own_ground_truth(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    data = DataConfig(kind="cityscapes", root=str(root), split="train")
    ds = build_dataset(data)
    pred = tmp_path / "pred"
    truth = {i: ds.load(i).mask for i in ds.ids}
    for i, m in truth.items():
        write_mask(pred / f"{i}.png", np.where(m == IGNORE_INDEX, 0, m))
    metrics = evaluate_folders(EvalConfig(pred=str(pred), data=data, workers=1), progress=False)
    assert metrics.class_names == CITYSCAPES_CLASSES and metrics.miou == pytest.approx(1.0)
    # one image all "road": its other classes' pixels become FN, and road's FP
    write_mask(pred / f"{ds.ids[0]}.png", np.zeros((12, 16), np.uint8))
    m = truth[ds.ids[0]]
    metrics = evaluate_folders(EvalConfig(pred=str(pred), data=data, workers=1), progress=False)
    valid = np.concatenate([t[t != IGNORE_INDEX] for t in truth.values()])
    wrong = ((m != IGNORE_INDEX) & (m != 0)).sum()
    road_gt = (valid == 0).sum()
    assert metrics.confusion[0, 0] == road_gt and metrics.confusion[:, 0].sum() == road_gt + wrong
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--data-kind", "cityscapes", "--data-root",
                                       str(root), "--split", "train"])
    assert result.exit_code == 0, result.output
    saved = json.loads((pred / "eval.json").read_text())
    assert saved["mIoU"] == pytest.approx(100 * metrics.miou, abs=1e-3)
    (pred / f"{ds.ids[1]}.png").unlink()
    with pytest.raises(WsssDataError, match="1 prediction\\(s\\) missing"):
        evaluate_folders(EvalConfig(pred=str(pred), data=data, workers=1), progress=False)


def test_train_seg_predict_and_eval_run_on_a_scene_parsing_set(tmp_path):
    """train-seg on Cityscapes' label ids (19 outputs, no background), predict, then eval against
    the dataset's own ground truth: the whole fully supervised path of the PCAA / PSANet tables."""
    import warnings

    from wsss.seg.predict import PredictConfig, predict
    from wsss.seg.train import TrainSegConfig, train_seg

    root = _cityscapes(tmp_path / "cs")
    data = DataConfig(kind="cityscapes", root=str(root), split="train")
    cfg = TrainSegConfig(data=data, val_split="val", head="pcaa", backbone="resnet_tiny", channels=16,
                         pool_sizes=[2], iterations=2, batch_size=2, crop=32, base_size=32, workers=0, device="cpu",
                         out=str(tmp_path / "seg"), log_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = train_seg(cfg, progress=False)
    from safetensors.torch import load_file

    weights = load_file(str(seg / "model.safetensors"))
    assert any(v.dim() == 4 and v.shape[0] == 19 for v in weights.values())  # a 19-way classifier
    pred = predict(PredictConfig(seg_dir=str(seg), data=DataConfig(kind="cityscapes", root=str(root), split="val"),
                                 out=str(tmp_path / "pred"), device="cpu"), progress=False)
    metrics = evaluate_folders(EvalConfig(pred=str(pred), data=DataConfig(kind="cityscapes", root=str(root),
                                                                          split="val"), workers=1), progress=False)
    assert metrics.confusion.shape == (19, 19)
    assert metrics.confusion.sum() == (build_dataset(DataConfig(kind="cityscapes", root=str(root), split="val"))
                                       .load("frankfurt_000000_000294").mask != IGNORE_INDEX).sum()
