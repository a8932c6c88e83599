"""Per-image time of ``make-pseudo --refine irn`` and its parts, measured side by side in one run:
IR labels (two dense-CRF passes), IRNet boundary inference (image + flip), the random walk
(Eq. 9, radius 5, beta 10, 2^8 steps) and IRN's post-processing.

Synthetic inputs of the requested size (random image, smooth random CAMs for ``--classes``
classes); IRNet with random weights (its time does not depend on them).

    python benchmarks/bench_make_pseudo.py --size 375 500 --images 3            # VOC-sized, ResNet-50
    python benchmarks/bench_make_pseudo.py --size 128 128 --backbone resnet_tiny --images 10
"""
from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    import warnings

    from wsss.pseudo.crf import ir_label
    from wsss.pseudo.irnet import BoundaryNet, infer_boundary
    from wsss.pseudo.random_walk import irn_postprocess, propagate

    device = torch.device(args.device)
    h, w = args.size
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = BoundaryNet(args.backbone).to(device).eval()
    keys = np.arange(args.classes)
    times = {"IR labels (2 CRF)": 0.0, "IRNet boundary": 0.0, "random walk": 0.0, "post-processing": 0.0}
    for _ in range(args.images):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        coarse = rng.random((args.classes, 6, 8)).astype(np.float32)
        high = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse]).clip(0, 1)
        cam = np.stack([cv2.resize(c, (math.ceil(w / 4), math.ceil(h / 4))) for c in high])
        t0 = time.perf_counter()
        ir_label(image, high, keys + 1)
        t1 = time.perf_counter()
        with torch.no_grad():
            boundary = infer_boundary(net, image)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            rw = propagate(torch.from_numpy(cam).to(device), boundary)
            if device.type == "cuda":
                torch.cuda.synchronize()
        t3 = time.perf_counter()
        irn_postprocess(rw, keys, (h, w))
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k] += dt
    print(f"{args.images} images of {h}x{w}, {args.classes} classes, IRNet {args.backbone}, device {device}, "
          f"{torch.get_num_threads()} threads\n")
    print("| part | s / image |\n| --- | ---: |")
    for k, v in times.items():
        print(f"| {k} | {v / args.images:.3f} |")
    print(f"| total | {sum(times.values()) / args.images:.3f} |")


if __name__ == "__main__":
    main()
