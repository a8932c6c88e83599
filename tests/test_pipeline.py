import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import wsss.pipeline as pipeline
from wsss.cli import main
from wsss.config import ConfigError
from wsss.pipeline import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
run_dir: unused
vars: {classes: voc}
steps:
  - name: toy
    stage: make_toy
    settings: {size: 32, num_train: 3, num_val: 2, workers: 1}
  - name: score
    stage: eval
    settings: {pred: "{toy}/SegmentationClass", gt: "{toy}/SegmentationClass", workers: 1}
  - name: report
    stage: report
    settings:
      tables: [{title: identity, rows: {GT: {mIoU: "{score}"}}}]
"""


def _write(tmp_path, text=RECIPE):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_references_are_resolved_and_checked(tmp_path):
    r = load_recipe(_write(tmp_path), run_dir=tmp_path / "run")
    assert r.steps[1].settings["pred"] == str(tmp_path / "run" / "toy") + "/SegmentationClass"
    with pytest.raises(ConfigError, match="'{nope}' names no step or variable"):
        load_recipe(_write(tmp_path, RECIPE.replace("{score}", "{nope}")))
    with pytest.raises(ConfigError, match="uses the output of a later step"):
        load_recipe(_write(tmp_path, RECIPE.replace('"{toy}/SegmentationClass", workers', '"{report}", workers')))
    with pytest.raises(ConfigError, match="unknown stage 'trian_cls'"):
        load_recipe(_write(tmp_path, RECIPE.replace("stage: make_toy", "stage: trian_cls")))


def test_missing_requirements_are_listed_together_before_anything_runs(tmp_path):
    text = RECIPE.replace("steps:", "requires: ['{data}/JPEGImages', '{data}/w.pth']\nsteps:")
    r = load_recipe(_write(tmp_path, text), run_dir=tmp_path / "run", variables={"data": str(tmp_path / "voc")})
    with pytest.raises(ConfigError) as e:
        run_recipe(r, progress=False)
    assert "JPEGImages" in str(e.value) and "w.pth" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_rerun_skips_complete_steps_and_reruns_what_a_change_affects(tmp_path, capsys):
    run = tmp_path / "run"
    states = run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False)
    assert states == {"toy": "ran", "score": "ran", "report": "ran"}
    table = json.loads((run / "report" / "report.json").read_text())
    assert table[0]["rows"]["GT"]["mIoU"]["mIoU"] == 100.0
    page = (run / "report" / "report.html").read_text()
    assert "100.00 (0.0 / 0.0)" in page and "<h3>score</h3>" in page  # the table and the eval it reads
    assert run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False) == dict.fromkeys(
        ["toy", "score", "report"], "skipped")
    changed = RECIPE.replace("workers: 1}\n  - name: report", "workers: 2}\n  - name: report")
    capsys.readouterr()
    states = run_recipe(load_recipe(_write(tmp_path, changed), run_dir=run), progress=False)
    assert states == {"toy": "skipped", "score": "reran", "report": "reran"}
    said = capsys.readouterr().out
    assert "its settings changed" in said and "it reads score, which ran again" in said
    assert (run / "score.old" / "eval.json").is_file()


def test_an_interrupted_recipe_continues_where_it_stopped(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = pipeline.STAGES["eval"]

    def killed(settings, out, progress):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.STAGES, "eval", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False)
    assert (run / "toy" / "done.json").is_file() and not (run / "score" / "done.json").exists()
    monkeypatch.setitem(pipeline.STAGES, "eval", real)
    states = run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False)
    assert states == {"toy": "skipped", "score": "ran", "report": "ran"}


def test_cli_run_prints_layout(tmp_path):
    r = CliRunner().invoke(main, ["run", str(_write(tmp_path)), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "run directory:" in r.output and "score/" in r.output and "report.md" in r.output


def test_packaged_recipes_load():
    from importlib.resources import files

    demo = Path(str(files("wsss") / "recipes" / "demo.yaml"))
    assert (ROOT / "pipelines" / "demo.yaml").resolve() == demo.resolve()
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        recipe = load_recipe(path, variables={"voc_root": "/data/VOC2012", "coco_root": "/data/coco",
                                              "weights": "/w"})
        assert recipe.steps, path


DIST_RECIPE = """
run_dir: unused
steps:
  - name: toy
    stage: make_toy
    settings: {size: 48, num_train: 6, num_val: 2, workers: 1}
  - name: cls
    stage: train_cls
    settings: {data: {kind: voc, root: "{toy}", split: train}, val_split: null, model: resnet_tiny, epochs: 1,
               batch_size: 4, crop: 48, resize_long: [40, 56], workers: 0, device: cpu}
  - name: cam
    stage: extract_cam
    settings: {data: {kind: voc, root: "{toy}", split: train}, cls_dir: "{cls}", method: cam, scales: [1.0],
               device: cpu}
  - name: pseudo
    stage: make_pseudo
    settings: {data: {kind: voc, root: "{toy}", split: train}, cam_dir: "{cam}", refine: crf, workers: 1,
               device: cpu}
  - name: score
    stage: eval
    settings: {pred: "{pseudo}", gt: "{toy}/SegmentationClass", workers: 1}
