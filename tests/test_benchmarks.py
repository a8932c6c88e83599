"""Every benchmark script runs, at its smallest settings, and prints its table: the benchmarks
must not rot between the runs that measure with them. No timing is asserted."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, capsys) -> str:
    argv = sys.argv
    sys.argv = [str(BENCH / name), *map(str, args)]
    try:
        runpy.run_path(str(BENCH / name), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def test_every_benchmark_has_a_smoke_run():
    tested = {name for name in globals() if name.startswith("test_")}
    for script in sorted(BENCH.glob("*.py")):
        assert f"test_{script.stem}" in tested, f"benchmarks/{script.name} has no smoke run in {__file__}"


def test_bench_cam_methods(capsys):
    out = run_script("bench_cam_methods.py", "--model", "conformer_tiny", "--images", 1, "--size", 48,
                     "--scales", 1.0, "--device", "cpu", "--no-memory", capsys=capsys)
    assert "adcam" in out.lower()


def test_bench_irn_affinity(capsys):
    out = run_script("bench_irn_affinity.py", "--batch", 1, "--crop", 48, "--radius", 3, "--iters", 1, capsys=capsys)
    assert "max |grad diff| 0.0e+00" in out and "grouped gather" in out


def test_bench_make_pseudo(capsys):
    out = run_script("bench_make_pseudo.py", "--size", 48, 48, "--images", 1, "--classes", 1,
                     "--backbone", "resnet_tiny", "--device", "cpu", capsys=capsys)
    assert out.strip()


@pytest.mark.dist  # launches child processes
def test_bench_random_walk(capsys):
    out = run_script("bench_random_walk.py", "--sizes", "32x40", "--dense-squarings", 1, "--threads", 1, capsys=capsys)
    assert "32x40" in out


def test_bench_seg_complexity(capsys):
    out = run_script("bench_seg_complexity.py", "--time", "--crop", 64, "--backbone", "resnet_tiny", "--batch", 1,
                     "--iters", 1, "--heads", "fcn", "--device", "cpu", capsys=capsys)
    assert "PCAA" in out


def test_bench_train_throughput(capsys):
    out = run_script("bench_train_throughput.py", "--cls", "resnet_tiny", "--seg", "fcn:resnet_tiny", "--batch", 1,
                     "--crop", 64, "--iters", 1, "--device", "cpu", capsys=capsys)
    assert "resnet_tiny" in out


def test_bench_walk_batch(capsys):
    out = run_script("bench_walk_batch.py", "--size", 48, "--images", 2, "--batches", 2, "--repeats", 1,
                     capsys=capsys)
    assert out.strip()


def _seeds_and_boundaries(toy_root, tmp_path):
    from wsss.cam.extract import save_cam
    from wsss.data import VOCDataset
    from wsss.io import write_gray

    ds = VOCDataset(toy_root, "train")
    for i in ds.ids[:3]:
        s = ds.load(i)
        keys = np.flatnonzero(s.label)
        high = np.stack([(s.mask == k + 1).astype(np.float32) for k in keys])
        save_cam(tmp_path / "cams" / f"{i}.npz", {"keys": keys, "cam": high[:, ::4, ::4], "high_res": high})
        h4, w4 = high.shape[1] // 4, high.shape[2] // 4
        write_gray(tmp_path / "boundary" / f"{i}.png", np.zeros((h4, w4), np.uint8))
    return ds


def test_walk_length_sweep(toy_root, tmp_path, capsys):
    _seeds_and_boundaries(toy_root, tmp_path)
    out = run_script("walk_length_sweep.py", "--data-root", toy_root, "--cam-dir", tmp_path / "cams",
                     "--boundary-dir", tmp_path / "boundary", "--num", 3, "--settings", "10:0:0.25", capsys=capsys)
    assert "| seed | - | 0.25 |" in out and "| 10 | 1 | 0.25 |" in out


@pytest.mark.slow
def test_irn_on_blurred_seeds(toy_root, tmp_path, capsys):
    out = run_script("irn_on_blurred_seeds.py", "--data-root", toy_root, "--crop", 80, "--epochs", 1,
                     "--oracle", 0.9, "--beta", 30, "--calibrate", "--out", tmp_path / "blur", capsys=capsys)
    assert "mIoU" in out and "48 images too small for pairs of radius 10" in out
    assert "beta 30, thresholds calibrated to" in out


@pytest.mark.slow
def test_seed_table(toy_root, tmp_path, capsys):
    from wsss.cls.train import TrainClsConfig, train_cls
    from wsss.data import DataConfig

    cls_dir = tmp_path / "cls"
    train_cls(TrainClsConfig(data=DataConfig(kind="voc", root=str(toy_root)), val_split=None, model="conformer_tiny",
                             epochs=1, batch_size=4, crop=48, resize_long=(40, 56), workers=0, device="cpu",
                             out=str(cls_dir), max_steps=1), progress=False)
    out = run_script("seed_table.py", "--cls-dir", cls_dir, "--data-root", toy_root, "--split", "val",
                     "--scales", 1.0, "--ks", 5, "--ts", 1, capsys=capsys)
    assert "seed mIoU" in out


def test_suite(capsys, tmp_path):
    out = run_script("suite.py", "--device", "cpu", "--profile", "smoke", "--out", tmp_path / "suite.md", capsys=capsys)
    table = (tmp_path / "suite.md").read_text()
    assert table in out and "torch " in table
    for row in ("extract-cam adcam", "extract-cam adcam, --batch-size 2", "predict, --batch-size 2", "extract-cam adcam, --batch-size 2, AMP bfloat16",
                "predict, --batch-size 2, AMP bfloat16", "IRNet boundary, --boundary-batch 2", "random walk (stencil)", "random walk (IRN's dense)", "make-pseudo: IRNet boundary",
                "train-irn", "train-seg | deeplabv2"):
        assert row in table, row
