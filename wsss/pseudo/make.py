"""``wsss make-pseudo``: pseudo masks from CAM files.

Modes (``refine``):

* ``none``: background plane at ``threshold``, argmax (ties to background);
* ``crf``: the same seed refined by a dense CRF (IRN's settings);
* ``ir-label``: IRNet's training labels (two CRF passes at ``conf_fg`` and
  ``conf_bg``; 255 where neither is confident), the first step of IRN;
* ``irn`` (AD-CAM's path, Sec. 4.4): the whole of IRN in one call: IR labels
  into ``out/ir_label``, IRNet's boundary branch trained on them into
  ``out/irn`` (or taken from ``irn_dir``), then per image the random walk
  (Eq. 9) of the stride-4 CAMs on the predicted boundaries and IRN's
  post-processing with ``threshold`` as the background score (0.25, IRN's
  ``sem_seg_bg_thres``). Boundary maps go to ``out/boundary`` (8-bit PNGs,
  255 = certain boundary); with ``save_scores`` the normalised walk scores go
  to ``out/scores/<id>.npz`` (``keys``, ``scores`` (K, H, W) float16) so the
  background threshold can be re-tuned without walking again.

Masks are palette PNGs (``<id>.png``) written atomically; images already done
are skipped, so an interrupted run continues. CPU-bound work runs in
``workers`` processes. Under ``torchrun`` the images are split over the ranks
(each still uses its ``workers``) and IRNet trains with DDP.
"""
from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal, get_args

import numpy as np
import torch

from wsss.cam.files import load_cam
from wsss.config import ConfigError, check_choices
from wsss.engine.outputs import ImageOutputs, batches_by_key, check_provenance, output_settings
from wsss.data import DataConfig, build_dataset, require_background
from wsss.engine import dist
from wsss.engine.workers import die_with_parent
from wsss.io import WsssDataError, atomic_write, read_image, read_image_size, write_gray, write_mask
from wsss.eval.metrics import cam_to_mask
from wsss.pseudo.irnet import infer_boundary_batch
from wsss.pseudo.random_walk import irn_postprocess, propagate_batch
from wsss.pseudo.train_irn import TrainIrnConfig

RefineMode = Literal["none", "crf", "ir-label", "irn"]
REFINE_MODES = get_args(RefineMode)
WALK_BATCH = 8


@dataclass
class MakePseudoConfig:
    """cam_dir: folder of CAM files. refine: none | crf | ir-label | irn.
    threshold: background threshold of the seed (none, crf) or of the walk's scores (irn).
    conf_fg / conf_bg: IRN's confident foreground / background thresholds (ir-label, irn).
    irn: boundary-net training settings (irn; its data, ir_labels and out are set here).
    irn_dir: an already trained boundary net (train-irn folder) instead of training one.
    beta / exp_times / radius: the random walk (Eq. 9): affinity power, 2^exp_times steps, stencil radius.
    save_scores: also write the walk's score maps (irn). device: where the boundary net and walk run.
    workers: processes. out: folder of PNG masks. overwrite: redo existing masks.
    mask_format: ``palette`` (VOC colours, wsss's default) or ``index`` (single-channel index PNGs, for
    IRN-based code, which reads masks with imageio: a palette PNG reads back as RGB there); the IR
    labels (``ir_label/``) follow it too.
    irn_pad: pad each image to this square before the boundary net at inference, as IRN pads to
    its training crop (``EdgeDisplacement``, 512); none = the boundary net's training crop; 0 = off.
    calibrate_from: these CAMs' best seed threshold ``s``, as a number or as the eval-cam folder
    (or its ``eval.json``) that found it (ir-label, irn). ``conf_fg``, ``conf_bg`` and ``threshold``
    are then read on IRN's CAM scale and mapped to these CAMs' by :func:`calibrate_threshold`. Not
    IRN, which fixes them for its ResNet-50 VOC CAMs (seed threshold 0.15, ``cam_eval_thres``):
    CAMs whose best seed threshold is far above that need them re-set, which work on flatter CAMs
    does by hand (AMN's scripts: conf_fg 0.45, conf_bg 0.15). Default none: IRN's values as given.
    boundary_batch: images of the same size that go through the boundary net together (irn; a
    GPU's speed-up). Each map is the image's own (frozen backbone, GroupNorm head), equal to 1e-5 to
    the one made alone, so the setting is not part of the output's manifest.
    amp: the boundary net's inference under autocast (irn), float16 on a GPU (bfloat16 on a CPU;
    :mod:`wsss.engine.precision`); the walk stays float64. Off by default; recorded in the manifest.
    (``irn.amp`` is the boundary net's training.)"""

    data: DataConfig = field(default_factory=DataConfig)
    cam_dir: str = "runs/cam"
    refine: RefineMode = "irn"
    threshold: float = 0.25
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    irn: TrainIrnConfig = field(default_factory=TrainIrnConfig)
    irn_dir: str | None = None
    beta: float = 10.0
    exp_times: int = 8
    radius: int = 5
    save_scores: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 2
    out: str = "runs/pseudo"
    overwrite: bool = False
    mask_format: Literal["palette", "index"] = "palette"
    irn_pad: int | None = None
    calibrate_from: str | None = None
    boundary_batch: int = 1
    amp: bool = False

    RUN_ONLY: ClassVar[tuple[str, ...]] = ("workers", "overwrite", "device", "boundary_batch")
    """Settings that do not change the masks: left out of the output's manifest (:func:`output_settings`;
    of ``irn``, its training config's ``RUN_ONLY``)."""
    IRN_ONLY: ClassVar[tuple[str, ...]] = ("irn", "irn_dir", "beta", "exp_times", "radius", "save_scores", "irn_pad",
                                           "amp")
    """Settings only ``refine: irn`` uses: left out of the other modes' manifests."""


