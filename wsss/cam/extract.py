"""``wsss extract-cam``: class activation maps from a trained classifier.

One driver owns everything the methods share (IRN's protocol): for each scale
(default 1.0, 0.5, 1.5, 2.0) the image and its mirror go through the network;
the method turns them into non-negative per-class maps at the feature stride;
the mirrored map is flipped back and added; maps are resized to the stride-4
grid ``ceil(H/4) x ceil(W/4)`` (``cam``) and to full size (``high_res``),
summed over scales, reduced to the image's classes and divided by their own
maximum + 1e-5 (AD-CAM Eq. 2). A method only says how one scaled image becomes
per-class maps (:data:`CAM_METHODS`).

Per image the driver writes ``<id>.npz`` (no pickle) with ``keys`` (0-based
foreground indices of the image's classes, IRN's convention), ``cam`` (n,
ceil(H/4), ceil(W/4)) and ``high_res`` (n, H, W), float32. IRN's own ``.npy``
files are read by :func:`load_cam`, so CAMs made elsewhere can be refined and
scored here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsss.cls.models import load_trained_classifier
from wsss.data.transforms import normalize, resize_to, scaled_size
from wsss.config import ConfigError, check_choices
from wsss.engine.outputs import ImageOutputs, batches_by_key, output_settings
from wsss.data import DataConfig, build_dataset, require_background
from wsss.engine import dist
from wsss.engine.precision import inference_autocast
from wsss.cam.files import CAM_FILE_SUFFIX, load_cam, save_cam  # noqa: F401  (re-exported)
from wsss.io import WsssDataError
from wsss.registry import Registry

MethodFn = Callable[[torch.nn.Module, torch.Tensor, "ExtractCamConfig"], torch.Tensor]
CAM_METHODS: Registry = Registry("CAM method", error=ConfigError, sort_known=False)


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding a CAM method to :data:`CAM_METHODS` under ``name``."""
    return CAM_METHODS.register(name)


@register_method("cam")
def vanilla_cam(model: torch.nn.Module, x: torch.Tensor, cfg: "ExtractCamConfig") -> torch.Tensor:
    """CAM (AD-CAM Eq. 2 before normalisation): ReLU(w_k . f). (B, K, h, w)."""
    return F.relu(model.class_maps(x))


@register_method("partial")
def partial_cam(model: torch.nn.Module, x: torch.Tensor, cfg: "ExtractCamConfig") -> torch.Tensor:
    """Partial CAM (PCAA Eq. 3): the class maps of a classifier trained with partial
    pooling (``train-cls --partial-pool S``), which keeps them faithful patch by patch."""
    if not getattr(model, "partial_pool", 0):
        raise ConfigError(
            "method 'partial' needs a classifier trained with partial pooling: rerun train-cls with "
            "partial_pool: 4 (and region_masks), or use --method cam"
        )
    return F.relu(model.class_maps(x))


def _conformer_parts(model: torch.nn.Module, x: torch.Tensor):
    if not hasattr(model, "net") or not hasattr(model.net, "forward_features"):
        raise ConfigError("this method needs a Conformer classifier (attention maps); the checkpoint is a ResNet")
    feats = model.net.forward_features(x, return_attn="mean")
    cam = F.relu(F.conv2d(feats.cnn, model.net.conv_cls_head.weight[:, :, None, None]))
    if cam.shape[-2:] != tuple(feats.grid):
        raise ConfigError(
            f"CNN map {tuple(cam.shape[-2:])} and token grid {tuple(feats.grid)} differ: AD-CAM needs a Conformer "
            "trained with drop_last_block: true (both at stride 16)"
        )
    return cam, feats.attn


@register_method("adcam")
def adcam(model: torch.nn.Module, x: torch.Tensor, cfg: "ExtractCamConfig") -> torch.Tensor:
    """AD-CAM (Sec. 4.2-4.3): CNN CAM diffused with the co-neighbor-refined attention."""
    from wsss.cam.adcam import adcam_maps

    cam, attn = _conformer_parts(model, x)
    return adcam_maps(cam, attn, k=cfg.topk, steps=cfg.steps, mode=cfg.diffusion, renorm=cfg.attn_renorm)


@register_method("attn-diffusion")
def attn_diffusion(model: torch.nn.Module, x: torch.Tensor, cfg: "ExtractCamConfig") -> torch.Tensor:
    """Table 3's "Att-Diffu only": diffusion with the unrefined attention."""
    from wsss.cam.adcam import attention_diffusion_maps

    cam, attn = _conformer_parts(model, x)
    return attention_diffusion_maps(cam, attn, steps=cfg.steps, mode=cfg.diffusion)


