"""IRN random walk: stencil walk (wsss.pseudo.random_walk) vs IRN's dense N x N transition matrix.

Each measurement runs in a fresh subprocess; peak memory is that process's ru_maxrss (which sees
torch's allocations) minus its baseline after imports and input set-up.

    python benchmarks/bench_random_walk.py                       # full dense (8 squarings)
    python benchmarks/bench_random_walk.py --dense-squarings 1   # time 1 squaring, extrapolate x8

The dense run is IRN's: T = A / A.sum(0) in float32, squared exp_times times, x @ T.  All squarings
cost the same (N^3), so with --dense-squarings s < exp_times the dense time is
build + (exp_times / s) * (measured squaring time) + product, marked "extrapolated"; peak memory
does not depend on s.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

SIZES = [(375, 500), (500, 500)]
K = 3
EXP_TIMES = 8
DENSE_RAM_LIMIT = 8 * 2**30  # skip dense sizes whose estimated peak exceeds this


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _inputs(h: int, w: int, dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    # a plausible boundary map: low everywhere, a few strong closed-ish contours
    b = torch.rand(h, w, generator=g, dtype=torch.float64) ** 6 * 0.3
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for cy, cx, rad in [(h * 0.4, w * 0.3, h * 0.25), (h * 0.6, w * 0.7, h * 0.2)]:
        ring = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt().sub(rad).abs() < 1.0
        b[ring] = 0.95
    cams = torch.rand(K, h, w, generator=g, dtype=torch.float64) * 0.2
    cams[0, : h // 2, : w // 2] += 0.8
    cams[1, h // 2 :, w // 2 :] += 0.8
    cams[2, : h // 3, w // 2 :] += 0.6
    cams = cams / cams.flatten(1).max(1).values[:, None, None]
    return b.to(dtype), (cams * (1 - b)).to(dtype)


def _child(mode: str, h: int, w: int, squarings: int, threads: int) -> None:
    import torch

    from wsss.pseudo.random_walk import boundary_to_affinity, dense_transition_matrix, random_walk

    torch.set_num_threads(threads)
    out = {}
    if mode.startswith("walk"):
        dtype = torch.float64 if mode == "walk64" else torch.float32
        b, x = _inputs(h, w, dtype)
        base = _rss()
        t0 = time.perf_counter()
        aff = boundary_to_affinity(b)
        rw = random_walk(x, aff, exp_times=EXP_TIMES, dtype=dtype)
        out["time"] = time.perf_counter() - t0
        out["checksum"] = float(rw.sum())
    else:
        b, x = _inputs(h, w, torch.float32)
        base = _rss()
        t0 = time.perf_counter()
        aff = boundary_to_affinity(b)
        T = dense_transition_matrix(aff, 10, 5, dtype=torch.float32)
        t_build = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(squarings):
            T = torch.matmul(T, T)
        t_sq = time.perf_counter() - t1
        t2 = time.perf_counter()
        rw = x.reshape(K, -1) @ T
        t_prod = time.perf_counter() - t2
        out["time"] = t_build + t_sq * EXP_TIMES / squarings + t_prod
        out["measured"] = t_build + t_sq + t_prod
        out["extrapolated"] = squarings < EXP_TIMES
        out["checksum"] = float(rw.sum())
    out["peak"] = _rss()
    out["delta"] = out["peak"] - base
    print(json.dumps(out))


def _run(mode, h, w, squarings, threads):
    cmd = [sys.executable, __file__, "--child", mode, str(h), str(w), str(squarings), str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dense-squarings", type=int, default=EXP_TIMES,
                    help="squarings actually run for dense (the rest extrapolated)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the dense matmuls")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], metavar="HxW",
                    help="image sizes, pixels (the walk runs at 1/4)")
    args = ap.parse_args()
    mb = 2**20
    rows = []
    for h, w in (tuple(int(v) for v in size.lower().split("x")) for size in args.sizes):
        hs, ws = math.ceil(h / 4), math.ceil(w / 4)
        n = hs * ws
        r64 = _run("walk64", hs, ws, 0, args.threads)
        r32 = _run("walk32", hs, ws, 0, args.threads)
        dense_est = 3 * n * n * 4  # T, T @ T result, and the dense build's buffers
        if args.skip_dense:
            dense = None
            note = "skipped"
        elif dense_est > DENSE_RAM_LIMIT:
            dense = None
            note = f"skipped: ~{dense_est / 2**30:.1f} GB > 8 GB"
        else:
            dense = _run("dense", hs, ws, args.dense_squarings, args.threads)
            note = (f"extrapolated from {args.dense_squarings} squaring(s), measured "
                    f"{dense['measured']:.1f} s" if dense["extrapolated"] else "full run")
        rows.append((h, w, hs, ws, n, r64, r32, dense, note))

    print(f"IRN random walk, K={K}, exp_times={EXP_TIMES} (256 steps), radius 5, beta 10; "
          f"dense float32 with {args.threads} threads; walk single-threaded")
    hdr = (f"{'image':>9} {'map':>8} {'N':>6} | {'walk64 s':>8} {'MB':>6} | {'walk32 s':>8} {'MB':>6} |"
           f" {'dense s':>8} {'MB':>7} | {'x (64)':>7} {'x (32)':>7} | note")
    print(hdr)
    print("-" * len(hdr))
    for h, w, hs, ws, n, r64, r32, dense, note in rows:
        if dense is not None:
            d = f"{dense['time']:8.1f} {dense['delta'] / mb:7.0f}"
            s64 = f"{dense['time'] / r64['time']:7.0f}"
            s32 = f"{dense['time'] / r32['time']:7.0f}"
        else:
            d, s64, s32 = f"{'-':>8} {'-':>7}", f"{'-':>7}", f"{'-':>7}"
        print(f"{h:>4}x{w:<4} {hs:>3}x{ws:<4} {n:>6} | {r64['time']:8.2f} {r64['delta'] / mb:6.1f} |"
              f" {r32['time']:8.2f} {r32['delta'] / mb:6.1f} | {d} | {s64} {s32} | {note}")
    print("MB = peak RSS of the fresh process minus its RSS after imports and inputs.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
