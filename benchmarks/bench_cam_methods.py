"""Speed of each CAM method through the one extraction driver, side by side in one run.

Every method runs on the same Conformer (random weights: speed does not depend on
them), the same images and the same settings (IRN's scales 1.0, 0.5, 1.5, 2.0 with
flips by default); the script prints images per second and each method's time as
a ratio of vanilla CAM's (the AD-CAM paper reports 2.2x for its AD-CAM), then the
peak memory of one 500x375 image at scale 2.0 per method (CUDA: peak allocated;
CPU, Linux: the peak resident set above the one after loading the model (VmHWM reset
through /proc/self/clear_refs), in a fresh process per method).

    python benchmarks/bench_cam_methods.py --model conformer_s16 --images 8
    python benchmarks/bench_cam_methods.py --model conformer_s16 --images 2 --methods cam adcam --rounds 2 --no-memory
    python benchmarks/bench_cam_methods.py --model conformer_tiny --images 20 --size 128   # quick
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

METHODS = ["cam", "adcam", "attn-diffusion", "tscam"]


def _model(name: str, device: torch.device):
    from wsss.cls.models import build_classifier

    torch.manual_seed(0)
    return build_classifier(name, 20).to(device).eval()


def _images(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8) for _ in range(n)]


def time_methods(model_name: str, n: int, size: tuple[int, int], scales: tuple[float, ...], device: torch.device,
                 methods: list[str] = METHODS, rounds: int = 1):
    """Images per second of each method; with ``rounds`` > 1 the methods take turns, round after
    round, so a slow spell of a shared machine falls on all of them."""
    from wsss.cam.extract import ExtractCamConfig, compute_cams

    model = _model(model_name, device)
    images = _images(n, size)
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    cfgs = {method: ExtractCamConfig(method=method, scales=scales) for method in methods}
    seconds = dict.fromkeys(methods, 0.0)
    with torch.no_grad():
        for method in methods:
            compute_cams(model, images[0], label, cfgs[method], device)  # warm-up
        for _ in range(rounds):
            for method in methods:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for image in images:
                    compute_cams(model, image, label, cfgs[method], device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[method] += time.perf_counter() - t0
    return {method: n * rounds / seconds[method] for method in methods}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(model_name: str, method: str, device: torch.device) -> float:
    """MiB for one 375x500 image at scale 2.0 (with flip) beyond the loaded model."""
    from wsss.cam.extract import ExtractCamConfig, compute_cams

    model = _model(model_name, device)
    image = _images(1, (375, 500))[0]
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    cfg = ExtractCamConfig(method=method, scales=(2.0,))
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            compute_cams(model, image, label, cfg, device)
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        # Linux: reset the peak resident set (VmHWM) after building the model, then read it back
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        compute_cams(model, image, label, cfg, device)
        return (_status_kib("VmHWM") - base) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="conformer_s16")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, nargs="+", default=[375, 500], help="H W (or one side)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="cam must be one of them")
    ap.add_argument("--rounds", type=int, default=1, help="methods take turns this many times")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.memory_of:
        print(json.dumps(peak_memory(args.model, args.memory_of, device)))
        return
    size = (args.size[0], args.size[-1])
    print(f"model {args.model}, {args.images} images of {size[0]}x{size[1]}, scales {args.scales} + flip, "
          f"device {device}, {torch.get_num_threads()} threads")
    methods = ["cam"] + [m for m in args.methods if m != "cam"]
    speed = time_methods(args.model, args.images, size, tuple(args.scales), device, methods, args.rounds)
    print("\n| method | images/s | time / CAM's |\n| --- | ---: | ---: |")
    for m in methods:
        print(f"| {m} | {speed[m]:.2f} | {speed['cam'] / speed[m]:.2f}x |")
    if args.no_memory:
        return
    print("\n| method | peak memory, 500x375 at scale 2.0 (MiB) |\n| --- | ---: |")
    for m in methods:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--device", args.device,
                              "--memory-of", m], capture_output=True, text=True, check=True)
        print(f"| {m} | {float(out.stdout.strip().splitlines()[-1]):.0f} |")


if __name__ == "__main__":
    main()