@register_method("tscam")
def tscam(model: torch.nn.Module, x: torch.Tensor, cfg: "ExtractCamConfig") -> torch.Tensor:
    """Table 3's TS-CAM coupling: CAM times the cls-token attention map."""
    from wsss.cam.adcam import tscam_maps

    cam, attn = _conformer_parts(model, x)
    return tscam_maps(cam, attn)


@dataclass
class ExtractCamConfig:
    """Settings of ``wsss extract-cam``.

    cls_dir: a train-cls output folder. method: one of CAM_METHODS.
    scales: image scale factors. flip: add the mirrored image at each scale.
    topk, steps, diffusion: AD-CAM's k (Eq. 7), T (Eq. 8) and direction
    (``distribute``: the paper's text; ``average``: earlier attention-CAM work).
    file_format: ``npz`` (``<id>.npz``, no pickle) or ``irn`` (``<id>.npy``, the pickled dict
    IRN's ``make_cam`` writes: ``keys``, ``cam`` as a CPU torch tensor, ``high_res``; what
    IRN-based code such as its ``make_sem_seg_labels`` loads). Every wsss stage reads both.
    out: folder of per-image CAM files. overwrite: redo images already written.
    attn_renorm: AD-CAM renormalises each row of A to 1 after dropping the cls token (Sec. 4.3);
    false keeps the raw rows (the behaviour before this option).
    resize: how each scale is made: ``pil`` (IRN's protocol: PIL bicubic, antialiased when
    downscaling; with OpenCV's cubic 2.7-8.8% of IRN's seed labels came out different) or ``opencv``.
    max_side: images whose long side is larger are downscaled to it before extraction and the
    maps resized back to the full image (none: never). Before each image the peak memory of the
    method at its largest scale is estimated (:func:`estimate_peak_bytes`); one that would not fit
    in the memory available is refused with the ``--max-side`` that fits, instead of swapping
    or being killed (a trial on a 4000 x 3000 image asked for 35 GB).
    batch_size: images of the same size that go through the network together (with their mirrors, a
    batch of 2 x batch_size per scale); a GPU's speed-up. The maps are each image's own (the
    classifier is in eval mode), equal to 1e-5 to those made one by one, so the setting is not part
    of the output's manifest.
    amp: the network's forwards under autocast, float16 on a GPU (bfloat16 on a CPU;
    :mod:`wsss.engine.precision`); AD-CAM's attention and Eq. 6-8 stay float32. Off by default (fp32,
    what the papers' code runs); recorded in the manifest, as the maps move slightly.
    """

    data: DataConfig = field(default_factory=DataConfig)
    cls_dir: str = "runs/cls"
    method: str = "cam"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    topk: int = 50
    steps: int = 2
    diffusion: Literal["distribute", "average"] = "distribute"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    file_format: Literal["npz", "irn"] = "npz"
    out: str = "runs/cam"
    overwrite: bool = False
    max_side: int | None = None
    resize: Literal["pil", "opencv"] = "pil"
    attn_renorm: bool = True
    batch_size: int = 1
    amp: bool = False

    RUN_ONLY: ClassVar[tuple[str, ...]] = ("overwrite", "device", "batch_size")
    """Settings that do not change the CAMs: left out of the output's manifest (:func:`output_settings`)."""


ATTENTION_METHODS = ("adcam", "attn-diffusion", "tscam")
# Peak bytes per input pixel of one image in the batch for the CNN forward, measured for Conformer-S/16
# (776 MiB for a flipped pair at 1000 x 750, README); ResNet-50 CAM nets are of the same order.
_CNN_BYTES_PER_PIXEL = 550


def estimate_peak_bytes(model: torch.nn.Module, method: str, h: int, w: int, scales, flip: bool,
                        images: int = 1) -> int:
    """Rough peak memory of one image's extraction at its largest scale: the CNN forward
    (proportional to pixels) plus, for the attention methods, the N x N token matrices (one block's
    per-head attention for the batch, the running mean, Eq. 6's similarity and the refined matrix).
    ``images``: images of that size in one forward (``batch_size``)."""
    s = max(scales)
    batch = images * (2 if flip else 1)
    hs, ws = math.ceil(h * s), math.ceil(w * s)
    total = batch * hs * ws * _CNN_BYTES_PER_PIXEL
    if method in ATTENTION_METHODS:
        n = math.ceil(hs / 16) * math.ceil(ws / 16) + 1
        heads = getattr(getattr(model, "net", None), "num_heads", 6)
        total += (batch * (heads + 1) + 3 * images) * n * n * 4
    return int(total)


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the maps are computed: the GPU's free memory, or Linux's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(model: torch.nn.Module, cfg: "ExtractCamConfig", image_id: str, h: int, w: int,
                 device: torch.device, free: int | None) -> None:
    """Refuse an image whose estimated peak exceeds the free memory, naming the ``--max-side`` that fits."""
    need = estimate_peak_bytes(model, cfg.method, h, w, cfg.scales, cfg.flip, cfg.batch_size)
    if free is None or need <= free:
        return
    side = max(h, w)
    while side > 16 and estimate_peak_bytes(model, cfg.method, round(h * side / max(h, w)), round(w * side / max(h, w)),
                                            cfg.scales, cfg.flip, cfg.batch_size) > free:
        side = int(side * 0.9)
    raise WsssDataError(
        f"image '{image_id}' ({w} x {h}) needs about {need / 2 ** 30:.1f} GiB for {cfg.method} at scale {max(cfg.scales)}, "
        f"more than the {free / 2 ** 30:.1f} GiB free on {device.type}. Pass --max-side {side} (larger images are "
        "downscaled for extraction, the maps resized back), or use smaller --scales"
        + (f" or a --batch-size below {cfg.batch_size}." if cfg.batch_size > 1 else ".")
    )


