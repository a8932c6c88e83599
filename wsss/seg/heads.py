"""Segmentation heads on the stride-8 ``layer4`` map of a dilated ResNet.

Contract (what :class:`wsss.seg.model.Segmenter` relies on):

* ``Head(in_channels=..., num_classes=..., **options)``, built by name from :data:`HEADS`;
* ``forward(x)``, ``x`` = ``(B, in_channels, h, w)``, returns a dict with
  ``logits`` ``(B, K, h, w)`` and any extra outputs; the extra per-pixel logits at
  feature resolution are named in ``dense_outputs`` (the segmenter upsamples them);
* ``loss_weights``: weight of the main cross entropy (``seg``) and of each extra
  term the segmenter computes for this head (``coarse`` for ACF, ``focal`` for PCAA).

Heads: ``fcn`` (PCAA Table 3 baseline), ``deeplabv2`` (ASPP of DeepLab v2),
``pcaa`` (PCAA Sec. 3), ``acf`` (ACFNet Sec. 3), ``psa`` (PSANet Sec. 3).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from wsss.partial import pad_to_multiple  # noqa: F401  (re-exported: its home was this module)
from wsss.registry import Registry
from wsss.seg.psamask import psamask

HeadType = TypeVar("HeadType", bound=type[nn.Module])

HEADS: Registry = Registry("head")


def register_head(name: str) -> Callable[[HeadType], HeadType]:
    """Class decorator adding a head to :data:`HEADS` under ``name``."""

    return HEADS.register(name)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN + ReLU; padding keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def classifier(in_channels: int, num_classes: int, dropout: float = 0.1) -> nn.Sequential:
    """Dropout2d + 1x1 conv to class logits, weights N(0, 0.01) as in mmseg's decode heads."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


class _Head(nn.Module):
    dense_outputs: tuple[str, ...] = ()
    loss_weights: dict[str, float] = {"seg": 1.0}


@register_head("fcn")
class FCNHead(_Head):
    """FCN head: ``num_convs`` 3x3 conv blocks, optionally the input concatenated
    back and fused by one more 3x3 block, then the classifier.

    With the defaults it is the baseline of PCAA Table 3 (the PCAA network without
    its module: 3x3 to 512, 3x3 512 -> 512, concat with the input, 3x3 to 512);
    ``num_convs=1, concat_input=False`` is the auxiliary head on ``layer3``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.convs = nn.Sequential(
            *[conv_bn_relu(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        )
        self.fuse = conv_bn_relu(in_channels + channels, channels, 3) if concat_input else None
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, C_in, h, w) -> ``logits`` (B, K, h, w)."""
        y = self.convs(x)
        if self.fuse is not None:
            y = self.fuse(torch.cat([x, y], dim=1))
        return {"logits": self.cls(y)}


