import json

import numpy as np
from click.testing import CliRunner

from wsss.cli import main
from wsss.io import write_mask


def _masks(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], np.uint8)
    write_mask(gt_dir / "a.png", gt)
    write_mask(pred_dir / "a.png", pred)
    write_mask(gt_dir / "b.png", gt)
    write_mask(pred_dir / "b.png", gt)
    (tmp_path / "names.txt").write_text("background\ncat\ndog\n")
    return gt_dir, pred_dir


def test_eval_prints_table_and_writes_json(tmp_path):
    gt_dir, pred_dir = _masks(tmp_path)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir),
                                    "--classes", str(tmp_path / "names.txt"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "cat" in res.output and "mIoU" in res.output
    d = json.loads(out.read_text())
    # a + b: M = [[3,1,0],[0,5,1],[1,0,3]] -> IoU bg 3/5, cat 5/7, dog 3/5
    assert d["per_class"]["cat"]["IoU"] == round(100 * 5 / 7, 4)
    assert d["mIoU"] == round(100 * (3 / 5 + 5 / 7 + 3 / 5) / 3, 4)
    assert d["num_images"] == 2


def test_identity_gives_100(tmp_path):
    gt_dir, _ = _masks(tmp_path)
    res = CliRunner().invoke(main, ["eval", "--pred", str(gt_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    assert "mIoU 100.00" in res.output


def test_missing_ground_truth_is_an_error(tmp_path):
    gt_dir, pred_dir = _masks(tmp_path)
    write_mask(pred_dir / "c.png", np.zeros((2, 4), np.uint8))
    res = CliRunner().invoke(main, ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir)])
    assert res.exit_code != 0
    assert "ground-truth mask(s) missing" in res.output and "'c'" in res.output
    assert "Traceback" not in res.output


def test_help_lists_stages_and_defaults():
    res = CliRunner().invoke(main, ["--help"])
    assert "make-toy" in res.output and "eval" in res.output
    res = CliRunner().invoke(main, ["make-toy", "--help"])
    assert "default: 128" in res.output and "pixels" in res.output


def test_masks_made_for_other_classes_are_refused(tmp_path):
    """A wsss mask folder records its class list; scoring it against another one is refused in one
    line naming both (checked where the ground truth's class list is known: --classes or a names file)."""
    gt_dir, pred_dir = _masks(tmp_path)
    (pred_dir / "manifest.json").write_text(json.dumps({"class_names": ["background", "car", "bus"]}))
    res = CliRunner().invoke(main, ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir),
                                    "--classes", str(tmp_path / "names.txt")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "car, bus" in res.output and "cat, dog" in res.output
    (pred_dir / "manifest.json").write_text(json.dumps({"class_names": ["background", "cat", "dog"]}))
    res = CliRunner().invoke(main, ["eval", "--pred", str(pred_dir), "--gt", str(gt_dir),
                                    "--classes", str(tmp_path / "names.txt"), "--out", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
