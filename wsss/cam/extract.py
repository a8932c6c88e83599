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
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.cls.models import load_trained_classifier
from wsss.cls.transforms import normalize
from wsss.config import ConfigError, check_output_settings, pending_ids, prepare_output, to_dict
from wsss.data import DataConfig, build_dataset
from wsss.engine import dist
from wsss.io import WsssDataError, atomic_write, write_json

MethodFn = Callable[[torch.nn.Module, torch.Tensor, "ExtractCamConfig"], torch.Tensor]
CAM_METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        CAM_METHODS[name] = fn
        return fn

    return deco


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
    return adcam_maps(cam, attn, k=cfg.topk, steps=cfg.steps, mode=cfg.diffusion)


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
    """

    data: DataConfig = field(default_factory=DataConfig)
    cls_dir: str = "runs/cls"
    method: str = "cam"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    topk: int = 50
    steps: int = 2
    diffusion: str = "distribute"
    device: str = "auto"
    file_format: str = "npz"
    out: str = "runs/cam"
    overwrite: bool = False


CAM_FILE_SUFFIX = {"npz": ".npz", "irn": ".npy"}
MANIFEST_IMPLIED = {"file_format": "npz"}
"""What a CAM folder's manifest written before ``file_format`` existed means: .npz files."""


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


@torch.no_grad()
def compute_cams(
    model: torch.nn.Module, image: np.ndarray, label: np.ndarray, cfg: ExtractCamConfig, device: torch.device
) -> dict[str, np.ndarray]:
    """The driver for one image: (H, W, 3) uint8 + (K,) multi-hot -> IRN's CAM dict."""
    method = CAM_METHODS[cfg.method]
    h, w = image.shape[:2]
    keys = np.flatnonzero(label > 0).astype(np.int64)
    strided = (math.ceil(h / 4), math.ceil(w / 4))
    up = (math.ceil(h / 16) * 16, math.ceil(w / 16) * 16)
    cam = torch.zeros((len(keys),) + strided, device=device)
    high = torch.zeros((len(keys),) + up, device=device)
    key_t = torch.from_numpy(keys).to(device)
    for scale in cfg.scales:
        x = torch.from_numpy(normalize(np.ascontiguousarray(_resize(image, scale))))[None].to(device)
        if cfg.flip:
            x = torch.cat([x, x.flip(-1)])
        maps = method(model, x, cfg).float()[:, key_t]
        if maps.min() < 0:
            raise RuntimeError(f"method '{cfg.method}' returned negative activations")
        m = maps[0] + maps[1].flip(-1) if cfg.flip else maps[0]
        cam += F.interpolate(m[None], strided, mode="bilinear", align_corners=False)[0]
        high += F.interpolate(m[None], up, mode="bilinear", align_corners=False)[0]
    high = high[:, :h, :w]
    cam /= cam.flatten(1).max(1)[0][:, None, None] + 1e-5 if len(keys) else 1
    high /= high.flatten(1).max(1)[0][:, None, None] + 1e-5 if len(keys) else 1
    return {"keys": keys, "cam": cam.cpu().numpy(), "high_res": high.cpu().numpy()}


def save_cam(path: str | Path, cams: dict[str, np.ndarray]) -> Path:
    """Write one image's CAMs: ``.npz`` (pickle-free) or, for a ``.npy`` path, IRN's pickled dict
    with ``cam`` as a CPU torch tensor (IRN's ``make_sem_seg_labels`` calls ``.cuda()`` on it)."""
    if Path(path).suffix == ".npy":
        irn = {"keys": np.asarray(cams["keys"], np.int64), "cam": torch.from_numpy(np.asarray(cams["cam"])),
               "high_res": np.asarray(cams["high_res"])}
        return atomic_write(path, lambda tmp: np.save(tmp, irn, allow_pickle=True))
    return atomic_write(path, lambda tmp: np.savez(tmp, keys=cams["keys"], cam=cams["cam"], high_res=cams["high_res"]))


