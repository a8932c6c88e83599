"""``wsss train-seg``: train a segmentation network on masks (pseudo masks or ground truth).

One function, :func:`train_seg`, runs the stage from a :class:`TrainSegConfig`;
the CLI only builds the config. Training masks come from ``data.masks`` (the
``make-pseudo`` folder) or, when unset, the dataset's own ground truth; the val
split is always scored against the dataset's ground truth. Outputs in ``out``:

* ``config.yaml``: the resolved configuration (read back by ``wsss predict``);
* ``class_names.txt``: the classes, one per line, background first;
* ``model.safetensors``: the weights;
* ``resume.pt``: everything needed to continue exactly (plain types only);
* ``metrics.jsonl``: loss terms per log step; per epoch the train loss and, every
  ``val_every`` epochs and at the end, val mIoU / FP / FN (single scale);
* ``done.json``: written last; its presence means the stage is complete.

The default recipe is PCAA's (Sec. 4.2): SGD lr 0.01, momentum 0.9, weight decay
1e-4, poly 0.9 per iteration, random scale 0.5-2, flip, photometric distortion,
crop 512, ignore label 255. Under ``torchrun`` BatchNorm normalises over the
global batch (``sync_bn``: SyncBatchNorm on GPUs,
:class:`wsss.engine.syncbn.GlobalBatchNorm2d` on CPUs), so several processes
train like one with the whole batch.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from wsss.config import ConfigError, check_choices
from wsss.data import DataConfig, build_dataset
from wsss.data.base import SegDataset
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.engine.syncbn import convert_sync_batchnorm
from wsss.engine.loop import LoopSettings, SeededTrainSet, check_fresh_output, make_optimizer, train_loop
from wsss.io import WsssDataError, read_image, write_json, write_text
from wsss.eval.metrics import collapse_warning
from wsss.seg.config import CLASS_NAMES_FILE, CONFIG_IMPLIED, TrainSegConfig
from wsss.seg.inference import evaluate_segmenter, segment
from wsss.seg.model import build_from_config, head_kwargs  # noqa: F401  (head_kwargs re-exported: its home was this module)
from wsss.seg.transforms import seg_train_transform



class SegTrainSet(SeededTrainSet):
    """Augmented crops and their (pseudo) masks."""

    cfg: TrainSegConfig

    def __getitem__(self, index: int):
        image_id = self.ds.ids[index]
        rng = self.rng(index)
        image = read_image(self.ds.image_path(image_id))
        path = self.ds.mask_path(image_id)
        if path is None:
            raise WsssDataError(f"image {image_id} has no training mask: set data.masks to the pseudo-mask folder")
        label = self.ds.read_checked_mask(path, image.shape[:2])
        x, y = seg_train_transform(
            image, label, rng, base_size=self.cfg.base_size, scale_range=tuple(self.cfg.scale_range),
            crop=self.cfg.crop, photometric=self.cfg.photometric,
        )
        return torch.from_numpy(x), torch.from_numpy(y)


BEST_WEIGHTS = "best.safetensors"
BEST_RECORD = "best.json"
LAST_WEIGHTS = "last.safetensors"


class BestWeights:
    """``keep_best``: the weights of the best val mIoU so far in ``out/best.safetensors`` with
    ``out/best.json`` (step, mIoU), both written atomically, so a resumed run keeps comparing
    with them. At the end (:meth:`install`) the last weights move to ``last.safetensors`` and
    the best become ``model.safetensors``, the file ``wsss predict`` loads."""

    def __init__(self, out: Path) -> None:
        self.out = out
        record = out / BEST_RECORD
        self.record = json.loads(record.read_text()) if record.is_file() else None

    def offer(self, step: int, miou: float, model: nn.Module) -> None:
        # ">=": a later evaluation with an equal score replaces the earlier one, as PCAA's code does
        if self.record is not None and miou < self.record["val_mIoU"]:
            return
        self.record = {"step": step, "val_mIoU": miou}
        if dist.is_main():
            ckpt.save_weights(model, self.out / BEST_WEIGHTS)
            write_json(self.out / BEST_RECORD, self.record)

    def install(self) -> dict:
        if self.record is None:
            return {}
        weights, tmp = self.out / ckpt.WEIGHTS_NAME, self.out / (ckpt.WEIGHTS_NAME + ".tmp")
        shutil.copyfile(self.out / BEST_WEIGHTS, tmp)
        # an interrupted install already moved the last weights: a rerun (--resume) finishes it
        if weights.is_file():
            os.replace(weights, self.out / LAST_WEIGHTS)
        os.replace(tmp, weights)
        return {"best_step": self.record["step"], "best_val_mIoU": self.record["val_mIoU"],
                "last_weights": str(self.out / LAST_WEIGHTS)}


def _check_masks(ds: SegDataset, what: str) -> None:
    missing = [i for i in ds.ids if ds.mask_path(i) is None or not Path(ds.mask_path(i)).is_file()]
    if missing:
        raise WsssDataError(
            f"{len(missing)} of {len(ds)} {what} images have no mask (first: {', '.join(missing[:3])}). "
            "Point data.masks at the make-pseudo output (--masks), or make pseudo masks for this split first."
        )


def val_grid(model: nn.Module, ds: SegDataset, *, base_size: int, num: int = 4, tile: int = 128) -> np.ndarray:
    """TensorBoard's picture of the first ``num`` val images: one row each of image | prediction |
    ground truth (VOC colours), ``tile`` pixels square; (rows * tile, 3 * tile, 3) uint8."""
    import cv2

    from wsss.viz import colorize_mask

    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for image_id in ds.ids[:num]:
            sample = ds.load(image_id)
            pred = segment(model, sample.image, base_size=base_size).argmax(0).cpu().numpy().astype(np.uint8)
            tiles = [sample.image, colorize_mask(pred)]
            if sample.mask is not None:
                tiles.append(colorize_mask(sample.mask))
            tiles = [cv2.resize(np.ascontiguousarray(t), (tile, tile), interpolation=cv2.INTER_NEAREST) for t in tiles]
            tiles += [np.full((tile, tile, 3), 255, np.uint8)] * (3 - len(tiles))
            rows.append(np.concatenate(tiles, axis=1))
    model.train(was_training)
    return np.concatenate(rows, axis=0)


def train_seg(cfg: TrainSegConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the stage; returns the output folder. ``resume`` continues from ``out/resume.pt``;
    ``overwrite`` starts again in a folder that holds a run (refused otherwise)."""
    check_choices(cfg)
    out = Path(cfg.out)
    if cfg.psa_mask_size % 2 == 0:
        raise ConfigError(f"psa_mask_size must be odd, got {cfg.psa_mask_size}")
    if cfg.keep_best and not cfg.val_split:
        raise ConfigError("keep_best chooses the weights by val mIoU: set val_split, or keep_best: 0")
    if cfg.keep_best < 0:
        raise ConfigError(f"keep_best must be >= 0 iterations (0 = keep the last weights), got {cfg.keep_best}")
    device = dist.init_distributed(cfg.device)
    train_ds = build_dataset(cfg.data)
    if cfg.data.masks:
        from wsss.engine.outputs import check_provenance

        check_provenance(cfg.data.masks, train_ds.class_names, "masks")
    _check_masks(train_ds, "training")
    val_ds = None
    if cfg.val_split:
        val_ds = build_dataset(DataConfig(**{**vars(cfg.data), "masks": None, "list_file": None}), split=cfg.val_split)
        _check_masks(val_ds, "val")

    torch.manual_seed(cfg.seed)
    model = build_from_config(cfg, train_ds.num_classes, pretrained=cfg.pretrained)
    if cfg.sync_bn and dist.world_size() > 1:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    specs = model.param_groups(lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr_mult=cfg.head_lr_mult)
    optimizer = make_optimizer("sgd", specs, momentum=cfg.momentum)

    world = dist.world_size()

    def loss_fn(net: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, y = batch
        outputs = net(x)
        outputs = {k: (v.float() if torch.is_tensor(v) else [t.float() for t in v]) for k, v in outputs.items()}
        if world == 1:
            return model.loss(outputs, y)
        # DDP averages the processes' gradients: divide each process's cross-entropy sum by the
        # global batch's labelled pixels per process, so the result is the global mean
        valid = (y != model.ignore_index).sum().float()
        return model.loss(outputs, y, pixel_count=dist.all_reduce_sum(valid.clone()).clamp(min=1) / world)

    steps_per_epoch = max(1, len(train_ds) // cfg.batch_size)
    epochs = -(-cfg.iterations // steps_per_epoch)

    def evaluate(epoch: int, final: bool) -> dict[str, float]:
        if val_ds is None or not (final or (epoch + 1) % max(1, cfg.val_every) == 0):
            return {}
        metrics = evaluate_segmenter(model, val_ds, base_size=cfg.base_size, progress=progress and dist.is_main())
        warning = collapse_warning(metrics.confusion, val_ds.class_names, "val pixels predicted")
        if warning and dist.is_main():
            tqdm.write(f"train-seg epoch {epoch}: {warning}")
        figures = {"mIoU": 100 * metrics.miou, "FP": 100 * metrics.mean_fp, "FN": 100 * metrics.mean_fn}
        step = min((epoch + 1) * steps_per_epoch, cfg.iterations)
        if cfg.keep_best and step >= cfg.iterations - cfg.keep_best:  # PCAA: from step N - 10k on
            best.offer(step, figures["mIoU"], model)
        if cfg.tensorboard and dist.is_main():
            figures["predictions"] = val_grid(model, val_ds, base_size=cfg.base_size)
        return figures

    settings = LoopSettings.from_config(cfg, f"train-seg {cfg.head}", epochs, max_steps=cfg.iterations,
                                        implied=CONFIG_IMPLIED)
    if not resume:
        check_fresh_output(out, "train-seg", overwrite)
        if dist.is_main():
            for name in (BEST_WEIGHTS, BEST_RECORD, LAST_WEIGHTS):
                (out / name).unlink(missing_ok=True)
    best = BestWeights(out)
    if dist.is_main():
        write_text(out / CLASS_NAMES_FILE, "\n".join(train_ds.class_names))
    last = train_loop(
        model=model, optimizer=optimizer, train_set=SegTrainSet(train_ds, cfg), config=cfg, settings=settings,
        device=device, loss_fn=loss_fn, evaluate=evaluate, resume=resume, overwrite=overwrite, progress=progress,
        finish=best.install if cfg.keep_best else None,
    )
    if last is not None and dist.is_main():
        msg = f"train-seg done: weights {out / ckpt.WEIGHTS_NAME}"
        if "val_mIoU" in last:
            msg += f", val mIoU {last['val_mIoU']:.2f} (single scale)"
        if best.record is not None and cfg.keep_best:
            msg += (f"; kept the best of the last {cfg.keep_best} iterations: step {best.record['step']}, "
                    f"val mIoU {best.record['val_mIoU']:.2f} (last weights: {out / LAST_WEIGHTS})")
        from wsss.config import data_options, shell_command

        split = cfg.val_split or cfg.data.split
        print(msg + ". Next: " + shell_command("predict", "--seg-dir", out, *data_options(cfg.data, split),
                                               "--out", f"{out}_pred_{split}"))
    dist.barrier()
    return out
