"""ResNet backbones: strides/dilations, stems, frozen parts, and the backbone registry."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from wsss.models import BACKBONES, build_backbone, list_backbones
from wsss.models.resnet import CAM_OS16, SEG_OS8, STAGES, build_resnet

H, W = 65, 47  # odd sizes: every strided layer must round up


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine weights, so equal outputs mean equal weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def expected_size(size: int, stride: int) -> int:
    return math.ceil(size / stride)


@pytest.mark.parametrize(
    "preset, strides, out_stride",
    [
        ({}, (4, 4, 8, 16, 32), 32),
        (CAM_OS16, (4, 4, 8, 16, 16), 16),
        (SEG_OS8, (4, 4, 8, 8, 8), 8),
    ],
)
def test_stage_shapes_on_odd_input(preset, strides, out_stride):
    model = build_resnet("resnet_tiny", **preset).eval()
    assert model.output_stride == out_stride
    assert tuple(model.feature_strides.values()) == strides
    with torch.no_grad():
        features = model(torch.randn(1, 3, H, W))
    assert list(features) == ["stem", *STAGES]
    for (name, feature), stride in zip(features.items(), strides):
        assert feature.shape == (1, model.out_channels[name], expected_size(H, stride), expected_size(W, stride)), name


def conv3x3_settings(model: nn.Module, stage: str) -> list[tuple[int, int, int]]:
    """(stride, dilation, padding) of the 3x3 conv of each block of a stage."""
    return [(b.conv2.stride[0], b.conv2.dilation[0], b.conv2.padding[0]) for b in getattr(model, stage)]


def test_os16_cam_preset_has_no_dilation():
    model = build_resnet("resnet_tiny", **CAM_OS16)
    assert conv3x3_settings(model, "layer3") == [(2, 1, 1), (1, 1, 1)]
    assert conv3x3_settings(model, "layer4") == [(1, 1, 1), (1, 1, 1)]
    assert model.layer4[0].downsample[0].stride == (1, 1)
    assert model.layer3[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("contract, layer3, layer4", [(True, [1, 2], [2, 4]), (False, [2, 2], [4, 4])])
def test_os8_dilations_and_padding(contract, layer3, layer4):
    model = build_resnet("resnet_tiny", **SEG_OS8, contract_dilation=contract)
    for stage, dilations in (("layer3", layer3), ("layer4", layer4)):
        assert conv3x3_settings(model, stage) == [(1, d, d) for d in dilations]
        assert getattr(model, stage)[0].downsample[0].stride == (1, 1)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            assert module.padding == module.dilation


@pytest.mark.parametrize("contract", [True, False])
def test_multi_grid_multiplies_layer4_dilation_per_block(contract):
    """mmseg's multi_grid: layer4 block i dilated ``4 * grid[i]``, no contraction; layer3 as before."""
    model = build_resnet("resnet_tiny", **SEG_OS8, contract_dilation=contract, multi_grid=(1, 2))
    assert conv3x3_settings(model, "layer4") == [(1, 4, 4), (1, 8, 8)]
    assert conv3x3_settings(model, "layer3") == [(1, d, d) for d in ([1, 2] if contract else [2, 2])]
    with pytest.raises(ValueError, match="one multiplier >= 1 per layer4 block \\(2\\)"):
        build_resnet("resnet_tiny", **SEG_OS8, multi_grid=(1, 2, 4))


def test_train_seg_passes_its_dilation_settings_to_the_backbone(tmp_path):
    from wsss.config import load_config
    from wsss.seg.train import TrainSegConfig, build_from_config

    path = tmp_path / "seg.yaml"
    path.write_text("train_seg:\n  backbone: resnet_tiny\n  channels: 8\n  contract_dilation: false\n"
                    "  multi_grid: [2, 3]\n")
    cfg = load_config(TrainSegConfig, path, section="train_seg")
    assert cfg.multi_grid == (2, 3) and cfg.contract_dilation is False
    model = build_from_config(cfg, 5)
    assert conv3x3_settings(model.backbone, "layer3") == [(1, 2, 2), (1, 2, 2)]
    assert conv3x3_settings(model.backbone, "layer4") == [(1, 8, 8), (1, 12, 12)]
    default = build_from_config(TrainSegConfig(backbone="resnet_tiny", channels=8), 5)
    assert conv3x3_settings(default.backbone, "layer4") == [(1, 2, 2), (1, 4, 4)]  # mmseg's contracted -d8


