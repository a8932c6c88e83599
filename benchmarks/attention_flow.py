"""Where AD-CAM's diffusion sends a background token's activation, before and after Eq. 6-7.

For each image (scale 1, the classifier's token grid) it splits the tokens into object and
background by the ground truth (a token is object when over half of its 16 x 16 cell is), and
reports, averaged over the images:

* the share of object tokens;
* for the background tokens' rows, the attention mass sent to object tokens: in ``A`` (Sec. 4.2, the
  matrix "Att-Diffu only" diffuses with) and in ``A~`` (Eq. 7) for each k;
* the mean co-neighbour similarity S (Eq. 6) of background rows to object and to background tokens.

* for the object tokens' rows, the mass they keep on object tokens (in A and A~): an affinity
  that diffusion can spread within objects needs this well above the object share.

In "distribute" mode (Eq. 8 as the text reads) a token passes its activation along its attention
row, so these shares say how much of a background CAM flows onto the objects in one step.

``--cam-net DIR`` (a ResNet CAM net's train-cls folder) also scores seeds on the same images with
the extraction protocol (``--scales``, flips; best background threshold): that net's CAM alone, and
diffused with this Conformer's attention, unrefined (Att-Diffu) and by AD-CAM for each k. It asks
whether the attention helps a CAM that already sits on the objects.

    python benchmarks/attention_flow.py --cls-dir runs/demo/cls --data-root runs/demo/toy --split train
    python benchmarks/attention_flow.py --cls-dir runs/demo/cls --data-root runs/demo/toy --split train \
        --cam-net runs/demo/cls_resnet --ks 8 16 50
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cls-dir", required=True, help="train-cls folder of a Conformer classifier")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--data-kind", default="voc")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=100, help="the first N images of the split")
    ap.add_argument("--ks", type=int, nargs="+", default=[50, 8])
    ap.add_argument("--cam-net", default=None, help="a ResNet CAM net's train-cls folder: also score seeds (above)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5], help="--cam-net's extraction scales")
    args = ap.parse_args()

    import cv2

    from wsss.cam.adcam import attention_matrix, coneighbor_similarity, refine_attention
    from wsss.cls.models import load_trained_classifier
    from wsss.data import DataConfig, build_dataset
    from wsss.data.transforms import normalize
    from wsss.io import IGNORE_INDEX

    model, _ = load_trained_classifier(args.cls_dir, torch.device("cpu"))
    ds = build_dataset(DataConfig(kind=args.data_kind, root=args.data_root, split=args.split))
    rows: dict[str, list[float]] = {}
    used = 0
    for image_id in ds.ids[: args.images]:
        s = ds.load(image_id)
        with torch.no_grad():
            feats = model.net.forward_features(torch.from_numpy(normalize(s.image))[None], return_attn="mean")
        A = attention_matrix(feats.attn, renorm=True)[0]
        h, w = feats.grid
        obj = ((s.mask > 0) & (s.mask != IGNORE_INDEX)).astype(np.float32)
        fg = torch.from_numpy(cv2.resize(obj, (w, h), interpolation=cv2.INTER_AREA).reshape(-1) > 0.5)
        if not fg.any() or fg.all():
            continue
        used += 1
        S = coneighbor_similarity(A[None])[0]
        bg = ~fg
        add = lambda k, v: rows.setdefault(k, []).append(float(v))  # noqa: E731
        add("object tokens (share)", fg.float().mean())
        refined = {k: refine_attention(A[None], S[None], k)[0] for k in args.ks}  # Eq. 7 once per k
        add("background rows -> object tokens, A", A[bg][:, fg].sum(1).mean())
        for k, R in refined.items():
            add(f"background rows -> object tokens, A~ (k = {k})", R[bg][:, fg].sum(1).mean())
        add("object rows -> object tokens, A", A[fg][:, fg].sum(1).mean())
        for k, R in refined.items():
            add(f"object rows -> object tokens, A~ (k = {k})", R[fg][:, fg].sum(1).mean())
        add("S, background row to object tokens (mean)", S[bg][:, fg].mean())
        add("S, background row to background tokens (mean)", S[bg][:, bg].mean())
    print(f"{args.cls_dir}: {used} images of {args.split} with both object and background tokens, scale 1\n")
    print("| quantity | mean over images |\n| --- | ---: |")
    for k, v in rows.items():
        print(f"| {k} | {np.mean(v):.4f} |")
    if args.cam_net:
        seeds_with_other_cam(model, args, ds)


def seeds_with_other_cam(conformer, args, ds) -> None:
    """The ``--cam-net`` table: another net's CAM diffused with this Conformer's attention."""
    import torch.nn.functional as F

    from wsss.cam import extract
    from wsss.cam.adcam import adcam_maps, attention_diffusion_maps
    from wsss.cls.models import load_trained_classifier
    from wsss.eval.metrics import ThresholdSweep

    cam_net, _ = load_trained_classifier(args.cam_net, torch.device("cpu"))

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cam_net, self.conformer = cam_net, conformer

    def diffused(model, x, cfg):  # the driver's method signature (wsss.cam.extract.CAM_METHODS)
        cam = F.relu(model.cam_net.class_maps(x))
        feats = model.conformer.net.forward_features(x, return_attn="mean")
        if cam.shape[-2:] != tuple(feats.grid):
            raise SystemExit(f"the CAM net's map {tuple(cam.shape[-2:])} and the token grid {tuple(feats.grid)} differ")
        if cfg.topk == 0:
            return attention_diffusion_maps(cam, feats.attn, steps=cfg.steps)
        return adcam_maps(cam, feats.attn, k=cfg.topk, steps=cfg.steps)

    name = "_attention_flow_diffused"
    extract.CAM_METHODS[name] = diffused  # this process only; removed below
    try:
        pair = Pair().eval()
        settings = [("CAM net's CAM", cam_net, dict(method="cam"))]
        settings.append(("Att-Diffu (this Conformer's A)", pair, dict(method=name, topk=0)))
        settings += [(f"AD-CAM k = {k} (this Conformer's A~)", pair, dict(method=name, topk=k)) for k in args.ks]
        print(f"\nseeds of {args.cam_net}'s CAM, scales {args.scales} + flip, best background threshold\n")
        print("| seeds | mIoU | FP | FN | threshold |\n| --- | ---: | ---: | ---: | ---: |")
        samples = [ds.load(image_id) for image_id in ds.ids[: args.images]]  # read once for every setting
        for label, model, kw in settings:
            sweep = ThresholdSweep(ds.num_classes)
            for s in samples:
                c = extract.compute_cams(model, s.image, s.label, extract.ExtractCamConfig(scales=tuple(args.scales), **kw),
                                         torch.device("cpu"))
                sweep.update(s.mask, c["high_res"], c["keys"] + 1)
            r = sweep.results()
            b = r.best
            print(f"| {label} | {100 * b.miou:.2f} | {100 * b.mean_fp:.1f} | {100 * b.mean_fn:.1f} | {r.best_threshold:.2f} |")
    finally:
        del extract.CAM_METHODS[name]


if __name__ == "__main__":
    main()
