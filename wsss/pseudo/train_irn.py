"""``wsss train-irn``: train IRNet's class-boundary branch on IR labels.

One function, :func:`train_irn`, runs the stage from a :class:`TrainIrnConfig`; the CLI only
builds the config. Inputs: the images of ``data`` and one IR label per image in ``ir_labels``
(``wsss make-pseudo --refine ir-label``). Outputs in ``out``:

* ``config.yaml``: the resolved configuration (read back by :func:`load_boundary_net`);
* ``boundary.safetensors``: the weights of the whole :class:`~wsss.pseudo.irnet.BoundaryNet`
  (frozen backbone included), read by ``make-pseudo --refine irn``;
* ``resume.pt``: everything needed to continue exactly (plain types only);
* ``metrics.jsonl``: one line per log step (loss and its three terms, lr) and per epoch;
* ``done.json``: written last; its presence means the stage is complete.

IRN's recipe (``step/train_irn.py``, ``voc12/dataloader.py: VOC12AffinityDataset``): random
rescale 0.5-1.5 (``imutils.random_scale(..., order=(3, 0))``: one scale, image PIL bicubic, label
PIL nearest; ``resize: opencv`` for OpenCV's cubic / exact nearest instead), horizontal flip,
ImageNet normalisation, random 512 crop (image padded with 0 = the mean colour, label with 255),
label reduced to stride 4 by PIL's nearest sampling (pixel 4i + 2); 3 epochs of batch 32, last incomplete batch dropped; SGD, lr 0.1 with poly
decay (power 0.9) per step, weight decay 1e-4 on the branch only.

Data order and augmentation depend only on (seed, epoch, index), as in ``train-cls``, so a
resumed run or a run split over ``torchrun`` processes sees what an uninterrupted single-process
run sees. Affinity labels are computed on the device from the stride-4 labels, not in the loader
workers (IRN ships three 152 x 13,090 float maps per image through its loader).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn as nn

from wsss.data.transforms import check_resize_kernel, normalize, random_crop, resize_to, scaled_size
from wsss.config import ConfigError, TrainRunConfig, check_choices
from wsss.data import DataConfig, build_dataset, require_background
from wsss.data.base import SegDataset
from wsss.engine import dist
from wsss.engine.loop import GroupSpec, LoopSettings, SeededTrainSet, load_run, make_optimizer, resumed_config, train_loop
from wsss.io import IGNORE_INDEX, WsssDataError, read_image, read_mask
from wsss.models.resnet import CAM_OS16, build_resnet
from wsss.pseudo.irnet import BoundaryNet, affinity_labels, boundary_loss, edge_to_affinity, path_index

WEIGHTS_NAME = "boundary.safetensors"



@dataclass
class TrainIrnConfig(TrainRunConfig):
    """Settings of ``wsss train-irn``.

    ir_labels: folder of IR label PNGs (``<id>.png``, 255 = unknown) for the images of ``data``.
    backbone: ResNet name. weights: local ImageNet weights of the backbone (none = from scratch,
    with a warning). batch_size: global batch, split evenly over processes. crop: training crop
    side, pixels. scale_range: random rescale factors. radius: pairs are sampled within this
    distance on the stride-4 map (IRN: 10, 152 directions).
    resize: the kernels of that rescale: ``pil`` (IRN's ``imutils.random_scale(..., order=(3, 0))``:
    image PIL bicubic, antialiased when downscaling, label PIL nearest), for fidelity to IRN's code, or
    ``opencv`` (image OpenCV cubic, label OpenCV exact nearest: what train-irn did before this
    setting, and what a run recorded without it resumes with).
    backbone_lr: learning rate of the backbone's convolutions (poly, like ``lr``); 0, the default, freezes
    the backbone as IRN does. Not IRN: for backbones whose features do not tell object edges from
    texture edges (the demo's tiny one), see README "IRN on the synthetic set".
    momentum: IRN's ``PolyOptimizer`` passes its weight decay positionally into SGD's momentum
    slot, so IRN trains with momentum 1e-4 (in effect none); the default reproduces that.
    max_steps: stop after this many optimiser steps in total (tests, smoke runs).
    save_every: also checkpoint every this many steps (0: at epoch ends only).
    """

    data: DataConfig = field(default_factory=DataConfig)
    ir_labels: str = "runs/ir_label"
    backbone: str = "resnet50"
    weights: str | None = None
    epochs: int = 3
    batch_size: int = 32
    crop: int = 512
    scale_range: tuple[float, float] = (0.5, 1.5)
    resize: Literal["pil", "opencv"] = "pil"
    radius: int = 10
    lr: float = 0.1
    backbone_lr: float = 0.0
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    poly_power: float = 0.9
    max_steps: int | None = None
    # and TrainRunConfig's run settings (workers, device, amp, seed, out, save_every, log_every,
    # tensorboard), with this stage's default of:
    out: str = "runs/irn"


CONFIG_IMPLIED = {"resize": "opencv"}
"""What a train-irn run recorded before ``resize`` existed was trained with: OpenCV's kernels
(:func:`~wsss.engine.loop.resumed_config`)."""


def irn_train_transform(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, scale_range: tuple[float, float], crop: int,
    resize: str = "pil",
) -> tuple[np.ndarray, np.ndarray]:
    """IRN's affinity-training augmentation of an image and its IR label.

    ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8. Random rescale, one scale for both
    (``resize="pil"``: IRN's ``imutils.random_scale(..., order=(3, 0))``, image PIL bicubic, label
    PIL nearest; ``"opencv"``: the kernels before this setting, image OpenCV cubic, label OpenCV
    exact nearest), horizontal flip (p = 0.5), normalise, random crop (pad: image 0, label 255), label
    reduced to stride 4 as IRN reduces it (``imutils.pil_rescale(label, 0.25, 0)``: PIL's nearest
    resize samples pixel centres, so cell ``i`` takes pixel ``4 i + 2``, not ``4 i``). Returns
    ``(3, crop, crop)`` float32 and ``(ceil(crop/4), ceil(crop/4))`` uint8 (a last cell past the
    crop, for crops not divisible by 4, is unknown, 255).
    """
    check_resize_kernel(resize)
    scale = float(rng.uniform(scale_range[0], scale_range[1]))
    size = scaled_size(*image.shape[:2], scale)
    image = resize_to(image, size, resize, order=3, opencv=cv2.INTER_CUBIC)
    # opencv: pixel-centre nearest, as IRN's older skimage rescale(order=0); plain INTER_NEAREST shifts by half a pixel
    label = resize_to(label, size, resize, order=0, opencv=cv2.INTER_NEAREST_EXACT)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    hwc = normalize(np.ascontiguousarray(image)).transpose(1, 2, 0)
    hwc, label = random_crop([hwc, label], crop, rng, [0.0, IGNORE_INDEX])
    side = -(-crop // 4)
    small = np.full((side, side), IGNORE_INDEX, np.uint8)
    sampled = label[2::4, 2::4]
    small[: sampled.shape[0], : sampled.shape[1]] = sampled
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)), small


class IrnTrainSet(SeededTrainSet):
    """Augmented crops and stride-4 IR labels."""

    def __init__(self, ds: SegDataset, cfg: TrainIrnConfig):
        super().__init__(ds, cfg)
        self.label_dir = Path(cfg.ir_labels)

    def __getitem__(self, index: int):
        image_id = self.ds.ids[index]
        rng = self.rng(index)
        image = read_image(self.ds.image_path(image_id))
        label = read_mask(self.label_dir / f"{image_id}.png")
        if label.shape != image.shape[:2]:
            raise WsssDataError(
                f"IR label {self.label_dir / image_id}.png is {label.shape} but the image is {image.shape[:2]}: "
                "remake the IR labels from CAMs of these images"
            )
        x, y = irn_train_transform(image, label, rng, scale_range=self.cfg.scale_range, crop=self.cfg.crop,
                                   resize=self.cfg.resize)
        return torch.from_numpy(x), torch.from_numpy(y)


def _check(cfg: TrainIrnConfig, ds: SegDataset) -> None:
    side = -(-cfg.crop // 4)
    if side <= 2 * (cfg.radius - 1):
        raise ConfigError(
            f"crop {cfg.crop} gives a {side}x{side} stride-4 map, too small for pairs of radius {cfg.radius}: "
            f"use a crop above {8 * (cfg.radius - 1)} or a smaller radius"
        )
    label_dir = Path(cfg.ir_labels)
    missing = [i for i in ds.ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise WsssDataError(
            f"{len(missing)} of {len(ds)} images have no IR label in {label_dir} (first: {', '.join(missing[:3])}). "
            "Make them with `wsss make-pseudo --refine ir-label` for the same images, or point ir_labels there."
        )


def train_irn(cfg: TrainIrnConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the stage; returns the output folder. ``resume`` continues from ``out/resume.pt``;
    ``overwrite`` starts again in a folder that holds a run (refused otherwise)."""
    check_choices(cfg)
    out = Path(cfg.out)
    cfg = resumed_config(cfg, out, resume, CONFIG_IMPLIED, "train-irn")
    device = dist.init_distributed(cfg.device)
    world = dist.world_size()

    train_ds = build_dataset(cfg.data)
    require_background(train_ds, "train-irn")
    _check(cfg, train_ds)
    index = path_index(cfg.radius)

    torch.manual_seed(cfg.seed)
    if cfg.backbone_lr < 0:
        raise ValueError(f"backbone_lr must be >= 0 (0 = frozen backbone, IRN's), got {cfg.backbone_lr}")
    model = BoundaryNet(cfg.backbone, weights=cfg.weights, train_backbone=cfg.backbone_lr > 0).to(device)
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = [GroupSpec("boundary", head, cfg.lr, "poly", cfg.weight_decay)]
    if cfg.backbone_lr > 0:
        body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        groups.append(GroupSpec("backbone", body, cfg.backbone_lr, "poly", cfg.weight_decay))
    optimizer = make_optimizer("sgd", groups, momentum=cfg.momentum)

    def loss_fn(net: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, label = batch
        affinity = edge_to_affinity(torch.sigmoid(net(x).float()), index)
        labels = affinity_labels(label, index)
        counts = None
        if world > 1:
            # normalise by the pair counts of the global batch, as one process would
            counts = dist.all_reduce_sum(torch.stack([t.sum() for t in labels]))
        terms = boundary_loss(affinity, *labels, counts=counts)
        # each process's terms are its share of the global ones; the loop averages over processes
        return {"loss": terms["loss"] * world, "bg_pos": terms["bg"] * world, "fg_pos": terms["fg"] * world,
                "neg": terms["neg"] * world}

    settings = LoopSettings.from_config(cfg, "train-irn", cfg.epochs, weights_name=WEIGHTS_NAME, implied=CONFIG_IMPLIED)
    last = train_loop(
        model=model, optimizer=optimizer, train_set=IrnTrainSet(train_ds, cfg), config=cfg, settings=settings,
        device=device, loss_fn=loss_fn, resume=resume, overwrite=overwrite, progress=progress,
    )
    if last is None:
        return out
    if dist.is_main():
        from wsss.config import data_options, shell_command

        print(f"train-irn done: weights {out / WEIGHTS_NAME}. Next: "
              + shell_command("make-pseudo", "--refine", "irn", "--irn-dir", out, "--cam-dir", "<CAM folder>",
                              *data_options(cfg.data), "--out", f"{out}_pseudo"))
    dist.barrier()
    return out


def load_boundary_net(irn_dir: str | Path, device: str | torch.device = "cpu") -> BoundaryNet:
    """The trained :class:`BoundaryNet` of a ``train-irn`` folder, in eval mode on ``device``.

    Reads ``config.yaml`` (backbone name) and ``boundary.safetensors`` (all weights, loaded
    strictly: keys that do not match are refused by name), as the classifier and segmenter loaders
    do (:func:`~wsss.engine.loop.load_run`). A folder whose training did not finish (no
    ``done.json``) is refused with the command that finishes it: its weights are a mid-training
    checkpoint, and pseudo masks made from them would pass for finished ones.
    """

    def build(cfg: TrainIrnConfig, state: dict) -> tuple[nn.Module, str]:
        backbone = build_resnet(cfg.backbone, **CAM_OS16, frozen_bn=True, frozen_stages=4)
        return BoundaryNet(backbone), f"a boundary net on '{cfg.backbone}'"

    net, _ = load_run(irn_dir, "train-irn", build, TrainIrnConfig, WEIGHTS_NAME, device)
    return net


__all__ = ["CONFIG_IMPLIED", "TrainIrnConfig", "IrnTrainSet", "WEIGHTS_NAME", "irn_train_transform", "load_boundary_net",
           "train_irn"]
