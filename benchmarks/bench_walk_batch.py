"""Random walk of many small images: one at a time vs ``propagate_batch`` groups (make-pseudo's
WALK_BATCH), side by side in one process, alternating, so the ratio holds on a noisy machine.

    python benchmarks/bench_walk_batch.py                    # 16 images, 128 px (32 x 32 at stride 4)
    python benchmarks/bench_walk_batch.py --size 500 --images 4

Prints seconds per image for each way and the ratio; the values are checked to be equal.
"""
from __future__ import annotations

import argparse
import time

import torch

from wsss.pseudo.random_walk import propagate, propagate_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="image side, pixels (the walk runs at 1/4)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    side = -(-args.size // 4)
    g = torch.Generator().manual_seed(0)
    bounds = [torch.rand(side, side, generator=g) ** 4 * 0.6 for _ in range(args.images)]
    cams = [torch.rand(1 + i % 3, side, side, generator=g) for i in range(args.images)]
    ref = [propagate(c, b) for c, b in zip(cams, bounds)]
    times: dict[str, float] = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        for c, b in zip(cams, bounds):
            propagate(c, b)
        times["one by one"] = times.get("one by one", 0.0) + time.perf_counter() - t
        for n in args.batches:
            t = time.perf_counter()
            out = []
            for i in range(0, args.images, n):
                out += propagate_batch(cams[i : i + n], bounds[i : i + n])
            times[f"batches of {n}"] = times.get(f"batches of {n}", 0.0) + time.perf_counter() - t
            assert all(torch.equal(a, r) for a, r in zip(out, ref)), "batched walk differs"
    base = times["one by one"]
    print(f"{args.images} images, {args.size} px, {torch.get_num_threads()} torch threads")
    for name, s in times.items():
        print(f"{name:>14}: {s / (args.repeats * args.images) * 1000:7.1f} ms/image   speed-up {base / s:.2f}x")


if __name__ == "__main__":
    main()
