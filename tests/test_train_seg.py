import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsss.config import ConfigError
from wsss.data import DataConfig, build_dataset
from wsss.io import IGNORE_INDEX, WsssDataError, read_mask, write_mask
from wsss.seg.predict import PredictConfig, predict, segment, slide_probs
from wsss.seg.train import TrainSegConfig, build_from_config, train_seg
from wsss.seg.transforms import photometric_distortion, seg_train_transform


def _cfg(toy_root, out, **kw):
    base = dict(
        data=DataConfig(kind="voc", root=str(toy_root), split="train"), val_split="val", head="fcn",
        backbone="resnet_tiny", channels=16, iterations=4, batch_size=4, crop=48, base_size=64, workers=0,
        device="cpu", out=str(out), log_every=1,
    )
    base.update(kw)
    return TrainSegConfig(**base)


def test_transform_shapes_padding_and_determinism():
    rng_image = np.random.default_rng(0)
    image = rng_image.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    label = np.zeros((30, 50), np.uint8)
    label[:, 25:] = 1
    args = dict(base_size=30, scale_range=(0.5, 0.5), crop=40)
    x, y = seg_train_transform(image, label, np.random.default_rng(3), **args)
    assert x.shape == (3, 40, 40) and x.dtype == np.float32 and y.shape == (40, 40) and y.dtype == np.int64
    # scale 0.5 of a 30x50 image fitted to short side 30 -> 15x25: the rest is padding
    assert (y[15:] == IGNORE_INDEX).all() and (y[:, 25:] == IGNORE_INDEX).all()
    assert (x[:, 15:] == 0).all() and set(np.unique(y[:15, :25])) <= {0, 1}
    x2, y2 = seg_train_transform(image, label, np.random.default_rng(3), **args)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_crop_avoids_single_class_crops_when_it_can():
    # mmseg's cat_max_ratio: up to 10 tries for a crop where no class covers 75% of the labelled pixels
    image = np.zeros((100, 100, 3), np.uint8)
    label = np.zeros((100, 100), np.uint8)
    label[50:90, 50:90] = 1

    def balanced_rate(ratio):
        ok = 0
        for seed in range(40):
            _, y = seg_train_transform(image, label, np.random.default_rng(seed), base_size=100, scale_range=(1, 1),
                                       crop=40, photometric=False, cat_max_ratio=ratio)
            ok += (y == 0).mean() < 0.75
        return ok / 40

    assert balanced_rate(0.75) >= 0.9 and balanced_rate(1.0) <= 0.6


def test_photometric_distortion_keeps_shape_and_range():
    image = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(10)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


class _Scripted:
    """An rng that answers each call with the next scripted value (to force every branch)."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    uniform = integers = lambda self, *a: self.values.pop(0)


def _mmseg_photometric(bgr, beta, contrast, contrast_first, saturation, hue):
    """mmseg's PhotoMetricDistortion written out for given draws, on a BGR image as mmseg has it."""
    def convert(img, alpha=1.0, b=0.0):
        return np.clip(img.astype(np.float32) * alpha + b, 0, 255).astype(np.uint8)

    img = convert(bgr, b=beta)
    if contrast_first:
        img = convert(img, alpha=contrast)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=saturation)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        img = convert(img, alpha=contrast)
    return img


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_distortion_is_mmsegs(contrast_first):
    """Every step on, with given draws: equal to mmseg's steps on the BGR image, exactly; the hue
    moves in OpenCV's 0-180 steps (+18 is 36 degrees)."""
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    beta, contrast, saturation, hue = 20.7, 1.3, 0.6, 17
    draws = [0.1, beta, 0.1 if contrast_first else 0.9, 0.1, contrast, 0.1, saturation, 0.1, hue]
    got = photometric_distortion(image, _Scripted(draws))
    ref = _mmseg_photometric(image[..., ::-1].copy(), beta, contrast, contrast_first, saturation, hue)[..., ::-1]
    np.testing.assert_array_equal(got, ref)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    only_hue = photometric_distortion(red, _Scripted([0.9, 0.9, 0.9, 0.9, 0.1, 18]))
    assert cv2.cvtColor(only_hue, cv2.COLOR_RGB2HSV)[0, 0, 0] == 18


