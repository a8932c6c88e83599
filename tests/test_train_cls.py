import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsss.cls.metrics import average_precision, multilabel_metrics
from wsss.cls.train import TrainClsConfig, train_cls
from wsss.engine.loop import epoch_batches
from wsss.config import ConfigError
from wsss.data import DataConfig


def _cfg(toy_root, out, **kw):
    base = dict(
        data=DataConfig(kind="voc", root=str(toy_root), split="train"), val_split="val", model="conformer_tiny",
        epochs=2, batch_size=8, crop=64, resize_long=(48, 80), workers=0, device="cpu", out=str(out), log_every=1,
    )
    base.update(kw)
    return TrainClsConfig(**base)


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    targets = np.array([1, 0, 1, 0])
    assert average_precision(scores, targets) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.zeros(4)))
    m = multilabel_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]]))
    assert m["mAP"] == pytest.approx(100.0) and m["F1"] == pytest.approx(100.0)


def test_epoch_batches_cover_each_image_once():
    batches = epoch_batches(50, 8, seed=3, epoch=1)
    flat = np.concatenate(batches)
    assert len(batches) == 6 and len(set(flat.tolist())) == 48
    assert not np.array_equal(flat, np.concatenate(epoch_batches(50, 8, seed=3, epoch=2)))


def test_training_learns_more_than_the_label_prior(toy_root, tmp_path):
    # A classifier that only learned how often each class occurs scores the prior's entropy;
    # after training, its loss on the training images must be clearly below that.
    from wsss.cls.models import load_trained_classifier
    from wsss.cls.transforms import normalize
    from wsss.data import build_dataset
    from wsss.io import read_image

    out = train_cls(_cfg(toy_root, tmp_path / "run", model="resnet_tiny", optimizer="adamw", lr=3e-3,
                         weight_decay=1e-4, head_lr_mult=1.0, epochs=12, resize_long=(64, 64)), progress=False)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([l for l in lines if "loss" in l]) == 12 * 6
    done = json.loads((out / "done.json").read_text())
    assert 0 <= done["val_mAP"] <= 100 and (out / "config.yaml").is_file()
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 72

    ds = build_dataset(DataConfig(kind="voc", root=str(toy_root), split="train"))
    labels = torch.stack([torch.from_numpy(ds.label(i)) for i in ds.ids])
    p = labels.mean(0).clamp(1e-3, 1 - 1e-3)
    prior = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    model, _ = load_trained_classifier(out)
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(normalize(read_image(ds.image_path(i)))) for i in ds.ids])
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(model(x)["logits"], labels))
    assert loss < 0.75 * prior, (loss, prior)


def test_resume_gives_the_same_weights(toy_root, tmp_path, monkeypatch):
    cfg_a = _cfg(toy_root, tmp_path / "a", max_steps=7, save_every=3, val_split=None)
    train_cls(cfg_a, progress=False)

    cfg_b = _cfg(toy_root, tmp_path / "b", max_steps=7, save_every=3, val_split=None)
    from _restate import stop_at_step

    real_step = stop_at_step(monkeypatch, torch.optim.AdamW, 5)  # killed after the step-3 checkpoint, mid-epoch
    with pytest.raises(KeyboardInterrupt):
        train_cls(cfg_b, progress=False)
    assert not (tmp_path / "b" / "done.json").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train_cls(cfg_b, resume=True, progress=False)

    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


def test_resume_refuses_a_changed_config(toy_root, tmp_path):
    train_cls(_cfg(toy_root, tmp_path / "r", max_steps=2, save_every=1, val_split=None, epochs=1), progress=False)
    (tmp_path / "r" / "done.json").unlink()
    with pytest.raises(ConfigError, match="configuration changed \\(lr\\)"):
        train_cls(_cfg(toy_root, tmp_path / "r", max_steps=2, save_every=1, val_split=None, epochs=1, lr=0.1),
                  resume=True, progress=False)


