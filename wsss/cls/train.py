"""``wsss train-cls``: train a multi-label classifier on image-level labels.

One function, :func:`train_cls`, runs the whole stage from a
:class:`TrainClsConfig`; the CLI only builds the config. Outputs in ``out``:

* ``config.yaml``: the resolved configuration;
* ``model.safetensors``: the weights (read by ``extract-cam``);
* ``resume.pt``: everything needed to continue exactly (plain types only);
* ``metrics.jsonl``: one line per epoch (loss, val mAP and F1) and per log step;
* ``done.json``: written last; its presence means the stage is complete.

Data order and augmentation depend only on (seed, epoch, index), so a run
resumed mid-epoch and a run split over ``torchrun`` processes see exactly the
images and crops an uninterrupted single-process run sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.eval.multilabel import multilabel_metrics
from wsss.cls.models import build_classifier
from wsss.cls.transforms import cls_train_transform, normalize
from wsss.config import ConfigError, TrainRunConfig, check_choices
from wsss.data import DataConfig, build_dataset, require_background
from wsss.data.base import SegDataset
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.engine.loop import LoopSettings, SeededTrainSet, make_optimizer, resumed_config, train_loop
from wsss.io import WsssDataError, read_image


@dataclass
class TrainClsConfig(TrainRunConfig):
    """Settings of ``wsss train-cls``.

    model: backbone name (``conformer_tiny``, ``conformer_s16``, ``resnet50``...).
    pretrained: local ImageNet weights file (.pth/.pt/.safetensors); none = from scratch.
    strict_load: refuse a weights file whose keys do not match (heads aside).
    detach_branches / drop_last_block: Conformer only (AD-CAM Sec. 4.1, 5.1).
    drop_path: Conformer stochastic-depth rate (the official recipe's 0.1; 0 = off, the default).
    batch_size: global batch, split evenly over processes.
    crop: training crop side, pixels. resize_long: range of the random long-side resize, pixels.
    resize: the kernel of that resize: ``pil`` (IRN's ``imutils.random_resize_long``: PIL bicubic,
    antialiased when downscaling; partial pooling's region masks PIL nearest), for fidelity to the
    IRN code the recipe reproduces, or ``opencv`` (OpenCV linear, masks OpenCV nearest: what
    train-cls did before this setting, and what a run recorded without it resumes with).
    optimizer: ``adamw`` or ``sgd``. lr: CNN / backbone lr (poly decay).
    lr_transformer: Conformer transformer branch lr (constant). head_lr_mult: ResNet classifier lr factor.
    partial_pool: S of partial pooling (PCAA Eq. 3; 0 = off): a focal loss on the S x S pooled
    class maps against region labels (Eq. 4) from ``region_masks``: a mask folder (an earlier
    round's pseudo masks), or ``gt`` for the dataset's ground truth (then the run is pixel-supervised,
    and says so); required with partial pooling, so weak supervision never turns into full
    supervision by default. ``extract-cam --method partial``
    needs a classifier trained this way.
    max_steps: stop after this many optimiser steps in total (tests, smoke runs).
    save_every: also checkpoint every this many steps (0: at epoch ends only).
    """

    data: DataConfig = field(default_factory=DataConfig)
    val_split: str | None = "val"
    model: str = "conformer_tiny"
    pretrained: str | None = None
    strict_load: bool = True
    detach_branches: bool = True
    drop_last_block: bool = True
    drop_path: float = 0.0
    epochs: int = 5
    batch_size: int = 16
    crop: int = 384
    resize_long: tuple[int, int] = (320, 640)
    resize: Literal["pil", "opencv"] = "pil"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    lr_transformer: float | None = 2e-4
    head_lr_mult: float = 10.0
    partial_pool: int = 0
    region_masks: str | None = None
    weight_decay: float = 0.05
    momentum: float = 0.9
    poly_power: float = 0.9
    max_steps: int | None = None
    # and TrainRunConfig's run settings (workers, device, amp, seed, out, save_every, log_every,
    # tensorboard), with this stage's default of:
    out: str = "runs/cls"


CONFIG_IMPLIED = {"resize": "opencv"}
"""What a train-cls run recorded before ``resize`` existed was trained with: OpenCV's kernels
(:func:`~wsss.engine.loop.resumed_config`)."""


class ClsTrainSet(SeededTrainSet):
    """Augmented crops (and region masks with partial pooling) with image-level labels."""

    cfg: TrainClsConfig

    def __getitem__(self, index: int):
        image_id = self.ds.ids[index]
        rng = self.rng(index)
        image = read_image(self.ds.image_path(image_id))
        label = torch.from_numpy(self.ds.label(image_id))
        if not self.cfg.partial_pool:
            x = cls_train_transform(image, rng, resize_range=self.cfg.resize_long, crop=self.cfg.crop,
                                    resize=self.cfg.resize)
            return torch.from_numpy(x), label
        mask = self.ds.read_checked_mask(self.region_mask_path(image_id), image.shape[:2])
        x, m = cls_train_transform(image, rng, resize_range=self.cfg.resize_long, crop=self.cfg.crop, mask=mask,
                                   resize=self.cfg.resize)
        return torch.from_numpy(x), label, torch.from_numpy(m)

    def region_mask_path(self, image_id: str) -> Path:
        if self.cfg.region_masks != "gt":
            return Path(self.cfg.region_masks) / f"{image_id}.png"
        return self.ds.mask_path(image_id)

    def check_region_masks(self) -> None:
        if not self.cfg.region_masks:
            raise ConfigError(
                "partial pooling (partial_pool > 0) needs --region-masks: a pseudo-mask folder (weak supervision), "
                "or 'gt' for the dataset's ground-truth masks, which makes the run pixel-supervised"
            )
        if self.cfg.region_masks == "gt" and dist.is_main():
            print("train-cls: partial pooling takes its region labels from the ground-truth masks (--region-masks gt): "
                  "this run uses pixel labels, it is not weakly supervised")
        missing = [i for i in self.ds.ids if not (p := self.region_mask_path(i)) or not Path(p).is_file()]
        if missing:
            raise WsssDataError(
                f"partial pooling needs a region mask per image; {len(missing)} of {len(self.ds)} have none "
                f"(first: {', '.join(missing[:3])}). Set region_masks to a mask folder (ground truth or pseudo masks)."
            )


class ClsEvalSet(Dataset):
    def __init__(self, ds: SegDataset, indices: list[int]):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image_id = self.ds.ids[self.indices[i]]
        x = normalize(read_image(self.ds.image_path(image_id)))
        return torch.from_numpy(x), torch.from_numpy(self.ds.label(image_id)), self.indices[i]


@torch.no_grad()
def evaluate_cls(model: nn.Module, ds: SegDataset, device: torch.device, workers: int = 0, progress: bool = True) -> dict:
    """Val mAP / F1 over ``ds``; each rank scores its share, results are gathered."""
    model.eval()
    indices = list(range(dist.rank(), len(ds), dist.world_size()))
    loader = DataLoader(ClsEvalSet(ds, indices), batch_size=1, num_workers=workers)
    scores, targets, order = [], [], []
    for x, y, idx in tqdm(loader, desc="val", disable=not progress, leave=False, unit="img"):
        out = model(x.to(device))
        scores.append(torch.sigmoid(out["logits"].float()).cpu())
        targets.append(y)
        order.append(idx)
    k = ds.num_fg
    s = torch.cat(scores) if scores else torch.zeros(0, k)
    t = torch.cat(targets) if targets else torch.zeros(0, k)
    s, t = dist.all_gather_cat(s.to(device)).cpu(), dist.all_gather_cat(t.to(device)).cpu()
    if len(s) > 1 and float(s.std(0).max()) < 0.01 and dist.is_main():
        tqdm.write("train-cls: warning: the classifier gives every val image the same class scores (it learnt "
                   "the label prior only). Check the learning rate, the labels and the number of epochs.")
    return multilabel_metrics(s.numpy(), t.numpy())


def train_cls(cfg: TrainClsConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the stage; returns the output folder. ``resume`` continues from ``out/resume.pt``;
    ``overwrite`` starts again in a folder that holds a run (refused otherwise)."""
    check_choices(cfg)
    out = Path(cfg.out)
    cfg = resumed_config(cfg, out, resume, CONFIG_IMPLIED, "train-cls")
    device = dist.init_distributed(cfg.device)
    train_ds = build_dataset(cfg.data)
    require_background(train_ds, "train-cls")
    val_ds = build_dataset(cfg.data, split=cfg.val_split) if cfg.val_split else None
    # every image needs a label: find a missing one now, not in the middle of an epoch
    for ds in (train_ds, val_ds) if val_ds is not None else (train_ds,):
        for image_id in ds.ids:
            ds.label(image_id)

    torch.manual_seed(cfg.seed)
    model = build_classifier(
        cfg.model, train_ds.num_fg, pretrained=cfg.pretrained, strict_load=cfg.strict_load,
        detach_branches=cfg.detach_branches, drop_last_block=cfg.drop_last_block, partial_pool=cfg.partial_pool,
        drop_path=cfg.drop_path,
    ).to(device)
    train_set = ClsTrainSet(train_ds, cfg)
    if cfg.partial_pool:
        train_set.check_region_masks()
    specs = model.param_groups(
        lr=cfg.lr, weight_decay=cfg.weight_decay, lr_transformer=cfg.lr_transformer, head_lr_mult=cfg.head_lr_mult
    )
    optimizer = make_optimizer(cfg.optimizer, specs, momentum=cfg.momentum)

    def loss_fn(net: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, y, *masks = batch
        out_dict = net(x)
        return {"loss": model.loss({k: v.float() for k, v in out_dict.items()}, y, *masks)}

    settings = LoopSettings.from_config(cfg, "train-cls", cfg.epochs, implied=CONFIG_IMPLIED)
    last = train_loop(
        model=model, optimizer=optimizer, train_set=train_set, config=cfg, settings=settings,
        device=device, loss_fn=loss_fn, resume=resume, overwrite=overwrite, progress=progress,
        evaluate=(lambda epoch, final: evaluate_cls(model, val_ds, device, 0, progress)) if val_ds is not None else None,
    )
    if last is not None and dist.is_main():
        print(f"train-cls done: weights {out / ckpt.WEIGHTS_NAME}" + (
            f", val mAP {last['val_mAP']:.2f}, F1 {last['val_F1']:.2f}" if "val_mAP" in last else ""))
    dist.barrier()
    return out