def test_os8_equals_timm_output_stride_8():
    """timm's own output_stride=8 dilation schedule is mmseg's contracted (1, 1, 2, 4)."""
    kwargs = dict(
        block=Bottleneck, layers=(1, 1, 2, 2), channels=(8, 16, 32, 64), stem_width=32, stem_type="deep", num_classes=0
    )
    reference = randomize_(ResNet(output_stride=8, **kwargs)).eval()
    ours = build_resnet("resnet_tiny", **SEG_OS8, deep_stem=True).eval()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        assert torch.equal(ours(x)["layer4"], reference.forward_features(x))


def test_stems():
    plain = build_resnet("resnet50")
    assert isinstance(plain.conv1, nn.Conv2d) and plain.conv1.kernel_size == (7, 7)
    v1c = build_resnet("resnet50_v1c")
    widths = [(m.in_channels, m.out_channels, m.kernel_size) for m in v1c.conv1 if isinstance(m, nn.Conv2d)]
    assert widths == [(3, 32, (3, 3)), (32, 32, (3, 3)), (32, 64, (3, 3))]
    assert v1c.out_channels == {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert "conv1.0.weight" in build_resnet("resnet_tiny", deep_stem=True).state_dict()
    assert "conv1.weight" in build_resnet("resnet50_v1c", deep_stem=False).state_dict()


def test_resnet50_forward_os16():
    model = build_resnet("resnet50", **CAM_OS16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))["layer4"]
    assert out.shape == (1, 2048, 4, 4)


def test_forward_backward():
    model = build_resnet("resnet_tiny", **SEG_OS8)
    out = model(torch.randn(2, 3, 32, 32))
    sum(f.mean() for f in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_frozen_bn_keeps_running_stats():
    model = build_resnet("resnet_tiny", frozen_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert all(m.weight.requires_grad for m in bns)


def test_frozen_stages_like_irn_cam_net():
    model = build_resnet("resnet_tiny", **CAM_OS16, frozen_stages=2).train()
    frozen = [model.conv1, model.bn1, model.layer1, model.layer2]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert not any(m.training for m in frozen)
    assert all(p.requires_grad for m in (model.layer3, model.layer4) for p in m.parameters())
    assert model.layer3.training


def test_bad_strides_explain_the_convention():
    with pytest.raises(ValueError, match=r"IRN's \(2, 2, 2, 1\)"):
        build_resnet("resnet_tiny", strides=(2, 2, 2, 1, 1))
    with pytest.raises(ValueError, match="dilations"):
        build_resnet("resnet_tiny", dilations=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="frozen_stages"):
        build_resnet("resnet_tiny", frozen_stages=5)


def test_registry_lists_resnets_and_conformers():
    names = list_backbones()
    for name in ("resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c", "resnet_tiny",
                 "conformer_tiny", "conformer_ti16", "conformer_s16", "conformer_b16"):
        assert name in names
    assert build_backbone("resnet_tiny", **CAM_OS16).output_stride == 16


def test_registry_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        build_backbone("resnet5O")
    message = str(info.value)
    assert "Did you mean 'resnet50'?" in message
    assert all(name in message for name in BACKBONES)


def test_conformer_is_imported_lazily(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the file were absent.
    monkeypatch.setitem(sys.modules, "wsss.models.conformer", None)
    with pytest.raises(ImportError, match="conformer_s16"):
        build_backbone("conformer_s16")