IRN_SEED_THRESHOLD = 0.15
"""The background threshold IRN scores its ResNet-50 CAM seeds at (``cam_eval_thres``), the scale its
conf_fg / conf_bg / sem_seg_bg_thres were chosen on."""


def calibrate_threshold(t: float, seed_threshold: float) -> float:
    """Map a threshold ``t`` from IRN's CAM scale to CAMs whose best seed threshold is ``seed_threshold``.

    ``t -> t ** g`` with ``g = ln(seed_threshold) / ln(0.15)``: IRN's seed threshold 0.15 goes to
    ``seed_threshold``, 0 and 1 stay, and the order of thresholds is kept. Because CAMs are
    normalised to a maximum of 1, this is the same as raising the CAMs to the power ``1 / g`` and
    using IRN's thresholds on them.
    """
    if not 0 < seed_threshold < 1:
        raise ConfigError(f"the seed threshold to calibrate from must be in (0, 1), got {seed_threshold}")
    return float(t) ** (math.log(seed_threshold) / math.log(IRN_SEED_THRESHOLD))


def read_seed_threshold(source: str | float) -> float:
    """``calibrate_from`` -> the seed threshold: a number, or eval-cam's ``best_threshold`` from the
    JSON it wrote or the folder holding it."""
    try:
        return float(source)
    except (TypeError, ValueError):
        pass
    path = Path(source)
    if path.is_dir():
        # a recipe's eval_cam step writes eval.json; `wsss eval-cam` puts eval_cam.json in the CAM folder
        path = next((p for p in (path / "eval.json", path / "eval_cam.json") if p.is_file()), path / "eval.json")
    if not path.is_file():
        raise ConfigError(f"calibrate_from: no {path}; give a number, the JSON `wsss eval-cam` wrote, or the "
                          "folder that holds it (eval_cam.json in the CAM folder, or a recipe step's eval.json)")
    import json

    found = json.loads(path.read_text()).get("best_threshold")
    if found is None:
        raise ConfigError(f"calibrate_from: {path} has no best_threshold; is it eval-cam's eval.json?")
    return float(found)


def calibrated(cfg: MakePseudoConfig) -> tuple[MakePseudoConfig, float | None]:
    """The settings the masks are made with and the seed threshold they were calibrated to:
    ``(cfg, None)``, or ``cfg`` with ``conf_fg``, ``conf_bg`` and ``threshold`` mapped by
    :func:`calibrate_threshold` when ``calibrate_from`` is set."""
    if cfg.calibrate_from is None:
        return cfg, None
    if cfg.refine not in ("ir-label", "irn"):
        raise ConfigError(f"calibrate_from maps IRN's thresholds (refine ir-label or irn); with refine "
                          f"'{cfg.refine}' set --threshold to the seed threshold itself")
    s = read_seed_threshold(cfg.calibrate_from)
    return replace(cfg, calibrate_from=None, conf_fg=calibrate_threshold(cfg.conf_fg, s),
                   conf_bg=calibrate_threshold(cfg.conf_bg, s), threshold=calibrate_threshold(cfg.threshold, s)), s


