"""Loading local checkpoints: file formats, wrappers, key layouts, heads and refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from wsss.models import WeightsMismatchError, load_weights, save_safetensors
from wsss.models.resnet import CAM_OS16, build_resnet
from wsss.models.weights import detect_format, read_state_dict

# Our (timm) deep-stem names -> mmcv/mmseg ResNetV1c names: mmseg's stem is
# Sequential(conv, BN, ReLU, conv, BN, ReLU, conv, BN, ReLU) with indices 0..8.
TIMM_TO_MMCV_STEM = {
    "conv1.0": "stem.0",
    "conv1.1": "stem.1",
    "conv1.3": "stem.3",
    "conv1.4": "stem.4",
    "conv1.6": "stem.6",
    "bn1": "stem.7",
}
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so equal outputs mean equal weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.ndim == 1:  # BN weights and statistics near 1: activations neither explode nor vanish
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.2 + 0.9)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    return model


def tiny(seed: int | None = None, **kwargs) -> nn.Module:
    model = build_resnet("resnet_tiny", **kwargs)
    return (randomize_(model, seed) if seed is not None else model).eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torchvision_resnet50_loads_strictly_and_matches(tmp_path: Path):
    reference = randomize_(torchvision.models.resnet50()).eval()
    path = tmp_path / "resnet50_torchvision.pth"
    torch.save(reference.state_dict(), path)
    messages: list[str] = []
    ours = build_resnet("resnet50", strides=(1, 2, 2, 2)).eval()
    report = load_weights(ours, path, log=messages.append)
    assert report.format == "resnet" and not report.missing and not report.unexpected
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert "dropped 1000-way head fc.weight (1000, 2048): the model has no fc.weight" in messages
    body = nn.Sequential(*list(reference.children())[:-2])  # up to layer4: no avgpool, no fc
    with torch.no_grad():
        torch.testing.assert_close(ours(X)["layer4"], body(X), rtol=0, atol=0)


def test_pretrained_path_in_build_resnet(tmp_path: Path):
    source = tiny(seed=1)
    save_safetensors(source.state_dict(), tmp_path / "tiny.safetensors")
    built = build_resnet("resnet_tiny", **CAM_OS16, pretrained_path=tmp_path / "tiny.safetensors")
    assert same_weights(built, source)


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_mmseg_v1c_layout_loads_and_matches(tmp_path: Path, prefix: str):
    source = tiny(seed=2, deep_stem=True)
    mmcv_state = {}
    for key, tensor in source.state_dict().items():
        module, _, leaf = key.rpartition(".")
        for timm_name, mmcv_name in TIMM_TO_MMCV_STEM.items():
            if module == timm_name:
                module = mmcv_name
        mmcv_state[prefix + f"{module}.{leaf}"] = tensor
    assert "stem.7.running_var" in {k.removeprefix(prefix) for k in mmcv_state}
    if prefix:
        mmcv_state["decode_head.conv_seg.weight"] = torch.zeros(21, 512, 1, 1)
    else:
        mmcv_state["fc.weight"] = torch.zeros(1000, 256)
    torch.save({"meta": {"epoch": 100}, "state_dict": mmcv_state}, tmp_path / "resnet_v1c.pth")

    target = tiny(deep_stem=True)
    report = load_weights(target, tmp_path / "resnet_v1c.pth", log=lambda _: None)
    assert report.format == ("mmseg_segmentor" if prefix else "mmcv_resnet")
    assert report.dropped == (["decode_head.conv_seg.weight"] if prefix else ["fc.weight"])
    assert same_weights(target, source)
    with torch.no_grad():
        assert torch.equal(target(X)["layer4"], source(X)["layer4"])


def test_safetensors_round_trip_leaves_no_temp_file(tmp_path: Path):
    source = tiny(seed=3)
    path = save_safetensors(source.state_dict(), tmp_path / "w.safetensors", metadata={"arch": "resnet_tiny"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    target = tiny()
    load_weights(target, path, log=lambda _: None)
    assert same_weights(target, source)


def test_save_safetensors_accepts_views_and_shared_tensors(tmp_path: Path):
    weight = torch.randn(4, 3)
    state = {"a": weight, "tied": weight, "t": weight.t()}
    save_safetensors(state, tmp_path / "x.safetensors")
    loaded = read_state_dict(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match=".safetensors"):
        save_safetensors(state, tmp_path / "x.pth")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"model_state": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict", "model", "model_state", "ddp", "ddp_in_state_dict"],
)
def test_checkpoint_wrappers(tmp_path: Path, wrap):
    source = tiny(seed=4)
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pt")
    target = tiny()
    load_weights(target, tmp_path / "ckpt.pt", log=lambda _: None)
    assert same_weights(target, source)


class Classifier(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(3, 8)
        self.fc = nn.Linear(8, num_classes)


def test_1000_way_head_dropped_with_message(tmp_path: Path):
    torch.save(Classifier(1000).state_dict(), tmp_path / "imagenet.pth")
    model = Classifier(20)
    fresh_fc = model.fc.weight.clone()
    messages: list[str] = []
    report = load_weights(model, tmp_path / "imagenet.pth", log=messages.append)
    assert "dropped 1000-way head fc.weight (1000, 8) -> model has (20, 8)" in messages
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert sorted(report.loaded) == ["body.bias", "body.weight"]
    assert torch.equal(model.fc.weight, fresh_fc)
    with pytest.raises(WeightsMismatchError, match=r"fc.weight checkpoint \(1000, 8\) vs model \(20, 8\)"):
        load_weights(Classifier(20), tmp_path / "imagenet.pth", drop_mismatched_heads=False, log=lambda _: None)


def test_missing_and_extra_keys_are_refused(tmp_path: Path):
    state = tiny(seed=5).state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer9.extra.weight"] = torch.zeros(2)
    state["layer2.0.conv2.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    target = tiny()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as info:
        load_weights(target, tmp_path / "bad.pth", log=lambda _: None)
    message = str(info.value)
    assert "missing from the checkpoint (1): layer1.0.conv1.weight" in message
    assert "unexpected in the checkpoint (1): layer9.extra.weight" in message
    assert "layer2.0.conv2.weight checkpoint (1, 1, 3, 3) vs model (16, 16, 3, 3)" in message
    assert "strict=False" in message
    untouched = all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    assert untouched, "a refused load must not touch the model"


def test_strict_false_loads_the_rest_and_reports(tmp_path: Path):
    source = tiny(seed=6)
    state = source.state_dict()
    del state["layer4.1.conv3.weight"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "partial.pth")
    target = tiny()
    messages: list[str] = []
    report = load_weights(target, tmp_path / "partial.pth", strict=False, log=messages.append)
    assert report.missing == ["layer4.1.conv3.weight"] and report.unexpected == ["extra.weight"]
    assert len(report.loaded) == len(source.state_dict()) - 1
    assert any("not loaded: missing from the checkpoint (1): layer4.1.conv3.weight" == m for m in messages)
    assert torch.equal(target.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_long_lists_are_cut(tmp_path: Path):
    state = {k: v for k, v in tiny().state_dict().items() if not k.startswith("layer4")}
    torch.save(state, tmp_path / "no_layer4.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing from the checkpoint \(\d+\): .*, \.\.\. and \d+ more"):
        load_weights(tiny(), tmp_path / "no_layer4.pth", log=lambda _: None)


def test_stem_mismatch_hint(tmp_path: Path):
    torch.save(tiny().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(WeightsMismatchError, match="deep_stem=False"):
        load_weights(tiny(deep_stem=True), tmp_path / "plain.pth", log=lambda _: None)


def test_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.pth.*never downloads"):
        load_weights(tiny(), tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "obj, found",
    [
        ([1, 2, 3], "a list of 3 items"),
        (torch.zeros(2, 3), r"a single tensor of shape \(2, 3\)"),
        ({"epoch": 3, "lr": 0.1}, r"a dict with 0 tensors and 2 other entries \(epoch, lr\)"),
        ({}, "an empty dict"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, obj, found):
    torch.save(obj, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=f"does not hold a state dict.*{found}"):
        load_weights(tiny(), tmp_path / "odd.pth")


def test_unreadable_files(tmp_path: Path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_weights(tiny(), tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        load_weights(tiny(), tmp_path / "junk.safetensors")


def test_pickled_objects_are_refused(tmp_path: Path):
    torch.save({"state_dict": tiny().state_dict(), "args": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(tiny(), tmp_path / "pickled.pth")


def test_detect_format():
    assert detect_format(torchvision.models.resnet18().state_dict()) == "resnet"
    assert detect_format(tiny(deep_stem=True).state_dict()) == "resnet"
    assert detect_format(["stem.0.weight", "layer1.0.conv1.weight"]) == "mmcv_resnet"
    assert detect_format(["backbone.stem.0.weight", "decode_head.conv_seg.weight"]) == "mmseg_segmentor"
    assert detect_format(["cls_token", "trans_patch_conv.weight", "conv_trans_2.cnn_block.conv1.weight"]) == "conformer"
    assert detect_format(["foo.weight"]) == "unknown"


def test_a_trained_wsss_resnet_classifier_starts_another_backbone(tmp_path):
    # The demo's stand-in for ImageNet weights: the backbone of a train-cls ResNet feeds IRNet / train-seg.
    from wsss.cls.models import build_classifier
    from wsss.engine.checkpoint import save_weights
    from wsss.models import build_backbone, load_weights
    from wsss.models.weights import detect_format

    torch.manual_seed(0)
    cls = build_classifier("resnet_tiny", 5)
    save_weights(cls, tmp_path / "model.safetensors")
    backbone = build_backbone("resnet_tiny", strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    report = load_weights(backbone, tmp_path / "model.safetensors")
    assert report.format == "wsss_network" and not report.missing and not report.unexpected
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(v, cls.backbone.state_dict()[k], rtol=0, atol=0)
    assert detect_format(["backbone.stem.0.weight", "backbone.layer1.0.conv1.weight"]) == "mmseg_segmentor"