@register_head("deeplabv2")
class DeepLabV2Head(_Head):
    """ASPP of DeepLab v2 (ResNet version): four parallel 3x3 convs straight to
    class logits with dilations 6, 12, 18, 24, summed. It has no hidden layer,
    hence no ``channels``. Weights N(0, 0.01) as in DeepLab."""

    def __init__(self, *, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, C_in, h, w) -> ``logits`` (B, K, h, w)."""
        return {"logits": sum(branch(x) for branch in self.branches)}


class PCAA(nn.Module):
    """Partial class activation attention, PCAA Sec. 3.1-3.3 (Eq. 3, 5-9).

    Shapes: ``C`` channels, ``K`` classes, ``S x S`` patches of ``N = h' w'`` pixels.

    * partial CAM (Eq. 1, 3): ``A = Conv1x1(Dropout2d(X))`` (B, K, H, W); patch
      logits ``AvgPool_S(A)`` (B, K, S, S); scores ``S_c = sigmoid(patch logits)``
      (pool first, as the reference code; Eq. 3 reads the same);
    * local centres (Eq. 5): per patch and class, softmax of ``A`` over the
      patch's pixels, weighted sum of ``X``, times the patch score: (B, S², K, C);
    * graph convolution unit (Eq. 6): bias-free 1x1 conv across the S² patches
      + residual + ReLU, then a bias-free ``Linear(C, C)``: ``F_l`` (B, S², K, C);
    * global centres (Eq. 7): ``F_g = ReLU(sum_i f_i F_l^(i) + b)`` (B, K, C), a
      1x1 conv S² -> 1 with bias followed by ReLU as in the reference code;
    * attention (Eq. 8-9): ``P = softmax_K(W_q X . W_k F_l^T)`` per patch, with no
      ``1/sqrt(d)`` scaling (reference code), ``X_out = P . W_v F_g``; the
      projections halve the channels (Sec. 3.3);
    * output: 1x1 conv C/2 -> C + BN + ReLU, added to the input.

    A map whose sides are not multiples of S is padded at the bottom and right
    by replicating its last row and column, then cropped back. Replicated
    pixels are copies of real ones, so every patch (even one made only of
    padding) holds real features and nothing needs masking: the border pixels
    just count more in their patch's pool and softmax. :func:`patch_labels`
    pads the label map the same way, so patch scores and patch labels cover the
    same pixels.
    """

    def __init__(self, channels: int, num_classes: int, pool_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = pool_size
        patches = pool_size * pool_size
        self.cam = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
        self.gcu_node = nn.Conv1d(patches, patches, 1, bias=False)
        self.gcu_channel = nn.Linear(channels, channels, bias=False)
        self.global_fuse = nn.Conv1d(patches, 1, 1)
        self.query = nn.Linear(channels, channels // 2)
        self.key = nn.Linear(channels, channels // 2)
        self.value = nn.Linear(channels, channels // 2)
        self.out = conv_bn_relu(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, H, W) -> (``x + out`` (B, C, H, W), patch logits (B, K, S, S))."""
        b, c, height, width = x.shape
        s = self.pool_size
        xp = pad_to_multiple(x, s)
        hp, wp = xp.shape[-2:]
        ph, pw = hp // s, wp // s
        logits = self.cam(xp)
        k = logits.shape[1]
        patch_logits = logits.view(b, k, s, ph, s, pw).mean(dim=(3, 5))
        scores = torch.sigmoid(patch_logits).permute(0, 2, 3, 1).reshape(b, s * s, k, 1)

        pixels = _split_patches(xp, s)  # (B, S², N, C)
        weights = torch.softmax(_split_patches(logits, s), dim=2)  # (B, S², N, K), softmax over N
        local = scores * (weights.transpose(2, 3) @ pixels)  # Eq. 5: (B, S², K, C)

        nodes = local.reshape(b, s * s, k * c)
        nodes = F.relu(nodes + self.gcu_node(nodes))
        local = self.gcu_channel(nodes.view(b, s * s, k, c))  # Eq. 6
        centers = F.relu(self.global_fuse(local.reshape(b, s * s, k * c))).view(b, k, c)  # Eq. 7

        attention = torch.softmax(self.query(pixels) @ self.key(local).transpose(2, 3), dim=3)  # Eq. 8
        out = attention @ self.value(centers)[:, None]  # Eq. 9: (B, S², N, C/2)
        out = _merge_patches(out, s, ph, pw)[:, :, :height, :width]
        return x + self.out(out), patch_logits


def _split_patches(x: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, S h, S w) -> (B, S², h w, C), patches in row-major order."""
    b, c, height, width = x.shape
    x = x.view(b, c, s, height // s, s, width // s)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, s * s, (height // s) * (width // s), c)


def _merge_patches(x: torch.Tensor, s: int, ph: int, pw: int) -> torch.Tensor:
    """Inverse of :func:`_split_patches`: (B, S², ph pw, C) -> (B, C, S ph, S pw)."""
    b, _, _, c = x.shape
    x = x.view(b, s, s, ph, pw, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, s * ph, s * pw)


@register_head("pcaa")
class PCAAHead(_Head):
    """The PCAA network of Sec. 3.3 after the backbone: 3x3 conv to ``channels``,
    one PCAA module per pool size (Table 1's ``S = 4, 8`` stacks two, coarse
    first), 3x3 conv, concat with the backbone map, 3x3 conv to ``channels``,
    classifier.

    Outputs ``logits`` (B, K, h, w) and ``patch_logits``: one (B, K, S, S) tensor
    per module, before the sigmoid; the focal loss on ``sigmoid(patch_logits)``
    (Eq. 10, weight 1, summed over modules) is computed by the segmenter.
    """

    loss_weights = {"seg": 1.0, "focal": 1.0}

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        pool_sizes: int | Sequence[int] = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pool_sizes = (pool_sizes,) if isinstance(pool_sizes, int) else tuple(pool_sizes)
        if not self.pool_sizes:
            raise ValueError("pool_sizes must name at least one pool size")
        self.reduce = conv_bn_relu(in_channels, channels, 3)
        self.pcaa = nn.ModuleList(PCAA(channels, num_classes, s) for s in self.pool_sizes)
        self.post = conv_bn_relu(channels, channels, 3)
        self.fuse = conv_bn_relu(in_channels + channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``x`` (B, C_in, h, w) -> ``logits`` (B, K, h, w), ``patch_logits`` [(B, K, S, S)]."""
        y = self.reduce(x)
        patch_logits = []
        for module in self.pcaa:
            y, scores = module(y)
            patch_logits.append(scores)
        y = self.fuse(torch.cat([x, self.post(y)], dim=1))
        return {"logits": self.cls(y), "patch_logits": patch_logits}


