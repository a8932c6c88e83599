"""Nothing a user made is lost, and nothing wrong passes in silence (CLI level, tiny data)."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cli import main
from wsss.io import write_image


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _refused(args):
    result = _invoke(args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


def _train_cls(root, out, *extra):
    return ["train-cls", "--data-root", root, "--model", "resnet_tiny", "--crop", "32", "--batch-size", "4",
            "--max-steps", "2", "--val-split", "", "--out", out, *extra, *(["--workers", "0"] if "--workers" not in extra else []), *(["--device", "cpu"] if "--device" not in extra else [])]


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_training_run_is_never_overwritten_implicitly(toy_root, tmp_path):
    out = tmp_path / "cls"
    assert _invoke(_train_cls(toy_root, out)).exit_code == 0
    before = _snapshot(out)
    msg = _refused(_train_cls(toy_root, out))
    assert "already holds a finished train-cls run" in msg and "--overwrite" in msg
    assert _snapshot(out) == before
    # --resume on a finished run changes nothing either
    assert _invoke(_train_cls(toy_root, out, "--resume")).exit_code == 0
    assert _snapshot(out) == before
    # --overwrite trains again (another seed: other weights) and writes a new done.json
    assert _invoke(_train_cls(toy_root, out, "--overwrite", "--seed", "1")).exit_code == 0
    assert (out / "done.json").is_file()
    assert (out / "model.safetensors").read_bytes() != before[Path("model.safetensors")]


def test_a_partial_run_is_refused_without_resume_and_its_consumers_refuse_it(toy_root, tmp_path):
    out = tmp_path / "cls"
    assert _invoke(_train_cls(toy_root, out)).exit_code == 0
    (out / "done.json").unlink()  # as a run killed after its last checkpoint
    msg = _refused(_train_cls(toy_root, out))
    assert "unfinished train-cls run (checkpoint at step 2)" in msg and "--resume" in msg
    msg = _refused(["extract-cam", "--cls-dir", out, "--data-root", toy_root, "--device", "cpu",
                    "--out", tmp_path / "cam"])
    assert "unfinished train-cls run (no done.json)" in msg and "--resume" in msg
    assert not (tmp_path / "cam").exists()


def _folder_tree(root, n=4):
    for i in range(n):
        write_image(root / "images" / f"im{i}.png", np.full((32, 32, 3), 40 * i, np.uint8))
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("".join(f"im{i},{'cat' if i % 2 else 'dog'}\n" for i in range(n)))


def test_a_folder_dataset_without_splits_needs_an_explicit_choice(tmp_path):
    root = tmp_path / "mine"
    _folder_tree(root)
    msg = _refused(_train_cls(root, tmp_path / "run", "--data-kind", "folder"))
    assert "has no splits/ folder" in msg and "--split all" in msg and "--val-fraction" in msg
    assert not (tmp_path / "run").exists()
    # --val-fraction writes the split it made, and says so
    result = _invoke(_train_cls(root, tmp_path / "run", "--data-kind", "folder", "--val-fraction", "0.25",
                                "--batch-size", "2", "--max-steps", "1"))
    assert result.exit_code == 0, result.output
    train = (root / "splits" / "train.txt").read_text().split()
    val = (root / "splits" / "val.txt").read_text().split()
    assert len(val) == 1 and len(train) == 3 and not set(train) & set(val)
    assert "wrote a seeded split" in result.output


def test_a_misspelt_split_is_an_error_listing_the_known_ones(tmp_path, toy_root):
    root = tmp_path / "mine"
    _folder_tree(root)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("im0\nim1\n")
    msg = _refused(_train_cls(root, tmp_path / "run", "--data-kind", "folder", "--split", "trian"))
    assert "split 'trian' not found" in msg and "train, all" in msg
    msg = _refused(_train_cls(toy_root, tmp_path / "run", "--split", "trian"))
    assert "split 'trian' not found" in msg and "train" in msg
    assert not (tmp_path / "run").exists()


def test_the_voc_reader_on_a_folder_tree_suggests_the_folder_kind(tmp_path):
    root = tmp_path / "mine"
    _folder_tree(root)
    msg = _refused(_train_cls(root, tmp_path / "run"))
    assert "no VOC tree found" in msg and "--data-kind folder" in msg


def test_a_failed_make_pseudo_leaves_nothing_that_blocks_its_fix(toy_root, tmp_path):
    from wsss.cam.extract import save_cam
    from wsss.data import VOCDataset

    out = tmp_path / "pseudo"
    msg = _refused(["make-pseudo", "--cam-dir", tmp_path / "no_cams", "--data-root", toy_root, "--split", "val",
                    "--refine", "none", "--out", out])
    assert "CAM folder not found" in msg and not out.exists()
    ds = VOCDataset(toy_root, "val")
    cams = tmp_path / "cams"
    for i in ds.ids[:-1]:
        save_cam(cams / f"{i}.npz", {"keys": np.array([0]), "cam": np.ones((1, 16, 16), np.float32),
                                     "high_res": np.ones((1, 64, 64), np.float32)})
    msg = _refused(["make-pseudo", "--cam-dir", cams, "--data-root", toy_root, "--split", "val", "--refine", "none",
                    "--out", out])
    assert f"1 of {len(ds.ids)} images have no CAM file" in msg and not out.exists()
    save_cam(cams / f"{ds.ids[-1]}.npz", {"keys": np.array([0]), "cam": np.ones((1, 16, 16), np.float32),
                                          "high_res": np.ones((1, 64, 64), np.float32)})
    result = _invoke(["make-pseudo", "--cam-dir", cams, "--data-root", toy_root, "--split", "val", "--refine", "none",
                      "--out", out])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == len(ds.ids)


def test_a_collapsed_predictor_is_called_out():
    from wsss.metrics import collapse_warning

    # ground truth: half background, half class 1; predictions: all background
    collapsed = np.array([[50, 0], [50, 0]])
    assert "collapsed to one class" in collapse_warning(collapsed, ["background", "cat"])
    assert "'background'" in collapse_warning(collapsed, ["background", "cat"])
    assert collapse_warning(np.array([[45, 5], [10, 40]]), ["background", "cat"]) is None
    # a ground truth that really is all one class is no collapse
    assert collapse_warning(np.array([[99, 0], [1, 0]]), ["background", "cat"]) is None


def test_eval_of_an_all_background_prediction_warns(toy_root, tmp_path):
    from wsss.data import VOCDataset
    from wsss.io import write_mask

    ds = VOCDataset(toy_root, "val")
    for i in ds.ids:
        write_mask(tmp_path / "pred" / f"{i}.png", np.zeros((64, 64), np.uint8))
    result = _invoke(["eval", "--pred", tmp_path / "pred", "--gt", toy_root / "SegmentationClass", "--ids",
                      toy_root / "ImageSets" / "Segmentation" / "val.txt"])
    assert result.exit_code == 0, result.output
    assert "collapsed to one class" in result.output


def test_cuda_without_a_gpu_and_worker_errors_are_one_line(toy_root, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    msg = _refused(_train_cls(toy_root, tmp_path / "run", "--device", "cuda"))
    assert "no CUDA GPU" in msg and "--device cpu" in msg and len(msg.strip().splitlines()) == 1
    # a truncated image read inside a data-loading worker
    import shutil

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    images = sorted((root / "JPEGImages").glob("*.jpg"))
    for image in images:  # every one, so that the first batch meets one
        image.write_bytes(image.read_bytes()[:200])
    msg = _refused(_train_cls(root, tmp_path / "run2", "--workers", "2", "--device", "cpu"))
    assert "JPEGImages" in msg and "Original Traceback" not in msg and "File \"" not in msg
    assert len(msg.strip().splitlines()) <= 2, msg


def test_pool_workers_die_with_a_parent_killed_by_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from wsss.engine.workers import die_with_parent\n"
        "def pid(_):\n    time.sleep(0.5)\n    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(2, initializer=die_with_parent)\n"
        "    print(' '.join(str(p) for p in set(pool.map(pid, range(4)))), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers and parent.pid not in workers
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped is dead
            return f.read().split()[2] != "Z"

    deadline = time.time() + 20
    while time.time() < deadline and any(alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(alive(p) for p in workers)


@pytest.mark.slow
def test_an_interrupted_stage_says_what_it_kept_and_the_command_that_continues(toy_root, tmp_path, monkeypatch):
    import shlex

    import torch

    out = tmp_path / "my run"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupted)
    (tmp_path / "cls.yaml").write_text("train_cls: {save_every: 2}\n")
    args = [str(a) for a in _train_cls(toy_root, out, "--max-steps", "4", "--overwrite",
                                       "--config", tmp_path / "cls.yaml")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    said = result.output.strip().splitlines()[-1]
    assert said.startswith("interrupted: the last checkpoint, step 2, is in") and "Traceback" not in result.output
    command = said.split("To continue: ", 1)[1]
    parts = shlex.split(command)
    assert parts[:2] == ["wsss", "train-cls"] and "--resume" in parts and "--overwrite" not in parts
    assert parts[parts.index("--out") + 1] == str(out)  # the path with a space pastes as one argument
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert CliRunner().invoke(main, parts[1:]).exit_code == 0
    assert (out / "done.json").is_file()



def test_printed_next_commands_paste_with_the_data_options(tmp_path):
    import shlex

    from wsss.cam.extract import save_cam
    from wsss.io import write_mask

    root = tmp_path / "my data"
    _folder_tree(root)
    for i in range(4):
        write_mask(root / "masks" / f"im{i}.png", np.full((32, 32), 1 + i % 2, np.uint8))
    cams = tmp_path / "cam dir"
    for i in range(4):
        save_cam(cams / f"im{i}.npz", {"keys": np.array([i % 2]), "cam": np.ones((1, 8, 8), np.float32),
                                       "high_res": np.ones((1, 32, 32), np.float32)})
    out = tmp_path / "pseudo masks"
    result = _invoke(["make-pseudo", "--cam-dir", cams, "--data-kind", "folder", "--data-root", root, "--split", "all",
                      "--refine", "none", "--out", out])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if "Next: " in l).split("Next: ", 1)[1]
    eval_cmd, seg_cmd = (shlex.split(part) for part in line.split(" , or: "))
    assert eval_cmd[:2] == ["wsss", "eval"] and eval_cmd[eval_cmd.index("--pred") + 1] == str(out)
    assert seg_cmd[:2] == ["wsss", "train-seg"]
    for opt, value in (("--data-kind", "folder"), ("--data-root", str(root)), ("--split", "all"), ("--masks", str(out))):
        assert seg_cmd[seg_cmd.index(opt) + 1] == value
    pasted = _invoke(eval_cmd[1:])
    assert pasted.exit_code == 0 and "mIoU" in pasted.output, pasted.output


def test_the_settings_users_shrink_first_have_options(toy_root, tmp_path):
    import yaml

    out = tmp_path / "cls"
    result = _invoke(_train_cls(toy_root, out, "--resize-long", "24,40", "--optimizer", "sgd"))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["resize_long"] == [24, 40] and saved["optimizer"] == "sgd"
    assert "MIN,MAX" in _refused(_train_cls(toy_root, tmp_path / "x", "--resize-long", "24"))
    seg = tmp_path / "seg"
    result = _invoke(["train-seg", "--data-root", toy_root, "--head", "fcn", "--backbone", "resnet_tiny", "--channels", "8",
                      "--base-size", "48", "--val-every", "3", "--iterations", "1", "--batch-size", "2", "--crop", "32",
                      "--workers", "0", "--device", "cpu", "--val-split", "", "--out", seg])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((seg / "config.yaml").read_text())
    assert (saved["channels"], saved["base_size"], saved["val_every"]) == (8, 48, 3)


def test_cams_made_for_other_classes_are_refused_by_every_reader(toy_root, tmp_path):
    """A CAM folder records its dataset's class names; eval-cam and make-pseudo refuse it on a
    dataset with other classes (one line naming both lists), and a folder without the record
    but with class ids beyond the dataset is refused too (no traceback)."""
    import json
    import shutil

    from wsss.cam.extract import save_cam
    from wsss.data import VOCDataset

    ds = VOCDataset(toy_root, "val")
    other = tmp_path / "other"
    shutil.copytree(toy_root, other)
    (other / "class_names.txt").write_text("background\ncat\ndog\n")
    (other / "cls_labels.npy").unlink()  # labels from the masks, rewritten to the two classes
    from wsss.io import read_mask, write_mask

    for png in (other / "SegmentationClass").glob("*.png"):
        m = read_mask(png)
        write_mask(png, np.where((m == 0) | (m == 255), m, m % 2 + 1).astype(np.uint8))
    cams = tmp_path / "cams"
    for i in ds.ids:
        keys = np.flatnonzero(ds.label(i))
        save_cam(cams / f"{i}.npz", {"keys": keys, "cam": np.ones((len(keys), 16, 16), np.float32),
                                     "high_res": np.ones((len(keys), 64, 64), np.float32)})
    (cams / "manifest.json").write_text(json.dumps({"class_names": ds.class_names}))
    for args in (["eval-cam", "--cam-dir", cams, "--data-root", other, "--split", "val"],
                 ["make-pseudo", "--cam-dir", cams, "--data-root", other, "--split", "val", "--refine", "none",
                  "--out", tmp_path / "pl"]):
        msg = _refused(args)
        assert "made for the classes [background, disc" in msg and "[background, cat, dog]" in msg, msg
    assert not (tmp_path / "pl").exists()
    (cams / "manifest.json").unlink()  # e.g. IRN's own CAM folder: no record, ids still checked
    assert any(np.flatnonzero(ds.label(i)).max() >= 2 for i in ds.ids)  # some CAM has a class id beyond 2
    for args in (["eval-cam", "--cam-dir", cams, "--data-root", other, "--split", "val"],
                 ["make-pseudo", "--cam-dir", cams, "--data-root", other, "--split", "val", "--refine", "none",
                  "--out", tmp_path / "pl"]):
        msg = _refused(args)
        assert "another dataset" in msg, msg


def test_logs_that_are_not_a_terminal_get_progress_lines(monkeypatch, capsys):
    import wsss.engine.loop as loop

    monkeypatch.setenv("WSSS_LOG_INTERVAL_S", "0")
    assert list(loop.tracked(range(3), "make-pseudo crf", progress=False)) == [0, 1, 2]
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("make-pseudo crf:")]
    assert len(lines) == 3 and "3/3 images (100%)" in lines[-1] and "ETA" in lines[-1]
    log = loop.ProgressLog("train-seg", 100, 10, enabled=True)
    assert "20/100 steps" in log.update(20)
