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


def test_attention_flow(toy_root, tmp_path, capsys):
    """Its table, and one exact property: with k at least the token count, Eq. 7 keeps every entry,
    so A~ sends the same share to the object tokens as A does."""
    from wsss.cls.train import TrainClsConfig, train_cls
    from wsss.data import DataConfig

    cls_dir = tmp_path / "cls"
    train_cls(TrainClsConfig(data=DataConfig(kind="voc", root=str(toy_root)), val_split=None, model="conformer_tiny",
                             epochs=1, batch_size=4, crop=48, resize_long=(40, 56), workers=0, device="cpu",
                             out=str(cls_dir), max_steps=1), progress=False)
    out = run_script("attention_flow.py", "--cls-dir", cls_dir, "--data-root", toy_root, "--split", "val",
                     "--ks", 1000, 2, capsys=capsys)
    table = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[1].strip(" |"))
             for line in out.splitlines() if line.startswith("| ") and "---" not in line and "quantity" not in line}
    assert 0 < table["object tokens (share)"] < 1
    assert table["background rows -> object tokens, A~ (k = 1000)"] == table["background rows -> object tokens, A"]
    assert 0 <= table["background rows -> object tokens, A~ (k = 2)"] <= 1
    assert table["object rows -> object tokens, A~ (k = 1000)"] == table["object rows -> object tokens, A"]
    # --cam-net: a ResNet CAM net's seeds, alone and diffused with the Conformer's attention; with k at
    # least the token count AD-CAM's diffusion is Att-Diffu's, so the two rows agree
    res_dir = tmp_path / "res"
    train_cls(TrainClsConfig(data=DataConfig(kind="voc", root=str(toy_root)), val_split=None, model="resnet_tiny",
                             epochs=1, batch_size=4, crop=48, resize_long=(40, 56), workers=0, device="cpu",
                             out=str(res_dir), max_steps=1), progress=False)
    out = run_script("attention_flow.py", "--cls-dir", cls_dir, "--data-root", toy_root, "--split", "val",
                     "--images", 6, "--ks", 1000, "--cam-net", res_dir, "--scales", 1.0, capsys=capsys)
    seeds = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.split("best background threshold")[1]
             .splitlines() if line.startswith("| ") and "---" not in line and "mIoU" not in line}
    assert set(seeds) == {"CAM net's CAM", "Att-Diffu (this Conformer's A)", "AD-CAM k = 1000 (this Conformer's A~)"}
    assert seeds["Att-Diffu (this Conformer's A)"] == seeds["AD-CAM k = 1000 (this Conformer's A~)"]
    from wsss.cam.extract import CAM_METHODS

    assert "_attention_flow_diffused" not in CAM_METHODS  # the script's own method is gone again


def test_suite(capsys, tmp_path):
    out = run_script("suite.py", "--device", "cpu", "--profile", "smoke", "--out", tmp_path / "suite.md",
                     "--json", tmp_path / "suite.json", capsys=capsys)
    table = (tmp_path / "suite.md").read_text()
    assert table in out and "torch " in table
    for row in ("extract-cam adcam", "extract-cam adcam, --batch-size 2", "predict, --batch-size 2", "extract-cam adcam, --batch-size 2, AMP bfloat16",
                "predict, --batch-size 2, AMP bfloat16", "IRNet boundary, --boundary-batch 2", "random walk (stencil)", "random walk (IRN's dense)", "make-pseudo: IRNet boundary",
                "train-irn", "train-seg | deeplabv2"):
        assert row in table, row
    # the JSON has every row with its key, and the VOC budget reads it: every step of both recipes
    # gets a time, flagged as rescaled from the smoke profile's tiny models
    import json

    payload = json.loads((tmp_path / "suite.json").read_text())
    assert payload["profile"] == "smoke" and payload["partial"] is False and "partial" not in table
    assert len(payload["rows"]) == table.count("\n") - 4
    assert all(r["key"] and r["seconds"] > 0 for r in payload["rows"] if not r["key"].startswith("eval:"))
    budget = run_script("voc_budget.py", tmp_path / "suite.json", "--workers", 4, capsys=capsys)
    assert "rough projection only" in budget and "measured on resnet_tiny" in budget
    assert "| - |" not in budget.replace("| - | --- |", "") and "not projected" not in budget
    for step in ("| cls |", "| adcam |", "| cam |", "| seed |", "| pseudo |", "| seg |", "| seg_fcn |", "| pred_fcn |"):
        assert step in budget, step