class _PointwiseNet(torch.nn.Module):
    """A 1x1-conv 'segmenter': sliding-window inference must equal whole-image inference exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    net = _PointwiseNet().eval()
    x = torch.randn(1, 3, 37, 53)
    whole = torch.softmax(net(x)["out"], 1)
    for crop, stride in [(16, 11), (20, 20), (64, 40)]:
        torch.testing.assert_close(slide_probs(net, x, crop, stride), whole, rtol=1e-6, atol=1e-6)


def _mmseg_slide(net, x, crop, stride):
    """mmseg's slide_inference written out: its grid formula, logits summed and counted, softmax."""
    _, _, h, w = x.shape
    hg = max(h - crop + stride - 1, 0) // stride + 1
    wg = max(w - crop + stride - 1, 0) // stride + 1
    preds, count = None, torch.zeros(1, 1, h, w)
    for i in range(hg):
        for j in range(wg):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out = net(x[:, :, y1:y2, x1:x2])["out"]
            preds = torch.zeros(1, out.shape[1], h, w) if preds is None else preds
            preds[:, :, y1:y2, x1:x2] += out
            count[:, :, y1:y2, x1:x2] += 1
    return torch.softmax(preds / count, 1)


def test_sliding_window_averages_logits_as_mmseg():
    """A net that sees context (3x3 convs): windows differ from the whole image, and the result is
    mmseg's: logits averaged, then softmax; an image smaller than the crop is one smaller window."""
    torch.manual_seed(0)

    class Context(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 4, 3, padding=1))

        def forward(self, x):
            return {"out": 3 * self.conv(x)}

    net = Context().eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        for crop, stride in [(16, 11), (20, 20), (64, 40), (40, 13)]:
            torch.testing.assert_close(slide_probs(net, x, crop, stride), _mmseg_slide(net, x, crop, stride),
                                       rtol=1e-5, atol=1e-6)
        whole = torch.softmax(net(x)["out"], 1)
        assert (slide_probs(net, x, 16, 11) - whole).abs().max() > 1e-3  # the windows did matter


