"""Bad inputs through the command line: each gives a clear message (no traceback) and leaves
no partial output behind."""
import errno
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cam.extract import save_cam
from wsss.cli import main
from wsss.data import VOCDataset
from wsss.io import atomic_write, write_mask


def _run(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    # a user error is a one-line message, not a Python traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def toy_copy(toy_root, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    return root


def _train_cls_args(root, out, *extra):
    return ["train-cls", "--data-root", str(root), "--model", "resnet_tiny", "--crop", "32", "--batch-size", "4",
            "--max-steps", "1", "--workers", "0", "--device", "cpu", "--out", str(out), *extra]


def test_missing_dataset_folder(tmp_path):
    out = _run(_train_cls_args(tmp_path / "nowhere", tmp_path / "run"))
    assert "nowhere" in out and not (tmp_path / "run").exists()


def test_an_image_that_is_not_an_image(toy_copy, tmp_path):
    image_id = VOCDataset(toy_copy, "val").ids[0]
    (toy_copy / "JPEGImages" / f"{image_id}.jpg").write_text("not a picture")
    out = _run(["extract-cam", "--cls-dir", str(_trained(toy_copy, tmp_path)), "--data-root", str(toy_copy),
                "--split", "val", "--device", "cpu", "--out", str(tmp_path / "cams")])
    assert f"{image_id}.jpg" in out and "Replace or remove" in out
    assert not list((tmp_path / "cams").glob(f"{image_id}*"))


def test_a_mask_with_a_class_id_beyond_the_class_count(toy_copy, tmp_path):
    ds = VOCDataset(toy_copy, "val")
    bad = np.zeros((64, 64), np.uint8)
    bad[3, 3] = 40
    write_mask(toy_copy / "SegmentationClass" / f"{ds.ids[0]}.png", bad)
    out = _run(["eval", "--pred", str(toy_copy / "SegmentationClass"), "--gt", str(toy_copy / "SegmentationClass"),
                "--out", str(tmp_path / "e.json")])
    assert "40" in out and not (tmp_path / "e.json").exists()


def test_a_prediction_with_unknown_pixels(toy_copy, tmp_path):
    ds = VOCDataset(toy_copy, "val")
    pred = tmp_path / "ir_label"
    shutil.copytree(toy_copy / "SegmentationClass", pred)
    mask = ds.load(ds.ids[1]).mask.copy()
    mask[mask == 0] = 255  # as in an IR label: unknown pixels, here where the ground truth is background
    write_mask(pred / f"{ds.ids[1]}.png", mask)
    out = _run(["eval", "--pred", str(pred), "--gt", str(toy_copy / "SegmentationClass"),
                "--out", str(tmp_path / "e.json")])
    assert ds.ids[1] in out and "255" in out and "unknown" in out and not (tmp_path / "e.json").exists()


def _folder_dataset(root, labels_csv):
    (root / "images").mkdir(parents=True)
    from wsss.io import write_image

    for i in ("a", "b"):
        write_image(root / "images" / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text(labels_csv)


def test_a_labels_file_naming_an_unknown_class(tmp_path):
    _folder_dataset(tmp_path / "data", "a,cat\nb,dgo\n")
    out = _run(_train_cls_args(tmp_path / "data", tmp_path / "run", "--data-kind", "folder", "--split", "all", "--val-split", ""))
    assert "dgo" in out and not (tmp_path / "run").exists()


def test_an_image_with_no_label(tmp_path):
    _folder_dataset(tmp_path / "data", "a,cat\n")
    out = _run(_train_cls_args(tmp_path / "data", tmp_path / "run", "--data-kind", "folder", "--split", "all", "--val-split", ""))
    assert "b" in out and "label" in out and not (tmp_path / "run").exists()


def test_a_checkpoint_of_the_wrong_architecture(toy_root, tmp_path):
    from wsss.models import build_backbone
    from wsss.models.weights import save_safetensors

    save_safetensors(build_backbone("conformer_tiny").state_dict(), tmp_path / "conformer.safetensors")
    out = _run(_train_cls_args(toy_root, tmp_path / "run", "--pretrained", str(tmp_path / "conformer.safetensors")))
    assert "missing" in out and "unexpected" in out and not (tmp_path / "run").exists()


def test_a_cam_file_of_the_wrong_shape(toy_root, tmp_path):
    ds = VOCDataset(toy_root, "val")
    for image_id in ds.ids:
        keys = np.flatnonzero(ds.label(image_id))
        high = np.ones((len(keys), 50, 50), np.float32)  # the images are 64 x 64
        save_cam(tmp_path / "cams" / f"{image_id}.npz", {"keys": keys, "cam": high[:, ::4, ::4], "high_res": high})
    out = _run(["make-pseudo", "--cam-dir", str(tmp_path / "cams"), "--refine", "none", "--data-root", str(toy_root),
                "--split", "val", "--workers", "1", "--out", str(tmp_path / "pseudo")])
    assert "(50, 50)" in out and "(64, 64)" in out and not list((tmp_path / "pseudo").glob("*.png"))


def test_a_config_with_an_unknown_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train_cls:\n  epohcs: 3\n")
    out = _run(["train-cls", "--config", str(cfg)])
    assert "epohcs" in out and "epochs" in out


def test_an_output_folder_that_cannot_be_written(toy_root, tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    # valid inputs (make-pseudo checks them first), so the output is what fails
    for i in VOCDataset(toy_root, "val").ids:
        save_cam(tmp_path / "cams" / f"{i}.npz", {"keys": np.array([0]), "cam": np.ones((1, 16, 16), np.float32),
                                                   "high_res": np.ones((1, 64, 64), np.float32)})
    out = _run(["make-pseudo", "--cam-dir", str(tmp_path / "cams"), "--refine", "none", "--data-root", str(toy_root),
                "--split", "val", "--out", str(tmp_path / "file" / "pseudo")])
    assert "file" in out and "cannot write" in out


def test_a_full_disk_loses_nothing(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"previous result")

    def writer(tmp):
        tmp.write_bytes(b"half a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, writer)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def _trained(root, tmp_path):
    out = tmp_path / "cls"
    r = CliRunner().invoke(main, _train_cls_args(root, out, "--val-split", ""))
    assert r.exit_code == 0, r.output
    return out
