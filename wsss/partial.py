"""PCAA's partial-CAM pieces shared by the classifier (``train-cls --partial-pool``, PCAA Eq. 3-4)
and the segmenter (PCAA Sec. 3.3, Eq. 10): the patch labels, the focal loss on the patch scores and
the replication padding that makes a map divisible into S x S patches."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the last two dims at the bottom/right to multiples of ``multiple`` by
    replicating the last row/column; any dtype (labels included)."""
    height, width = x.shape[-2:]
    hp, wp = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    if (hp, wp) == (height, width):
        return x
    rows = torch.arange(hp, device=x.device).clamp(max=height - 1)
    cols = torch.arange(wp, device=x.device).clamp(max=width - 1)
    return x[..., rows[:, None], cols]


def patch_labels(
    target: torch.Tensor,
    num_classes: int,
    pool_size: int,
    *,
    stride: int = 1,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Patch labels of the partial CAM, PCAA Eq. 4 with the reference code's rule.

    The one-hot label map is average-pooled to ``S x S`` patches; class ``c`` is
    positive in a patch where its fraction of the patch's pixels is above
    ``threshold`` (0: any pixel). Void pixels count toward the area and toward no
    class, so they dilute every fraction, and an all-void patch is negative for
    every class. With ``threshold=0`` this is Eq. 4's max pooling. Any label
    outside ``0 .. K-1`` (255) is void.

    ``target`` (B, H, W) -> (B, K, S, S) float 0/1. ``stride``: output stride of
    the feature map the patch scores come from; the label map is padded at the
    bottom/right by replicating its last row/column to ``S * stride * ceil(H /
    (S * stride))``, which is where :class:`wsss.seg.heads.PCAA` puts its padded
    feature pixels, so labels and scores cover the same pixels. Sizes that are
    multiples of ``S * stride`` (a 512 crop, S = 4 or 8, stride 8) are not padded.
    """
    target = pad_to_multiple(target, pool_size * stride)
    batch, height, width = target.shape
    ph, pw = height // pool_size, width // pool_size
    cls = torch.where((target >= 0) & (target < num_classes), target, num_classes).long()
    rows = torch.arange(height, device=target.device) // ph
    cols = torch.arange(width, device=target.device) // pw
    patch = rows[:, None] * pool_size + cols[None, :]  # (H, W)
    patches = pool_size * pool_size
    batch_offset = torch.arange(batch, device=target.device)[:, None, None] * patches
    # One count per (image, patch, class or void): no (B, K, H, W) one-hot needed.
    ids = ((batch_offset + patch) * (num_classes + 1) + cls).flatten()
    counts = torch.bincount(ids, minlength=batch * patches * (num_classes + 1))
    fractions = counts.view(batch, pool_size, pool_size, num_classes + 1)[..., :num_classes] / (ph * pw)
    return (fractions > threshold).permute(0, 3, 1, 2).float()


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss ``-(1 - p_t)^gamma log p_t`` on ``p = sigmoid(logits)``, mean over all
    entries (no alpha balancing: PCAA gives none). ``logits``, ``labels`` same shape, labels 0/1."""
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce).mean()
