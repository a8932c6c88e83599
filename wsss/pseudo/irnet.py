"""IRNet's class-boundary branch (Ahn et al., CVPR 2019), the boundary map of AD-CAM Sec. 4.4.

The boundary ``B`` feeds the random walk of :mod:`wsss.pseudo.random_walk` (AD-CAM Eq. 9). IRNet
learns it without boundary labels: pairs of pixels within ``radius`` of each other get affinity
labels from the IR labels (``make-pseudo --refine ir-label``), and a pair's predicted affinity is
``1 - max B`` along the path between the two pixels, so a negative pair can only be explained by a
boundary somewhere on its path.

IRN facts this module follows (jiwoon-ahn/irn: ``net/resnet50_irn.py``, ``misc/indexing.py``,
``voc12/dataloader.py``, ``step/train_irn.py``, ``step/make_sem_seg_labels.py``):

* network: ImageNet ResNet-50, output stride 16 with layer4 not dilated (:data:`CAM_OS16`), fully
  frozen (features detached, backbone in eval mode, so BatchNorm keeps its statistics). Taps: the
  stem after the max-pool (stride 4), layer1 (4), layer2 (8), layer3 (16), layer4 (16). Per tap a
  bias-free 1x1 conv to 32 channels, GroupNorm(4, 32), bilinear upsampling by the tap's stride / 4
  (``align_corners=False``), cropped to the stride-4 size, ReLU; concatenated (160) and a 1x1 conv
  with bias gives one logit at stride 4. Strided layers round up, so any input size works without
  padding: the output is ``ceil(H / 4) x ceil(W / 4)``.
* directions and paths: :func:`wsss.pseudo.random_walk.stencil_offsets` / ``stencil_paths``
  (IRN's ``PathIndex.get_all_dir_paths``); 152 directions for radius 10.
* pairs: sources are the pixels of the window rows ``[0, h - m)``, columns ``[m, w - m)`` with
  ``m = radius - 1``, so that every ``source + direction`` is inside the map
  (``PathIndex.get_path_indices``); no padding.
* labels (``GetAffinityLabelFromIndices``): valid where both labels are known; positive where equal,
  split into background (label 0) and foreground positives; negative where different.
  IRN tests "known" as ``label < 21`` (VOC); here it is ``label != 255``, which is the same on VOC
  and also right for datasets with more classes.
* loss (``train_irn.py``): see :func:`boundary_loss`.
* inference (``make_sem_seg_labels.py`` with ``EdgeDisplacement``): scale 1.0 only, the image and
  its mirror in one batch, ``sigmoid((logit + flipped-back mirror logit) / 2)``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import normalize
from wsss.engine.precision import inference_autocast
from wsss.io import IGNORE_INDEX
from wsss.models.resnet import CAM_OS16, ResNetBackbone, build_resnet
from wsss.pseudo.random_walk import stencil_offsets, stencil_paths

TAPS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
"""Backbone features IRNet's boundary branch reads."""

TAP_STRIDES: dict[str, int] = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16}
"""Their strides in IRNet (ResNet strides 2, 2, 2, 1 in IRN's notation)."""


