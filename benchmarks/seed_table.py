"""Seed quality of every CAM method from one trained classifier, like AD-CAM Table 3 and Figure 4.

Extracts CAMs with each method (same classifier, images and multi-scale protocol) and scores
them with the threshold sweep of ``wsss eval-cam``; then sweeps AD-CAM's k (T = 2) and T (k = 50).
Prints Markdown tables of best mIoU, FP, FN and the best background threshold.

    python benchmarks/seed_table.py --cls-dir runs/demo/cls --data-root runs/demo/toy --split val
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def seed(cls_dir: str, data, out: Path, scales, **method) -> dict:
    from wsss.cam.evaluate import EvalCamConfig, evaluate_cams
    from wsss.cam.extract import ExtractCamConfig, extract_cams

    extract_cams(ExtractCamConfig(data=data, cls_dir=cls_dir, scales=tuple(scales), out=str(out), device="cpu",
                                  **method), progress=False)
    result = evaluate_cams(EvalCamConfig(data=data, cam_dir=str(out), out=str(out / "eval.json"), workers=2),
                           progress=False)
    b = result.best
    return {"mIoU": 100 * b.miou, "FP": 100 * b.mean_fp, "FN": 100 * b.mean_fn, "t": result.best_threshold}


def row(name: str, r: dict) -> str:
    return f"| {name} | {r['mIoU']:.2f} | {r['FP']:.2f} | {r['FN']:.2f} | {r['t']:.2f} |"


HEADER = "| {} | seed mIoU | FP | FN | best threshold |\n| --- | ---: | ---: | ---: | ---: |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cls-dir", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--data-kind", default="voc")
    ap.add_argument("--split", default="val")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    ap.add_argument("--ts", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args()
    from wsss.data import DataConfig

    data = DataConfig(kind=args.data_kind, root=args.data_root, split=args.split)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = [
            ("CAM", dict(method="cam")),
            ("TS-CAM coupling", dict(method="tscam")),
            ("attention diffusion only", dict(method="attn-diffusion")),
            ("AD-CAM (distribute, paper's text; rows of A renormalised, Sec. 4.3)",
             dict(method="adcam", diffusion="distribute")),
            ("AD-CAM (distribute; raw rows of A, --no-attn-renorm)",
             dict(method="adcam", diffusion="distribute", attn_renorm=False)),
            ("AD-CAM (average)", dict(method="adcam", diffusion="average")),
        ]
        print(f"classifier {args.cls_dir}, {args.split} split of {args.data_root}, scales {args.scales} + flip\n")
        print(HEADER.format("method"))
        for i, (name, method) in enumerate(variants):
            print(row(name, seed(args.cls_dir, data, tmp / f"v{i}", args.scales, **method)), flush=True)
        print("\n" + HEADER.format("AD-CAM k (T = 2)"))
        for k in args.ks:
            print(row(f"k = {k}", seed(args.cls_dir, data, tmp / f"k{k}", args.scales, method="adcam", topk=k)),
                  flush=True)
        print("\n" + HEADER.format("AD-CAM T (k = 50)"))
        for t in args.ts:
            print(row(f"T = {t}", seed(args.cls_dir, data, tmp / f"t{t}", args.scales, method="adcam", steps=t)),
                  flush=True)


if __name__ == "__main__":
    main()
