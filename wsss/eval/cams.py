"""``wsss eval-cam``: seed quality as the papers report it (AD-CAM Table 3).

Sweeps the background threshold over the whole split, reports the best mIoU
with its threshold, FP and FN, and writes the curve as JSON and as a PNG plot.
Seeds are scored at full resolution (``high_res``) against the split's
ground-truth masks.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.cam.files import load_cam
from wsss.engine.outputs import check_provenance
from wsss.data import DataConfig, build_dataset, require_background
from wsss.io import WsssDataError, atomic_write, write_json
from wsss.eval.metrics import SweepResult, ThresholdSweep


@dataclass
class EvalCamConfig:
    """cam_dir: folder of CAM files (.npz, or IRN's .npy). thresholds: start,
    stop (inclusive) and step of the background-threshold sweep. out: JSON
    path (default ``<cam_dir>/eval_cam.json``; the plot goes beside it as .png). threshold: a fixed
    background threshold also reported (IRN reports its seeds at 0.15; AD-CAM and SEAM at the best
    threshold of the sweep), so a result compares with either paper."""

    data: DataConfig = field(default_factory=DataConfig)
    cam_dir: str = "runs/cam"
    thresholds: tuple[float, float, float] = (0.0, 0.95, 0.01)
    threshold: float = 0.15
    out: str | None = None
    workers: int = 4


def evaluate_cams(cfg: EvalCamConfig, progress: bool = True) -> SweepResult:
    ds = build_dataset(cfg.data)
    require_background(ds, "eval-cam")
    check_provenance(cfg.cam_dir, ds.class_names, "CAMs")
    if not ds.has_masks():
        raise WsssDataError(f"split '{ds.split}' of {ds.root} has no ground-truth masks to score seeds against")
    start, stop, step = cfg.thresholds
    if step <= 0 or stop < start:
        raise WsssDataError(f"thresholds must be (start, stop >= start, step > 0), got {cfg.thresholds}")
    grid = np.round(np.arange(start, stop + step / 2, step), 6)
    sweep = ThresholdSweep(ds.num_classes, np.unique(np.append(grid, round(cfg.threshold, 6))))

    def load(image_id: str):
        gt = ds.read_checked_mask(ds.mask_path(image_id))
        cams = load_cam(cfg.cam_dir, image_id)
        if len(cams["keys"]) and int(cams["keys"].max()) >= ds.num_fg:
            raise WsssDataError(
                f"CAM of '{image_id}' has class index {int(cams['keys'].max())}, but this dataset has {ds.num_fg} "
                "foreground classes: were these CAMs made for another dataset?"
            )
        if cams["high_res"].shape[1:] != gt.shape:
            raise WsssDataError(
                f"CAM of '{image_id}' is {cams['high_res'].shape[1:]} but its mask is {gt.shape}: wrong CAM folder?"
            )
        return gt, cams

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for gt, cams in tqdm(pool.map(load, ds.ids), total=len(ds), desc="eval-cam", disable=not progress, unit="img"):
            sweep.update(gt, cams["high_res"], cams["keys"] + 1)
    result = sweep.results(ds.class_names)
    out = Path(cfg.out) if cfg.out else Path(cfg.cam_dir) / "eval_cam.json"
    payload = result.to_dict()
    fixed = result.at(cfg.threshold)
    payload.update({"num_images": len(ds), "cam_dir": str(cfg.cam_dir),
                    "fixed": {"threshold": cfg.threshold, "mIoU": 100 * fixed.miou, "FP": 100 * fixed.mean_fp,
                              "FN": 100 * fixed.mean_fn}})
    write_json(out, payload)
    plot_sweep(result, out.with_suffix(".png"), title=str(cfg.cam_dir))
    return result


def plot_sweep(result: SweepResult, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.to_dict()["curve"]
    t = [c["threshold"] for c in d]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, style in (("mIoU", "-"), ("FP", "--"), ("FN", ":")):
        ax.plot(t, [np.nan if c[key] is None else c[key] for c in d], style, label=key)
    ax.axvline(result.best_threshold, color="gray", lw=0.8)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("percent")
    ax.set_title(f"{title}\nbest mIoU {100 * result.best.miou:.2f} at {result.best_threshold:.2f}", fontsize=9)
    ax.legend()
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    atomic_write(path, save)
    plt.close(fig)
    return Path(path)