class BoundaryNet(nn.Module):
    """IRNet's class-boundary branch on a frozen ResNet.

    Args:
        backbone: a ResNet name (built as :data:`CAM_OS16`, all BatchNorms and stages frozen), or an
            already built :class:`ResNetBackbone` with IRNet's tap strides (:data:`TAP_STRIDES`).
        weights: local ImageNet weights for a backbone given by name. Without them the backbone is
            random and a warning says so: IRNet never trains its backbone, so the boundaries can
            only be as good as random features allow.
        width: channels of each tap (IRN: 32); ``groups``: GroupNorm groups (IRN: 4).
        train_backbone: also train the backbone's convolutions (its BatchNorms stay frozen). Not IRN:
            IRN freezes the whole backbone, the default.

    By default the backbone's parameters have ``requires_grad=False`` and it stays in eval mode in
    ``train()``: only ``taps`` and ``head`` learn.
    """

    def __init__(
        self,
        backbone: str | ResNetBackbone = "resnet50",
        *,
        weights: str | None = None,
        width: int = 32,
        groups: int = 4,
        train_backbone: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            if weights is None:
                warnings.warn(
                    f"IRNet backbone {backbone} built from scratch: it is never trained, so the boundary branch "
                    "sees random features. Pass the ImageNet weights file (weights=...).",
                    stacklevel=2,
                )
            backbone = build_resnet(backbone, **CAM_OS16, frozen_bn=True, frozen_stages=4, pretrained_path=weights)
        elif weights is not None:
            raise ValueError("weights= applies to a backbone given by name; load them into the built backbone instead")
        strides = {name: backbone.feature_strides[name] for name in TAPS}
        if strides != TAP_STRIDES:
            raise ValueError(
                f"IRNet needs tap strides {TAP_STRIDES}, the backbone has {strides}: build it with "
                "wsss.models.resnet.CAM_OS16"
            )
        self.train_backbone = train_backbone
        backbone.requires_grad_(False)
        if train_backbone:
            for param in backbone.parameters():
                # the convolutions learn; every BatchNorm keeps its ImageNet statistics and affine
                if param.dim() > 1:
                    param.requires_grad_(True)
        self.backbone = backbone
        self.taps = nn.ModuleList(
            nn.Sequential(nn.Conv2d(backbone.out_channels[name], width, 1, bias=False), nn.GroupNorm(groups, width))
            for name in TAPS
        )
        self.head = nn.Conv2d(width * len(TAPS), 1, 1, bias=True)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` normalised images -> boundary logits ``(B, 1, ceil(H/4), ceil(W/4))``."""
        size = (math.ceil(x.shape[-2] / 4), math.ceil(x.shape[-1] / 4))
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            features = self.backbone(x)
        maps = []
        for name, tap in zip(TAPS, self.taps):
            y = tap(features[name])
            factor = TAP_STRIDES[name] // 4
            if factor > 1:
                y = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)
            maps.append(F.relu(y[..., : size[0], : size[1]]))
        return self.head(torch.cat(maps, 1))

    def boundary(self, x: torch.Tensor) -> torch.Tensor:
        """Boundary probabilities in [0, 1], ``(B, 1, ceil(H/4), ceil(W/4))``."""
        return torch.sigmoid(self(x))

    def train(self, mode: bool = True) -> BoundaryNet:
        super().train(mode)
        self.backbone.eval()
        return self


@dataclass(frozen=True)
class PathIndex:
    """The pixel pairs IRNet trains on.

    ``directions[i]`` = ``(dy, dx)`` from a source pixel to its partner (IRN's half disk, strictly
    inside ``radius``); ``paths[i]`` = the offsets on the path from ``(0, 0)`` to ``directions[i]``,
    both end points included (pixels of the bounding box closer than one pixel to the segment's
    line). Sources lie in the window of :meth:`window`.
    """

    radius: int
    directions: tuple[tuple[int, int], ...]
    paths: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def margin(self) -> int:
        """``radius - 1``: the window leaves this many columns left and right, and rows at the bottom."""
        return self.radius - 1

    def window(self, height: int, width: int) -> tuple[int, int]:
        """Size ``(height - m, width - 2m)`` of the source window of an ``height x width`` map."""
        m = self.margin
        hc, wc = height - m, width - 2 * m
        if hc < 1 or wc < 1:
            raise ValueError(
                f"a {height}x{width} map has no pixel pairs of radius {self.radius}: it must be at least "
                f"{m + 1}x{2 * m + 1} (use a larger crop or a smaller radius)"
            )
        return hc, wc


@lru_cache(maxsize=None)
def path_index(radius: int = 10) -> PathIndex:
    """IRN's ``PathIndex``: 152 directions for radius 10 (IRNet training), 34 for radius 5."""
    return PathIndex(int(radius), tuple(stencil_offsets(radius)), tuple(stencil_paths(radius)))


def _pairs(t: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (..., h, w) -> source values (..., 1, hc, wc) and partner values (..., D, hc, wc)."""
    hc, wc = index.window(t.shape[-2], t.shape[-1])
    m = index.margin
    src = t[..., :hc, m : m + wc].unsqueeze(-3)
    dst = torch.stack([t[..., dy : dy + hc, m + dx : m + dx + wc] for dy, dx in index.directions], -3)
    return src, dst


def affinity_labels(
    label: torch.Tensor, index: PathIndex
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRN's affinity labels from a stride-4 IR label.

    ``label``: ``(..., h, w)`` class indices, 255 unknown; IRN takes it from the training crop with
    PIL's nearest-neighbour downsampling by 4, which samples pixel centres: cell ``i`` takes pixel
    ``4 i + 2`` (``crop_label[2::4, 2::4]``). Returns float32 ``bg_pos``,
    ``fg_pos``, ``neg``, each ``(..., D, hc, wc)`` (:meth:`PathIndex.window`): 1 where the pair
    (source, source + direction) is both background / the same foreground class / two different
    known labels; pairs with an unknown end are in none of them.
    """
    src, dst = _pairs(label, index)
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    equal = src == dst
    pos = equal & valid
    bg_pos = pos & (src == 0)
    fg_pos = pos & (src != 0)
    neg = ~equal & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def edge_to_affinity(boundary: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """Affinity of each training pair: ``1 - max(boundary)`` along its path (IRN's ``edge_to_affinity``).

    ``boundary``: ``(B, 1, h, w)`` or ``(B, h, w)`` probabilities in [0, 1] -> ``(B, D, hc, wc)``,
    laid out as :func:`affinity_labels`. Differentiable (the gradient goes to the path's maximum).

    As IRN does, the paths are grouped by length: one gather and one max per group, not one op per
    path pixel (with ~1,000 small ops the backward pass dominated a train-irn step on CPU).
    """
    if boundary.dim() == 4:
        if boundary.shape[1] != 1:
            raise ValueError(f"boundary must have one channel, got {tuple(boundary.shape)}")
        boundary = boundary[:, 0]
    h, w = boundary.shape[-2:]
    hc, wc = index.window(h, w)
    flat = boundary.reshape(*boundary.shape[:-2], h * w)
    groups, order = _path_gather(index, h, w, boundary.device)
    out = []
    for gather in groups:  # (D_L, L, hc * wc) flat positions
        values = flat[..., gather.reshape(-1)].reshape(*flat.shape[:-1], *gather.shape)
        out.append(1 - values.max(-2).values)
    return torch.cat(out, -2).index_select(-2, order).reshape(*flat.shape[:-1], len(index.paths), hc, wc)


@lru_cache(maxsize=32)
def _path_gather(index: PathIndex, h: int, w: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat positions of every path pixel of every source of the window, grouped by path length,
    and the order that puts the concatenated groups back in ``index.paths`` order."""
    hc, wc = index.window(h, w)
    m = index.margin
    base = (torch.arange(hc)[:, None] * w + m + torch.arange(wc)[None, :]).reshape(-1)
    by_length: dict[int, list[int]] = {}
    for i, path in enumerate(index.paths):
        by_length.setdefault(len(path), []).append(i)
    groups, placed = [], []
    for length in sorted(by_length):
        ids = by_length[length]
        offsets = torch.tensor([[py * w + px for py, px in index.paths[i]] for i in ids])
        groups.append((offsets[:, :, None] + base[None, None, :]).to(device))
        placed.extend(ids)
    order = torch.empty(len(placed), dtype=torch.long)
    order[torch.tensor(placed)] = torch.arange(len(placed))
    return groups, order.to(device)


def boundary_loss(
    affinity: torch.Tensor,
    bg_pos: torch.Tensor,
    fg_pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    counts: Sequence[torch.Tensor | float] | None = None,
) -> dict[str, torch.Tensor]:
    """IRNet's class-boundary loss, as IRN's ``train_irn.py`` computes it.

    ``bg = sum(-bg_pos log(aff + 1e-5)) / (sum(bg_pos) + 1e-5)``, ``fg`` likewise,
    ``neg = sum(-neg log(1 + 1e-5 - aff)) / (sum(neg) + 1e-5)``, sums over the whole batch;
    ``loss = (bg / 2 + fg / 2 + neg) / 2``.

    The IRNet paper writes ``bg / 2 + fg / 2 + neg``; IRN's code halves it once more
    (``total_loss = (pos_aff_loss + neg_aff_loss) / 2 + displacement terms``). This follows the
    code, for which lr 0.1 was tuned; the displacement terms belong to the instance branch.

    ``counts``: the three denominators' label totals, default ``(sum(bg_pos), sum(fg_pos),
    sum(neg))``. Under DDP pass the totals over all processes (and scale the loss by the process
    count) so that the averaged gradient is the single-process one.

    Returns ``{"loss", "bg", "fg", "neg"}`` (scalars; only ``loss`` is meant for backward).
    """
    if counts is None:
        counts = (bg_pos.sum(), fg_pos.sum(), neg.sum())
    bg = torch.sum(-bg_pos * torch.log(affinity + 1e-5)) / (counts[0] + 1e-5)
    fg = torch.sum(-fg_pos * torch.log(affinity + 1e-5)) / (counts[1] + 1e-5)
    ng = torch.sum(-neg * torch.log(1 + 1e-5 - affinity)) / (counts[2] + 1e-5)
    return {"loss": (bg / 2 + fg / 2 + ng) / 2, "bg": bg.detach(), "fg": fg.detach(), "neg": ng.detach()}


@torch.no_grad()
def infer_boundary(
    net: BoundaryNet, image: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = True, pad: int = 0
) -> torch.Tensor:
    """Class-boundary map of one image, as IRN's ``make_sem_seg_labels`` makes it.

    ``image``: ``(H, W, 3)`` uint8 RGB. Per scale (IRN: 1.0 only) the image (cubic resize) and,
    with ``flip``, its mirror are run; logits are averaged (the mirror's flipped back), resized to
    the stride-4 size if the scale is not 1, averaged over scales, then squashed by a sigmoid.
    Returns ``(ceil(H / 4), ceil(W / 4))`` float32 in [0, 1] on the net's device, the ``boundary``
    of :func:`wsss.pseudo.random_walk.propagate`. The net is put in eval mode.

    ``pad``: as IRN's ``EdgeDisplacement`` (``crop_size`` 512, its training crop), the normalised
    image and its mirror are zero-padded on the right and bottom to ``pad x pad`` before the net
    and the logits cropped back, so GroupNorm sees what it saw in training; a side already longer
    than ``pad`` is left as it is (IRN's negative padding would crop the image). 0: no padding.
    """
    return infer_boundary_batch(net, [image], scales=scales, flip=flip, pad=pad)[0]


def infer_boundary_batch(
    net: BoundaryNet, images: Sequence[np.ndarray], *, scales: Sequence[float] = (1.0,), flip: bool = True,
    pad: int = 0, amp: bool = False,
) -> torch.Tensor:
    """:func:`infer_boundary` of several images of one size in one forward per scale (with
    ``flip``, the images and their mirrors: a batch of 2B) -> ``(B, ceil(H / 4), ceil(W / 4))``.
    The backbone is frozen in eval mode and the head uses GroupNorm, so each image's map is the one
    it gets alone (to float round-off). ``amp``: the forwards under autocast
    (:mod:`wsss.engine.precision`); the logits are averaged in float32."""
    if net.training:  # eval() walks every module: a tenth of a 128 px image's inference time
        net.eval()
    device = next(net.parameters()).device
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("infer_boundary_batch needs images of one size")
    n = len(images)
    size = (math.ceil(h / 4), math.ceil(w / 4))
    total = torch.zeros((n,) + size, device=device)
    for scale in scales:
        scaled = list(images)
        if scale != 1.0:
            dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
            scaled = [cv2.resize(im, dsize, interpolation=cv2.INTER_CUBIC) for im in images]
        x = torch.from_numpy(np.stack([normalize(np.ascontiguousarray(im)) for im in scaled])).to(device)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        hs, ws = x.shape[-2:]
        if pad:
            x = F.pad(x, [0, max(0, pad - ws), 0, max(0, pad - hs)])
        with inference_autocast(device, amp):
            logits = net(x).float()[..., : math.ceil(hs / 4), : math.ceil(ws / 4)]
        logit = (logits[:n] + logits[n:].flip(-1)) / 2 if flip else logits
        if tuple(logit.shape[-2:]) != size:
            logit = F.interpolate(logit, size, mode="bilinear", align_corners=False)
        total += logit[:, 0]
    return torch.sigmoid(total / len(scales))


__all__ = [
    "TAPS",
    "TAP_STRIDES",
    "BoundaryNet",
    "PathIndex",
    "affinity_labels",
    "boundary_loss",
    "edge_to_affinity",
    "infer_boundary",
    "path_index",
]
