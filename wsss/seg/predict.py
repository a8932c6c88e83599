"""``wsss predict``: segment images with a ``train-seg`` model and write palette PNGs.

Inference modes (as mmseg's test pipelines):

* ``whole``: the image at each scale, whole, in one forward pass;
* ``slide``: windows of ``crop`` pixels every ``stride`` pixels (a side shorter than
  ``crop`` is one window of its length), logits averaged where windows overlap.

At each scale of ``scales`` (multiplying the resize to ``base_size`` of
training, so ``1.0`` is what the model saw on average) and, with ``flip``, on
the mirrored image too, the softmax probabilities are resized to the image and
averaged; the prediction is their argmax, optionally refined by a dense CRF
whose unary is those probabilities. Output masks are written atomically; a
rerun skips images already done, and under ``torchrun`` each process takes
its share of the images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.data.transforms import normalize
from wsss.config import ConfigError, load_config, pending_ids, prepare_output, to_dict
from wsss.data import DataConfig, build_dataset
from wsss.data.base import SegDataset
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.io import read_image, write_json, write_mask
from wsss.metrics import ConfusionMatrix, SegMetrics

INFER_MODES = ("whole", "slide")


@dataclass
class PredictConfig:
    """Settings of ``wsss predict``.

    seg_dir: a ``train-seg`` output folder. data: the images to segment (its masks are not used).
    out: folder for ``<id>.png`` palette masks.
    mode: ``whole`` or ``slide``. scales: resize factors on top of the training base size.
    flip: also run the mirrored image. crop / stride: sliding-window size and step, pixels
    (0: the training crop, and two thirds of it).
    crf: refine with a dense CRF (pydensecrf) whose unary is the averaged softmax.
    """

    seg_dir: str = "runs/seg"
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/pred"
    mode: str = "whole"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop: int = 0
    stride: int = 0
    crf: bool = False
    device: str = "auto"
    overwrite: bool = False


def load_trained_segmenter(seg_dir: str | Path, device: torch.device | str = "cpu"):
    """The network a ``train-seg`` run wrote to ``seg_dir`` (strict load), in eval
    mode, and its :class:`~wsss.seg.train.TrainSegConfig`."""
    from wsss.seg.train import CLASS_NAMES_FILE, TrainSegConfig, build_from_config

    seg_dir = Path(seg_dir)
    weights = seg_dir / ckpt.WEIGHTS_NAME
    if not (seg_dir / "config.yaml").is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{seg_dir} is not a train-seg output folder (needs config.yaml and {ckpt.WEIGHTS_NAME}); "
            f"run 'wsss train-seg --out {seg_dir}' first"
        )
    import shlex

    from wsss.engine.loop import require_finished

    require_finished(seg_dir, "train-seg", f"wsss train-seg --config {shlex.quote(str(seg_dir / 'config.yaml'))} --resume")
    cfg = load_config(TrainSegConfig, seg_dir / "config.yaml")
    names = (seg_dir / CLASS_NAMES_FILE).read_text().split("\n") if (seg_dir / CLASS_NAMES_FILE).is_file() else None
    if not names:
        raise FileNotFoundError(f"{seg_dir / CLASS_NAMES_FILE} is missing: the train-seg run did not finish writing")
    state = ckpt.load_weights_file(weights)
    model = build_from_config(cfg, len(names))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{weights} does not match a '{cfg.head}' head on '{cfg.backbone}': missing {result.missing_keys[:20]}, "
            f"unexpected {result.unexpected_keys[:20]}"
        )
    return model.to(device).eval(), cfg


def _forward_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(x)["out"].float(), dim=1)


def slide_probs(model: torch.nn.Module, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Sliding-window inference as mmseg's ``slide_inference`` (and PCAA's ``predict_sliding``):
    (1, 3, H, W) -> (1, K, H, W) softmax of the logits averaged over windows of ``crop`` every
    ``stride`` pixels, the last one flush with the border. A side shorter than ``crop`` is one
    window of its own length, not padded (mmseg runs the smaller crop). Before this matched mmseg,
    the windows' probabilities were averaged and small images were zero-padded to one window."""
    _, _, h, w = x.shape
    ch, cw = min(crop, h), min(crop, w)
    ys = list(range(0, h - ch + 1, stride))
    xs = list(range(0, w - cw + 1, stride))
    if ys[-1] != h - ch:
        ys.append(h - ch)
    if xs[-1] != w - cw:
        xs.append(w - cw)
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for y0 in ys:
        for x0 in xs:
            logits = model(x[:, :, y0 : y0 + ch, x0 : x0 + cw])["out"].float()
            if total is None:
                total = torch.zeros(1, logits.shape[1], h, w, device=x.device)
            total[:, :, y0 : y0 + ch, x0 : x0 + cw] += logits
            count[:, :, y0 : y0 + ch, x0 : x0 + cw] += 1
    return torch.softmax(total / count, dim=1)