def test_suite_leaves_the_groups_it_finished_when_stopped(tmp_path, monkeypatch):
    """A run stopped in a group (a lent GPU's time limit) has already written the groups before it,
    marked partial."""
    import importlib
    import json

    sys.path.insert(0, str(BENCH))
    suite = importlib.import_module("suite")

    def stopped(p, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "GROUPS", {"eval": suite.GROUPS["eval"], "cam": stopped})
    monkeypatch.setattr(sys, "argv", ["suite.py", "--device", "cpu", "--profile", "smoke", "--only", "eval", "cam",
                                      "--out", str(tmp_path / "s.md"), "--json", str(tmp_path / "s.json")])
    with pytest.raises(KeyboardInterrupt):
        suite.main()
    payload = json.loads((tmp_path / "s.json").read_text())
    assert payload["partial"] is True and {r["key"] for r in payload["rows"]} == {"eval-cam:sweep", "eval:confusion"}
    assert "(partial" in (tmp_path / "s.md").read_text()


def test_gpu_session_script(tmp_path):
    """benchmarks/gpu_session.sh, the prepared GPU run, at smoke size on the CPU with two of the
    suite's groups: every file it promises, the CAM ratio and the budget from the suite's JSON."""
    import os
    import subprocess

    out = tmp_path / "out"
    env = dict(os.environ, DEVICE="cpu", PROFILE="smoke", OUT=str(out), PYTHON=sys.executable, SUITE_ONLY="eval pseudo",
               CAM_ARGS="--model conformer_tiny --images 1 --size 48 64 --scales 1.0")
    res = subprocess.run(["bash", str(BENCH / "gpu_session.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["budget.md", "cam_ratio.md", "env.txt", "log.txt", "suite.json",
                                                     "suite.md"]
    assert "| adcam |" in (out / "cam_ratio.md").read_text() and "torch" in (out / "env.txt").read_text()
    assert "make-pseudo: random walk" in (out / "suite.md").read_text()
    assert "voc_adcam_irn_pcaa.yaml" in (out / "budget.md").read_text()
    assert "| adcam |" in res.stdout


# The suite rows the VOC budget needs, at the full profile's sizes, each with its own time (seconds)
FULL_ROWS = {
    "train-cls:conformer": (0.5, dict(model="conformer_s16", crop=384, batch=16)),
    "train-cls:resnet": (0.3, dict(model="resnet50", crop=512, batch=16)),
    "train-irn": (0.7, dict(model="resnet50", crop=512, batch=32)),
    "train-seg:pcaa": (0.9, dict(model="pcaa:resnet101_v1c", crop=512, batch=16)),
    "train-seg:fcn": (0.8, dict(model="fcn:resnet101_v1c", crop=512, batch=16)),
    "extract-cam:cam:conformer": (0.06, dict(model="conformer_s16", image=[375, 500], scales=[1.0, 0.5, 1.5, 2.0], flip=True)),
    "extract-cam:adcam:conformer": (0.08, dict(model="conformer_s16", image=[375, 500], scales=[1.0, 0.5, 1.5, 2.0], flip=True)),
    "extract-cam:cam:resnet": (0.05, dict(model="resnet50", image=[375, 500], scales=[1.0, 0.5, 1.5, 2.0], flip=True)),
    "make-pseudo:ir-label": (2.0, dict(model="resnet50", image=[375, 500])),
    "make-pseudo:boundary": (0.02, dict(model="resnet50", image=[375, 500])),
    "make-pseudo:walk": (0.01, dict(image=[375, 500])),
    "make-pseudo:post": (0.003, dict(image=[375, 500])),
    "predict:pcaa": (0.04, dict(model="pcaa:resnet101_v1c", image=[375, 500], scales=[1.0], flip=True)),
    "predict:fcn": (0.03, dict(model="fcn:resnet101_v1c", image=[375, 500], scales=[1.0], flip=True)),
    "eval-cam:sweep": (0.2, dict(image=[375, 500])),
    "eval:confusion": (0.004, dict(image=[375, 500])),
}


def _budget(recipe: str, rows=FULL_ROWS, workers=8):
    sys.path.insert(0, str(BENCH))
    from voc_budget import Rows, project

    payload = dict(profile="full", device="cuda", torch="x", rows=[dict(key=k, seconds=t, params=p) for k, (t, p) in rows.items()])
    return project(BENCH.parent / "pipelines" / recipe, Rows(payload), workers)


def test_voc_budget():
    """The projection restated by hand from the recipe's settings: VOC's 10,582 train_aug, 1,464
    train and 1,449 val images; IRN's four scales with flips in the suite's CAM rows."""
    t = {k: v[0] for k, v in FULL_ROWS.items()}
    est = {(e.step, e.part.split(" (")[0]): e.seconds for e in _budget("voc_r50_cam_irn.yaml")}
    sq = 1 + 0.25 + 2.25 + 4  # the suite's scales' squared factors
    expected = {
        ("cls", "train-cls resnet50"): 10582 // 16 * 5 * t["train-cls:resnet"],
        ("cls", "val passes"): 1449 * 5 * t["extract-cam:cam:resnet"] / (2 * sq),
        ("cam", "cam"): 10582 * t["extract-cam:cam:resnet"],
        ("seed", "seed sweep"): 1464 * t["eval-cam:sweep"] * 96 / 101,  # 0.00 .. 0.95 by 0.01
        ("pseudo", "IR labels"): 10582 * t["make-pseudo:ir-label"] / 8,
        ("pseudo", "train IRNet"): 10582 // 32 * 3 * t["train-irn"],
        ("pseudo", "boundary maps"): 10582 * t["make-pseudo:boundary"],
        ("pseudo", "random walk + post-processing"): 10582 * (t["make-pseudo:walk"] + t["make-pseudo:post"]),
        ("pl", "scoring"): 1464 * t["eval:confusion"],
        ("seg_pcaa", "train-seg pcaa:resnet101_v1c"): 20000 * t["train-seg:pcaa"],
        # 20,000 iterations are 30 epochs of 661: val_every 100 epochs leaves the final pass only
        ("seg_pcaa", "val passes"): 1449 * t["predict:pcaa"] / 2,
        ("seg_fcn", "train-seg fcn:resnet101_v1c"): 20000 * t["train-seg:fcn"],
        ("pred_pcaa", "predict pcaa"): 1449 * t["predict:pcaa"] * (0.25 + 0.5625 + 1 + 1.5625 + 2.25 + 3.0625),
        ("val_fcn", "scoring"): 1449 * t["eval:confusion"],
    }
    for k, v in expected.items():
        assert est[k] == pytest.approx(v), k
    ad = {(e.step, e.part.split(" (")[0]): e.seconds for e in _budget("voc_adcam_irn_pcaa.yaml")}
    assert ad[("cls", "train-cls conformer_s16")] == pytest.approx(10582 // 16 * 5 * t["train-cls:conformer"])
    assert ad[("adcam", "adcam")] == pytest.approx(10582 * t["extract-cam:adcam:conformer"])


def test_voc_budget_rescales_other_sizes_and_names_missing_rows():
    rows = dict(FULL_ROWS)
    t, p = rows.pop("train-seg:pcaa")
    rows["train-seg:fcn"] = (0.8, dict(model="fcn:resnet50_v1c", crop=256, batch=4))
    t_cam, p_cam = rows["extract-cam:cam:resnet"]
    rows["extract-cam:cam:resnet"] = (t_cam, {**p_cam, "image": [75, 100]})
    est = {(e.step, e.part.split(" (")[0]): e for e in _budget("voc_r50_cam_irn.yaml", rows)}
    pcaa = est[("seg_pcaa", "train-seg pcaa:resnet101_v1c")]
    assert pcaa.seconds is None and "no suite row 'train-seg:pcaa'" in pcaa.basis
    fcn = est[("seg_fcn", "train-seg fcn:resnet101_v1c")]
    assert fcn.seconds == pytest.approx(20000 * 0.8 * (16 * 512**2) / (4 * 256**2))
    assert "measured on fcn:resnet50_v1c" in fcn.basis and "rescaled from batch 4, crop 256" in fcn.basis
    cam = est[("cam", "cam")]
    assert cam.seconds == pytest.approx(10582 * t_cam * 25) and "rescaled from 75x100" in cam.basis


def test_voc_budget_takes_the_amp_and_batch_rows_a_step_runs_as(tmp_path):
    """A recipe step with --amp is projected from the suite's AMP row of its stage (the inference AMP
    rows are batched), one with a batch size from its batched row; without either, the plain row."""
    import yaml

    recipe = yaml.safe_load((BENCH.parent / "pipelines" / "voc_r50_cam_irn.yaml").read_text())
    steps = {s["name"]: s["settings"] for s in recipe["steps"]}
    steps["cls"]["amp"] = steps["cam"]["amp"] = steps["pseudo"]["amp"] = steps["seg_pcaa"]["amp"] = True
    steps["pseudo"].setdefault("irn", {})["amp"] = True
    steps["pred_pcaa"]["amp"] = True
    steps["pred_fcn"]["batch_size"] = 4
    path = tmp_path / "voc_r50_cam_irn.yaml"
    path.write_text(yaml.safe_dump(recipe))
    rows = dict(FULL_ROWS)
    for key in ("train-cls:resnet", "extract-cam:cam:resnet", "train-irn", "make-pseudo:boundary", "train-seg:pcaa",
                "predict:pcaa", "predict:fcn"):
        seconds, params = rows[key]
        rows[key + ":amp"] = (seconds / 2, params)
        rows[key + ":batch"] = (seconds / 3, params)
    sys.path.insert(0, str(BENCH))
    from voc_budget import Rows, project

    payload = dict(profile="full", device="cuda", torch="x",
                   rows=[dict(key=k, seconds=t, params=p) for k, (t, p) in rows.items()])
    est = {(e.step, e.part.split(" (")[0]): e for e in project(path, Rows(payload), 8)}
    t = {k: v[0] for k, v in FULL_ROWS.items()}
    assert est[("cls", "train-cls resnet50")].seconds == pytest.approx(10582 // 16 * 5 * t["train-cls:resnet"] / 2)
    assert est[("cam", "cam")].seconds == pytest.approx(10582 * t["extract-cam:cam:resnet"] / 2)
    assert est[("pseudo", "train IRNet")].seconds == pytest.approx(10582 // 32 * 3 * t["train-irn"] / 2)
    assert est[("pseudo", "boundary maps")].seconds == pytest.approx(10582 * t["make-pseudo:boundary"] / 2)
    assert "(make-pseudo:boundary:amp)" in est[("pseudo", "boundary maps")].basis
    assert est[("seg_pcaa", "train-seg pcaa:resnet101_v1c")].seconds == pytest.approx(20000 * t["train-seg:pcaa"] / 2)
    assert est[("seg_fcn", "train-seg fcn:resnet101_v1c")].seconds == pytest.approx(20000 * t["train-seg:fcn"])
    scales = 0.25 + 0.5625 + 1 + 1.5625 + 2.25 + 3.0625
    assert est[("pred_pcaa", "predict pcaa")].seconds == pytest.approx(1449 * t["predict:pcaa"] / 2 * scales)
    assert est[("pred_fcn", "predict fcn")].seconds == pytest.approx(1449 * t["predict:fcn"] / 3 * scales)


def test_voc_budget_takes_missing_rows_from_a_fallback_run():
    """--fallback: a key the main run lacks (a GPU image without pydensecrf: no IR-label row) is
    projected from the other run's row, which the table names; the main run's rows keep precedence."""
    sys.path.insert(0, str(BENCH))
    from voc_budget import Rows, project

    def payload(rows, device):
        return dict(profile="full", device=device, torch="x",
                    rows=[dict(key=k, seconds=t, params=p) for k, (t, p) in rows.items()])

    gpu = {k: v for k, v in FULL_ROWS.items() if k != "make-pseudo:ir-label"}
    cpu = {"make-pseudo:ir-label": (3.0, dict(model="resnet50", image=[375, 500])),
           "make-pseudo:boundary": (9.0, dict(model="resnet50", image=[375, 500]))}
    rows = Rows(payload(gpu, "cuda"), payload(cpu, "cpu"))
    est = {(e.step, e.part.split(" (")[0]): e
           for e in project(BENCH.parent / "pipelines" / "voc_r50_cam_irn.yaml", rows, 8)}
    ir = est[("pseudo", "IR labels")]
    assert ir.seconds == pytest.approx(10582 * 3.0 / 8) and "from the cpu run" in ir.basis
    boundary = est[("pseudo", "boundary maps")]
    assert boundary.seconds == pytest.approx(10582 * FULL_ROWS["make-pseudo:boundary"][0])
    assert "from the" not in boundary.basis
    alone = {(e.step, e.part.split(" (")[0]): e
             for e in project(BENCH.parent / "pipelines" / "voc_r50_cam_irn.yaml", Rows(payload(gpu, "cuda")), 8)}
    assert alone[("pseudo", "IR labels")].seconds is None