def test_flip_and_scales_average_probabilities():
    torch.manual_seed(0)
    net = _PointwiseNet().eval()
    image = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    one = segment(net, image, base_size=20)
    flipped = segment(net, image, base_size=20, flip=True)
    # a pointwise model is flip-equivariant: flip averaging changes nothing
    torch.testing.assert_close(one, flipped, rtol=1e-6, atol=1e-6)
    assert one.shape == (4, 20, 30)
    torch.testing.assert_close(one.sum(0), torch.ones(20, 30), rtol=1e-5, atol=1e-5)
    multi = segment(net, image, base_size=20, scales=(0.5, 1.0))
    half = segment(net, image, base_size=20, scales=(0.5,))
    torch.testing.assert_close(multi, (one + half) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flipped_pair_in_one_batch_equals_two_forwards(mode):
    """segment(flip=True) runs the image and its mirror as one batch: equal to the two forwards
    one after another (written out here), on a real network with spatial context (BN in eval)."""
    import torch.nn.functional as F

    from wsss.data.transforms import normalize

    torch.manual_seed(0)
    net = build_from_config(TrainSegConfig(head="fcn", backbone="resnet_tiny", channels=8), 4).eval()
    image = np.random.default_rng(2).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    kw = dict(base_size=40, scales=(0.75, 1.0), mode=mode, crop=32, stride=21)
    got = segment(net, image, flip=True, **kw)
    total = 0
    with torch.no_grad():
        fit = min(4 * 40 / 61, 40 / 45)
        for s in (0.75, 1.0):
            size = (max(1, int(61 * fit * s + 0.5)), max(1, int(45 * fit * s + 0.5)))
            x = torch.from_numpy(normalize(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)))[None]
            for flipped in (False, True):
                xi = x.flip(-1) if flipped else x
                p = slide_probs(net, xi, 32, 21) if mode == "slide" else torch.softmax(net(xi)["out"], 1)
                p = p.flip(-1) if flipped else p
                total = total + F.interpolate(p, size=(45, 61), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(got, total / 4, rtol=1e-5, atol=1e-6)
    # the mirror mattered (a random head's probabilities are near-uniform: the difference is small)
    assert (got - segment(net, image, flip=False, **kw)).abs().max() > 20 * 1e-6


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_a_batch_of_images_gets_the_probabilities_each_gets_alone(mode):
    """#16 item 3: segment_batch (images of one size in one forward, with their mirrors) equals
    segment image by image, on PCAA, whose class-attention context is per image."""
    from wsss.seg.inference import segment_batch

    torch.manual_seed(0)
    net = build_from_config(TrainSegConfig(head="pcaa", backbone="resnet_tiny", channels=8, pool_sizes=(2,)), 4).eval()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (45, 61, 3), dtype=np.uint8) for _ in range(3)]
    kw = dict(base_size=40, scales=(0.75, 1.0), flip=True, mode=mode, crop=32, stride=21)
    got = segment_batch(net, images, **kw)
    assert got.shape == (3, 4, 45, 61)
    for image, p in zip(images, got):
        torch.testing.assert_close(p, segment(net, image, **kw), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        segment_batch(net, [images[0], images[1][:40]], **kw)


def test_predict_batch_size_writes_the_masks_made_one_by_one(toy_root, tmp_path, monkeypatch):
    import shutil

    import wsss.seg.predict as predict_module

    out = train_seg(_cfg(toy_root, tmp_path / "run", head="pcaa", pool_sizes=(2,), val_split=None), progress=False)
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for image_id in val[:3]:  # a second size: its images form their own batches
        path = root / "JPEGImages" / f"{image_id}.jpg"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (80, 48)))
    data = DataConfig(kind="voc", root=str(root), split="val")
    kw = dict(seg_dir=str(out), data=data, flip=True, scales=(0.75, 1.0), device="cpu")
    predict(PredictConfig(**kw, out=str(tmp_path / "one")), progress=False)
    sizes, real = [], predict_module.segment_batch
    monkeypatch.setattr(predict_module, "segment_batch",
                        lambda m, ims, **k: sizes.append([im.shape[:2] for im in ims]) or real(m, ims, **k))
    predict(PredictConfig(**kw, out=str(tmp_path / "many"), batch_size=4), progress=False)
    rest = len(val) - 3  # the 64 x 64 images: full batches of 4, then what is left
    assert sorted(len(b) for b in sizes) == sorted([3] + [4] * (rest // 4) + [rest % 4] * (rest % 4 > 0))
    assert all(len(set(b)) == 1 for b in sizes)
    for image_id in val:
        a, b = read_mask(tmp_path / "one" / f"{image_id}.png"), read_mask(tmp_path / "many" / f"{image_id}.png")
        assert a.shape == b.shape and np.array_equal(a, b), image_id
    assert read_mask(tmp_path / "many" / f"{val[0]}.png").shape == (48, 80)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_amp_probabilities_stay_near_float32(mode):
    """#16 item 3: segment_batch(amp=True) runs the forwards under autocast (bfloat16 on this CPU) and
    averages float32 logits: float32 probabilities that differ from fp32's (the autocast ran) by a
    small fraction of how far fp32's are from uniform (a random head's are close to uniform)."""
    from wsss.seg.inference import segment_batch

    torch.manual_seed(0)
    net = build_from_config(TrainSegConfig(head="pcaa", backbone="resnet_tiny", channels=8, pool_sizes=(2,)), 4).eval()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (45, 61, 3), dtype=np.uint8) for _ in range(3)]
    kw = dict(base_size=40, scales=(0.75, 1.0), flip=True, mode=mode, crop=32, stride=21)
    ref, got = segment_batch(net, images, **kw), segment_batch(net, images, amp=True, **kw)
    assert got.dtype == torch.float32
    diff, spread = float((got - ref).abs().max()), float((ref - 0.25).abs().max())
    assert 0 < diff < 0.05 * spread, (diff, spread)


