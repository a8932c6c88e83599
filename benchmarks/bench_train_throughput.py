"""Training throughput (images per second, forward + backward + optimiser step) of the
classifiers and segmenters, side by side in one run, on random crops.

    python benchmarks/bench_train_throughput.py                                   # CPU-sized defaults
    python benchmarks/bench_train_throughput.py --cls conformer_s16 resnet50 --seg pcaa:resnet101_v1c --crop 512 --batch 8
"""
from __future__ import annotations

import argparse
import time

import torch


def _time(step, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def classifier_step(name: str, batch: int, crop: int, device: torch.device):
    from wsss.cls.models import build_classifier

    model = build_classifier(name, 20).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = (torch.rand(batch, 20, device=device) < 0.2).float()

    def step():
        loss = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def segmenter_step(spec: str, batch: int, crop: int, device: torch.device):
    from wsss.seg.model import build_segmenter

    head, backbone = spec.split(":")
    model = build_segmenter(head, backbone, 21).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, 21, (batch, crop, crop), device=device)

    def step():
        loss = model.loss(model(x), y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cls", nargs="*", default=["conformer_tiny", "resnet_tiny"])
    ap.add_argument("--seg", nargs="*", default=["fcn:resnet_tiny", "pcaa:resnet_tiny", "acf:resnet_tiny",
                                                 "psa:resnet_tiny", "deeplabv2:resnet_tiny"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"batch {args.batch}, crop {args.crop}, device {device}, {torch.get_num_threads()} threads\n")
    print("| model | s / step | images / s |\n| --- | ---: | ---: |")
    for name in args.cls:
        t = _time(classifier_step(name, args.batch, args.crop, device), 1, args.iters, device)
        print(f"| train-cls {name} | {t:.3f} | {args.batch / t:.1f} |", flush=True)
    for spec in args.seg:
        t = _time(segmenter_step(spec, args.batch, args.crop, device), 1, args.iters, device)
        print(f"| train-seg {spec} | {t:.3f} | {args.batch / t:.1f} |", flush=True)


if __name__ == "__main__":
    main()
