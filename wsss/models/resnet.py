"""ResNet backbones built from timm's modules, with per-stage strides and dilations.

Stride convention
-----------------
``strides`` and ``dilations`` are given per stage, ``layer1`` .. ``layer4``. The
stem (a 7x7 conv or the deep 3x3 stem, stride 2, then a 3x3 max-pool, stride 2)
always reduces by 4 and is not counted, so

* ``(1, 2, 2, 2)``, no dilation: the ImageNet ResNet, output stride 32;
* :data:`CAM_OS16` = strides ``(1, 2, 2, 1)``, no dilation: output stride 16, the
  net of IRN's CAM step and of IRNet. IRN writes this net as
  ``strides=(2, 2, 2, 1)`` because its first entry is the stem conv's stride
  and its layer1 stride is fixed to 1; like IRN, layer4 is *not* dilated;
* :data:`SEG_OS8` = strides ``(1, 2, 1, 1)``, dilations ``(1, 1, 2, 4)``:
  output stride 8, the dilated ResNet-v1c of mmseg's ``-d8`` models (PCAA).

A stage's stride sits on the 3x3 conv of its first bottleneck and on that
block's 1x1 downsample conv (torchvision / timm / mmseg "pytorch" style). With
``contract_dilation`` (the default, as mmseg's ``-d8`` configs, and the same as
torchvision's and timm's ``replace_stride_with_dilation`` / ``output_stride``
for doubling dilations) the first block of a stage with dilation ``d > 1`` uses
``d // 2`` and the others ``d``; every 3x3 conv has padding = dilation, so a
stage with stride 1 keeps the spatial size.

A feature at stride ``s`` has spatial size ``ceil(H / s) x ceil(W / s)`` for any
input size (every strided layer rounds up).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from timm.models.resnet import Bottleneck, ResNet

STAGES = ("layer1", "layer2", "layer3", "layer4")

CAM_OS16: dict[str, tuple[int, ...]] = {"strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 1)}
"""IRN's CAM net / IRNet backbone: output stride 16, layer4 not dilated."""

SEG_OS8: dict[str, tuple[int, ...]] = {"strides": (1, 2, 1, 1), "dilations": (1, 1, 2, 4)}
"""Dilated ResNet for segmentation (mmseg ``-d8``, PCAA): output stride 8."""


@dataclass(frozen=True)
class ResNetConfig:
    """Depth and widths of one named ResNet; every stage is made of timm ``Bottleneck`` blocks."""

    layers: tuple[int, int, int, int]
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    deep_stem: bool = False


RESNET_CONFIGS: dict[str, ResNetConfig] = {
    "resnet50": ResNetConfig((3, 4, 6, 3)),
    "resnet101": ResNetConfig((3, 4, 23, 3)),
    "resnet50_v1c": ResNetConfig((3, 4, 6, 3), deep_stem=True),
    "resnet101_v1c": ResNetConfig((3, 4, 23, 3), deep_stem=True),
    # Two blocks in layer3/layer4 so tests see both the first (contracted) and a later dilation.
    "resnet_tiny": ResNetConfig((1, 1, 2, 2), channels=(8, 16, 32, 64)),
}

# timm's resnet50c / mmseg's ResNetV1c deep stem: 3x3 convs 3->32->32->64.
_DEEP_STEM_WIDTH = 32


