from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cam.extract import save_cam
from wsss.cli import main
from wsss.config import ConfigError
from wsss.data import DataConfig, VOCDataset
from wsss.io import read_mask
from wsss.metrics import ConfusionMatrix
from wsss.pseudo.crf import crf_refine_cams, ir_label
from wsss.pseudo.make import MakePseudoConfig, make_pseudo


def _scene():
    """A bright square on a dark background; a blurry, offset CAM of it."""
    image = np.full((48, 64, 3), 30, np.uint8)
    image[12:36, 20:44] = (220, 200, 40)
    gt = np.zeros((48, 64), np.uint8)
    gt[12:36, 20:44] = 3
    yy, xx = np.mgrid[:48, :64]
    cam = np.exp(-(((yy - 26) / 10.0) ** 2 + ((xx - 34) / 10.0) ** 2))[None].astype(np.float32)
    return image, gt, cam


def test_crf_snaps_a_blurry_seed_to_the_edges():
    image, gt, cam = _scene()
    keys = np.array([3])
    seed = np.where(cam[0] > 0.25, 3, 0)
    refined = crf_refine_cams(image, cam, keys, 0.25)

    def iou(m):
        cm = ConfusionMatrix(4)
        cm.update(gt, m)
        return cm.compute().iou[3]

    assert set(np.unique(refined)) <= {0, 3}
    assert iou(refined) > iou(seed) + 0.1


def test_ir_label_on_a_clean_scene():
    image, gt, cam = _scene()
    lab = ir_label(image, cam, np.array([3]), conf_fg=0.30, conf_bg=0.05)
    assert set(np.unique(lab)) <= {0, 3, 255}
    assert lab[24, 32] == 3 and lab[2, 2] == 0


def test_ir_label_combination_rule(monkeypatch):
    """IRN: class where the conf_fg CRF says so; background where both say background; else 255."""
    fg = np.array([[0, 0, 5, 5, 7]], np.uint8)
    bg = np.array([[0, 5, 5, 0, 7]], np.uint8)
    import wsss.pseudo.crf as crf

    monkeypatch.setattr(crf, "crf_refine_cams", lambda image, cams, keys, t: fg if t == 0.30 else bg)
    lab = crf.ir_label(None, None, None, conf_fg=0.30, conf_bg=0.05)
    np.testing.assert_array_equal(lab, [[0, 255, 5, 5, 7]])


def _write_cams(toy_root, cam_dir, split="val"):
    ds = VOCDataset(toy_root, split)
    for i in ds.ids:
        s = ds.load(i)
        keys = np.flatnonzero(s.label)
        high = np.stack([(s.mask == k + 1).astype(np.float32) * 0.9 for k in keys])
        save_cam(cam_dir / f"{i}.npz", {"keys": keys, "cam": high[:, ::4, ::4], "high_res": high})
    return ds


@pytest.mark.parametrize("refine", ["none", "crf", "ir-label"])
def test_make_pseudo_modes_and_resume(toy_root, tmp_path, refine):
    ds = _write_cams(toy_root, tmp_path / "cams")
    out = tmp_path / refine
    cfg = MakePseudoConfig(data=DataConfig(root=str(toy_root), split="val"), cam_dir=str(tmp_path / "cams"),
                           refine=refine, workers=2, out=str(out))
    make_pseudo(cfg, progress=False)
    assert len(list(out.glob("*.png"))) == len(ds.ids)
    cm = ConfusionMatrix(ds.num_classes)
    for i in ds.ids:
        cm.update(ds.load(i).mask, np.where(read_mask(out / f"{i}.png") == 255, 0, read_mask(out / f"{i}.png")))
    assert cm.compute().miou > 0.8  # CAMs equal to the objects: every mode must keep them
    (out / f"{ds.ids[0]}.png").unlink()
    make_pseudo(cfg, progress=False)
    assert (out / f"{ds.ids[0]}.png").is_file()
    cfg.threshold = 0.5
    with pytest.raises(ConfigError, match="other settings"):
        make_pseudo(cfg, progress=False)


