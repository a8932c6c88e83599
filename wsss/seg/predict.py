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
from typing import ClassVar, Literal

import numpy as np

from wsss.config import check_choices
from wsss.engine.outputs import ImageOutputs, batches_by_key, output_settings
from wsss.data import DataConfig, build_dataset
from wsss.engine import dist
from wsss.io import read_image, write_mask
from wsss.seg.inference import (  # noqa: F401  (re-exported: their home was this module)
    INFER_MODES,
    crf_from_probs,
    evaluate_segmenter,
    segment,
    segment_batch,
    slide_probs,
)
from wsss.seg.model import load_trained_segmenter  # noqa: F401  (re-exported)


@dataclass
class PredictConfig:
    """Settings of ``wsss predict``.

    seg_dir: a ``train-seg`` output folder. data: the images to segment (its masks are not used).
    out: folder for ``<id>.png`` palette masks.
    mode: ``whole`` or ``slide``. scales: resize factors on top of the training base size.
    flip: also run the mirrored image. crop / stride: sliding-window size and step, pixels
    (0: the training crop, and two thirds of it).
    crf: refine with a dense CRF (pydensecrf) whose unary is the averaged softmax.
    batch_size: images of the same size that go through the network together (a GPU's speed-up);
    each image's probabilities are its own (eval mode), so the masks are those made one by one and
    the setting is not part of the output's manifest.
    amp: the forwards under autocast, float16 on a GPU (bfloat16 on a CPU; :mod:`wsss.engine.precision`),
    the logits averaged in float32. Off by default; recorded in the manifest, as a few labels may change.
    """

    seg_dir: str = "runs/seg"
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/pred"
    mode: Literal["whole", "slide"] = "whole"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop: int = 0
    stride: int = 0
    crf: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False
    batch_size: int = 1
    amp: bool = False

    RUN_ONLY: ClassVar[tuple[str, ...]] = ("device", "overwrite", "batch_size")
    """Settings that do not change the masks: left out of the output's manifest (:func:`output_settings`)."""


def predict(cfg: PredictConfig, progress: bool = True) -> Path:
    """Segment every image of ``cfg.data`` and write ``out/<id>.png``; returns ``out``."""
    check_choices(cfg)
    outputs = ImageOutputs(cfg.out, "predictions", cfg.overwrite, {"amp": False})
    out = outputs.out
    device = dist.init_distributed(cfg.device)
    model, train_cfg = load_trained_segmenter(cfg.seg_dir, device)
    crop = cfg.crop or train_cfg.crop
    stride = cfg.stride or max(1, 2 * crop // 3)
    ds = build_dataset(cfg.data)
    outputs.open(output_settings(cfg), cfg)

    def loop(todo: list[str], track) -> None:
        images = ((image_id, read_image(ds.image_path(image_id))) for image_id in track(todo))
        for group in batches_by_key(images, cfg.batch_size, key=lambda item: item[1].shape[:2]):
            probs = segment_batch(model, [image for _, image in group], base_size=train_cfg.base_size,
                                  scales=tuple(cfg.scales), flip=cfg.flip, mode=cfg.mode, crop=crop, stride=stride,
                                  amp=cfg.amp)
            for (image_id, image), p in zip(group, probs):
                mask = crf_from_probs(image, p.cpu().numpy()) if cfg.crf else p.argmax(0).cpu().numpy()
                write_mask(out / f"{image_id}.png", mask.astype(np.uint8))

    outputs.run(ds.ids, ".png", "predict", progress, loop=loop)
    outputs.finish({"images": len(ds.ids), "mode": cfg.mode, "scales": list(cfg.scales)})
    if dist.is_main():
        from wsss.config import gt_folder, shell_command

        print(f"predict done: {len(ds.ids)} masks in {out}. Next: "
              + shell_command("eval", "--pred", out, "--gt", gt_folder(ds)))
    return out