def test_predict_amp_is_part_of_the_manifest(toy_root, tmp_path):
    """A prediction folder made with --amp refuses to be resumed without it (and the reverse); one
    whose manifest predates the option reads as fp32 and resumes."""
    out = train_seg(_cfg(toy_root, tmp_path / "run", head="fcn", val_split=None), progress=False)
    kw = dict(seg_dir=str(out), data=DataConfig(kind="voc", root=str(toy_root), split="val"), device="cpu")
    predict(PredictConfig(**kw, out=str(tmp_path / "amp"), amp=True), progress=False)
    assert json.loads((tmp_path / "amp" / "manifest.json").read_text())["amp"] is True
    with pytest.raises(ConfigError, match="amp"):
        predict(PredictConfig(**kw, out=str(tmp_path / "amp")), progress=False)
    predict(PredictConfig(**kw, out=str(tmp_path / "fp32")), progress=False)
    path = tmp_path / "fp32" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["amp"]
    path.write_text(json.dumps(manifest))
    predict(PredictConfig(**kw, out=str(tmp_path / "fp32")), progress=False)
    with pytest.raises(ConfigError, match="amp"):
        predict(PredictConfig(**kw, out=str(tmp_path / "fp32"), amp=True), progress=False)


@pytest.mark.parametrize("head", ["fcn", "pcaa"])
def test_train_seg_then_predict_and_eval(toy_root, tmp_path, head):
    out = train_seg(_cfg(toy_root, tmp_path / head, head=head, pool_sizes=(2,)), progress=False)
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 4 and 0 <= done["val_mIoU"] <= 100
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    step_lines = [l for l in lines if "loss" in l]
    assert len(step_lines) == 4 and all(np.isfinite(l["loss"]) for l in step_lines)
    if head == "pcaa":
        assert all("focal" in l for l in step_lines)
    pred = predict(PredictConfig(seg_dir=str(out), data=DataConfig(kind="voc", root=str(toy_root), split="val"),
                                 out=str(tmp_path / "pred"), device="cpu"), progress=False)
    val = build_dataset(DataConfig(kind="voc", root=str(toy_root), split="val"))
    for image_id in val.ids:
        mask = read_mask(pred / f"{image_id}.png")
        assert mask.shape == (64, 64) and mask.max() < val.num_classes


def test_train_seg_on_pseudo_masks_folder(toy_root, tmp_path):
    ds = build_dataset(DataConfig(kind="voc", root=str(toy_root), split="train"))
    masks = tmp_path / "pseudo"
    for image_id in ds.ids:
        write_mask(masks / f"{image_id}.png", np.zeros((64, 64), np.uint8))
    out = train_seg(_cfg(toy_root, tmp_path / "run", data=DataConfig(kind="voc", root=str(toy_root), split="train",
                                                                     masks=str(masks)), val_split=None), progress=False)
    assert (out / "done.json").is_file()
    (masks / f"{ds.ids[0]}.png").unlink()
    with pytest.raises(WsssDataError, match="have no mask"):
        train_seg(_cfg(toy_root, tmp_path / "run2", data=DataConfig(kind="voc", root=str(toy_root), split="train",
                                                                    masks=str(masks)), val_split=None), progress=False)


