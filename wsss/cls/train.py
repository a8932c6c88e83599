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

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.cls.metrics import multilabel_metrics
from wsss.cls.models import build_classifier
from wsss.cls.transforms import cls_train_transform, normalize
from wsss.config import ConfigError, save_config, to_dict
from wsss.data import DataConfig, build_dataset
from wsss.data.base import SegDataset
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.engine.schedule import SCHEDULES
from wsss.io import append_jsonl, read_image, write_json


@dataclass
class TrainClsConfig:
    """Settings of ``wsss train-cls``.

    model: backbone name (``conformer_tiny``, ``conformer_s16``, ``resnet50``...).
    pretrained: local ImageNet weights file (.pth/.pt/.safetensors); none = from scratch.
    strict_load: refuse a weights file whose keys do not match (heads aside).
    detach_branches / drop_last_block: Conformer only (AD-CAM Sec. 4.1, 5.1).
    batch_size: global batch, split evenly over processes.
    crop: training crop side, pixels. resize_long: range of the random long-side resize, pixels.
    optimizer: ``adamw`` or ``sgd``. lr: CNN / backbone lr (poly decay).
    lr_transformer: Conformer transformer branch lr (constant). head_lr_mult: ResNet classifier lr factor.
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
    epochs: int = 5
    batch_size: int = 16
    crop: int = 384
    resize_long: tuple[int, int] = (320, 640)
    optimizer: str = "adamw"
    lr: float = 5e-4
    lr_transformer: float | None = 2e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 0.05
    momentum: float = 0.9
    poly_power: float = 0.9
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    out: str = "runs/cls"
    max_steps: int | None = None
    save_every: int = 0
    log_every: int = 20


class ClsTrainSet(Dataset):
    """Augmented crops; the randomness of item i in epoch e is fixed by (seed, e, i)."""

    def __init__(self, ds: SegDataset, cfg: TrainClsConfig):
        self.ds, self.cfg, self.epoch = ds, cfg, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        image_id = self.ds.ids[index]
        rng = np.random.default_rng([self.cfg.seed, self.epoch, index])
        image = read_image(self.ds.image_path(image_id))
        x = cls_train_transform(image, rng, resize_range=self.cfg.resize_long, crop=self.cfg.crop)
        return torch.from_numpy(x), torch.from_numpy(self.ds.label(image_id))


class ClsEvalSet(Dataset):
    def __init__(self, ds: SegDataset, indices: list[int]):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image_id = self.ds.ids[self.indices[i]]
        x = normalize(read_image(self.ds.image_path(image_id)))
        return torch.from_numpy(x), torch.from_numpy(self.ds.label(image_id)), self.indices[i]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch: a permutation fixed by (seed, epoch),
    last incomplete batch dropped (IRN drops it too)."""
    perm = np.random.default_rng([seed, 1_000_003, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class _ShardSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch, starting at a given batch."""

    def __init__(self, batches: list[np.ndarray], start: int, rank: int, world: int):
        self.batches, self.start, self.rank, self.world = batches, start, rank, world

    def __iter__(self):
        for b in self.batches[self.start :]:
            yield b[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        return len(self.batches) - self.start


def _build_optimizer(model: nn.Module, cfg: TrainClsConfig):
    specs = model.param_groups(
        lr=cfg.lr, weight_decay=cfg.weight_decay, lr_transformer=cfg.lr_transformer, head_lr_mult=cfg.head_lr_mult
    )
    groups = [
        {"params": s.params, "lr": s.lr, "initial_lr": s.lr, "weight_decay": s.weight_decay, "schedule": s.schedule, "name": s.name}
        for s in specs
        if s.params
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum)
    raise ConfigError(f"optimizer '{cfg.optimizer}' is not known: use adamw or sgd")


def _set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * SCHEDULES[g["schedule"]](step, total, power)


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
    return multilabel_metrics(s.numpy(), t.numpy())


def train_cls(cfg: TrainClsConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run the stage; returns the output folder. ``resume`` continues from ``out/resume.pt``."""
    out = Path(cfg.out)
    device = dist.init_distributed(cfg.device)
    world, rank = dist.world_size(), dist.rank()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    main_proc = dist.is_main()
    progress = progress and main_proc

    train_ds = build_dataset(cfg.data)
    val_ds = build_dataset(cfg.data, split=cfg.val_split) if cfg.val_split else None
    if len(train_ds) < cfg.batch_size:
        raise ConfigError(f"{len(train_ds)} training images are fewer than one batch of {cfg.batch_size}")

    torch.manual_seed(cfg.seed)
    model = build_classifier(
        cfg.model, train_ds.num_fg, pretrained=cfg.pretrained, strict_load=cfg.strict_load,
        detach_branches=cfg.detach_branches, drop_last_block=cfg.drop_last_block,
    ).to(device)
    optimizer = _build_optimizer(model, cfg)

    steps_per_epoch = len(train_ds) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    step = 0
    if resume and (out / "done.json").is_file():
        if main_proc:
            print(f"{out} is complete (done.json); nothing to resume")
        return out
    if resume and (out / ckpt.RESUME_NAME).is_file():
        state = ckpt.load_resume(out / ckpt.RESUME_NAME)
        if state["config"] != to_dict(cfg):
            changed = sorted(k for k in to_dict(cfg) if to_dict(cfg)[k] != state["config"].get(k))
            raise ConfigError(
                f"cannot resume {out}: the configuration changed ({', '.join(changed)}). "
                f"Use the same settings, or a new --out folder."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        if main_proc:
            print(f"resuming {out} at step {step}/{total_steps}")
    elif main_proc:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        (out / "metrics.jsonl").unlink(missing_ok=True)

    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_set = ClsTrainSet(train_ds, cfg)
    use_amp = cfg.amp and device.type == "cuda"

    def save(step_now: int) -> None:
        if not main_proc:
            return
        ckpt.save_resume(out / ckpt.RESUME_NAME, {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "step": step_now,
            "rng": ckpt.rng_state(),
            "config": to_dict(cfg),
        })
        ckpt.save_weights(model, out / ckpt.WEIGHTS_NAME)

    last_record: dict = {}
    bar = tqdm(total=total_steps, initial=step, desc="train-cls", disable=not progress, unit="step")
    t0 = time.time()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        train_set.epoch = epoch
        batches = epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, epoch)
        loader = DataLoader(
            train_set, batch_sampler=_ShardSampler(batches, start, rank, world), num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=False,
        )
        ddp_model.train()
        running, count = 0.0, 0
        for x, y in loader:
            _set_lr(optimizer, step, total_steps, cfg.poly_power)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out_dict = ddp_model(x)
            loss = model.loss({k: v.float() for k, v in out_dict.items()}, y)
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step} (epoch {epoch}); the last good checkpoint is "
                    f"{out / ckpt.RESUME_NAME}. Lower the learning rate or check the inputs, then rerun with --resume."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_v = float(dist.all_reduce_sum(loss.detach()).item()) / world
            running += loss_v
            count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", epoch=epoch)
            if main_proc and cfg.log_every and step % cfg.log_every == 0:
                append_jsonl(out / "metrics.jsonl", {"step": step, "epoch": epoch, "loss": loss_v,
                                                     "lr": optimizer.param_groups[0]["lr"]})
            if cfg.save_every and step % cfg.save_every == 0:
                save(step)
            if step >= total_steps:
                break
        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        if epoch_done:
            record = {"epoch": epoch, "step": step, "train_loss": running / max(1, count),
                      "time_s": round(time.time() - t0, 1)}
            if val_ds is not None:
                record.update({f"val_{k}": v for k, v in evaluate_cls(model, val_ds, device, 0, progress).items()})
            save(step)
            last_record = record
            if main_proc:
                append_jsonl(out / "metrics.jsonl", record)
                tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    bar.close()
    if main_proc:
        final = {"steps": step, "weights": str(out / ckpt.WEIGHTS_NAME)}
        final.update({k: v for k, v in last_record.items() if k.startswith("val_")})
        write_json(out / "done.json", final)
        print(f"train-cls done: weights {out / ckpt.WEIGHTS_NAME}" + (
            f", val mAP {final['val_mAP']:.2f}, F1 {final['val_F1']:.2f}" if "val_mAP" in final else ""))
    dist.barrier()
    return out