DDP_SCRIPT = r"""
import sys
from wsss.cls.train import TrainClsConfig, train_cls
from wsss.data import DataConfig
root, out, weights = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = TrainClsConfig(data=DataConfig(kind="voc", root=root, split="train"), val_split=None, model="resnet_tiny",
                     pretrained=weights,
                     optimizer="sgd", lr=0.05, weight_decay=1e-4, epochs=1, batch_size=8, crop=64,
                     resize_long=(48, 80), workers=0, device="cpu", out=out, max_steps=3)
train_cls(cfg, progress=False)
"""


@pytest.mark.dist
def test_ddp_two_processes_match_one(toy_root, tmp_path):
    # With ImageNet-style weights the CAM net uses IRN's fixed BatchNorm, so processes cannot diverge
    # through batch statistics; a saved random backbone stands in for the weights file.
    from wsss.models import build_backbone
    from wsss.models.weights import save_safetensors

    torch.manual_seed(1)
    weights = tmp_path / "backbone.safetensors"
    save_safetensors(build_backbone("resnet_tiny").state_dict(), weights)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    single = subprocess.run([sys.executable, str(script), str(toy_root), str(tmp_path / "one"), str(weights)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--standalone", str(script), str(toy_root), str(tmp_path / "two"), str(weights)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=k)
    # the comparison means something only if training moved the weights away from their initial values
    from wsss.cls.models import build_classifier

    torch.manual_seed(0)
    init = build_classifier("resnet_tiny", 8, pretrained=str(weights)).state_dict()
    assert not torch.equal(init["classifier.weight"], w1["classifier.weight"])
    assert not torch.equal(init["backbone.layer4.0.conv1.weight"], w1["backbone.layer4.0.conv1.weight"])
    assert json.loads((tmp_path / "two" / "done.json").read_text())["steps"] == 3


def test_mask_follows_the_image_through_the_augmentation():
    from wsss.cls.transforms import IMAGENET_MEAN, IMAGENET_STD, cls_train_transform

    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    image[10:30, 35:55] = 250
    mask[10:30, 35:55] = 2
    for seed in range(5):
        x, m = cls_train_transform(image, np.random.default_rng(seed), resize_range=(50, 70), crop=48, mask=mask)
        bright = x[0] > (128 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        inside = m == 2
        # object pixels and class-2 pixels coincide except on the resampled rim
        assert (bright ^ inside).sum() <= 0.15 * max(1, inside.sum()) + 8
        # same random draws as without a mask: the image crop is identical
        x2 = cls_train_transform(image, np.random.default_rng(seed), resize_range=(50, 70), crop=48)
        assert np.array_equal(x, x2)


@pytest.mark.parametrize("model", ["resnet_tiny", "conformer_tiny"])
def test_partial_pooling_with_one_patch_is_the_image_score(model):
    from wsss.cls.models import build_classifier

    torch.manual_seed(0)
    net = build_classifier(model, 5, partial_pool=1).eval()
    out = net(torch.randn(2, 3, 64, 48))
    torch.testing.assert_close(out["patch_logits"].flatten(1), out["logits"], rtol=1e-5, atol=1e-5)
    net4 = build_classifier(model, 5, partial_pool=4)
    assert net4(torch.randn(1, 3, 64, 64))["patch_logits"].shape == (1, 5, 4, 4)


def test_train_with_partial_pooling_then_extract_partial_cams(toy_root, tmp_path):
    from wsss.cam.extract import ExtractCamConfig, extract_cams

    with pytest.raises(ConfigError, match="needs --region-masks"):  # no silent ground-truth supervision
        train_cls(_cfg(toy_root, tmp_path / "p0", partial_pool=2, max_steps=2, val_split=None, model="resnet_tiny"),
                  progress=False)
    out = train_cls(_cfg(toy_root, tmp_path / "p", partial_pool=2, max_steps=2, val_split=None,
                         model="resnet_tiny", region_masks="gt"), progress=False)
    cams = extract_cams(ExtractCamConfig(data=DataConfig(kind="voc", root=str(toy_root), split="val"),
                                         cls_dir=str(out), method="partial", scales=(1.0,), device="cpu",
                                         out=str(tmp_path / "cams")), progress=False)
    assert len(list(cams.glob("*.npz"))) == 16
    plain = train_cls(_cfg(toy_root, tmp_path / "plain", max_steps=1, val_split=None, model="resnet_tiny"),
                      progress=False)
    with pytest.raises(ConfigError, match="partial pooling"):
        extract_cams(ExtractCamConfig(data=DataConfig(kind="voc", root=str(toy_root), split="val"),
                                      cls_dir=str(plain), method="partial", device="cpu",
                                      out=str(tmp_path / "cams2")), progress=False)
    with pytest.raises(Exception, match="region mask"):
        train_cls(_cfg(toy_root, tmp_path / "q", partial_pool=2, max_steps=1, val_split=None,
                       region_masks=str(tmp_path / "nowhere")), progress=False)


def test_the_resnet_cam_classifier_starts_as_irns_does():
    """IRN leaves its 1x1 classifier at PyTorch's default init: uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)."""
    import math

    from wsss.cls.models import ResNetCAMNet

    torch.manual_seed(0)
    net = ResNetCAMNet("resnet_tiny", 200)
    w = net.classifier.weight
    fan_in = w.shape[1]
    w = w.detach()
    assert float(w.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    assert abs(float(w.std()) * math.sqrt(3 * fan_in) - 1) < 0.05


def test_conformer_groups_exempt_cls_token_and_1d_parameters_from_weight_decay():
    from wsss.cls.models import build_classifier

    model = build_classifier("conformer_tiny", 5, drop_path=0.1)
    specs = {g.name: g for g in model.param_groups(lr=5e-4, weight_decay=0.05, lr_transformer=2e-4)}
    names = {id(p): n for n, p in model.net.named_parameters()}
    no_decay = {names[id(p)] for k in ("cnn_no_decay", "transformer_no_decay") for p in specs[k].params}
    decay = {names[id(p)] for k in ("cnn", "transformer") for p in specs[k].params}
    assert "cls_token" in no_decay and all(specs[k].weight_decay == 0 for k in ("cnn_no_decay", "transformer_no_decay"))
    assert all(n.endswith(".bias") or model.net.get_parameter(n).ndim <= 1 or n == "cls_token" for n in no_decay)
    assert all(model.net.get_parameter(n).ndim > 1 and n != "cls_token" for n in decay)
    assert no_decay | decay == set(names.values()) and not no_decay & decay
    assert specs["transformer_no_decay"].lr == 2e-4 and specs["cnn_no_decay"].schedule == "poly"
    assert any(type(m).__name__ == "DropPath" for m in model.modules())


# ----------------------------------------------------------------------------- resize kernels
def _restated_cls_transform(image, mask, seed, resize_range, crop, resize_image, resize_mask):
    """cls_train_transform written out step by step with the same random draws: long-side resize
    (``resize_image(image, (h', w'))``, the mask with ``resize_mask``), flip, normalise, crop."""
    from _restate import normalise_pad_crop

    rng = np.random.default_rng(seed)
    target_long = int(rng.integers(resize_range[0], resize_range[1] + 1))
    h, w = image.shape[:2]
    scale = target_long / h if w < h else target_long / w  # IRN's random_resize_long
    size = (int(np.round(h * scale)), int(np.round(w * scale)))  # IRN's pil_rescale
    image, mask = resize_image(image, size), resize_mask(mask, size)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return normalise_pad_crop(image, mask, rng, crop)


def _pil(resample):
    from _restate import pil_resizer

    return pil_resizer(resample)


def _cv2(interp):
    import cv2

    return lambda a, size: cv2.resize(a, size[::-1], interpolation=interp)


def _image_and_mask(h=45, w=70):
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:30, 10:50] = 3
    mask[20:40, 40:65] = 7
    return image, mask


@pytest.mark.parametrize("shape", [(45, 70), (70, 45), (50, 50)])
def test_cls_transform_resizes_with_irns_pil_kernels_by_default(shape):
    from PIL import Image

    from wsss.cls.transforms import cls_train_transform

    image, mask = _image_and_mask(*shape)
    for seed in range(8):  # long sides 40-90 around the 64 crop: padded and cropped, flipped and not
        x, m = cls_train_transform(image, np.random.default_rng(seed), resize_range=(40, 90), crop=64, mask=mask)
        rx, rm = _restated_cls_transform(image, mask, seed, (40, 90), 64, _pil(Image.BICUBIC), _pil(Image.NEAREST))
        assert x.dtype == np.float32 and m.dtype == np.int64
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(m, rm)
        assert set(np.unique(m)) <= {0, 3, 7, 255}  # nearest: no value the mask does not hold
        x2 = cls_train_transform(image, np.random.default_rng(seed), resize_range=(40, 90), crop=64)
        np.testing.assert_array_equal(x, x2)  # the mask takes no random draw of its own


def test_cls_transform_opencv_option_is_the_previous_kernels():
    import cv2

    from wsss.cls.transforms import cls_train_transform

    image, mask = _image_and_mask()
    differs = False
    for seed in range(8):
        x, m = cls_train_transform(image, np.random.default_rng(seed), resize_range=(40, 90), crop=64, mask=mask,
                                   resize="opencv")
        # the calls train-cls made before the setting existed: image linear, mask nearest
        rx, rm = _restated_cls_transform(image, mask, seed, (40, 90), 64, _cv2(cv2.INTER_LINEAR), _cv2(cv2.INTER_NEAREST))
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(m, rm)
        differs |= not np.array_equal(x, cls_train_transform(image, np.random.default_rng(seed), resize_range=(40, 90),
                                                             crop=64))
    assert differs  # the option changes something


def test_bad_resize_kernel_is_refused(toy_root, tmp_path):
    from wsss.cls.transforms import cls_train_transform

    image, _ = _image_and_mask()
    with pytest.raises(ConfigError, match="resize must be 'pil' or 'opencv', got 'bilinear'"):
        cls_train_transform(image, np.random.default_rng(0), resize_range=(40, 90), crop=64, resize="bilinear")
    with pytest.raises(ConfigError, match="resize must be 'pil' or 'opencv', got 'cv2'"):
        train_cls(_cfg(toy_root, tmp_path / "bad", resize="cv2"), progress=False)
    assert not (tmp_path / "bad").exists()


def _as_before_resize_existed(out):
    """Make a run folder look as one written before ``resize`` existed: no key in config.yaml or resume.pt."""
    import yaml

    from wsss.engine import checkpoint as ckpt

    state = ckpt.load_resume(out / "resume.pt")
    del state["config"]["resize"]
    ckpt.save_resume(out / "resume.pt", state)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["resize"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))


def test_a_run_recorded_before_resize_existed_resumes_with_opencv(toy_root, tmp_path, monkeypatch, capsys):
    import yaml

    kw = dict(model="resnet_tiny", max_steps=3, save_every=1, val_split=None, epochs=1)
    train_cls(_cfg(toy_root, tmp_path / "a", resize="opencv", **kw), progress=False)

    from _restate import stop_at_step

    real_step = stop_at_step(monkeypatch, torch.optim.AdamW, 2)  # killed after the step-1 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_cls(_cfg(toy_root, tmp_path / "b", resize="opencv", **kw), progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    _as_before_resize_existed(tmp_path / "b")
    assert "resize" not in yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())

    capsys.readouterr()
    train_cls(_cfg(toy_root, tmp_path / "b", **kw), resume=True, progress=False)  # the default, pil
    assert "continues with resize=opencv" in capsys.readouterr().out
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:  # the resumed steps used OpenCV's kernels, as the run began
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["resize"] == "opencv"
    assert torch.load(tmp_path / "b" / "resume.pt", weights_only=True)["config"]["resize"] == "opencv"


def test_resume_refuses_another_resize_kernel(toy_root, tmp_path):
    kw = dict(model="resnet_tiny", max_steps=2, save_every=1, val_split=None, epochs=1)
    train_cls(_cfg(toy_root, tmp_path / "r", **kw), progress=False)
    (tmp_path / "r" / "done.json").unlink()
    with pytest.raises(ConfigError, match="configuration changed \\(resize\\)"):
        train_cls(_cfg(toy_root, tmp_path / "r", resize="opencv", **kw), resume=True, progress=False)