def test_train_seg_resume_gives_the_same_weights(toy_root, tmp_path, monkeypatch):
    kw = dict(iterations=5, save_every=2, val_split=None, head="acf")
    train_seg(_cfg(toy_root, tmp_path / "a", **kw), progress=False)
    from _restate import stop_at_step

    real_step = stop_at_step(monkeypatch, torch.optim.SGD, 4)  # killed after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_seg(_cfg(toy_root, tmp_path / "b", **kw), progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    # TensorBoard is not a training setting: the resumed run may switch it on
    train_seg(_cfg(toy_root, tmp_path / "b", tensorboard=True, **kw), resume=True, progress=False)
    assert any((tmp_path / "b" / "tensorboard").iterdir())
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ConfigError, match="configuration changed \\(lr\\)"):
        (tmp_path / "b" / "done.json").unlink()
        train_seg(_cfg(toy_root, tmp_path / "b", lr=0.5, **kw), resume=True, progress=False)


def test_tensorboard_events_mirror_the_metrics(toy_root, tmp_path):
    """--tensorboard: every logged loss term, the lr and the epoch record land in TensorBoard with
    the values of metrics.jsonl; the val predictions come as an image, which stays out of
    metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train_seg(_cfg(toy_root, tmp_path / "tb", head="fcn", tensorboard=True, log_every=1), progress=False)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "loss" in l]
    assert [e.step for e in acc.Scalars("train/loss")] == [l["step"] for l in steps]
    np.testing.assert_allclose([e.value for e in acc.Scalars("train/loss")], [l["loss"] for l in steps], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("lr/0")], [l["lr"] for l in steps], rtol=1e-6)
    epoch = [l for l in lines if "val_mIoU" in l][-1]
    assert acc.Scalars("epoch/val_mIoU")[-1].value == pytest.approx(epoch["val_mIoU"], rel=1e-6)
    (img,) = acc.Images("val/predictions")
    assert (img.height, img.width) == (4 * 128, 3 * 128)  # the first 4 val images: image | prediction | truth
    assert not any(isinstance(v, list) for l in lines for v in l.values())  # no image in the jsonl


DDP_SCRIPT = r"""
import sys
import torch
from wsss.data import DataConfig
from wsss.seg.train import TrainSegConfig, build_from_config, train_seg
# dropout draws differ between processes by nature; without it one process and two must agree
torch.nn.Dropout2d.forward = lambda self, x: x
torch.nn.Dropout.forward = lambda self, x: x
root, out = sys.argv[1], sys.argv[2]
cfg = TrainSegConfig(data=DataConfig(kind="voc", root=root, split="train"), val_split=None, head="pcaa",
                     backbone="resnet_tiny", channels=16, pool_sizes=(2,), iterations=3, batch_size=4, crop=48,
                     base_size=64, workers=0, device="cpu", out=out)
train_seg(cfg, progress=False)
"""


@pytest.mark.dist
def test_ddp_two_processes_match_one(toy_root, tmp_path):
    # SyncBatchNorm over the global batch + the same crops per index: two processes train like one
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_seg.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    one = subprocess.run([sys.executable, str(script), str(toy_root), str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(script), str(toy_root), str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_run_recorded_before_acf_base_existed_resumes_as_the_plain_base(toy_root, tmp_path):
    """An interrupted train-seg run whose checkpoint predates ``acf_base`` was trained with the plain
    base network: a --resume with the default continues it (and records the setting); asking for
    the ASPP base instead is refused as a changed configuration."""
    import yaml

    from _restate import as_recorded_before

    out = tmp_path / "old"
    train_seg(_cfg(toy_root, out, head="acf", iterations=2, save_every=1, val_split=None), progress=False)
    as_recorded_before(out, "acf_base")  # as written before the setting existed

    with pytest.raises(ConfigError, match="configuration changed \\(acf_base\\)"):
        train_seg(_cfg(toy_root, out, head="acf", iterations=2, save_every=1, val_split=None, acf_base="aspp"),
                  resume=True, progress=False)
    train_seg(_cfg(toy_root, out, head="acf", iterations=2, save_every=1, val_split=None), resume=True, progress=False)
    assert json.loads((out / "done.json").read_text())["steps"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["acf_base"] == "conv"
