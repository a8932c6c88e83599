"""``wsss make-pseudo``: pseudo masks from CAM files.

Modes (``refine``):

* ``none``: background plane at ``threshold``, argmax (ties to background);
* ``crf``: the same seed refined by a dense CRF (IRN's settings);
* ``ir-label``: IRNet's training labels (two CRF passes at ``conf_fg`` and
  ``conf_bg``; 255 where neither is confident), the first step of IRN.

Masks are palette PNGs (``<id>.png``) written atomically; images already done
are skipped, so an interrupted run continues. CPU-bound work runs in
``workers`` processes.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from wsss.cam.extract import load_cam
from wsss.config import MANIFEST, ConfigError, check_output_settings, save_config, to_dict
from wsss.data import DataConfig, build_dataset
from wsss.io import read_image, write_json, write_mask
from wsss.metrics import cam_to_mask

REFINE_MODES = ("none", "crf", "ir-label")


@dataclass
class MakePseudoConfig:
    """cam_dir: folder of CAM files. refine: none | crf | ir-label.
    threshold: background threshold of the seed (none, crf).
    conf_fg / conf_bg: IRN's confident foreground / background thresholds (ir-label).
    workers: processes. out: folder of palette PNG masks. overwrite: redo existing masks."""

    data: DataConfig = field(default_factory=DataConfig)
    cam_dir: str = "runs/cam"
    refine: str = "crf"
    threshold: float = 0.25
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    workers: int = 2
    out: str = "runs/pseudo"
    overwrite: bool = False


def _one(image_id: str, image_path: str, cfg: MakePseudoConfig) -> str:
    from wsss.pseudo.crf import crf_refine_cams, ir_label

    cams = load_cam(cfg.cam_dir, image_id)
    high, keys = cams["high_res"], cams["keys"] + 1
    if cfg.refine == "none":
        mask = cam_to_mask(high, keys, cfg.threshold)
    else:
        image = read_image(image_path)
        if image.shape[:2] != high.shape[1:]:
            raise ValueError(f"CAM of '{image_id}' is {high.shape[1:]} but the image is {image.shape[:2]}")
        if cfg.refine == "crf":
            mask = crf_refine_cams(image, high, keys, cfg.threshold)
        else:
            mask = ir_label(image, high, keys, cfg.conf_fg, cfg.conf_bg)
    write_mask(Path(cfg.out) / f"{image_id}.png", mask)
    return image_id


def make_pseudo(cfg: MakePseudoConfig, progress: bool = True) -> Path:
    if cfg.refine not in REFINE_MODES:
        raise ConfigError(f"refine must be one of {', '.join(REFINE_MODES)}, got '{cfg.refine}'")
    out = Path(cfg.out)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "overwrite")}
    check_output_settings(out, settings, "masks", cfg.overwrite)
    ds = build_dataset(cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, settings)
    save_config(cfg, out / "config.yaml")
    todo = ds.ids if cfg.overwrite else [i for i in ds.ids if not (out / f"{i}.png").is_file()]
    if len(todo) < len(ds.ids):
        print(f"{len(ds.ids) - len(todo)} of {len(ds.ids)} masks already in {out}; continuing")
    paths = [str(ds.image_path(i)) for i in todo]
    bar = tqdm(total=len(todo), desc=f"make-pseudo {cfg.refine}", disable=not progress, unit="img")
    if cfg.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            for _ in pool.map(partial(_one, cfg=cfg), todo, paths, chunksize=4):
                bar.update(1)
    else:
        for image_id, path in zip(todo, paths):
            _one(image_id, path, cfg)
            bar.update(1)
    bar.close()
    write_json(out / "done.json", {"images": len(ds.ids), "refine": cfg.refine})
    return out
