"""train-irn's pair affinities, ``1 - max(boundary)`` along each path, forward + backward: the
grouped gather of :func:`wsss.pseudo.irnet.edge_to_affinity` (one gather and one max per path
length, as IRN's ``edge_to_affinity``) against one ``torch.maximum`` per path pixel (what wsss
did before), side by side in one run, with the largest gradient difference.

    python benchmarks/bench_irn_affinity.py                       # the demo's batch: 16 x 128 px crops
    python benchmarks/bench_irn_affinity.py --batch 32 --crop 512 --device cuda   # IRN's batch
"""
from __future__ import annotations

import argparse
import time

import torch


def per_pixel(boundary: torch.Tensor, index) -> torch.Tensor:
    """The slow, obvious form: a running maximum over the path's pixels, one slice each."""
    hc, wc = index.window(boundary.shape[-2], boundary.shape[-1])
    m = index.margin
    out = []
    for path in index.paths:
        peak = None
        for py, px in path:
            s = boundary[..., py : py + hc, m + px : m + px + wc]
            peak = s if peak is None else torch.maximum(peak, s)
        out.append(1 - peak)
    return torch.stack(out, -3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--radius", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from wsss.pseudo.irnet import edge_to_affinity, path_index

    device = torch.device(args.device)
    index = path_index(args.radius)
    side = args.crop // 4
    torch.manual_seed(0)
    logits = torch.randn(args.batch, side, side, device=device)

    def run(fn):
        x = logits.clone().requires_grad_(True)
        aff = fn(torch.sigmoid(x), index)
        aff.sum().backward()
        return aff.detach(), x.grad

    rows, results = [], {}
    for name, fn in (("per path pixel", per_pixel), ("grouped gather", edge_to_affinity)):
        run(fn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            results[name] = run(fn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((name, (time.perf_counter() - t0) / args.iters))
    (a0, g0), (a1, g1) = results.values()
    print(f"{args.batch} maps of {side}x{side} (crop {args.crop}), radius {args.radius}, {device}; "
          f"max |affinity diff| {(a0 - a1).abs().max().item():.1e}, max |grad diff| {(g0 - g1).abs().max().item():.1e}\n")
    print("| method | forward + backward, ms | ratio |\n| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {1000 * t:.1f} | {t / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
