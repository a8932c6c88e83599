"""Settings of ``wsss train-seg`` (:class:`TrainSegConfig`), read by training, the model builders and ``wsss predict``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsss.config import TrainRunConfig
from wsss.data import DataConfig

CLASS_NAMES_FILE = "class_names.txt"

CONFIG_IMPLIED = {"acf_base": "conv", "msc_scales": None, "freeze_bn": False}
"""What a train-seg run recorded before a setting existed was trained with, so it resumes
(:func:`~wsss.engine.loop.resumed_config`): ACFNet's plain base network."""


@dataclass
class TrainSegConfig(TrainRunConfig):
    """Settings of ``wsss train-seg``.

    data: training images; ``data.masks`` = the pseudo-mask folder (unset: ground truth).
    val_split: split scored against ground truth (none: no validation).
    head: ``pcaa``, ``acf``, ``psa``, ``fcn`` or ``deeplabv2``. backbone: dilated to output stride 8.
    pretrained: local ImageNet weights of the backbone; none = from scratch.
    channels: the head's width (512 in the papers). pool_sizes: PCAA's S per stacked module.
    psa_mask_size: PSANet's attention window, odd (63 suits crop 512).
    iterations: optimiser steps; the last epoch is cut short to end there.
    batch_size: global batch, split over processes. crop: training crop side, pixels.
    base_size: images are resized to fit (4 base_size, base_size), then by a ratio in scale_range.
    val_every: score the val split every this many epochs (and always at the end).
    """

    data: DataConfig = field(default_factory=DataConfig)
    val_split: str | None = "val"
    head: str = "pcaa"
    backbone: str = "resnet101_v1c"
    pretrained: str | None = None
    # layer3 / layer4 dilations: True halves the first block's (mmseg's -d8 configs, what wsss did
    # before this setting); the PCAA repository and semseg use False. multi_grid: layer4's per-block
    # dilation multipliers (PCAA's ADE20K: [1, 2, 4], dilations 4 / 8 / 16); none = off.
    contract_dilation: bool = True
    multi_grid: tuple[int, ...] | None = None
    # PCAA's loss: a class is positive in a patch where it covers more than this fraction of it (0:
    # the paper's Eq. 4, any pixel; the official code: 0.01); stacked modules' focal terms "sum"
    # (Eq. 10) or "mean" (the official code)
    patch_label_min_frac: float = 0.0
    focal_reduction: Literal["sum", "mean"] = "sum"
    channels: int = 512
    pool_sizes: tuple[int, ...] = (4,)
    psa_mask_size: int = 63
    # PSANet, pairs beyond the attention window (maps larger than the window): "excluded" from the
    # softmax, or "zero", semseg's (they enter it with score 0)
    psa_outside: Literal["excluded", "zero"] = "excluded"
    # ACFNet's class-centre width C' (none: channels // 2; the paper's Cityscapes preset: 512)
    acf_center_channels: int | None = None
    # ACFNet's base network: "conv", the plain dilated ResNet (its Tab. 1), or "aspp", ResNet + ASPP
    # (Tab. 2 and its Cityscapes test-set row)
    acf_base: Literal["conv", "aspp"] = "conv"
    # weight of the auxiliary FCN head's loss on layer3 (0.4 in PCAA, ACFNet, PSANet); 0 builds no
    # auxiliary head (the DeepLab v2 of AD-CAM and IRN)
    aux_weight: float = 0.4
    # per-class cross-entropy weights, background first (ACFNet's class-balanced loss); none = plain
    class_weights: tuple[float, ...] | None = None
    # multi-scale inputs of deeplab-pytorch's DeepLab v2 (AD-CAM's / IRN's Seg): [0.5, 0.75]; the loss
    # sums each scale's and the max's cross entropy at logit resolution (Segmenter); none = off
    msc_scales: tuple[float, ...] | None = None
    # keep the backbone's batch norms frozen at their ImageNet statistics (deeplab-pytorch's DeepLab v2)
    freeze_bn: bool = False
    # online bootstrapping of hard pixels (ACFNet Sec. 4.3: 0.7 and 100,000): the cross entropies
    # average over pixels whose probability of their class is at most ohem_thresh, at least
    # ohem_min_kept of them per process's batch; 0 = off
    ohem_thresh: float = 0.0
    ohem_min_kept: int = 100000
    iterations: int = 20000
    batch_size: int = 16
    crop: int = 512
    base_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    photometric: bool = True
    lr: float = 0.01
    head_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    sync_bn: bool = True
    val_every: int = 1
    # Keep the weights of the best val mIoU among the evaluations in the last this many iterations
    # (PCAA's code: the best of the last 10k) as model.safetensors, the last ones as
    # last.safetensors; 0 = the last weights. Needs val_split.
    keep_best: int = 0
    # and TrainRunConfig's run settings (workers, device, amp, seed, out, save_every, log_every,
    # tensorboard), with this stage's default of:
    out: str = "runs/seg"