"""


@pytest.mark.dist
def test_a_recipe_under_torchrun(tmp_path):
    """Two processes: rank 0 alone makes the dataset, evaluates and moves old folders; training,
    extraction and pseudo masks are split over both; a rerun skips, a change reruns."""
    import os
    import subprocess
    import sys

    import numpy as np

    from wsss.io import read_mask

    recipe, run = _write(tmp_path, DIST_RECIPE), tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))

    def torchrun(path):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--standalone", "-m", "wsss", "run", str(path), "--out", str(run)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    steps = ("toy", "cls", "cam", "pseudo", "score")

    def decisions(said):
        """Each step's decision lines: rank 0 alone decides and says so, once per step."""
        return {s: re.findall(rf"^\[{s}\] (running|continuing|rerunning|complete)", said, re.M) for s in steps}

    said = torchrun(recipe)
    assert decisions(said) == {s: ["running"] for s in steps}, said
    for step in steps:
        assert (run / step / "done.json").is_file(), step
    ids = (run / "toy" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert sorted(p.stem for p in (run / "cam").glob("*.npz")) == sorted(ids)
    assert sorted(p.stem for p in (run / "pseudo").glob("*.png")) == sorted(ids)
    assert json.loads((run / "score" / "eval.json").read_text())["mIoU"] >= 0
    # the masks the two ranks wrote are those one process makes from the same CAMs
    from wsss.data import DataConfig
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo

    one = make_pseudo(MakePseudoConfig(data=DataConfig(kind="voc", root=str(run / "toy"), split="train"),
                                       cam_dir=str(run / "cam"), refine="crf", workers=1, device="cpu",
                                       out=str(tmp_path / "one")), progress=False)
    for i in ids:
        np.testing.assert_array_equal(read_mask(one / f"{i}.png"), read_mask(run / "pseudo" / f"{i}.png"))

    assert decisions(torchrun(recipe)) == {s: ["complete"] for s in steps}
    changed = _write(tmp_path, DIST_RECIPE.replace('"{toy}/SegmentationClass", workers: 1',
                                                   '"{toy}/SegmentationClass", workers: 2'))
    assert decisions(torchrun(changed)) == {**{s: ["complete"] for s in steps[:-1]}, "score": ["rerunning"]}
    assert (run / "score.old" / "eval.json").is_file() and (run / "score" / "eval.json").is_file()


def test_torchrun_on_gpus_refuses_a_recipe_mixing_cpu_and_gpu_steps(tmp_path, monkeypatch):
    """One process group serves every step, and NCCL cannot carry a cpu step's tensors: say so
    before anything runs (``--only`` the cpu steps is the way out)."""
    import torch

    mixed = DIST_RECIPE.replace("split: train}, val_split: null, model: resnet_tiny, epochs: 1,\n"
                                "               batch_size: 4, crop: 48, resize_long: [40, 56], workers: 0, device: cpu}",
                                "split: train}, val_split: null, model: resnet_tiny, epochs: 1,\n"
                                "               batch_size: 4, crop: 48, resize_long: [40, 56], workers: 0, device: cuda}")
    assert mixed != DIST_RECIPE
    recipe = load_recipe(_write(tmp_path, mixed), run_dir=tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"steps \['cam', 'pseudo'\] run on cpu"):
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "run").exists()