def _mask_one_image(image_id: str, image_path: str, cfg: MakePseudoConfig) -> str:
    from wsss.pseudo.crf import crf_refine_cams, ir_label

    cams = load_cam(cfg.cam_dir, image_id)
    high, keys = cams["high_res"], cams["keys"] + 1
    # the thresholded seed needs only the image's size; the CRF modes need its pixels
    image = None if cfg.refine == "none" else read_image(image_path)
    size = read_image_size(image_path) if image is None else image.shape[:2]
    if tuple(size) != high.shape[1:]:
        raise WsssDataError(
            f"CAM of '{image_id}' is {tuple(high.shape[1:])} but the image is {tuple(size)}: "
            f"were the CAMs in {cfg.cam_dir} extracted from these images?"
        )
    if cfg.refine == "none":
        mask = cam_to_mask(high, keys, cfg.threshold)
    elif cfg.refine == "crf":
        mask = crf_refine_cams(image, high, keys, cfg.threshold)
    else:
        mask = ir_label(image, high, keys, cfg.conf_fg, cfg.conf_bg)
    write_mask(Path(cfg.out) / f"{image_id}.png", mask, index=cfg.mask_format == "index")
    return image_id


def _masks_image_by_image(cfg: MakePseudoConfig, ds, out: Path, progress: bool) -> None:
    """Run :func:`_mask_one_image` on every image not yet in ``out`` (in ``workers`` processes; under
    ``torchrun`` each rank takes every ``world``-th image, and all wait for the last)."""
    def masks(todo: list[str], track) -> None:
        paths = [str(ds.image_path(i)) for i in todo]
        if cfg.workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(cfg.workers, initializer=die_with_parent) as pool:
                for _ in track(pool.map(partial(_mask_one_image, cfg=cfg), todo, paths, chunksize=4), total=len(todo)):
                    pass
        else:
            for image_id, path in track(list(zip(todo, paths))):
                _mask_one_image(image_id, path, cfg)

    ImageOutputs(out, "masks", cfg.overwrite).run(ds.ids, ".png", f"make-pseudo {cfg.refine}", progress, loop=masks)


MASK_FORMAT_IMPLIED = {"mask_format": "palette", "irn_pad": 0, "class_names": None, "irn": {"resize": "opencv"},
                       "amp": False}
"""What a mask folder's manifest written before ``mask_format`` / ``irn_pad`` existed means
(palette PNGs; boundary maps without padding)."""