MANIFEST_IMPLIED = {"file_format": "npz", "max_side": None, "resize": "opencv", "class_names": None,
                    "attn_renorm": False, "amp": False}
"""What a CAM folder's manifest written before ``file_format`` existed means: .npz files."""


def _resize(image: np.ndarray, scale: float, kernel: str = "pil") -> np.ndarray:
    """The image at ``scale``: IRN's ``pil_rescale(img, s, order=3)`` (PIL bicubic, which widens its
    kernel when downscaling, i.e. antialiases) by default, or OpenCV's cubic (``kernel="opencv"``)."""
    if scale == 1.0:
        return image
    return resize_to(image, scaled_size(*image.shape[:2], scale), kernel, order=3, opencv=cv2.INTER_CUBIC)


@torch.no_grad()
def compute_cams(
    model: torch.nn.Module, image: np.ndarray, label: np.ndarray, cfg: ExtractCamConfig, device: torch.device
) -> dict[str, np.ndarray]:
    """The driver for one image: (H, W, 3) uint8 + (K,) multi-hot -> IRN's CAM dict."""
    return compute_cams_batch(model, [image], [label], cfg, device)[0]


@torch.no_grad()
def compute_cams_batch(
    model: torch.nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: ExtractCamConfig,
    device: torch.device,
) -> list[dict[str, np.ndarray]]:
    """:func:`compute_cams` for several images of one size, which go through the network together:
    at each scale one forward of the images and their mirrors (a batch of 2B). The classifier is in
    eval mode and every method works image by image, so each image's maps are its own maps
    computed alone (to float round-off; ``test_extract_cam.py`` checks 1e-5)."""
    method = CAM_METHODS[cfg.method]
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("compute_cams_batch needs images of one size")
    n = len(images)
    keys = [np.flatnonzero(label > 0).astype(np.int64) for label in labels]
    key_t = [torch.from_numpy(k).to(device) for k in keys]
    strided = (math.ceil(h / 4), math.ceil(w / 4))
    padded_size = (math.ceil(h / 16) * 16, math.ceil(w / 16) * 16)
    cams = [torch.zeros((len(k),) + strided, device=device) for k in keys]
    highs = [torch.zeros((len(k),) + padded_size, device=device) for k in keys]
    for scale in cfg.scales:
        x = torch.from_numpy(np.stack([normalize(np.ascontiguousarray(_resize(im, scale, cfg.resize)))
                                       for im in images])).to(device)
        if cfg.flip:
            x = torch.cat([x, x.flip(-1)])
        with inference_autocast(device, cfg.amp):
            maps = method(model, x, cfg).float()
        for i in range(n):
            if not len(keys[i]):  # no class: nothing to add (min() and interpolate refuse empty maps)
                continue
            own = maps[i, key_t[i]]
            mirrored = maps[n + i, key_t[i]] if cfg.flip else None
            if own.min() < 0 or (mirrored is not None and mirrored.min() < 0):
                raise RuntimeError(f"method '{cfg.method}' returned negative activations")
            m = own + mirrored.flip(-1) if cfg.flip else own
            cams[i] += F.interpolate(m[None], strided, mode="bilinear", align_corners=False)[0]
            highs[i] += F.interpolate(m[None], padded_size, mode="bilinear", align_corners=False)[0]
    out = []
    for k, cam, high in zip(keys, cams, highs):
        high = high[:, :h, :w]
        cam /= cam.flatten(1).max(1)[0][:, None, None] + 1e-5 if len(k) else 1
        high /= high.flatten(1).max(1)[0][:, None, None] + 1e-5 if len(k) else 1
        out.append({"keys": k, "cam": cam.cpu().numpy(), "high_res": high.cpu().numpy()})
    return out