def test_processes_wait_for_rank_0_longer_than_torchs_default(monkeypatch):
    """Rank 0 alone evaluates a split while the others wait in a barrier: the group's timeout is
    4 hours (torch's NCCL default, 10 minutes, would end a COCO recipe), set by WSSS_DIST_TIMEOUT_MIN."""
    from datetime import timedelta

    import torch.distributed as tdist

    from wsss.engine import dist

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: seen.append(kw))
    dist.init_distributed("cpu")
    monkeypatch.setenv(dist.TIMEOUT_ENV, "30")
    dist.init_distributed("cpu")
    assert seen == [{"backend": "gloo", "timeout": timedelta(hours=4)},
                    {"backend": "gloo", "timeout": timedelta(minutes=30)}]


@pytest.mark.dist
def test_a_failure_in_rank_0_stops_every_rank(tmp_path):
    """Without torchrun's agent to kill the others (a launcher that only sets RANK / WORLD_SIZE),
    ranks waiting for a rank-0-only step must not wait forever when it fails: they stop too."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # inside the toy step's folder, so the recipe validates and the failure comes from the eval step itself
    broken = RECIPE.replace('gt: "{toy}/SegmentationClass"', 'gt: "{toy}/nowhere"')
    recipe = _write(tmp_path, broken)
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "wsss", "run", str(recipe), "--out", str(tmp_path / "run")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] != [0, 0]
    assert procs[0].returncode != 0 and "nowhere" in outs[0], outs[0][-2000:]
    assert procs[1].returncode != 0 and "failed in rank 0" in outs[1], outs[1][-2000:]
    assert (tmp_path / "run" / "toy" / "done.json").is_file()  # the step before ran, once


def test_a_typo_in_the_last_step_leaves_every_folder_untouched(tmp_path):
    run = tmp_path / "run"
    run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    # a changed earlier step (would be moved to .old) plus a typo in the last one
    typo = RECIPE.replace("workers: 1}\n  - name: report", "workers: 2}\n  - name: report").replace(
        "tables:", "tabels:")
    with pytest.raises(ConfigError) as e:
        run_recipe(load_recipe(_write(tmp_path, typo), run_dir=run), progress=False)
    assert "step 'report' (report): unknown setting 'tabels'; did you mean 'tables'?" in str(e.value)
    assert "nothing was run, skipped or moved" in str(e.value)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert not (run / "score.old").exists()


def test_every_problem_of_a_recipe_is_listed_at_once(tmp_path):
    text = RECIPE.replace("workers: 1}\n  - name: score", "workers: 1, sizee: 3}\n  - name: score").replace(
        'gt: "{toy}/SegmentationClass", workers: 1', 'gt: "/no/such/gt", workers: "many"')
    text += """  - name: fig
    stage: figure
    settings: {data: {kind: voc, root: "{toy}"}, nmu: 4}
  - name: cls
    stage: train_cls
    settings: {data: {kind: voc, root: "{toy}"}, epohcs: 2, pretrained: "builtin:nope"}
"""
    with pytest.raises(ConfigError) as e:
        run_recipe(load_recipe(_write(tmp_path, text), run_dir=tmp_path / "run"), progress=False)
    msg = str(e.value)
    assert "unknown setting 'sizee'; did you mean 'size'?" in msg
    assert "gt: /no/such/gt does not exist" in msg
    assert "workers" in msg and "expected an integer" in msg
    assert "unknown setting 'nmu'; did you mean 'num'?" in msg
    assert "epohcs" in msg and "epochs" in msg
    assert "no built-in weights named 'nope'" in msg
    assert not (tmp_path / "run").exists()


def test_old_folders_are_never_overwritten(tmp_path):
    run = tmp_path / "run"
    run_recipe(load_recipe(_write(tmp_path), run_dir=run), progress=False)
    for workers in (2, 3):
        changed = RECIPE.replace("workers: 1}\n  - name: report", f"workers: {workers}}}\n  - name: report")
        run_recipe(load_recipe(_write(tmp_path, changed), run_dir=run), progress=False)
    kept = [json.loads((run / name / "recipe_step.json").read_text())["settings"]["workers"]
            for name in ("score.old", "score.old.1")]
    assert kept == [1, 2]
    assert json.loads((run / "score" / "recipe_step.json").read_text())["settings"]["workers"] == 3