@pytest.mark.slow
def test_refine_irn_trains_the_boundary_net_and_walks(toy_root, tmp_path):
    import torch

    from wsss.pseudo.irnet import infer_boundary
    from wsss.pseudo.random_walk import irn_postprocess, propagate
    from wsss.pseudo.train_irn import TrainIrnConfig, load_boundary_net

    ds = _write_cams(toy_root, tmp_path / "cams", split="train")
    out = tmp_path / "irn"
    irn = TrainIrnConfig(backbone="resnet_tiny", batch_size=8, crop=64, radius=5, max_steps=3, workers=0)
    cfg = MakePseudoConfig(data=DataConfig(root=str(toy_root), split="train"), cam_dir=str(tmp_path / "cams"),
                           refine="irn", irn=irn, radius=5, workers=1, device="cpu", save_scores=True, out=str(out))
    with pytest.warns(UserWarning, match="scratch"):
        make_pseudo(cfg, progress=False)
    # the three steps' outputs: IR labels, a trained boundary net, then masks, boundary maps and scores
    assert len(list((out / "ir_label").glob("*.png"))) == len(ds.ids)
    assert (out / "irn" / "done.json").is_file()
    for sub, ext in (("", "png"), ("boundary", "png"), ("scores", "npz")):
        assert len(list((out / sub).glob(f"*.{ext}"))) == len(ds.ids), sub
    # each mask is what the walk and IRN's post-processing give for that image, and holds only its classes
    net = load_boundary_net(out / "irn")
    for image_id in ds.ids[:3]:
        sample = ds.load(image_id)
        cams = np.load(tmp_path / "cams" / f"{image_id}.npz")
        with torch.no_grad():
            rw = propagate(torch.from_numpy(cams["cam"]), infer_boundary(net, sample.image), radius=5)
        expected = irn_postprocess(rw, cams["keys"], sample.image.shape[:2], 0.25)
        mask = read_mask(out / f"{image_id}.png")
        np.testing.assert_array_equal(mask, expected)
        assert set(np.unique(mask)) <= {0, *(cams["keys"] + 1).tolist()}
        scores = np.load(out / "scores" / f"{image_id}.npz")
        assert scores["scores"].shape == (len(cams["keys"]), 64, 64) and float(scores["scores"].max()) == 1.0
    # the saved scores re-threshold without walking: refine none on them is IRN's post-processing
    # (up to the scores' float16 rounding), and eval-cam sweeps their background threshold
    again = make_pseudo(MakePseudoConfig(data=cfg.data, cam_dir=str(out / "scores"), refine="none", workers=1,
                                         out=str(tmp_path / "rethreshold")), progress=False)
    differ = sum(int((read_mask(again / f"{i}.png") != read_mask(out / f"{i}.png")).sum()) for i in ds.ids)
    assert differ <= 1e-3 * len(ds.ids) * 64 * 64, differ
    from wsss.cam.evaluate import EvalCamConfig, evaluate_cams

    sweep = evaluate_cams(EvalCamConfig(data=cfg.data, cam_dir=str(out / "scores"), workers=1), progress=False)
    assert 0 <= sweep.best.miou <= 1
    # the walk split over two worker processes writes the same boundary maps and masks
    assert len(ds.ids) > 8  # more than one WALK_BATCH, so both workers get images
    split = make_pseudo(replace(cfg, irn_dir=str(out / "irn"), workers=2, save_scores=False,
                                out=str(tmp_path / "two")), progress=False)
    for i in ds.ids:
        for sub in ("", "boundary"):
            np.testing.assert_array_equal(read_mask(split / sub / f"{i}.png"), read_mask(out / sub / f"{i}.png"))
    # the boundary net given 4 images per forward (#16 item 3) writes the same boundary maps and masks
    batched = make_pseudo(replace(cfg, irn_dir=str(out / "irn"), workers=1, save_scores=False, boundary_batch=4,
                                  out=str(tmp_path / "batched")), progress=False)
    for i in ds.ids:
        for sub in ("", "boundary"):
            np.testing.assert_array_equal(read_mask(batched / sub / f"{i}.png"), read_mask(out / sub / f"{i}.png"))
    # a rerun redoes only what is missing; a changed walk setting is refused
    (out / f"{ds.ids[0]}.png").unlink()
    make_pseudo(cfg, progress=False)
    assert (out / f"{ds.ids[0]}.png").is_file()
    cfg.beta = 5.0
    with pytest.raises(ConfigError, match="other settings"):
        make_pseudo(cfg, progress=False)