def _check_sizes_fit(model: torch.nn.Module, cfg: ExtractCamConfig, ds, device: torch.device, free: int | None) -> None:
    """:func:`check_memory` for the largest image of the split (sizes read from the file headers)."""
    from wsss.io import read_image_size

    if free is None:
        return
    biggest, size = None, (0, 0)
    for image_id in ds.ids:
        h, w = read_image_size(ds.image_path(image_id))
        if cfg.max_side and max(h, w) > cfg.max_side:
            f = cfg.max_side / max(h, w)
            h, w = max(1, round(h * f)), max(1, round(w * f))
        if h * w > size[0] * size[1]:
            biggest, size = image_id, (h, w)
    if biggest is not None:
        check_memory(model, cfg, biggest, size[0], size[1], device, free)


def extract_one(model: torch.nn.Module, image: np.ndarray, label: np.ndarray, cfg: ExtractCamConfig,
                device: torch.device) -> dict[str, np.ndarray]:
    """:func:`compute_cams` on the image, or on it downscaled to ``cfg.max_side`` with the maps resized
    back to the full image's stride-4 and full-size grids (max-normalised again). Memory was checked
    for the split's largest image before the loop (:func:`_check_sizes_fit`)."""
    return extract_batch(model, [image], [label], cfg, device)[0]


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def extract_batch(model: torch.nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                  cfg: ExtractCamConfig, device: torch.device) -> list[dict[str, np.ndarray]]:
    """:func:`extract_one` for images of one size, in one batch (:func:`compute_cams_batch`)."""
    h, w = images[0].shape[:2]
    small = [_shrink(im, cfg.max_side) for im in images]
    batch = compute_cams_batch(model, small, labels, cfg, device)
    if small[0] is images[0]:
        return batch
    out = []
    for cams in batch:
        one = {"keys": cams["keys"]}
        for key, size in (("cam", (math.ceil(h / 4), math.ceil(w / 4))), ("high_res", (h, w))):
            if not len(cams["keys"]):
                one[key] = np.zeros((0,) + size, np.float32)
                continue
            m = F.interpolate(torch.from_numpy(cams[key])[None], size, mode="bilinear", align_corners=False)[0]
            m /= m.flatten(1).max(1)[0][:, None, None] + 1e-5
            one[key] = m.numpy()
        out.append(one)
    return out


def _checkpoint_mtime(cfg: ExtractCamConfig) -> float | None:
    weights = Path(cfg.cls_dir) / "model.safetensors"
    return weights.stat().st_mtime if weights.is_file() else None


def extract_cams(cfg: ExtractCamConfig, progress: bool = True) -> Path:
    """Run the stage over ``cfg.data``; returns the output folder. Images already
    written are skipped (unless ``overwrite``); under torchrun each rank takes
    every world_size-th image."""
    CAM_METHODS.lookup(cfg.method)
    check_choices(cfg)
    suffix = CAM_FILE_SUFFIX[cfg.file_format]
    device = dist.init_distributed(cfg.device)
    outputs = ImageOutputs(cfg.out, "CAMs", cfg.overwrite, MANIFEST_IMPLIED)
    out = outputs.out
    ds = build_dataset(cfg.data)
    require_background(ds, "extract-cam")
    manifest = output_settings(cfg, checkpoint_mtime=_checkpoint_mtime(cfg), class_names=list(ds.class_names))
    outputs.check(manifest)
    model, _ = load_trained_classifier(cfg.cls_dir, device)
    free = available_bytes(device)
    _check_sizes_fit(model, cfg, ds, device, free)  # before the manifest: a refusal leaves nothing behind
    outputs.open(manifest, cfg)

    def write(image_id: str, cams: dict[str, np.ndarray]) -> None:
        save_cam(out / f"{image_id}{suffix}", cams)
        for other in set(CAM_FILE_SUFFIX.values()) - {suffix}:  # after --overwrite in the other format
            (out / f"{image_id}{other}").unlink(missing_ok=True)

    def loop(todo: list[str], track) -> None:
        # images of one size wait until batch_size of them go through the network together
        samples = ((image_id, ds.load(image_id, with_mask=False)) for image_id in track(todo))
        for group in batches_by_key(samples, cfg.batch_size, key=lambda item: item[1].image.shape[:2]):
            cams = extract_batch(model, [s.image for _, s in group], [s.label for _, s in group], cfg, device)
            for (image_id, _), c in zip(group, cams):
                write(image_id, c)

    outputs.run(ds.ids, suffix, f"extract-cam {cfg.method}", progress, loop=loop, files="CAM files")
    outputs.finish({"images": len(ds.ids), "method": cfg.method})
    return out
