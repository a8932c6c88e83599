"""Segmentation networks for ``wsss train-seg``: dilated ResNet + head + auxiliary FCN head, and their losses.

``build_segmenter("pcaa", "resnet50_v1c", 21, pretrained="resnet50_v1c.pth")`` builds
the PCAA network of PCAA Sec. 3.3; the other heads (``fcn``, ``deeplabv2``,
``acf``, ``psa``) sit on the same output-stride-8 backbone with the same
auxiliary head on ``layer3`` (PSPNet's deep supervision, used by all three papers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.base import read_class_names
from wsss.engine.loop import load_run
from wsss.engine.optim import GroupSpec
from wsss.io import IGNORE_INDEX
from wsss.seg.config import CLASS_NAMES_FILE, TrainSegConfig
from wsss.partial import patch_labels, sigmoid_focal_loss  # noqa: F401  (re-exported: their home was this module)
from wsss.seg.heads import HEADS, FCNHead


class Segmenter(nn.Module):
    """``backbone`` (output stride 8) -> ``head`` on ``layer4``, ``aux_head`` on ``layer3``.

    ``forward(x)``, ``x`` (B, 3, H, W) of any size, returns

    * ``out``: (B, K, H, W) logits, bilinearly upsampled (``align_corners=False``);
    * ``aux``: (B, K, H, W) logits of the auxiliary head (also in eval mode);
    * the head's extra outputs: its ``dense_outputs`` upsampled like ``out``
      (ACF's ``coarse``), the others as they are (PCAA's ``patch_logits``).

    Args:
        backbone: returns a dict with ``layer3`` and ``layer4``; ``output_stride``
            says how far ``layer4`` is reduced (PCAA's patch labels need it).
        head: a head of :data:`wsss.seg.heads.HEADS`.
        aux_head: a head on ``layer3``, or None for no auxiliary loss.
        aux_weight: weight of the auxiliary cross entropy (0.4 in all three papers).
        ignore_index: label of void pixels, skipped by every loss.
        patch_label_min_frac: PCAA's patch labels mark a class positive in a patch where it covers
            more than this fraction of it (:func:`patch_labels`): 0, the default, is the paper's
            Eq. 4 (any pixel); the official code uses 0.01.
        focal_reduction: how the focal terms of stacked PCAA modules combine: ``sum`` (the paper's
            Eq. 10, the default) or ``mean`` (the official code).
        class_weights: per-class weights of every cross-entropy term (ACFNet's "class-balanced
            cross entropy", Sec. 3.3); None = unweighted (PCAA, PSANet, FCN, DeepLab).
        ohem_thresh / ohem_min_kept: online bootstrapping of hard pixels (ACFNet Sec. 4.3:
            theta 0.7, K 100,000; mmseg's ``OHEMPixelSampler``): the cross entropies average over
            the labelled pixels whose softmax probability of their class is at most ``ohem_thresh``,
            and over at least the ``ohem_min_kept`` hardest ones; 0 = off (every labelled pixel).
        msc_scales: multi-scale inputs as the DeepLab v2 code AD-CAM and IRN train with
            (deeplab-pytorch's ``MSC``, scales 0.5 and 0.75): the head's logits of the image and
            of the image resized bilinearly by each scale, the pixel-wise max of them all (brought
            to the image's logit size, bilinear). Training: ``seg`` is the sum of the cross
            entropies of each of these logit maps at its own size, against the labels resized
            to it by nearest neighbour (PIL's rule); ``out`` is the max's. Inference: ``out`` is
            the max, upsampled. None / empty = off.
        freeze_bn: the backbone's batch norms stay in eval mode with their ImageNet statistics and
            affine weights untrained (deeplab-pytorch's ``freeze_bn``, which AD-CAM's and IRN's
            DeepLab v2 uses); off = trained (PCAA, ACFNet, PSANet).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        patch_label_min_frac: float = 0.0,
        focal_reduction: str = "sum",
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float = 0.0,
        ohem_min_kept: int = 100000,
        msc_scales: Sequence[float] | None = None,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if msc_scales and any(not 0 < s for s in msc_scales):
            raise ValueError(f"msc_scales must be positive, got {list(msc_scales)}")
        if not 0.0 <= ohem_thresh <= 1.0:
            raise ValueError(f"ohem_thresh must be in [0, 1] (0 = off; ACFNet: 0.7), got {ohem_thresh}")
        if ohem_min_kept < 0:
            raise ValueError(f"ohem_min_kept must be >= 0, got {ohem_min_kept}")
        if class_weights is not None and (len(class_weights) == 0 or min(class_weights) < 0):
            raise ValueError(f"class_weights must be one non-negative weight per class, got {list(class_weights)}")
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32),
            persistent=False,
        )
        if focal_reduction not in ("sum", "mean"):
            raise ValueError(f"focal_reduction must be 'sum' (PCAA Eq. 10) or 'mean' (its code), got {focal_reduction!r}")
        if not 0.0 <= patch_label_min_frac < 1.0:
            raise ValueError(f"patch_label_min_frac must be in [0, 1), got {patch_label_min_frac}")
        self.patch_label_min_frac = patch_label_min_frac
        self.focal_reduction = focal_reduction
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.msc_scales = tuple(msc_scales or ())
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
                    m.eval()

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.freeze_bn:  # the backbone's statistics stay the pretrained ones
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _msc_logits(self, x: torch.Tensor, logits: torch.Tensor) -> list[torch.Tensor]:
        """deeplab-pytorch's MSC: [the image's logits, each scale's, their pixel-wise max]."""
        pyramid = [self.head(self.backbone(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                             ["layer4"])["logits"] for s in self.msc_scales]
        fused = torch.stack([logits] + [_upsample(p, logits.shape[-2:]) for p in pyramid]).max(dim=0).values
        return [logits] + pyramid + [fused]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features = self.backbone(x)
        outputs = dict(self.head(features["layer4"]))
        size = x.shape[-2:]
        logits = outputs.pop("logits")
        if self.msc_scales:
            msc = self._msc_logits(x, logits)
            logits = msc[-1]
            if self.training:
                outputs["msc"] = msc
        result = {"out": _upsample(logits, size)}
        if self.aux_head is not None:
            result["aux"] = _upsample(self.aux_head(features["layer3"])["logits"], size)
        for key in getattr(self.head, "dense_outputs", ()):
            result[key] = _upsample(outputs.pop(key), size)
        result.update(outputs)
        return result

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each loss term: the head's (``seg``, ``coarse``, ``focal``) and ``aux``."""
        weights = dict(getattr(self.head, "loss_weights", {"seg": 1.0}))
        if self.aux_head is not None:
            weights["aux"] = self.aux_weight
        return weights

    def loss(self, outputs: dict, target: torch.Tensor, pixel_count: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        """Total training loss of the head's paper.

        ``outputs``: what :meth:`forward` returned; ``target``: (B, H, W) int labels
        at the input size, ``ignore_index`` for void. ``pixel_count``: what the cross-entropy
        terms divide their sums by instead of this batch's labelled-pixel count; under torchrun
        the global batch's count divided by the number of processes, so that DDP's average over
        processes is the mean over the global batch's pixels. With OHEM or class weights each
        process keeps its own mean over its kept (weighted) pixels, as the reference code does per
        GPU, and ``pixel_count`` is not used.

        Terms (unweighted; ``loss`` is their sum weighted by :attr:`loss_weights`):
        ``seg`` cross entropy of ``out``; ``aux`` of ``aux``; ``coarse`` of ACF's
        coarse logits (ACFNet Eq. 4: fine 0.7, coarse 0.6, aux 0.4; class-balanced with
        ``class_weights``, bootstrapped with ``ohem_thresh``); ``focal``: PCAA's focal loss (gamma 2) on
        the sigmoid patch scores against :func:`patch_labels`, summed over the
        stacked modules (PCAA Eq. 10: 1, 0.4, 1; ``focal_reduction="mean"`` averages them).
        """
        if target.shape[-2:] != outputs["out"].shape[-2:]:
            raise ValueError(
                f"target is {tuple(target.shape[-2:])} but the logits are {tuple(outputs['out'].shape[-2:])}: "
                "give the labels of the input crop, at its size"
            )
        weights = self.loss_weights
        if self.class_weights is not None and self.class_weights.numel() != outputs["out"].shape[1]:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} entries but the model predicts "
                f"{outputs['out'].shape[1]} classes: give one weight per class, background first"
            )
        ce = {"weight": self.class_weights, "ohem_thresh": self.ohem_thresh, "ohem_min_kept": self.ohem_min_kept}
        if self.class_weights is None and self.ohem_thresh == 0:
            ce = {"count": pixel_count}
        if "msc" in outputs:  # each scale's logits at their own size, labels resized to them (nearest);
            # pixel_count counts full-size labels, so each term is this process's own mean
            own = {k: v for k, v in ce.items() if k != "count"}
            terms = {"seg": sum(cross_entropy(logits, _nearest_labels(target, logits.shape[-2:]), self.ignore_index,
                                              **own) for logits in outputs["msc"])}
        else:
            terms = {"seg": cross_entropy(outputs["out"], target, self.ignore_index, **ce)}
        if "aux" in weights:
            terms["aux"] = cross_entropy(outputs["aux"], target, self.ignore_index, **ce)
        if "coarse" in weights:
            terms["coarse"] = cross_entropy(outputs["coarse"], target, self.ignore_index, **ce)
        if "focal" in weights:
            num_classes = outputs["out"].shape[1]
            focal = [
                sigmoid_focal_loss(
                    logits,
                    patch_labels(target, num_classes, logits.shape[-1], stride=self.backbone.output_stride,
                                 threshold=self.patch_label_min_frac),
                )
                for logits in outputs["patch_logits"]
            ]
            terms["focal"] = sum(focal) / (len(focal) if self.focal_reduction == "mean" else 1)
        terms["loss"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float = 1.0, **_) -> list[GroupSpec]:
        """Backbone at ``lr``, heads at ``lr * head_lr_mult`` (1 in PCAA's recipe), both poly."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for m in (self.head, self.aux_head) if m is not None for p in m.parameters() if p.requires_grad]
        return [
            GroupSpec("backbone", backbone, lr, "poly", weight_decay),
            GroupSpec("head", heads, lr * head_lr_mult, "poly", weight_decay),
        ]


def build_segmenter(
    head: str,
    backbone: str,
    num_classes: int,
    *,
    pretrained: str | None = None,
    aux_weight: float = 0.4,
    contract_dilation: bool = True,
    multi_grid: Sequence[int] | None = None,
    patch_label_min_frac: float = 0.0,
    focal_reduction: str = "sum",
    class_weights: Sequence[float] | None = None,
    ohem_thresh: float = 0.0,
    ohem_min_kept: int = 100000,
    msc_scales: Sequence[float] | None = None,
    freeze_bn: bool = False,
    **head_kwargs,
) -> Segmenter:
    """Build ``backbone`` dilated to output stride 8 (:data:`wsss.models.SEG_OS8`),
    the head registered as ``head`` on ``layer4`` (``head_kwargs`` go to it, e.g.
    ``channels=512``, ``pool_sizes=(4, 8)``, ``mask_size=63``) and the auxiliary
    FCN head on ``layer3`` (one 3x3 conv to a quarter of ``layer3``'s channels:
    1024 -> 256 for ResNet-50, then the classifier).

    ``pretrained``: a local ImageNet checkpoint of the backbone, loaded strictly.
    ``contract_dilation`` / ``multi_grid``: layer3 / layer4 dilation details
    (:class:`wsss.models.resnet.ResNetBackbone`): mmseg's ``-d8`` configs halve the first block's
    dilation (the default); the PCAA repository and semseg keep it full (``contract_dilation=False``).
    ``aux_weight`` 0 builds no auxiliary head (the DeepLab v2 that AD-CAM and IRN train on pseudo
    labels has none). ``class_weights`` / ``ohem_*``: the cross entropy's (:class:`Segmenter`).
    """
    head_class = HEADS.lookup(head)
    from wsss.models import SEG_OS8, build_backbone

    net = build_backbone(backbone, **SEG_OS8, contract_dilation=contract_dilation, multi_grid=multi_grid,
                         pretrained_path=pretrained)
    channels = net.out_channels
    return Segmenter(
        backbone=net,
        head=head_class(in_channels=channels["layer4"], num_classes=num_classes, **head_kwargs),
        aux_head=None if aux_weight == 0 else FCNHead(
            in_channels=channels["layer3"],
            num_classes=num_classes,
            channels=channels["layer3"] // 4,
            num_convs=1,
            concat_input=False,
        ),
        aux_weight=aux_weight,
        patch_label_min_frac=patch_label_min_frac,
        focal_reduction=focal_reduction,
        class_weights=class_weights,
        ohem_thresh=ohem_thresh,
        ohem_min_kept=ohem_min_kept,
        msc_scales=msc_scales,
        freeze_bn=freeze_bn,
    )


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    *,
    weight: torch.Tensor | None = None,
    ohem_thresh: float = 0.0,
    ohem_min_kept: int = 100000,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean pixel cross entropy over non-void pixels; 0 (not NaN) for an all-void batch.
    ``count``: divide the sum by this instead of the number of non-void pixels (no weights or
    OHEM: :meth:`Segmenter.loss` under torchrun).

    ``weight``: per-class weights; the mean is then weighted (divided by the summed weights of
    the pixels' classes, as ``torch.nn.CrossEntropyLoss(weight=...)``). ``ohem_thresh`` > 0:
    only the hard pixels of the batch count, those whose probability of their class is at most
    ``max(ohem_thresh, p_k)``, ``p_k`` the ``ohem_min_kept``-th smallest such probability (all
    of them when fewer pixels are labelled), as the ``OhemCrossEntropy2d`` of the CCNet / OCNet
    code that ACFNet's online bootstrapping follows.
    """
    target = target.long()
    valid = target != ignore_index
    if ohem_thresh > 0:
        with torch.no_grad():
            safe = torch.where(valid, target, 0)
            prob = torch.softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
            prob = prob[valid]
            if prob.numel() > 0:
                keep_below = torch.tensor(ohem_thresh, device=prob.device)
                if ohem_min_kept > 0:
                    k = min(ohem_min_kept, prob.numel())
                    keep_below = torch.maximum(keep_below, prob.kthvalue(k).values)
                hard = torch.zeros_like(valid)
                hard[valid] = prob <= keep_below
                valid = hard
        target = torch.where(valid, target, ignore_index)
    if weight is None:
        total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        if count is not None and ohem_thresh == 0:
            return total / count
        return total / valid.sum().clamp(min=1)
    weight = weight.to(logits.device, logits.dtype)
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / weight[target[valid]].sum().clamp(min=1e-12)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _nearest_labels(target: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(B, H, W) labels resized to ``size`` by nearest neighbour as PIL's ``NEAREST`` does (the
    source pixel under each output pixel's centre: torch's ``nearest-exact``), which
    deeplab-pytorch's ``resize_labels`` uses."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].to(target.dtype)


__all__ = [
    "Segmenter",
    "build_segmenter",
    "cross_entropy",
    "build_from_config",
    "head_kwargs",
    "load_trained_segmenter",
    "patch_labels",
    "sigmoid_focal_loss",
]


def head_kwargs(cfg: TrainSegConfig) -> dict:
    """The head's own options from the flat config."""
    if cfg.head == "pcaa":
        return {"channels": cfg.channels, "pool_sizes": tuple(cfg.pool_sizes)}
    if cfg.head == "psa":
        return {"channels": cfg.channels, "mask_size": cfg.psa_mask_size, "outside": cfg.psa_outside}
    if cfg.head == "acf":
        return {"channels": cfg.channels, "center_channels": cfg.acf_center_channels, "base": cfg.acf_base}
    if cfg.head == "fcn":
        return {"channels": cfg.channels}
    return {}


def build_from_config(cfg: TrainSegConfig, num_classes: int, pretrained: str | None = None) -> Segmenter:
    return build_segmenter(cfg.head, cfg.backbone, num_classes, pretrained=pretrained,
                           contract_dilation=cfg.contract_dilation, multi_grid=cfg.multi_grid,
                           patch_label_min_frac=cfg.patch_label_min_frac, focal_reduction=cfg.focal_reduction,
                           aux_weight=cfg.aux_weight, class_weights=cfg.class_weights, ohem_thresh=cfg.ohem_thresh,
                           ohem_min_kept=cfg.ohem_min_kept, msc_scales=cfg.msc_scales, freeze_bn=cfg.freeze_bn,
                           **head_kwargs(cfg))


def load_trained_segmenter(seg_dir: str | Path, device: torch.device | str = "cpu"):
    """The network a ``train-seg`` run wrote to ``seg_dir`` (strict load), in eval
    mode, and its :class:`~wsss.seg.config.TrainSegConfig`."""
    seg_dir = Path(seg_dir)

    def build(cfg: TrainSegConfig, state: dict) -> tuple[nn.Module, str]:
        names = read_class_names(seg_dir / CLASS_NAMES_FILE) if (seg_dir / CLASS_NAMES_FILE).is_file() else None
        if not names:
            raise FileNotFoundError(f"{seg_dir / CLASS_NAMES_FILE} is missing: the train-seg run did not finish writing")
        return build_from_config(cfg, len(names)), f"a '{cfg.head}' head on '{cfg.backbone}'"

    return load_run(seg_dir, "train-seg", build, TrainSegConfig, device=device)
