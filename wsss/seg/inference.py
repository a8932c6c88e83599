"""Inference with a segmentation network: whole-image and sliding-window probabilities at
several scales with flips (:func:`segment`), the dense-CRF refinement of ``wsss predict``, and the
single-scale validation score of ``wsss train-seg`` (:func:`evaluate_segmenter`)."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.config import ConfigError
from wsss.data.base import SegDataset
from wsss.data.transforms import normalize
from wsss.engine import dist
from wsss.engine.precision import inference_autocast
from wsss.eval.metrics import ConfusionMatrix, SegMetrics

INFER_MODES = ("whole", "slide")


def _forward_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(x)["out"].float(), dim=1)


def slide_probs(model: torch.nn.Module, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Sliding-window inference as mmseg's ``slide_inference`` (and PCAA's ``predict_sliding``):
    (B, 3, H, W) -> (B, K, H, W) softmax of the logits averaged over windows of ``crop`` every
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
                total = torch.zeros(logits.shape[0], logits.shape[1], h, w, device=x.device)
            total[:, :, y0 : y0 + ch, x0 : x0 + cw] += logits
            count[:, :, y0 : y0 + ch, x0 : x0 + cw] += 1
    return torch.softmax(total / count, dim=1)


@torch.no_grad()
def segment(model: torch.nn.Module, image: np.ndarray, **kwargs) -> torch.Tensor:
    """Averaged class probabilities of one image, ``image`` (H, W, 3) uint8 ->
    (K, H, W) float32 on the model's device; ``kwargs`` are :func:`segment_batch`'s (``base_size``,
    ``scales``, ``flip``, ``mode``, ``crop``, ``stride``). With ``flip`` the image and its mirror go
    through the network as one batch of two (one forward per scale or window instead of two)."""
    return segment_batch(model, [image], **kwargs)[0]


@torch.no_grad()
def segment_batch(
    model: torch.nn.Module,
    images: list[np.ndarray],
    *,
    base_size: int,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop: int = 512,
    stride: int = 341,
    amp: bool = False,
) -> torch.Tensor:
    """:func:`segment` of several images of one size in one forward per scale or window (with
    ``flip``, the images and their mirrors: a batch of 2B) -> (B, K, H, W). The network is in eval
    mode, so each image's probabilities are the ones it gets alone (to float round-off). ``amp``: the
    forwards under autocast (:mod:`wsss.engine.precision`); the logits are averaged in float32."""
    if mode not in INFER_MODES:
        raise ConfigError(f"mode must be one of {', '.join(INFER_MODES)}, got '{mode}'")
    device = next(model.parameters()).device
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("segment_batch needs images of one size")
    n = len(images)
    fit = min(4 * base_size / max(h, w), base_size / min(h, w))
    total = None
    for s in scales:
        size = (max(1, int(w * fit * s + 0.5)), max(1, int(h * fit * s + 0.5)))
        x = torch.from_numpy(np.stack([normalize(cv2.resize(im, size, interpolation=cv2.INTER_LINEAR))
                                       for im in images])).to(device)
        xb = torch.cat([x, x.flip(-1)]) if flip else x
        with inference_autocast(device, amp):
            p = slide_probs(model, xb, crop, stride) if mode == "slide" else _forward_probs(model, xb)
        if flip:
            p = torch.cat([p[:n], p[n:].flip(-1)])
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            p = p[:n] + p[n:]
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
