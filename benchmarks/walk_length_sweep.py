"""How much does the random walk add over the seeds it starts from? IRN's walk and
post-processing re-run on saved seeds and boundary maps for several (beta, exp_times, threshold)
settings, scored against the ground truth. ``exp_times 0`` is a single step (2^0) of the walk,
the nearest thing to none: longer walks that score below it spread the seeds across boundaries
the net did not find.

    python benchmarks/walk_length_sweep.py --data-root runs/demo/toy --cam-dir runs/demo/cam \\
        --boundary-dir runs/demo/pseudo_cam/boundary --settings 10:8:0.25 10:4:0.25 10:0:0.25 10:0:0.5

``--boundary-dir``: the ``boundary/`` PNGs make-pseudo --refine irn writes (stride 4, 0..255).
Each setting is ``beta:exp_times:threshold`` (IRN: 10:8:0.25).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--cam-dir", required=True)
    ap.add_argument("--boundary-dir", required=True)
    ap.add_argument("--settings", nargs="+", default=["10:8:0.25", "10:4:0.25", "10:2:0.25", "10:0:0.25"])
    ap.add_argument("--num", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--seed-thresholds", nargs="*", type=float, default=None,
                    help="also score the seeds themselves (full-resolution CAMs, background plane at each "
                         "threshold) on the same images [default: each setting's threshold]")
    args = ap.parse_args()

    from wsss.cam.files import load_cam
    from wsss.metrics import cam_to_mask
    from wsss.data import DataConfig, build_dataset
    from wsss.metrics import ConfusionMatrix
    from wsss.pseudo.random_walk import irn_postprocess, propagate

    ds = build_dataset(DataConfig(kind="voc", root=args.data_root, split=args.split))
    settings = [(float(b), int(e), float(t)) for b, e, t in (s.split(":") for s in args.settings)]
    matrices = {s: ConfusionMatrix(ds.num_classes) for s in settings}
    seed_thresholds = sorted({t for _, _, t in settings} if args.seed_thresholds is None else set(args.seed_thresholds))
    seed_matrices = {t: ConfusionMatrix(ds.num_classes) for t in seed_thresholds}
    ids = ds.ids[: args.num] if args.num else ds.ids
    for image_id in ids:
        mask = ds.load(image_id).mask
        seed = load_cam(Path(args.cam_dir), image_id)
        edge = cv2.imread(str(Path(args.boundary_dir) / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        if edge is None:
            raise SystemExit(f"no boundary map {args.boundary_dir}/{image_id}.png")
        boundary = torch.from_numpy(edge / 255.0)
        for threshold in seed_thresholds:
            seed_matrices[threshold].update(mask, cam_to_mask(seed["high_res"], seed["keys"] + 1, threshold))
        cams = torch.from_numpy(seed["cam"]).double()
        walks = {}  # settings that differ only in threshold share one walk
        for beta, exp_times, threshold in settings:
            if (beta, exp_times) not in walks:
                walks[beta, exp_times] = propagate(cams, boundary, beta=beta, exp_times=exp_times)
            rw = walks[beta, exp_times]
            matrices[(beta, exp_times, threshold)].update(mask, irn_postprocess(rw, seed["keys"], mask.shape, threshold))
    print(f"{len(ids)} images of {args.data_root} ({args.split}), seeds {args.cam_dir}, boundaries {args.boundary_dir}\n")
    print("| beta | steps | threshold | mIoU | FP | FN |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    for threshold, cm in seed_matrices.items():
        m = cm.compute(ds.class_names)
        print(f"| seed | - | {threshold:g} | {100 * m.miou:.2f} | {100 * m.mean_fp:.2f} | {100 * m.mean_fn:.2f} |")
    for (beta, exp_times, threshold), cm in matrices.items():
        m = cm.compute(ds.class_names)
        print(f"| {beta:g} | {2 ** exp_times} | {threshold:g} | {100 * m.miou:.2f} | "
              f"{100 * m.mean_fp:.2f} | {100 * m.mean_fn:.2f} |")


if __name__ == "__main__":
    main()