class ResNetBackbone(nn.Module):
    """A timm ResNet without its classifier, returning the features of every stage.

    Module and state-dict names are timm's (which are torchvision's): ``conv1``,
    ``bn1``, ``layer1`` .. ``layer4``; the deep stem is ``conv1.0/1/3/4/6`` + ``bn1``.

    Args:
        net: a timm ``ResNet`` of ``Bottleneck`` blocks built with the standard
            output stride 32; its stem and stages are taken over, its head dropped.
        strides: stride of ``layer1`` .. ``layer4``, each 1 or 2 (see the module docstring).
        dilations: dilation of the 3x3 convs of ``layer1`` .. ``layer4``.
        contract_dilation: the first block of a dilated stage uses half the dilation.
        multi_grid: per-block multipliers of ``layer4``'s dilation (one per block), mmseg's
            ``multi_grid``: block ``i`` uses ``dilations[3] * multi_grid[i]`` and no contraction
            (PCAA's ADE20K runs: dilation 4 with (1, 2, 4), i.e. 4 / 8 / 16).
        frozen_bn: every BatchNorm normalises with its running statistics and never
            updates them, also in ``train()`` mode (IRN's ``FixedBatchNorm``); the
            affine weights stay trainable unless their stage is frozen.
        frozen_stages: ``-1`` freezes nothing; ``0`` the stem (``conv1``, ``bn1``);
            ``k`` the stem and ``layer1`` .. ``layerk``. Frozen parameters get
            ``requires_grad=False`` and frozen modules stay in eval mode.

    IRN's CAM net is ``CAM_OS16`` with ``frozen_bn=True, frozen_stages=2``: IRN uses
    ``FixedBatchNorm`` everywhere, sets ``requires_grad=False`` on ``conv1``/``bn1``
    and detaches the output of layer2, so stem, layer1 and layer2 never train.
    IRNet's backbone is fully frozen: ``frozen_bn=True, frozen_stages=4``.
    """

    def __init__(
        self,
        net: ResNet,
        *,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        contract_dilation: bool = True,
        multi_grid: Sequence[int] | None = None,
        frozen_bn: bool = False,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        strides, dilations = _check_strides(strides, dilations)
        if not -1 <= frozen_stages <= 4:
            raise ValueError(
                f"frozen_stages must be in -1..4 (-1 = nothing, 0 = stem, k = stem + layer1..k), got {frozen_stages}"
            )
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.act1 = net.act1
        self.maxpool = net.maxpool
        for name, stride, dilation in zip(STAGES, strides, dilations):
            stage = getattr(net, name)
            grid = None
            if name == "layer4" and multi_grid:
                grid = tuple(int(g) for g in multi_grid)
                if len(grid) != len(stage) or min(grid) < 1:
                    raise ValueError(f"multi_grid needs one multiplier >= 1 per layer4 block ({len(stage)}), got {grid}")
            _set_stride_and_dilation(stage, name, stride, dilation, contract_dilation, grid)
            self.add_module(name, stage)

        self.strides = strides
        self.dilations = dilations
        self.multi_grid = tuple(multi_grid) if multi_grid else None
        self.frozen_bn = frozen_bn
        self.frozen_stages = frozen_stages
        self.out_channels: dict[str, int] = {"stem": self.bn1.num_features}
        self.feature_strides: dict[str, int] = {"stem": 4}
        reduction = 4
        for name, stride in zip(STAGES, strides):
            self.out_channels[name] = getattr(self, name)[-1].conv3.out_channels
            reduction *= stride
            self.feature_strides[name] = reduction
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()

    @property
    def output_stride(self) -> int:
        """Reduction of ``layer4`` relative to the input: ``4 * prod(strides)``."""
        return self.feature_strides["layer4"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: ``(B, 3, H, W)`` normalised images.

        Returns ``{"stem", "layer1", .., "layer4"}``: ``(B, out_channels[k], ceil(H / s),
        ceil(W / s))`` with ``s = feature_strides[k]``; ``stem`` is after the max-pool (stride 4).
        """
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        features = {"stem": x}
        for name in STAGES:
            x = getattr(self, name)(x)
            features[name] = x
        return features

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, name) for name in STAGES[: self.frozen_stages]]

    def extra_repr(self) -> str:
        return (
            f"strides={self.strides}, dilations={self.dilations}, output_stride={self.output_stride}, "
            f"frozen_bn={self.frozen_bn}, frozen_stages={self.frozen_stages}"
        )


def build_resnet(
    name: str,
    *,
    strides: Sequence[int] = (1, 2, 2, 2),
    dilations: Sequence[int] = (1, 1, 1, 1),
    deep_stem: bool | None = None,
    contract_dilation: bool = True,
    multi_grid: Sequence[int] | None = None,
    frozen_bn: bool = False,
    frozen_stages: int = -1,
    pretrained_path: str | os.PathLike | None = None,
) -> ResNetBackbone:
    """Build a ResNet backbone by name (``RESNET_CONFIGS``); never downloads anything.

    ``resnet50`` / ``resnet101`` have the torchvision 7x7 stem (timm ``resnet50`` /
    ``resnet101``); the ``_v1c`` names have the deep 3x3 stem 32-32-64 (timm
    ``resnet50c`` / ``resnet101c``, mmseg ``ResNetV1c``); ``resnet_tiny`` has the
    same structure with 1-2 blocks per stage and 8x narrower bottlenecks, for tests.
    ``deep_stem`` overrides the name's stem. ``pretrained_path`` is a local
    checkpoint loaded strictly by :func:`wsss.models.weights.load_weights`
    (torchvision, timm and mmcv layouts are recognised; a classifier head in the
    file is dropped with a message). Other arguments: see :class:`ResNetBackbone`.

    Example: ``build_resnet("resnet50", **CAM_OS16, frozen_bn=True, frozen_stages=2)``.
    """
    if name not in RESNET_CONFIGS:
        raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(RESNET_CONFIGS)}")
    config = RESNET_CONFIGS[name]
    deep = config.deep_stem if deep_stem is None else deep_stem
    net = ResNet(
        block=Bottleneck,
        layers=config.layers,
        channels=config.channels,
        stem_width=_DEEP_STEM_WIDTH if deep else 64,
        stem_type="deep" if deep else "",
        num_classes=0,
    )
    backbone = ResNetBackbone(
        net,
        strides=strides,
        dilations=dilations,
        contract_dilation=contract_dilation,
        multi_grid=multi_grid,
        frozen_bn=frozen_bn,
        frozen_stages=frozen_stages,
    )
    if pretrained_path is not None:
        from wsss.models.weights import load_weights

        load_weights(backbone, pretrained_path)
    return backbone


def _check_strides(strides: Sequence[int], dilations: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    strides, dilations = tuple(int(s) for s in strides), tuple(int(d) for d in dilations)
    if len(strides) != 4 or any(s not in (1, 2) for s in strides):
        raise ValueError(
            f"strides must be 4 values in {{1, 2}} for layer1..layer4 (the stem's 4x is not counted), got {strides}; "
            "IRN's (2, 2, 2, 1) counts the stem conv and is (1, 2, 2, 1) here"
        )
    if len(dilations) != 4 or any(d < 1 for d in dilations):
        raise ValueError(f"dilations must be 4 values >= 1 for layer1..layer4, got {dilations}")
    return strides, dilations


def _set_stride_and_dilation(stage: nn.Sequential, name: str, stride: int, dilation: int, contract: bool,
                             grid: Sequence[int] | None = None) -> None:
    for index, block in enumerate(stage):
        if not isinstance(block, Bottleneck) or not isinstance(block.aa, nn.Identity):
            raise TypeError(
                f"{name}.{index} is a {type(block).__name__} or has anti-aliasing; only plain Bottlenecks are supported"
            )
        first = index == 0
        if grid is not None:
            block_dilation = dilation * grid[index]
        else:
            block_dilation = max(1, dilation // 2) if first and contract else dilation
        block.conv2.stride = (stride, stride) if first else (1, 1)
        block.conv2.dilation = (block_dilation, block_dilation)
        block.conv2.padding = (block_dilation, block_dilation)
        block.stride = stride if first else 1
        block.dilation = block_dilation
        if first:
            if block.downsample is None:
                if stride != 1:
                    raise ValueError(f"{name} has no downsample branch, so its stride must be 1, got {stride}")
            else:
                block.downsample[0].stride = (stride, stride)


__all__ = [
    "CAM_OS16",
    "RESNET_CONFIGS",
    "SEG_OS8",
    "STAGES",
    "ResNetBackbone",
    "ResNetConfig",
    "build_resnet",
]