def warn_if_background_only(out: Path, ids: list[str], sample: int = 500, share: float = 0.98) -> float:
    """Say so when (a sample of) the masks are nearly all background: training a segmenter on them
    would learn background only. Returns the background share of the labelled pixels."""
    from wsss.io import read_mask

    step = max(1, len(ids) // sample)
    counts = np.zeros(256, np.int64)
    for image_id in ids[::step]:
        counts += np.bincount(read_mask(out / f"{image_id}.png").ravel(), minlength=256)
    labelled = counts[:255].sum()
    bg = float(counts[0] / labelled) if labelled else 1.0
    if bg >= share:
        print(f"make-pseudo: warning: {100 * bg:.1f}% of the labelled pixels of these masks are background; a "
              "segmenter trained on them learns background only. Lower --threshold or check the CAMs (wsss eval-cam).")
    return bg


def check_cam_folder(cam_dir: str | Path, ids: list[str], num_fg: int | None = None) -> None:
    """Every image has a CAM file in ``cam_dir``, or a one-line error; called before the output's
    manifest is written, so a mistyped folder leaves nothing behind that blocks the fix."""
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise WsssDataError(f"CAM folder not found: {cam_dir}. Pass the --out folder of wsss extract-cam as --cam-dir.")
    missing = [i for i in ids if not (cam_dir / f"{i}.npz").is_file() and not (cam_dir / f"{i}.npy").is_file()]
    if not missing and num_fg is not None:
        for image_id in ids[:: max(1, len(ids) // 20)]:
            keys = load_cam(cam_dir, image_id)["keys"]
            if len(keys) and int(keys.max()) >= num_fg:
                raise WsssDataError(
                    f"the CAM of '{image_id}' in {cam_dir} has class index {int(keys.max())}, but this dataset has "
                    f"{num_fg} foreground classes: were these CAMs made for another dataset?"
                )
    if missing:
        raise WsssDataError(
            f"{len(missing)} of {len(ids)} images have no CAM file in {cam_dir} (first: {', '.join(missing[:3])}). "
            "Run (or finish) wsss extract-cam on the same images and split first."
        )


def make_pseudo(cfg: MakePseudoConfig, progress: bool = True) -> Path:
    """Make the pseudo masks of every image of ``cfg.data`` into ``cfg.out``; returns ``out``.
    The inputs are checked before anything is written to ``out``."""
    check_choices(cfg)
    outputs = ImageOutputs(cfg.out, "masks", cfg.overwrite, MASK_FORMAT_IMPLIED)
    out = outputs.out
    run, seed_threshold = calibrated(cfg)
    settings = output_settings(cfg, () if cfg.refine == "irn" else cfg.IRN_ONLY)
    if seed_threshold is not None:
        settings["calibrated"] = {k: round(getattr(run, k), 6) for k in ("conf_fg", "conf_bg", "threshold")}
    outputs.check(settings)
    ds = build_dataset(cfg.data)
    require_background(ds, "make-pseudo")
    check_provenance(cfg.cam_dir, ds.class_names, "CAMs")
    check_cam_folder(cfg.cam_dir, ds.ids, ds.num_fg)
    settings["class_names"] = list(ds.class_names)
    dist.init_distributed(cfg.device)
    outputs.open(settings, cfg)
    if seed_threshold is not None and dist.is_main():
        print(f"make-pseudo: thresholds calibrated to seed threshold {seed_threshold:g}: "
              f"conf_fg {run.conf_fg:.3f}, conf_bg {run.conf_bg:.3f}, threshold {run.threshold:.3f} "
              f"(IRN scale: {cfg.conf_fg:g}, {cfg.conf_bg:g}, {cfg.threshold:g})")
    if cfg.refine == "irn":
        _masks_with_irn(run, ds, out, progress)
    else:
        _masks_image_by_image(run, ds, out, progress)
    if dist.is_main():
        warn_if_background_only(out, ds.ids)
    outputs.finish({"images": len(ds.ids), "refine": cfg.refine})
    if dist.is_main():
        from wsss.config import data_options, gt_folder, shell_command

        print(f"make-pseudo done: {len(ds.ids)} masks in {out}. Next: "
              + shell_command("eval", "--pred", out, "--gt", gt_folder(ds)) + " , or: "
              + shell_command("train-seg", *data_options(cfg.data), "--masks", out, "--out", f"{out}_seg"))
    dist.barrier()
    return out


def _masks_with_irn(cfg: MakePseudoConfig, ds, out: Path, progress: bool) -> None:
    """IRN's three steps; each one skips what an earlier, interrupted run finished."""
    from wsss.pseudo.train_irn import load_boundary_net, train_irn

    ir_dir = out / "ir_label"
    irn_dir = Path(cfg.irn_dir) if cfg.irn_dir else out / "irn"
    if cfg.irn_dir is None:
        label_cfg = replace(cfg, refine="ir-label", out=str(ir_dir))
        ir_dir.mkdir(parents=True, exist_ok=True)
        _masks_image_by_image(label_cfg, ds, ir_dir, progress)
        irn_cfg = replace(cfg.irn, data=cfg.data, ir_labels=str(ir_dir), out=str(irn_dir), device=cfg.device)
        train_irn(irn_cfg, resume=True, progress=progress)
    device = dist.init_distributed(cfg.device)
    from wsss.config import read_yaml

    pad = cfg.irn_pad if cfg.irn_pad is not None else int(read_yaml(irn_dir / "config.yaml").get("crop", 0))

    def walk(todo: list[str], track) -> None:
        if device.type == "cpu" and cfg.workers > 1 and len(todo) > WALK_BATCH:
            # On CPU the walk runs single-threaded (random_walk's cpu_threads), so one process leaves the
            # other cores idle: split the images over `workers` processes, WALK_BATCH per task. Each
            # image's values are the same as in one process (its boundary and walk never mix with others).
            chunks = [todo[i : i + WALK_BATCH] for i in range(0, len(todo), WALK_BATCH)]
            with ProcessPoolExecutor(cfg.workers, initializer=_start_walker, initargs=(cfg, str(out), str(irn_dir), pad)) as pool:
                for _ in track(pool.map(_walk_chunk, chunks), total=len(chunks)):
                    pass
        else:
            walker = _Walker(cfg, out, load_boundary_net(irn_dir, device), pad, ds)
            walker.walk(track(todo))

    ImageOutputs(out, "masks", cfg.overwrite).run(ds.ids, ".png", "make-pseudo irn (walk)", progress, loop=walk)


class _Walker:
    """Boundary maps, IRN's walk and post-processing for a stream of images (make-pseudo irn's
    third step), writing each image's boundary PNG, optional scores and mask."""

    def __init__(self, cfg: MakePseudoConfig, out: Path, net, pad: int, ds=None):

        self.cfg, self.out, self.net, self.pad = cfg, Path(out), net, pad
        self.ds = build_dataset(cfg.data) if ds is None else ds
        self.device = next(net.parameters()).device
        self.pending: dict[tuple[int, int], list] = {}

    def load(self, image_id: str):
        cams = load_cam(self.cfg.cam_dir, image_id)
        if "cam" not in cams:
            raise WsssDataError(f"CAM file of '{image_id}' has no stride-4 'cam' map, which the random walk needs")
        image = read_image(self.ds.image_path(image_id))
        h4, w4 = -(-image.shape[0] // 4), -(-image.shape[1] // 4)
        if cams["cam"].shape[1:] != (h4, w4):
            raise WsssDataError(
                f"CAM of '{image_id}' is {cams['cam'].shape[1:]} at stride 4 but the image needs {(h4, w4)}: "
                "were the CAMs extracted from these images?"
            )
        return cams, image

    def finish(self, image_id: str, cams, image, boundary, rw) -> None:
        cfg, out = self.cfg, self.out
        mask = irn_postprocess(rw, cams["keys"], image.shape[:2], cfg.threshold)
        write_gray(out / "boundary" / f"{image_id}.png", (boundary.cpu().numpy() * 255 + 0.5).astype(np.uint8))
        if cfg.save_scores:
            up = torch.nn.functional.interpolate(rw[None].float(), scale_factor=4, mode="bilinear",
                                                 align_corners=False)[0, :, : image.shape[0], : image.shape[1]]
            up = up / up.max().clamp(min=1e-12)
            scores = up.cpu().numpy().astype(np.float16)
            atomic_write(out / "scores" / f"{image_id}.npz",
                         lambda tmp: np.savez_compressed(tmp, keys=cams["keys"], scores=scores))
        # the mask last: its presence marks the image done
        write_mask(out / f"{image_id}.png", mask, index=cfg.mask_format == "index")

    # Images of one size are walked WALK_BATCH at a time: the same values as one by one
    # (propagate_batch), 1.4-1.7x faster for 128 px images on CPU (benchmarks/bench_walk_batch.py),
    # whose walk is dominated by the per-step cost of ~17k small operations.
    def flush(self, key) -> None:
        group = self.pending.pop(key, [])
        if not group:
            return
        cfg = self.cfg
        with torch.no_grad():
            rws = propagate_batch([torch.from_numpy(g[1]["cam"]).to(self.device) for g in group],
                                  [g[3] for g in group], beta=cfg.beta, exp_times=cfg.exp_times,
                                  radius=cfg.radius)
        for (image_id, cams, image, boundary), rw in zip(group, rws):
            self.finish(image_id, cams, image, boundary, rw)

    def walk(self, ids) -> None:
        loaded = ((image_id, *self.load(image_id)) for image_id in ids)
        for group in batches_by_key(loaded, self.cfg.boundary_batch, key=lambda item: item[2].shape[:2]):
            with torch.no_grad():
                boundaries = infer_boundary_batch(self.net, [image for _, _, image in group], pad=self.pad,
                                                  amp=self.cfg.amp)
            for (image_id, cams, image), boundary in zip(group, boundaries):
                key = tuple(boundary.shape)
                self.pending.setdefault(key, []).append((image_id, cams, image, boundary))
                if len(self.pending[key]) >= WALK_BATCH:
                    self.flush(key)
        for key in list(self.pending):
            self.flush(key)


_WALKER: _Walker | None = None


def _start_walker(cfg: MakePseudoConfig, out: str, irn_dir: str, pad: int) -> None:
    """Pool initializer: one boundary net per worker process, one torch thread each."""
    from wsss.pseudo.train_irn import load_boundary_net

    global _WALKER
    die_with_parent()
    torch.set_num_threads(1)
    _WALKER = _Walker(cfg, Path(out), load_boundary_net(irn_dir, "cpu"), pad)


def _walk_chunk(ids: list[str]) -> int:
    _WALKER.walk(ids)
    return len(ids)
