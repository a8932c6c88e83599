"""The synthetic pretraining corpus, wsss pretrain and the built-in weights."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wsss.cli import main
from wsss.data.corpus import CORPUS_CLASSES, render_corpus_sample
from wsss.data.toy import TOY_CLASS_NAMES
from wsss.models import builtin


def test_the_corpus_has_over_100_classes_none_of_them_a_toy_class():
    assert len(CORPUS_CLASSES) >= 100 and len(set(CORPUS_CLASSES)) == len(CORPUS_CLASSES)
    toy = set(TOY_CLASS_NAMES)
    assert not toy & set(CORPUS_CLASSES)
    # no family is a near copy of a toy class: no 5-armed star, no circle-like polygon, no O / X / C glyph
    assert "star5" not in CORPUS_CLASSES and "polygon8" not in CORPUS_CLASSES
    assert not {"glyph_O", "glyph_X", "glyph_C", "glyph_0"} & set(CORPUS_CLASSES)


def test_corpus_samples_are_deterministic_and_cycle_through_the_classes():
    a, la = render_corpus_sample(3, "train", 17, 64)
    b, lb = render_corpus_sample(3, "train", 17, 64)
    assert la == lb == 17 % len(CORPUS_CLASSES) and np.array_equal(a, b)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    c, _ = render_corpus_sample(4, "train", 17, 64)
    d, _ = render_corpus_sample(3, "val", 17, 64)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    labels = [render_corpus_sample(0, "val", i, 32)[1] for i in range(len(CORPUS_CLASSES))]
    assert labels == list(range(len(CORPUS_CLASSES)))


def test_every_class_renders_a_visible_object():
    from wsss.data import corpus

    rng = np.random.default_rng(0)
    for name in CORPUS_CLASSES:
        shape = corpus._curve(rng, name, 96, 48.0, 48.0, 30.0)
        assert 0.02 < shape.mean() < 0.9, name


def test_pretrain_trains_resumes_and_reports_top1(tmp_path):
    from wsss.cls.pretrain import BACKBONE_NAME, PretrainConfig, pretrain
    from wsss.models import build_backbone, load_weights

    base = dict(model="resnet_tiny", size=32, crop=32, num_train=204, num_val=102, batch_size=34, epochs=2,
                workers=0, render_workers=1, device="cpu", cache=str(tmp_path / "corpus"), log_every=0)
    full = pretrain(PretrainConfig(**base, out=str(tmp_path / "full")), progress=False)
    first = pretrain(PretrainConfig(**base, out=str(tmp_path / "cut"), max_steps=None, save_every=3), progress=False)
    done = json.loads((full / "done.json").read_text())
    assert done["steps"] == 12 and 0.0 <= done["val_top1"] <= 100.0
    # a second, resumed run of a finished folder changes nothing; a fresh one without --resume is refused
    from wsss.config import ConfigError

    with pytest.raises(ConfigError, match="finished pretrain run"):
        pretrain(PretrainConfig(**base, out=str(tmp_path / "full")), progress=False)
    assert (first / "done.json").is_file()
    # the exported backbone loads strictly into a plain backbone (ImageNet-style head dropped)
    net = build_backbone("resnet_tiny")
    report = load_weights(net, full / BACKBONE_NAME, strict=True, log=lambda _: None)
    assert not report.missing and not report.unexpected and "fc.weight" in report.dropped


def test_pretrain_resumed_mid_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from wsss.cls.pretrain import PretrainConfig, pretrain

    base = dict(model="resnet_tiny", size=32, crop=32, num_train=204, num_val=102, batch_size=34, epochs=2,
                workers=0, render_workers=1, device="cpu", cache=str(tmp_path / "corpus"), log_every=0, save_every=4)
    pretrain(PretrainConfig(**base, out=str(tmp_path / "a")), progress=False)
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def killed_at_step_7(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the step-4 checkpoint, in the second epoch
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        pretrain(PretrainConfig(**base, out=str(tmp_path / "c")), progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    pretrain(PretrainConfig(**base, out=str(tmp_path / "c")), resume=True, progress=False)
    a, c = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "c" / "model.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_builtin_names_list_the_known_ones(toy_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="no built-in weights named 'resnet_huge'; known: .*wsss pretrain --list"):
        builtin.resolve_weights("builtin:resnet_huge")
    assert builtin.resolve_weights("some/file.pth").as_posix() == "some/file.pth"
    result = CliRunner().invoke(main, ["train-cls", "--data-root", str(toy_root), "--model", "resnet_tiny", "--pretrained",
                                       "builtin:resnet_huge", "--device", "cpu", "--out", str(tmp_path / "cls")])
    assert result.exit_code != 0 and "no built-in weights named 'resnet_huge'" in result.output, result.output
    assert not (tmp_path / "cls").exists()


def test_pretrain_list_prints_each_builtin_with_its_manifest_line():
    result = CliRunner().invoke(main, ["pretrain", "--list"])
    assert result.exit_code == 0
    for name, entry in builtin.list_builtin().items():
        assert f"builtin:{name}" in result.output and entry["command"] in result.output


@pytest.mark.parametrize("name", sorted(builtin.list_builtin()))
def test_each_builtin_loads_strictly_wherever_a_weights_file_does(name):
    from safetensors.torch import load_file

    from wsss.cls.models import build_classifier
    from wsss.models import build_backbone, load_weights

    entry = builtin.list_builtin()[name]
    path = builtin.resolve_weights(f"builtin:{name}")
    assert path.stat().st_size == entry["bytes"] <= builtin.MAX_BYTES
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    state = load_file(str(path))
    report = load_weights(build_backbone(entry["model"]), f"builtin:{name}", strict=True, log=lambda _: None)
    # a Conformer's two class heads are part of the model and re-initialised for the task's classes
    heads = sorted(k for k in state if k.startswith(("conv_cls_head", "trans_cls_head")))
    assert sorted(report.missing) == heads and not report.unexpected and not report.mismatched
    # the train-cls classifier (heads re-initialised), and for ResNets IRNet and the segmenter's backbone
    clf = build_classifier(entry["model"], 8, pretrained=f"builtin:{name}")
    if entry["model"].startswith("conformer"):
        # every tensor but the 102-way heads lands in the AD-CAM classifier unchanged
        sd = clf.state_dict()
        heads = {k for k in state if k.startswith(("conv_cls_head", "trans_cls_head"))}
        # (AD-CAM drops the last Conv block, so its tensors have no place in the classifier)
        weights = [k for k in state if k not in heads and f"net.{k}" in sd]
        assert heads and len(weights) > 0.8 * len(state)
        assert all(torch.equal(sd[f"net.{k}"], state[k]) for k in weights)
    if entry["model"].startswith("resnet"):
        assert torch.equal(clf.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
        from wsss.pseudo.irnet import BoundaryNet
        from wsss.seg.model import build_segmenter

        irn = BoundaryNet(entry["model"], weights=f"builtin:{name}")
        assert torch.equal(irn.backbone.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
        seg = build_segmenter("fcn", entry["model"], 9, pretrained=f"builtin:{name}", channels=16)
        assert torch.equal(seg.backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


# ResNet: IRN's recipe (stem, layer1-2 and BatchNorm frozen). Conformer: AD-CAM's classifier, both
# branches, heads re-initialised, gradients between the branches cut.
_FINE_TUNE = {"resnet_tiny": dict(head_lr_mult=1.0, weight_decay=1e-4), "conformer_tiny": dict(lr_transformer=1e-3)}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(_FINE_TUNE))
def test_fine_tuning_from_the_builtin_learns_more_than_from_scratch(model, toy_root, tmp_path):
    """Same few steps, same data and seed: the classifier started from builtin:MODEL fits the toy
    labels better than the same net from scratch."""
    if model not in builtin.list_builtin():
        pytest.skip(f"no builtin:{model} shipped")
    from wsss.cls.train import TrainClsConfig, train_cls
    from wsss.data import DataConfig

    mAP = {}
    for name, pretrained in (("scratch", None), ("builtin", f"builtin:{model}")):
        cfg = TrainClsConfig(data=DataConfig(kind="voc", root=str(toy_root)), val_split="train", model=model,
                             pretrained=pretrained, epochs=4, batch_size=8, crop=64, resize_long=(56, 72),
                             optimizer="adamw", lr=2e-3, workers=0, device="cpu", out=str(tmp_path / name),
                             log_every=0, **_FINE_TUNE[model])
        out = train_cls(cfg, progress=False)
        mAP[name] = json.loads((out / "done.json").read_text())["val_mAP"]
    assert mAP["builtin"] > mAP["scratch"] + 5, mAP
