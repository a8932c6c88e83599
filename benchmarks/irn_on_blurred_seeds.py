"""Does the IRN stage improve seeds whose errors are only blur? A controlled check of
``make-pseudo --refine irn`` on the synthetic dataset, independent of any classifier.

Seeds: each image's ground-truth class masks, Gaussian-blurred (sigma ``--blur`` pixels) and
shifted by a few pixels, written as CAM files (stride-4 ``cam`` and full-size ``high_res``).
Then the whole IRN path runs (IR labels, IRNet trained on them, random walk) and the seeds and
pseudo masks are scored against the ground truth, side by side.

Two diagnostics separate the boundary net from the walk:

* the learned boundary map's mean on the ground truth's class edges against its mean elsewhere
  (stride-4 cells whose 4x4 block holds more than one label, the 255 outline included);
* "oracle" rows: the same walk and post-processing (IRN's defaults) with the boundary map replaced
  by ``s`` on those edge cells and 0 elsewhere, for a few strengths ``s``. They say what the walk
  does with the seeds when the boundaries are right.

    python benchmarks/irn_on_blurred_seeds.py --data-root runs/demo/toy --weights builtin:resnet_tiny
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--weights", default=None, help="IRNet backbone weights (a wsss ResNet or ImageNet file)")
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--blur", type=float, default=6.0)
    ap.add_argument("--shift", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--beta", type=float, default=10.0, help="the walk's affinity power (IRN: 10; the demo: 30)")
    ap.add_argument("--calibrate", action="store_true",
                    help="map IRN's thresholds to these seeds' best threshold (make-pseudo --calibrate-from), "
                         "as the demo does; default: IRN's values as given")
    ap.add_argument("--irn-dir", default=None, help="reuse this trained boundary net (skips IR labels and training)")
    ap.add_argument("--oracle", type=float, nargs="*", default=[0.5, 0.7, 0.9],
                    help="boundary strengths of the oracle rows (none: skip them)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from wsss.cam.evaluate import EvalCamConfig, evaluate_cams
    from wsss.cam.files import load_cam, save_cam
    from wsss.config import load_config
    from wsss.data import DataConfig, build_dataset
    from wsss.evaluate import EvalConfig, evaluate_folders
    from wsss.io import read_mask, write_mask
    from wsss.pseudo.irnet import affinity_labels, boundary_loss, edge_to_affinity, path_index
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo
    from wsss.pseudo.random_walk import irn_postprocess, propagate
    from wsss.pseudo.train_irn import TrainIrnConfig

    data = DataConfig(kind="voc", root=args.data_root, split=args.split)
    ds = build_dataset(data)
    out = Path(args.out or tempfile.mkdtemp(prefix="irn_blur_"))
    cams = out / "seeds"
    rng = np.random.default_rng(0)
    for image_id in ds.ids:
        s = ds.load(image_id)
        keys = np.flatnonzero(s.label)
        h, w = s.mask.shape
        dy, dx = rng.integers(-args.shift, args.shift + 1, 2)
        planes = []
        for k in keys:
            m = np.roll((s.mask == k + 1).astype(np.float32), (int(dy), int(dx)), (0, 1))
            m = cv2.GaussianBlur(m, (0, 0), args.blur)
            planes.append(m / max(float(m.max()), 1e-5))
        high = np.stack(planes).astype(np.float32)
        cam = np.stack([cv2.resize(p, (math.ceil(w / 4), math.ceil(h / 4)), interpolation=cv2.INTER_AREA)
                        for p in planes])
        save_cam(cams / f"{image_id}.npz", {"keys": keys, "cam": cam, "high_res": high})
    seed = evaluate_cams(EvalCamConfig(data=data, cam_dir=str(cams), workers=2), progress=False)
    irn = TrainIrnConfig(backbone=args.backbone, weights=args.weights, batch_size=16, crop=args.crop,
                         epochs=args.epochs, workers=1)
    calibrate = str(round(seed.best_threshold, 6)) if args.calibrate else None
    pseudo = make_pseudo(MakePseudoConfig(data=data, cam_dir=str(cams), refine="irn", irn=irn, irn_dir=args.irn_dir,
                                          beta=args.beta, calibrate_from=calibrate, device="cpu",
                                          out=str(out / "pseudo")), progress=False)
    gt = str(Path(args.data_root) / "SegmentationClass")
    pl = evaluate_folders(EvalConfig(pred=str(pseudo), gt=gt, workers=2), progress=False)

    # the learned boundary on the true class edges and elsewhere; IRNet's loss of the learned and
    # the true boundaries on the IR labels it trained on (whole images, radius 10); the oracle walks
    on_edge, off_edge = [], []
    oracle_dirs = {s: out / f"oracle_{s:g}" for s in args.oracle}
    irn_cfg = load_config(TrainIrnConfig, Path(args.irn_dir or pseudo / "irn") / "config.yaml")
    index = path_index(irn_cfg.radius)
    losses: dict[str, list[float]] = {}
    too_small = 0  # whole images whose stride-4 map has no pairs of the training radius
    ir_dir = Path(irn_cfg.ir_labels)
    for image_id in ds.ids:
        mask = ds.load(image_id).mask
        edge = class_edges(mask)
        learned = cv2.imread(str(pseudo / "boundary" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE) / 255.0
        on_edge.append(learned[edge])
        off_edge.append(learned[~edge])
        h4, w4 = learned.shape
        if h4 <= index.margin or w4 <= 2 * index.margin:
            too_small += 1
        elif (ir_dir / f"{image_id}.png").is_file():
            label = torch.from_numpy(read_mask(ir_dir / f"{image_id}.png")[::4, ::4].astype(np.int64))[None]
            pairs = affinity_labels(label, index)
            maps = {"learned": learned, **{f"true class edges at {s:g}": edge * s for s in args.oracle}}
            for name, b in maps.items():
                aff = edge_to_affinity(torch.from_numpy(np.asarray(b, np.float32))[None, None], index)
                losses.setdefault(name, []).append(float(boundary_loss(aff, *pairs)["loss"]))
        seed_cam = load_cam(cams, image_id)
        for strength, folder in oracle_dirs.items():
            boundary = torch.from_numpy(edge * strength)
            rw = propagate(torch.from_numpy(seed_cam["cam"]).double(), boundary)
            write_mask(folder / f"{image_id}.png", irn_postprocess(rw, seed_cam["keys"], mask.shape))
    on_edge, off_edge = np.concatenate(on_edge), np.concatenate(off_edge)

    b = seed.best
    print(f"\nblur sigma {args.blur} px, shift <= {args.shift} px, {len(ds)} images, IRNet {args.backbone}, "
          f"{args.epochs} epochs, beta {args.beta:g}, thresholds "
          + (f"calibrated to {seed.best_threshold:.2f}" if args.calibrate else "IRN's") + "\n")
    print("| | mIoU | FP | FN |\n| --- | ---: | ---: | ---: |")
    print(f"| seeds (best threshold {seed.best_threshold:.2f}) | {100 * b.miou:.2f} | {100 * b.mean_fp:.2f} | "
          f"{100 * b.mean_fn:.2f} |")
    print(f"| IRN pseudo masks (learned boundaries, beta {args.beta:g}) | {100 * pl.miou:.2f} | {100 * pl.mean_fp:.2f} | "
          f"{100 * pl.mean_fn:.2f} |")
    for strength, folder in oracle_dirs.items():
        r = evaluate_folders(EvalConfig(pred=str(folder), gt=gt, workers=2), progress=False)
        print(f"| same walk, true class edges at {strength:g} | {100 * r.miou:.2f} | {100 * r.mean_fp:.2f} | "
              f"{100 * r.mean_fn:.2f} |")
    print(f"\nlearned boundary: mean {on_edge.mean():.3f} on true class edges ({100 * on_edge.size / (on_edge.size + off_edge.size):.0f}% "
          f"of cells), {off_edge.mean():.3f} elsewhere (90th percentile {np.percentile(off_edge, 90):.3f})")
    if losses:
        print(f"IRNet's loss on the IR labels ({ir_dir}), mean over images: "
              + ", ".join(f"{name} {np.mean(v):.3f}" for name, v in losses.items()))
    if too_small:
        print(f"({too_small} images too small for pairs of radius {irn_cfg.radius} left out of the loss)")
    print(f"\noutputs in {out}")


def class_edges(mask: np.ndarray) -> np.ndarray:
    """Stride-4 cells (``ceil(H/4) x ceil(W/4)``) whose 4x4 block holds more than one label."""
    h, w = mask.shape
    h4, w4 = math.ceil(h / 4), math.ceil(w / 4)
    padded = np.pad(mask, ((0, 4 * h4 - h), (0, 4 * w4 - w)), mode="edge")
    blocks = padded.reshape(h4, 4, w4, 4).transpose(0, 2, 1, 3).reshape(h4, w4, 16)
    return blocks.min(-1) != blocks.max(-1)


if __name__ == "__main__":
    main()
