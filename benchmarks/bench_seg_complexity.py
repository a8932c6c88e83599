"""Parameters and multiply-adds of the segmentation attention modules, beside PCAA Table 4.

    python benchmarks/bench_seg_complexity.py                     # count the modules alone
    python benchmarks/bench_seg_complexity.py --time --crop 128 --backbone resnet_tiny   # smoke timing

Counting follows PCAA Table 4: each attention module alone on a 1 x 512 x 96 x 96 input
(stride 8 of a 768 crop) with 19 classes (Cityscapes). Multiply-adds are
``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2; that counter sees matrix
products and convolutions only (not softmax, BN, ReLU or additions), which is where
nearly all of the cost is. The modules run on the ``meta`` device, so nothing is
computed and counting takes a second. The paper's figures (its "FLOPs" are
multiply-adds, from another counter) are printed as they are, labelled as the paper's.

Modules: PCAA = :class:`wsss.seg.heads.PCAA` (S = 4; S = 4 then 8, stacked);
ACF = :class:`wsss.seg.heads.ClassAttention` (class centres, class attention and the
1x1 refinement, C' = 256; the coarse classifier is not counted, like PCAA's
surrounding convs); PSA = :class:`wsss.seg.heads.PSAModule` (both branches, reduced
width 512, shrink 2, over-complete 95 x 95 masks for the 48 x 48 shrunken map, and
the 1x1 projection back to 512); non-local = the embedded-Gaussian block below
(W_q, W_k, W_v 512 -> 256 with bias, 1x1 256 -> 512 + BN, residual), with the same
projections as PCAA, as Table 4 compares them; OCR = :class:`OCR` below (the object
contextual module with mmseg's OCRHead widths, 256 key channels, and its 1024 -> 512
bottleneck; the coarse classifier is not counted).

``--time`` times forward + backward of each full segmenter (backbone, head, auxiliary
head, loss) on random crops, in training mode, on the chosen device.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wsss.seg import HEADS, build_segmenter
from wsss.seg.heads import PCAA, ClassAttention, PSAModule

CHANNELS, SIZE, CLASSES = 512, 96, 19

# PCAA Table 4 (params in M, "FLOPs" in G), Cityscapes, 512 x 96 x 96.
PAPER = {
    "PCAA (S=4)": (0.80, 2.86),
    "PCAA (S=4, 8)": (1.60, 6.23),
    "non-local": (0.53, 21.75),
    "OCR": (1.18, 8.07),
}


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) with PCAA's projection sizes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 2, 1)
        self.key = nn.Conv2d(channels, channels // 2, 1)
        self.value = nn.Conv2d(channels, channels // 2, 1)
        self.out = nn.Sequential(nn.Conv2d(channels // 2, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, _, h, w = x.shape
        q, k, v = (proj(x).flatten(2) for proj in (self.query, self.key, self.value))
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, HW, HW)
        return x + self.out((v @ attention.transpose(1, 2)).view(b, -1, h, w))


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class OCR(nn.Module):
    """OCR's module (Yuan et al. 2020, mmseg's ``OCRHead`` without its classifiers), for counting:
    soft object regions (each class's softmax over the pixels of the coarse prediction weighting
    the features), the object attention block (query: two 1x1 conv-BN-ReLU 512 -> 256 -> 256 on
    the pixels; key: the same on the K region features; value: one 512 -> 256; output 256 -> 512)
    and the bottleneck (1x1 conv-BN-ReLU on [context, features], 1024 -> 512)."""

    def __init__(self, channels: int, key_channels: int = 256) -> None:
        super().__init__()
        self.query = nn.Sequential(_cbr(channels, key_channels), _cbr(key_channels, key_channels))
        self.key = nn.Sequential(_cbr(channels, key_channels), _cbr(key_channels, key_channels))
        self.value = _cbr(channels, key_channels)
        self.out = _cbr(key_channels, channels)
        self.bottleneck = _cbr(2 * channels, channels)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), coarse logits (B, K, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        regions = torch.softmax(coarse.flatten(2), dim=-1) @ x.flatten(2).transpose(1, 2)  # (B, K, C)
        regions = regions.transpose(1, 2)[..., None]  # (B, C, K, 1)
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(regions).flatten(2)  # (B, C', K)
        v = self.value(regions).flatten(2).transpose(1, 2)  # (B, K, C')
        sim = torch.softmax((q @ k) * k.shape[1] ** -0.5, dim=-1)  # (B, HW, K)
        context = self.out((sim @ v).transpose(1, 2).reshape(b, -1, h, w))
        return self.bottleneck(torch.cat([context, x], dim=1))


class Stacked(nn.Module):
    """PCAA modules in sequence, as PCAAHead runs them (Table 1's S = 4, 8)."""

    def __init__(self, *modules: PCAA) -> None:
        super().__init__()
        self.stack = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.stack:
            x, _ = module(x)
        return x


def modules() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    x = torch.empty(1, CHANNELS, SIZE, SIZE, device="meta")
    coarse = torch.empty(1, CLASSES, SIZE, SIZE, device="meta")
    shrunk = (SIZE - 1) // 2 + 1
    return {
        "PCAA (S=4)": (PCAA(CHANNELS, CLASSES, 4), (x,)),
        "PCAA (S=4, 8)": (Stacked(PCAA(CHANNELS, CLASSES, 4), PCAA(CHANNELS, CLASSES, 8)), (x,)),
        "ACF (attention part)": (ClassAttention(CHANNELS, CHANNELS // 2), (x, coarse)),
        "PSA": (PSAModule(CHANNELS, CHANNELS, (2 * shrunk - 1, 2 * shrunk - 1)), (x,)),
        "non-local": (NonLocal(CHANNELS), (x,)),
        "OCR": (OCR(CHANNELS), (x, coarse)),
    }


def count() -> None:
    rows = []
    for name, (module, inputs) in modules().items():
        module = module.to("meta").eval()
        params = sum(p.numel() for p in module.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(*inputs)
        rows.append((name, params / 1e6, counter.get_total_flops() / 2 / 1e9))
    print(f"Attention modules alone, input 1 x {CHANNELS} x {SIZE} x {SIZE}, {CLASSES} classes "
          "(MACs = FlopCounterMode FLOPs / 2)\n")
    print("| module | params (M) | GMACs | paper params (M) | paper FLOPs (G) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, params, gmacs in rows:
        paper = PAPER.get(name)
        ours = (f"{params:.2f}", f"{gmacs:.2f}") if params is not None else ("-", "-")
        theirs = (f"{paper[0]:.2f}", f"{paper[1]:.2f}") if paper else ("-", "-")
        print(f"| {name} | {ours[0]} | {ours[1]} | {theirs[0]} | {theirs[1]} |")


def time_segmenters(crop: int, backbone: str, batch: int, iters: int, device: str, heads: list[str]) -> None:
    feature = -(-crop // 8)
    shrunk = (feature - 1) // 2 + 1
    options = {"pcaa": {"pool_sizes": 4}, "psa": {"mask_size": 2 * shrunk - 1}}
    print(f"\nforward + backward, {backbone}, batch {batch} x {crop} x {crop}, {CLASSES} classes, {device}\n")
    print("| head | ms / iteration |")
    print("| --- | ---: |")
    for head in heads:
        model = build_segmenter(head, backbone, CLASSES, **options.get(head, {})).to(device).train()
        x = torch.randn(batch, 3, crop, crop, device=device)
        target = torch.randint(0, CLASSES, (batch, crop, crop), device=device)
        times = []
        for i in range(iters + 1):  # the first iteration warms up and is not counted
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.loss(model(x), target)["loss"].backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        print(f"| {head} | {1000 * sum(times) / len(times):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", action="store_true", help="also time forward + backward of each full segmenter")
    parser.add_argument("--crop", type=int, default=512, help="square crop size for --time")
    parser.add_argument("--backbone", type=str, default="resnet50_v1c", help="backbone for --time")
    parser.add_argument("--batch", type=int, default=2, help="batch size for --time")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per head for --time")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--heads", type=str, nargs="+", default=sorted(HEADS), choices=sorted(HEADS))
    args = parser.parse_args()
    count()
    if args.time:
        time_segmenters(args.crop, args.backbone, args.batch, args.iters, args.device, args.heads)


if __name__ == "__main__":
    main()