class ClassAttention(nn.Module):
    """ACF module, ACFNet Sec. 3.1: class centre block (Eq. 2) + class attention
    block (Eq. 3) + 1x1 refinement.

    The weights are the coarse segmentation's softmax probabilities over classes,
    as the paper writes (not a softmax of raw logits over pixels, as some
    unofficial ports do). ``C'`` = ``center_channels``.
    """

    def __init__(self, channels: int, center_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(channels, center_channels, 1)
        self.refine = conv_bn_relu(center_channels, channels, 1)
        self.eps = eps

    def forward(self, features: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        """``features`` (B, C, h, w), ``coarse_logits`` (B, K, h, w) -> attentional class feature (B, C, h, w)."""
        b, _, height, width = features.shape
        probs = torch.softmax(coarse_logits, dim=1).flatten(2)  # P_coarse (B, K, hw)
        reduced = self.reduce(features).flatten(2)  # F' (B, C', hw)
        centers = class_centers(reduced, probs, self.eps)  # Eq. 2: (B, K, C')
        attended = (probs.transpose(1, 2) @ centers).transpose(1, 2)  # Eq. 3: (B, C', hw)
        return self.refine(attended.reshape(b, -1, height, width))


def class_centers(features: torch.Tensor, probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Class centres, ACFNet Eq. 2: ``F_class^i = sum_j P^{i,j} F'_j / sum_j P^{i,j}``.

    ``features`` (B, C', N), ``probs`` (B, K, N) -> (B, K, C'). ``eps`` keeps a class
    with (numerically) zero probability everywhere finite.
    """
    return (probs @ features.transpose(1, 2)) / (probs.sum(dim=2, keepdim=True) + eps)


class ASPP(nn.Module):
    """ACFNet's ASPP (Sec. 4.1, "Baseline Network with ASPP"): four parallel branches on the
    backbone's map, a 1x1 conv block and three 3x3 conv blocks at dilations 12, 24 and 36 (DeepLab
    v3's rates at output stride 8), each to ``channels`` (ACFNet: 512, where DeepLab v3 has 256),
    concatenated and fused back to ``channels`` by a 1x1 conv block, as DeepLab v3 projects its
    concatenation (ACFNet keeps the original design but for the width). Without DeepLab v3's
    image-pooling branch: the paper lists the four branches only."""

    def __init__(self, in_channels: int, channels: int, dilations: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)] + [conv_bn_relu(in_channels, channels, 3, d) for d in dilations]
        )
        self.project = conv_bn_relu(len(self.branches) * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, h, w) -> (B, channels, h, w)."""
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


ACF_BASES = ("conv", "aspp")


@register_head("acf")
class ACFHead(_Head):
    """ACFNet head (Sec. 3.2) on its base network: ``base="conv"`` (the plain dilated ResNet,
    Sec. 4.1, Tab. 1) takes a 3x3 conv to ``channels`` (512) as the base feature map;
    ``base="aspp"`` (ResNet + ASPP, Sec. 4.1 / 4.4, Tab. 2 and the test-set row) takes
    :class:`ASPP`'s output instead. Then the coarse classifier, the ACF module, concat with the
    base features, 1x1 conv block and the fine classifier. Loss weights coarse 0.6, fine 0.7
    (Sec. 4.2; aux 0.4 is the segmenter's).

    ``center_channels``: C', the width of the class centres (Eq. 1's channel reduction); default
    ``channels // 2``. Sec. 4.1 sets the module's input and output to 512 and leaves C' open;
    the Cityscapes presets use 512 (``configs/cityscapes_acfnet_r101*.yaml``)."""

    dense_outputs = ("coarse",)
    loss_weights = {"seg": 0.7, "coarse": 0.6}

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        center_channels: int | None = None,
        base: str = "conv",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if base not in ACF_BASES:
            raise ValueError(f"base must be 'conv' or 'aspp', got {base!r}")
        self.reduce = conv_bn_relu(in_channels, channels, 3) if base == "conv" else ASPP(in_channels, channels)
        self.coarse = classifier(channels, num_classes, dropout)
        self.acf = ClassAttention(channels, center_channels or channels // 2)
        self.fuse = conv_bn_relu(2 * channels, channels, 1)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, C_in, h, w) -> ``logits`` (fine) and ``coarse``, both (B, K, h, w)."""
        features = self.reduce(x)
        coarse = self.coarse(features)
        y = self.fuse(torch.cat([features, self.acf(features, coarse)], dim=1))
        return {"logits": self.cls(y), "coarse": coarse}


PSA_OUTSIDE = ("excluded", "zero")


class PSABranch(nn.Module):
    """One PSANet branch (Sec. 3.3): 1x1 reduce + BN + ReLU, shrink, 1x1 adapt +
    BN + ReLU, 1x1 to the ``hm * wm`` mask channels, :func:`psamask`, softmax,
    aggregation of the reduced features (Eq. 8).

    ``outside``: the pairs beyond the mask window (only when the map is larger than the window,
    e.g. whole-image inference on a map bigger than the training crop's): ``excluded`` gives them
    no weight in the softmax (the default); ``zero`` lets them in with score 0, as semseg's
    PSANet does (its psamask leaves them 0 before the softmax)."""

    def __init__(
        self, in_channels: int, channels: int, mask_size: tuple[int, int], mode: str, shrink: int,
        outside: str = "excluded",
    ) -> None:
        super().__init__()
        if outside not in PSA_OUTSIDE:
            raise ValueError(f"outside must be one of {', '.join(PSA_OUTSIDE)}, got {outside!r}")
        self.fill = float("-inf") if outside == "excluded" else 0.0
        self.mode = mode
        self.mask_size = mask_size
        self.shrink = shrink
        self.reduce = conv_bn_relu(in_channels, channels, 1)
        self.attention = nn.Sequential(
            conv_bn_relu(channels, channels, 1), nn.Conv2d(channels, mask_size[0] * mask_size[1], 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) -> aggregated features (B, C, ceil(H/shrink), ceil(W/shrink))."""
        x = self.reduce(x)
        if self.shrink > 1:
            height, width = x.shape[-2:]
            size = ((height - 1) // self.shrink + 1, (width - 1) // self.shrink + 1)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        b, c, height, width = x.shape
        # -inf: pairs outside a (smaller than over-complete) window get no weight; 0: semseg's.
        a = psamask(self.attention(x), self.mode, mask_size=self.mask_size, fill=self.fill)
        # Eq. 8's 1/N: a softmax over the positions each output aggregates from.
        a = torch.softmax(a, dim=1)
        return (x.flatten(2) @ a).view(b, c, height, width)


class PSAModule(nn.Module):
    """PSA module, PSANet Sec. 3.2-3.3: collect and distribute branches
    concatenated, 1x1 conv + BN + ReLU back to ``in_channels``, grown back to the
    input size. Returns the context map only; the head concatenates it with
    the input."""

    def __init__(
        self, in_channels: int, channels: int, mask_size: tuple[int, int], shrink: int = 2, outside: str = "excluded",
    ) -> None:
        super().__init__()
        self.collect = PSABranch(in_channels, channels, mask_size, "collect", shrink, outside)
        self.distribute = PSABranch(in_channels, channels, mask_size, "distribute", shrink, outside)
        self.project = conv_bn_relu(2 * channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W) -> context (B, C_in, H, W)."""
        y = self.project(torch.cat([self.collect(x), self.distribute(x)], dim=1))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return y


@register_head("psa")
class PSAHead(_Head):
    """PSANet head (Sec. 3.4): PSA module, concat with the input, 3x3 conv to
    ``channels``, classifier.

    ``mask_size`` is fixed when the model is built, since it sets the number of
    mask channels: PSANet uses the over-complete size of the training crop's
    shrunken map, 63 for a 512 crop (stride 8 -> 64, shrink 2 -> 32, 2*32 - 1),
    95 for 768. On larger maps pairs beyond the window get no attention (``outside="zero"``:
    a score of 0, semseg's behaviour); on smaller ones the unused part of the mask is ignored. Only over-complete
    masks are implemented (PSANet's "compact" ablation is not).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        mask_size: int | tuple[int, int] = 63,
        shrink: int = 2,
        dropout: float = 0.1,
        outside: str = "excluded",
    ) -> None:
        super().__init__()
        mask_size = (mask_size, mask_size) if isinstance(mask_size, int) else tuple(mask_size)
        self.psa = PSAModule(in_channels, channels, mask_size, shrink, outside)
        self.fuse = conv_bn_relu(2 * in_channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, C_in, h, w) -> ``logits`` (B, K, h, w)."""
        return {"logits": self.cls(self.fuse(torch.cat([x, self.psa(x)], dim=1)))}


__all__ = [
    "ACFHead",
    "ClassAttention",
    "DeepLabV2Head",
    "FCNHead",
    "HEADS",
    "PCAA",
    "PCAAHead",
    "PSAHead",
    "PSAModule",
    "class_centers",
    "pad_to_multiple",
    "register_head",
]