def load_cam(cam_dir: str | Path, image_id: str) -> dict[str, np.ndarray]:
    """Read ``<id>.npz`` (wsss; a make-pseudo score file gives its ``scores`` as ``high_res``) or
    ``<id>.npy`` (IRN's pickled dict; cam may be a torch tensor)."""
    cam_dir = Path(cam_dir)
    npz, npy = cam_dir / f"{image_id}.npz", cam_dir / f"{image_id}.npy"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            out = {k: f[k] for k in ("keys", "cam", "high_res") if k in f}
            if "high_res" not in out and "scores" in f:
                # make-pseudo --save-scores: the walk's normalised full-size scores, read as CAMs so
                # that eval-cam sweeps, and make-pseudo --refine none applies, another threshold
                out["high_res"] = f["scores"]
    elif npy.is_file():
        obj = np.load(npy, allow_pickle=True)
        obj = obj.item() if obj.dtype == object and obj.shape == () else obj
        if not isinstance(obj, dict) or "keys" not in obj:
            raise WsssDataError(f"{npy} is not an IRN CAM file (a dict with 'keys', 'cam', 'high_res')")
        out = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}
    else:
        raise WsssDataError(f"no CAM file for '{image_id}' in {cam_dir} (expected {npz.name} or {npy.name})")
    out["keys"] = np.asarray(out["keys"], dtype=np.int64).reshape(-1)
    for k in ("cam", "high_res"):
        if k in out and out[k].shape[0] != out["keys"].shape[0]:
            raise WsssDataError(
                f"CAM file of '{image_id}': '{k}' has {out[k].shape[0]} planes but {out['keys'].shape[0]} keys"
            )
    return out



def _manifest(cfg: ExtractCamConfig) -> dict:
    d = to_dict(cfg)
    d.pop("overwrite")
    d.pop("device")
    weights = Path(cfg.cls_dir) / "model.safetensors"
    d["checkpoint_mtime"] = weights.stat().st_mtime if weights.is_file() else None
    return d


def extract_cams(cfg: ExtractCamConfig, progress: bool = True) -> Path:
    """Run the stage over ``cfg.data``; returns the output folder. Images already
    written are skipped (unless ``overwrite``); under torchrun each rank takes
    every world_size-th image."""
    if cfg.method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method '{cfg.method}'; choose one of {', '.join(CAM_METHODS)}")
    if cfg.diffusion not in ("distribute", "average"):
        raise ConfigError(f"diffusion must be 'distribute' or 'average', got '{cfg.diffusion}'")
    if cfg.file_format not in CAM_FILE_SUFFIX:
        raise ConfigError(f"file_format must be 'npz' or 'irn', got '{cfg.file_format}'")
    suffix = CAM_FILE_SUFFIX[cfg.file_format]
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.out)
    manifest = _manifest(cfg)
    check_output_settings(out, manifest, "CAMs", cfg.overwrite, MANIFEST_IMPLIED)
    ds = build_dataset(cfg.data)
    model, _ = load_trained_classifier(cfg.cls_dir, device)
    if dist.is_main():
        prepare_output(out, manifest, cfg, "CAMs", cfg.overwrite, MANIFEST_IMPLIED)
    dist.barrier()
    todo = pending_ids(ds.ids, out, suffix, "CAM files", cfg.overwrite)
    for image_id in tqdm(todo, desc=f"extract-cam {cfg.method}", disable=not (progress and dist.is_main()), unit="img"):
        sample = ds.load(image_id, with_mask=False)
        save_cam(out / f"{image_id}{suffix}", compute_cams(model, sample.image, sample.label, cfg, device))
        for other in set(CAM_FILE_SUFFIX.values()) - {suffix}:  # after --overwrite in the other format
            (out / f"{image_id}{other}").unlink(missing_ok=True)
    dist.barrier()
    if dist.is_main():
        write_json(out / "done.json", {"images": len(ds.ids), "method": cfg.method})
    return out