def test_cli(toy_root, tmp_path):
    _write_cams(toy_root, tmp_path / "cams")
    r = CliRunner().invoke(main, ["make-pseudo", "--cam-dir", str(tmp_path / "cams"), "--refine", "none",
                                  "--data-root", str(toy_root), "--split", "val", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", "--pred", str(tmp_path / "p"), "--gt", str(toy_root / "SegmentationClass")])
    assert r.exit_code == 0 and "mIoU" in r.output
    # the IRN path from the command line, with IRNet's training size set by options
    r = CliRunner().invoke(main, ["make-pseudo", "--cam-dir", str(tmp_path / "cams"), "--refine", "irn",
                                  "--data-root", str(toy_root), "--split", "val", "--irn-backbone", "resnet_tiny",
                                  "--irn-epochs", "1", "--irn-batch-size", "8", "--irn-crop", "96", "--device", "cpu",
                                  "--workers", "1", "--out", str(tmp_path / "irn")])
    assert r.exit_code == 0, r.output
    from wsss.config import load_config
    from wsss.pseudo.train_irn import TrainIrnConfig

    irn = load_config(TrainIrnConfig, tmp_path / "irn" / "irn" / "config.yaml")
    assert (irn.epochs, irn.batch_size, irn.crop, irn.backbone) == (1, 8, 96, "resnet_tiny")
    assert len(list((tmp_path / "irn").glob("*.png"))) == 16


IRN_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from wsss.data import DataConfig
from wsss.pseudo.make import MakePseudoConfig, make_pseudo
from wsss.pseudo.train_irn import TrainIrnConfig
root, cams, out = sys.argv[1:4]
irn = TrainIrnConfig(backbone="resnet_tiny", batch_size=8, crop=64, radius=5, max_steps=3, workers=0)
make_pseudo(MakePseudoConfig(data=DataConfig(root=root, split="train"), cam_dir=cams, refine="irn", irn=irn,
                             radius=5, workers=1, device="cpu", out=out), progress=False)
"""


@pytest.mark.dist
def test_refine_irn_under_torchrun_matches_one_process(toy_root, tmp_path):
    """Two processes split the IR labels and the walk, and train IRNet with DDP: the same boundary
    net (to float rounding) and the same masks as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    ds = _write_cams(toy_root, tmp_path / "cams", split="train")
    script = tmp_path / "irn.py"
    script.write_text(IRN_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = [str(script), str(toy_root), str(tmp_path / "cams")]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", *args, str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    wa = load_file(str(tmp_path / "one" / "irn" / "boundary.safetensors"))
    wb = load_file(str(tmp_path / "two" / "irn" / "boundary.safetensors"))
    assert not np.allclose(wa["head.weight"].numpy(), 0)
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
    differ = total = 0
    for image_id in ds.ids:
        np.testing.assert_array_equal(read_mask(tmp_path / "one" / "ir_label" / f"{image_id}.png"),
                                      read_mask(tmp_path / "two" / "ir_label" / f"{image_id}.png"))
        a, b = read_mask(tmp_path / "one" / f"{image_id}.png"), read_mask(tmp_path / "two" / f"{image_id}.png")
        differ += int((a != b).sum())
        total += a.size
    # the nets agree to float rounding, so a walk score sitting exactly on the threshold may flip
    assert differ <= total * 1e-4, (differ, total)
    assert (tmp_path / "two" / "done.json").is_file()


def test_index_masks_hold_the_same_classes_in_one_channel(toy_root, tmp_path):
    """--mask-format index: single-channel index PNGs (IRN-based code reads masks with imageio,
    which returns RGB for palette PNGs); the classes equal the palette masks'."""
    from PIL import Image

    from wsss.cam.extract import save_cam
    from wsss.data import VOCDataset
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo

    ds = VOCDataset(toy_root, "val")
    cams = tmp_path / "cams"
    rng = np.random.default_rng(0)
    for i in ds.ids:
        keys = np.flatnonzero(ds.label(i))
        save_cam(cams / f"{i}.npz", {"keys": keys, "cam": rng.random((len(keys), 16, 16)).astype(np.float32),
                                     "high_res": rng.random((len(keys), 64, 64)).astype(np.float32)})
    base = dict(data=DataConfig(kind="voc", root=str(toy_root), split="val"), cam_dir=str(cams), refine="none",
                threshold=0.5, workers=1)
    make_pseudo(MakePseudoConfig(**base, out=str(tmp_path / "palette")), progress=False)
    make_pseudo(MakePseudoConfig(**base, mask_format="index", out=str(tmp_path / "index")), progress=False)
    for i in ds.ids:
        pal, idx = Image.open(tmp_path / "palette" / f"{i}.png"), Image.open(tmp_path / "index" / f"{i}.png")
        assert pal.mode == "P" and idx.mode == "L"
        np.testing.assert_array_equal(np.asarray(idx), np.asarray(pal))


# ----------------------------------------------------------------------------- threshold calibration
def test_calibrate_threshold_maps_irns_seed_threshold_and_keeps_the_ends():
    from wsss.pseudo.make import calibrate_threshold

    assert calibrate_threshold(0.15, 0.54) == pytest.approx(0.54)
    assert calibrate_threshold(0.15, 0.15) == pytest.approx(0.15)
    assert calibrate_threshold(1.0, 0.54) == 1.0 and calibrate_threshold(0.0, 0.54) == 0.0
    ts = [0.05, 0.15, 0.25, 0.30]
    mapped = [calibrate_threshold(t, 0.54) for t in ts]
    assert mapped == sorted(mapped) and all(m > t for m, t in zip(mapped, ts))
    # the same as raising the CAM to 1 / g and keeping IRN's threshold: cam > t^g  <=>  cam^(1/g) > t
    g = np.log(0.54) / np.log(0.15)
    cam = np.linspace(0.01, 0.99, 99)
    np.testing.assert_array_equal(cam > calibrate_threshold(0.30, 0.54), cam ** (1 / g) > 0.30)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        calibrate_threshold(0.3, 1.0)


def _write_graded_cams(toy_root, cam_dir, split="val"):
    import cv2

    ds = VOCDataset(toy_root, split)
    for i in ds.ids:
        s = ds.load(i)
        keys = np.flatnonzero(s.label)
        high = np.stack([cv2.GaussianBlur((s.mask == k + 1).astype(np.float32), (0, 0), 6) for k in keys])
        high /= high.reshape(len(keys), -1).max(1)[:, None, None]
        save_cam(cam_dir / f"{i}.npz", {"keys": keys, "cam": high[:, ::4, ::4], "high_res": high})
    return ds


def test_calibrated_ir_labels_equal_ir_labels_at_the_mapped_thresholds(toy_root, tmp_path):
    import json

    from wsss.pseudo.make import calibrate_threshold

    ds = _write_graded_cams(toy_root, tmp_path / "cams")
    data = DataConfig(root=str(toy_root), split="val")
    (tmp_path / "seed_eval").mkdir()
    (tmp_path / "seed_eval" / "eval.json").write_text(json.dumps({"best_threshold": 0.6}))
    base = dict(data=data, cam_dir=str(tmp_path / "cams"), refine="ir-label", workers=1)
    make_pseudo(MakePseudoConfig(**base, calibrate_from=str(tmp_path / "seed_eval"), out=str(tmp_path / "cal")),
                progress=False)
    make_pseudo(MakePseudoConfig(**base, conf_fg=calibrate_threshold(0.30, 0.6), conf_bg=calibrate_threshold(0.05, 0.6),
                                 out=str(tmp_path / "direct")), progress=False)
    make_pseudo(MakePseudoConfig(**base, out=str(tmp_path / "irn")), progress=False)
    differs = 0
    for i in ds.ids:
        cal = read_mask(tmp_path / "cal" / f"{i}.png")
        np.testing.assert_array_equal(cal, read_mask(tmp_path / "direct" / f"{i}.png"))
        differs += int((cal != read_mask(tmp_path / "irn" / f"{i}.png")).sum())
    assert differs > 0  # the calibration changed the labels, so the equality above says something
    # a number works as well as the eval-cam folder; thresholding has no IRN scale to map from
    make_pseudo(MakePseudoConfig(**base, calibrate_from="0.6", out=str(tmp_path / "num")), progress=False)
    # `wsss eval-cam` without --out leaves eval_cam.json in the CAM folder
    (tmp_path / "cams" / "eval_cam.json").write_text(json.dumps({"best_threshold": 0.6}))
    make_pseudo(MakePseudoConfig(**base, calibrate_from=str(tmp_path / "cams"), out=str(tmp_path / "in_cams")),
                progress=False)
    for i in ds.ids:
        for other in ("num", "in_cams"):
            np.testing.assert_array_equal(read_mask(tmp_path / other / f"{i}.png"),
                                          read_mask(tmp_path / "direct" / f"{i}.png"))
    with pytest.raises(ConfigError, match="--threshold"):
        make_pseudo(MakePseudoConfig(**{**base, "refine": "none"}, calibrate_from="0.6", out=str(tmp_path / "t")),
                    progress=False)
    with pytest.raises(ConfigError, match="eval-cam"):
        make_pseudo(MakePseudoConfig(**base, calibrate_from=str(tmp_path / "nowhere"), out=str(tmp_path / "x")),
                    progress=False)


@pytest.mark.parametrize("refine", ["none", "crf", "ir-label"])
def test_an_image_without_classes_is_all_background(toy_root, tmp_path, refine):
    """A CAM file with no keys (extract-cam writes one for an image whose label lists no class) gives an
    all-background mask; the CRF modes used to stop on pydensecrf's one-label division by zero."""
    ds = _write_cams(toy_root, tmp_path / "cams")
    first = ds.ids[0]
    c = np.load(tmp_path / "cams" / f"{first}.npz")
    save_cam(tmp_path / "cams" / f"{first}.npz", {"keys": np.zeros(0, np.int64), "cam": c["cam"][:0],
                                                  "high_res": c["high_res"][:0]})
    out = make_pseudo(MakePseudoConfig(data=DataConfig(root=str(toy_root), split="val"), cam_dir=str(tmp_path / "cams"),
                                       refine=refine, workers=1, out=str(tmp_path / refine)), progress=False)
    assert not read_mask(out / f"{first}.png").any()
    assert len(list(out.glob("*.png"))) == len(ds.ids)
    assert any(read_mask(out / f"{i}.png").any() for i in ds.ids[1:])  # the others keep their classes


def test_make_pseudo_amp_is_recorded_for_irn_only(toy_root, tmp_path):
    """--amp (the boundary net's inference under autocast, #16 item 3) is part of an irn folder's
    manifest: the boundary maps stay within a few 1/255 steps of fp32's, a folder made in one
    precision is not resumed in the other, and one whose manifest predates the option reads as fp32.
    The other modes do not use it and leave it out."""
    import json

    from wsss.pseudo.train_irn import TrainIrnConfig, train_irn

    ds = _write_cams(toy_root, tmp_path / "cams")
    data = DataConfig(root=str(toy_root), split="val")
    labels = make_pseudo(MakePseudoConfig(data=data, cam_dir=str(tmp_path / "cams"), refine="ir-label", workers=1,
                                          out=str(tmp_path / "ir")), progress=False)
    assert "amp" not in json.loads((labels / "manifest.json").read_text())
    with pytest.warns(UserWarning, match="scratch"):
        irn_dir = train_irn(TrainIrnConfig(data=data, ir_labels=str(labels), backbone="resnet_tiny", batch_size=8,
                                           crop=64, radius=5, max_steps=2, workers=0, device="cpu",
                                           out=str(tmp_path / "net")),
                            progress=False)
    kw = dict(data=data, cam_dir=str(tmp_path / "cams"), refine="irn", irn_dir=str(irn_dir), workers=1, device="cpu")
    fp32 = make_pseudo(MakePseudoConfig(**kw, out=str(tmp_path / "fp32")), progress=False)
    amp = make_pseudo(MakePseudoConfig(**kw, amp=True, out=str(tmp_path / "amp")), progress=False)
    assert json.loads((amp / "manifest.json").read_text())["amp"] is True
    steps = [np.abs(read_mask(amp / "boundary" / f"{i}.png").astype(int) - read_mask(fp32 / "boundary" / f"{i}.png"))
             for i in ds.ids]
    assert max(int(s.max()) for s in steps) <= 6
    with pytest.raises(ConfigError, match="amp"):
        make_pseudo(MakePseudoConfig(**kw, out=str(amp)), progress=False)
    manifest = json.loads((fp32 / "manifest.json").read_text())
    del manifest["amp"]
    (fp32 / "manifest.json").write_text(json.dumps(manifest))
    make_pseudo(MakePseudoConfig(**kw, out=str(fp32)), progress=False)
    with pytest.raises(ConfigError, match="amp"):
        make_pseudo(MakePseudoConfig(**kw, amp=True, out=str(fp32)), progress=False)