@torch.no_grad()
def segment(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    base_size: int,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop: int = 512,
    stride: int = 341,
) -> torch.Tensor:
    """Averaged class probabilities of one image, ``image`` (H, W, 3) uint8 ->
    (K, H, W) float32 on the model's device."""
    if mode not in INFER_MODES:
        raise ConfigError(f"mode must be one of {', '.join(INFER_MODES)}, got '{mode}'")
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    fit = min(4 * base_size / max(h, w), base_size / min(h, w))
    total = None
    for s in scales:
        size = (max(1, int(w * fit * s + 0.5)), max(1, int(h * fit * s + 0.5)))
        x = torch.from_numpy(normalize(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)))[None].to(device)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            p = slide_probs(model, xi, crop, stride) if mode == "slide" else _forward_probs(model, xi)
            if flipped:
                p = p.flip(-1)
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0]
            total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


def crf_from_probs(image: np.ndarray, probs: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Dense CRF with a softmax unary, (K, H, W) probabilities -> (H, W) labels;
    the pairwise kernels are IRN's (Gaussian sxy 3 / compat 3, bilateral sxy 50, srgb 5, compat 10)."""
    from wsss.pseudo.crf import dense_crf, unary_from_probs

    return dense_crf(image, unary_from_probs(probs), iterations=iterations)


@torch.no_grad()
def evaluate_segmenter(model: torch.nn.Module, ds: SegDataset, *, base_size: int, progress: bool = True) -> SegMetrics:
    """Single-scale whole-image mIoU / FP / FN of ``model`` on ``ds``'s ground
    truth; each process scores its share and the confusion matrices are summed."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(ds.num_classes)
    ids = ds.ids[dist.rank() :: dist.world_size()]
    for image_id in tqdm(ids, desc="val", disable=not progress, leave=False, unit="img"):
        sample = ds.load(image_id)
        probs = segment(model, sample.image, base_size=base_size)
        cm.update(sample.mask, probs.argmax(0).cpu().numpy())
    cm.all_reduce()
    model.train(was_training)
    return cm.compute(ds.class_names)


def predict(cfg: PredictConfig, progress: bool = True) -> Path:
    """Segment every image of ``cfg.data`` and write ``out/<id>.png``; returns ``out``."""
    out = Path(cfg.out)
    device = dist.init_distributed(cfg.device)
    model, train_cfg = load_trained_segmenter(cfg.seg_dir, device)
    crop = cfg.crop or train_cfg.crop
    stride = cfg.stride or max(1, 2 * crop // 3)
    ds = build_dataset(cfg.data)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("device", "overwrite")}
    if dist.is_main():
        prepare_output(out, settings, cfg, "predictions", cfg.overwrite)
    dist.barrier()
    todo = pending_ids(ds.ids, out, ".png", "predictions", cfg.overwrite)
    from wsss.engine.loop import tracked

    for image_id in tracked(todo, "predict", progress):
        image = read_image(ds.image_path(image_id))
        probs = segment(model, image, base_size=train_cfg.base_size, scales=tuple(cfg.scales), flip=cfg.flip,
                        mode=cfg.mode, crop=crop, stride=stride)
        if cfg.crf:
            mask = crf_from_probs(image, probs.cpu().numpy())
        else:
            mask = probs.argmax(0).cpu().numpy()
        write_mask(out / f"{image_id}.png", mask.astype(np.uint8))
    dist.barrier()
    if dist.is_main():
        write_json(out / "done.json", {"images": len(ds.ids), "mode": cfg.mode, "scales": list(cfg.scales)})
        from wsss.config import gt_folder, shell_command

        print(f"predict done: {len(ds.ids)} masks in {out}. Next: "
              + shell_command("eval", "--pred", out, "--gt", gt_folder(ds)))
    return out
