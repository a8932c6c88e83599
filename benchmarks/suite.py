"""Every benchmark at its realistic size in one run, one Markdown table (issue #16).

    python benchmarks/suite.py --device cuda            # VOC sizes; meant to finish within 8 min on one GPU
    python benchmarks/suite.py --device cpu --profile quick   # the same rows, CPU-sized inputs
    python benchmarks/suite.py --device cpu --profile smoke   # seconds: what the test suite runs

Rows (random weights and inputs: speed does not depend on them):

* extract-cam per image, 375 x 500, IRN's scales (1.0, 0.5, 1.5, 2.0) with flips: CAM and AD-CAM
  of a Conformer-S/16 (AD-CAM's ratio to CAM in the last column; the paper's Table 2: 2.2), CAM
  of IRN's ResNet-50 CAM net; each also with ``--batch-size`` 4 (the profile's images in one
  forward per scale), per image;
* the random walk per image at 375 x 500 and 640 x 640 (its stride-4 grid, beta 10, 2^8 steps):
  wsss's stencil walk and IRN's dense N x N form (on a GPU; on a CPU it needs GBs and minutes);
* make-pseudo --refine irn per image, 375 x 500, 2 classes: IRNet boundary (ResNet-50, image +
  flip; also with ``--boundary-batch`` 4), random walk, IRN's post-processing, IR labels (two dense CRFs, CPU);
* predict per image, 375 x 500 with its mirror, PCAA, FCN and DeepLab v2 on ResNet-101, one by one and
  with ``--batch-size`` 4;
* extract-cam, the IRNet boundary and predict batched with ``--amp`` (autocast: float16 on a GPU;
  bfloat16 on a CPU, where the row only shows the path runs), with the largest difference from fp32 (#16 item 3 asks for AMP
  where it stays within 1e-3); with random weights the probabilities are near uniform, so the share
  of labels that change overstates a trained network's;
* training, seconds per step and images per second: train-cls Conformer-S/16 at crop 384 and
  ResNet-50 at crop 512 (batch 16), train-irn ResNet-50 at crop 512 (batch 32), train-seg PCAA,
  FCN and DeepLab v2 on ResNet-101 at crop 512 (batch 16, the VOC recipes'), each in fp32 and with AMP (bf16) on a GPU;
* eval-cam's threshold sweep and eval's confusion matrix per image (CPU);
* the peak GPU memory of each row.

``--json FILE`` also writes the rows with their sizes; ``benchmarks/voc_budget.py FILE`` projects
from them the time of each step of the VOC recipes (README "VOC time budget").

Times are means over ``--repeat`` runs after one warm-up; everything runs in this one process,
side by side, so ratios between rows are meaningful on a noisy machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wsss.engine.precision import inference_amp_dtype  # noqa: E402

PROFILES = {
    # image size, walk sizes, classifier / IRNet / segmenter specs and crops, batch sizes, repeats
    "full": dict(image=(375, 500), walks=[(375, 500), (640, 640)], conformer="conformer_s16", resnet="resnet50",
                 seg_backbone="resnet101_v1c", cls_crop=384, r50_crop=512, irn_crop=512, seg_crop=512,
                 cls_batch=16, irn_batch=32, seg_batch=16, images=4, repeat=3, dense_walk=True),
    "quick": dict(image=(375, 500), walks=[(375, 500)], conformer="conformer_s16", resnet="resnet50",
                  seg_backbone="resnet50_v1c", cls_crop=224, r50_crop=256, irn_crop=256, seg_crop=256,
                  cls_batch=2, irn_batch=2, seg_batch=2, images=1, repeat=1, dense_walk=False),
    "smoke": dict(image=(48, 64), walks=[(48, 64)], conformer="conformer_tiny", resnet="resnet_tiny",
                  seg_backbone="resnet_tiny", cls_crop=64, r50_crop=64, irn_crop=96, seg_crop=64,
                  cls_batch=2, irn_batch=2, seg_batch=2, images=2, repeat=1, dense_walk=True),
}


@dataclass
class Row:
    name: str
    setting: str
    seconds: float
    unit: str
    peak_mib: float | None
    note: str = ""
    # machine-readable: what ``voc_budget.py`` looks the row up by, and the sizes it was measured at
    key: str = ""
    params: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: torch.device, repeat: int) -> tuple[float, float | None]:
    """Mean seconds of ``fn()`` over ``repeat`` calls after one warm-up, and the peak GPU memory (MiB)."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    seconds = (time.perf_counter() - t0) / repeat
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def cam_rows(p: dict, device: torch.device) -> list[Row]:
    from wsss.cam.extract import ExtractCamConfig, compute_cams, compute_cams_batch
    from wsss.cls.models import build_classifier

    rng = np.random.default_rng(0)
    h, w = p["image"]
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(p["images"])]
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    scales = (1.0, 0.5, 1.5, 2.0)
    rows, cam_time = [], None
    for model_name, method in ((p["conformer"], "cam"), (p["conformer"], "adcam"), (p["resnet"], "cam")):
        torch.manual_seed(0)
        model = build_classifier(model_name, 20).to(device).eval()
        cfg = ExtractCamConfig(method=method, scales=scales)

        def run():
            with torch.no_grad():
                for image in images:
                    compute_cams(model, image, label, cfg, device)

        family = "conformer" if model_name == p["conformer"] else "resnet"
        key = f"extract-cam:{method}:{family}"
        params = dict(model=model_name, image=[h, w], scales=list(scales), flip=True)
        seconds, peak = measure(run, device, p["repeat"])
        seconds /= len(images)
        note = ""
        if model_name == p["conformer"] and method == "cam":
            cam_time = seconds
        elif method == "adcam" and cam_time:
            note = f"{seconds / cam_time:.2f}x CAM (AD-CAM Table 2: 2.2x)"
        rows.append(Row(f"extract-cam {method}", f"{model_name}, {h}x{w}, 4 scales + flip", seconds, "s / image",
                        peak, note, key, params))
        if len(images) > 1:  # --batch-size N: the N images (and their mirrors) in one forward per scale

            def batched():
                with torch.no_grad():
                    compute_cams_batch(model, images, [label] * len(images), cfg, device)

            one_by_one = seconds
            seconds, peak = measure(batched, device, p["repeat"])
            seconds /= len(images)
            rows.append(Row(f"extract-cam {method}, --batch-size {len(images)}", f"{model_name}, {h}x{w}, 4 scales + flip",
                            seconds, "s / image", peak, f"{seconds / one_by_one:.2f}x one by one", key + ":batch",
                            {**params, "batch": len(images)}))
            seconds = one_by_one
        # AMP (issue #16 item 3: worth it where the maps stay within 1e-3 of fp32; AD-CAM's matrices
        # stay fp32 inside adcam.py): the batched forward under autocast, and its largest deviation
        dtype = inference_amp_dtype(device)
        amp_cfg = replace(cfg, amp=True)  # extract-cam --amp
        with torch.no_grad():
            ref = [compute_cams(model, image, label, cfg, device)["high_res"] for image in images]
            amp = compute_cams_batch(model, images, [label] * len(images), amp_cfg, device)
        diff = max(float(np.abs(a["high_res"] - r).max()) for a, r in zip(amp, ref))

        def amp_run():
            with torch.no_grad():
                compute_cams_batch(model, images, [label] * len(images), amp_cfg, device)

        amp_s, peak = measure(amp_run, device, p["repeat"])
        rows.append(Row(f"extract-cam {method}, --batch-size {len(images)}, AMP {str(dtype)[6:]}",
                        f"{model_name}, {h}x{w}, 4 scales + flip", amp_s / len(images), "s / image", peak,
                        f"{amp_s / len(images) / seconds:.2f}x fp32 one by one; max abs diff {diff:.1e}", key + ":amp",
                        {**params, "batch": len(images), "amp": str(dtype)[6:], "max_abs_diff": diff}))
        del model
    return rows


def walk_rows(p: dict, device: torch.device) -> list[Row]:
    from bench_random_walk import EXP_TIMES, K, _inputs

    from wsss.pseudo.random_walk import boundary_to_affinity, dense_transition_matrix, random_walk

    rows = []
    for h, w in p["walks"]:
        hs, ws = math.ceil(h / 4), math.ceil(w / 4)
        b, x = _inputs(hs, ws, torch.float32)
        b, x = b.to(device), x.to(device)

        def stencil():
            random_walk(x, boundary_to_affinity(b), exp_times=EXP_TIMES, dtype=torch.float32)

        seconds, peak = measure(stencil, device, p["repeat"])
        rows.append(Row("random walk (stencil)", f"{h}x{w} ({hs}x{ws} grid), fp32", seconds, "s / image", peak, "",
                        f"walk:stencil:{h}x{w}", dict(image=[h, w])))
        if p["dense_walk"] and (device.type == "cuda" or hs * ws <= 4096):

            def dense():
                T = dense_transition_matrix(boundary_to_affinity(b), 10, 5, dtype=torch.float32)
                for _ in range(EXP_TIMES):
                    T = T @ T
                return x.reshape(K, -1) @ T

            dense_s, dense_peak = measure(dense, device, 1)
            rows.append(Row("random walk (IRN's dense)", f"{h}x{w}, fp32", dense_s, "s / image", dense_peak,
                            f"{dense_s / seconds:.1f}x the stencil walk's time", f"walk:dense:{h}x{w}", dict(image=[h, w])))
    return rows


def pseudo_rows(p: dict, device: torch.device) -> list[Row]:
    import warnings

    import cv2

    from wsss.pseudo.crf import ir_label
    from wsss.pseudo.irnet import BoundaryNet, infer_boundary, infer_boundary_batch
    from wsss.pseudo.random_walk import irn_postprocess, propagate

    h, w = p["image"]
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random frozen backbone
        net = BoundaryNet(p["resnet"]).to(device).eval()
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    keys = np.arange(2)
    high = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC)
                     for c in rng.random((2, 6, 8)).astype(np.float32)]).clip(0, 1)
    cam = torch.from_numpy(np.stack([cv2.resize(c, (math.ceil(w / 4), math.ceil(h / 4))) for c in high])).to(device)
    state = {}

    def boundary():
        with torch.no_grad():
            state["b"] = infer_boundary(net, image)

    def walk():
        state["rw"] = propagate(cam, state["b"])

    rows = []
    parts = [("IRNet boundary", "boundary", boundary), ("random walk", "walk", walk),
             ("post-processing", "post", lambda: irn_postprocess(state["rw"], keys, (h, w)))]
    if importlib.util.find_spec("pydensecrf") is not None:
        parts.append(("IR labels (2 dense CRFs, CPU)", "ir-label", lambda: ir_label(image, high, keys + 1)))
    else:  # a GPU image may lack it (it builds from source); the CRFs run on the CPU, so a CPU run measures them
        print("suite: pydensecrf is not installed: no IR-label row (measure it with --device cpu --only pseudo)",
              file=sys.stderr)
    for name, key, fn in parts:
        seconds, peak = measure(fn, device, p["repeat"])
        params = dict(model=p["resnet"], image=[h, w], classes=2)
        rows.append(Row(f"make-pseudo: {name}", f"{p['resnet']}, {h}x{w}, 2 classes", seconds, "s / image", peak, "",
                        f"make-pseudo:{key}", params))
        if name == "IRNet boundary" and p["images"] > 1:  # --boundary-batch N: N images in one forward
            one_by_one, n = seconds, p["images"]
            with torch.no_grad():
                seconds, peak = measure(lambda: infer_boundary_batch(net, [image] * n), device, p["repeat"])
            rows.append(Row(f"make-pseudo: IRNet boundary, --boundary-batch {n}", f"{p['resnet']}, {h}x{w}",
                            seconds / n, "s / image", peak, f"{seconds / n / one_by_one:.2f}x one by one",
                            "make-pseudo:boundary:batch", {**params, "batch": n}))
            dtype = inference_amp_dtype(device)  # make-pseudo --amp: the batched forward under autocast
            with torch.no_grad():
                ref = infer_boundary_batch(net, [image] * n)
                diff = float((infer_boundary_batch(net, [image] * n, amp=True) - ref).abs().max())
                amp_s, peak = measure(lambda: infer_boundary_batch(net, [image] * n, amp=True), device, p["repeat"])
            rows.append(Row(f"make-pseudo: IRNet boundary, --boundary-batch {n}, AMP {str(dtype)[6:]}",
                            f"{p['resnet']}, {h}x{w}", amp_s / n, "s / image", peak,
                            f"{amp_s / n / one_by_one:.2f}x fp32 one by one; max abs diff {diff:.1e}",
                            "make-pseudo:boundary:amp", {**params, "batch": n, "amp": str(dtype)[6:],
                                                         "max_abs_diff": diff}))
    return rows


def predict_rows(p: dict, device: torch.device) -> list[Row]:
    """wsss predict per image (whole image with its mirror, base size = the training crop), one by
    one and with ``--batch-size`` (the profile's images in one forward)."""
    from wsss.seg.inference import segment, segment_batch
    from wsss.seg.train import TrainSegConfig, build_from_config

    h, w = p["image"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(p["images"])]
    kw = dict(base_size=p["seg_crop"], flip=True)
    rows = []
    for head in ("pcaa", "fcn", "deeplabv2"):
        torch.manual_seed(0)
        net = build_from_config(TrainSegConfig(head=head, backbone=p["seg_backbone"]), 21).to(device).eval()
        setting = f"{head}:{p['seg_backbone']}, {h}x{w}, base {p['seg_crop']}, flip"
        params = dict(model=f"{head}:{p['seg_backbone']}", image=[h, w], base_size=p["seg_crop"], scales=[1.0], flip=True)

        def one_by_one():
            for image in images:
                segment(net, image, **kw)

        seconds, peak = measure(one_by_one, device, p["repeat"])
        seconds /= len(images)
        rows.append(Row("predict", setting, seconds, "s / image", peak, "", f"predict:{head}", params))
        if len(images) > 1:
            batched, peak = measure(lambda: segment_batch(net, images, **kw), device, p["repeat"])
            batched /= len(images)
            rows.append(Row(f"predict, --batch-size {len(images)}", setting, batched, "s / image", peak,
                            f"{batched / seconds:.2f}x one by one", f"predict:{head}:batch", {**params, "batch": len(images)}))
        dtype = inference_amp_dtype(device)
        with torch.no_grad():  # predict --amp
            ref = segment_batch(net, images, **kw)
            amp = segment_batch(net, images, amp=True, **kw)
        diff = float((amp.float() - ref).abs().max())
        labels = float((amp.argmax(1) != ref.argmax(1)).float().mean())

        def amp_run():
            with torch.no_grad():
                segment_batch(net, images, amp=True, **kw)

        amp_s, peak = measure(amp_run, device, p["repeat"])
        rows.append(Row(f"predict, --batch-size {len(images)}, AMP {str(dtype)[6:]}", setting, amp_s / len(images),
                        "s / image", peak, f"{amp_s / len(images) / seconds:.2f}x fp32 one by one; max abs diff of "
                        f"the probabilities {diff:.1e}, {100 * labels:.3f}% of labels differ", f"predict:{head}:amp",
                        {**params, "batch": len(images), "amp": str(dtype)[6:], "max_abs_diff": diff,
                         "labels_changed": labels}))
        del net
    return rows


def train_rows(p: dict, device: torch.device) -> list[Row]:
    from bench_train_throughput import classifier_step, segmenter_step

    from wsss.pseudo.irnet import BoundaryNet, affinity_labels, boundary_loss, edge_to_affinity, path_index

    def irn_step(batch: int, crop: int):
        """A train-irn step: frozen backbone, boundary head, IRN's affinity loss on random IR labels."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = BoundaryNet(p["resnet"]).to(device).train()
        opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=0.1, momentum=0.9)
        index = path_index(10)
        x = torch.randn(batch, 3, crop, crop, device=device)
        label = torch.randint(0, 3, (batch, crop // 4, crop // 4), device=device)
        labels = affinity_labels(label, index)

        def step():
            loss = boundary_loss(edge_to_affinity(torch.sigmoid(net(x).float()), index), *labels)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    specs = [
        ("train-cls", p["conformer"], p["cls_crop"], lambda: classifier_step(p["conformer"], p["cls_batch"], p["cls_crop"], device),
         p["cls_batch"], "train-cls:conformer"),
        ("train-cls", p["resnet"], p["r50_crop"], lambda: classifier_step(p["resnet"], p["cls_batch"], p["r50_crop"], device),
         p["cls_batch"], "train-cls:resnet"),
        ("train-irn", p["resnet"], p["irn_crop"], lambda: irn_step(p["irn_batch"], p["irn_crop"]), p["irn_batch"], "train-irn"),
    ] + [
        ("train-seg", f"{head}:{p['seg_backbone']}", p["seg_crop"],
         (lambda head=head: segmenter_step(f"{head}:{p['seg_backbone']}", p["seg_batch"], p["seg_crop"], device)),
         p["seg_batch"], f"train-seg:{head}")
        for head in ("pcaa", "fcn", "deeplabv2")
    ]
    rows = []
    for stage, model_name, crop, build, batch, key in specs:
        setting = f"{model_name}, crop {crop}"
        for amp in ((False, True) if device.type == "cuda" else (False,)):
            torch.manual_seed(0)
            step = build()

            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    step()

            seconds, peak = measure(run, device, p["repeat"])
            rows.append(Row(stage, f"{setting}, batch {batch}{', AMP bf16' if amp else ''}", seconds, "s / step", peak,
                            f"{batch / seconds:.1f} images / s", key + (":amp" if amp else ""),
                            dict(model=model_name, crop=crop, batch=batch, amp="bfloat16" if amp else None)))
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def eval_rows(p: dict, device: torch.device) -> list[Row]:
    """The scoring stages, on the CPU whatever ``--device``: eval-cam's background-threshold sweep
    (101 thresholds, 2 classes) and eval's confusion matrix, per image of the profile's size."""
    from wsss.eval.metrics import ConfusionMatrix, ThresholdSweep

    h, w = p["image"]
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 21, (h, w)).astype(np.uint8)
    cams, keys = rng.random((2, h, w), dtype=np.float32), np.array([4, 12])
    cpu = torch.device("cpu")
    sweep, cm = ThresholdSweep(21), ConfusionMatrix(21)
    rows = []
    for name, key, fn in (("eval-cam: threshold sweep (CPU)", "eval-cam:sweep", lambda: sweep.update(gt, cams, keys)),
                          ("eval: confusion matrix (CPU)", "eval:confusion", lambda: cm.update(gt, gt))):
        seconds, _ = measure(fn, cpu, p["repeat"])
        rows.append(Row(name, f"{h}x{w}, 21 classes", seconds, "s / image", None, "", key, dict(image=[h, w])))
    return rows


GROUPS = {"cam": cam_rows, "walk": walk_rows, "pseudo": pseudo_rows, "predict": predict_rows, "train": train_rows, "eval": eval_rows}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def table(rows: list[Row], device: torch.device, profile: str, elapsed: float) -> str:
    name = device_name(device)
    head = (f"wsss benchmark suite, profile {profile}: {device.type} ({name}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or '-'}, {torch.get_num_threads()} CPU threads; {elapsed:.0f} s\n\n"
            "| stage | setting | time | peak GPU MiB | note |\n| --- | --- | ---: | ---: | --- |\n")
    body = "".join(
        f"| {r.name} | {r.setting} | {r.seconds:.3f} {r.unit} | {'-' if r.peak_mib is None else f'{r.peak_mib:.0f}'} "
        f"| {r.note} |\n" for r in rows)
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None,
                    help="input sizes [default: full on cuda, quick on cpu]")
    ap.add_argument("--only", nargs="*", choices=sorted(GROUPS), default=sorted(GROUPS), help="row groups to run")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--json", default=None,
                    help="also write the rows to this JSON file (the input of benchmarks/voc_budget.py)")
    args = ap.parse_args()
    device = torch.device(args.device)
    profile = args.profile or ("full" if device.type == "cuda" else "quick")
    p = PROFILES[profile]
    t0 = time.perf_counter()
    rows: list[Row] = []

    def write(partial: bool) -> str:
        """The table and JSON so far: written after every group, so a run stopped at a time limit (a
        lent GPU's) still leaves the groups it finished; ``partial`` marks them as such."""
        text = table(rows, device, profile, time.perf_counter() - t0)
        if partial:
            text += "\n(partial: the run has not finished its groups)\n"
        if args.out:
            Path(args.out).write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps(dict(
                profile=profile, device=device.type, device_name=device_name(device), torch=torch.__version__,
                cuda=torch.version.cuda, threads=torch.get_num_threads(), elapsed_s=time.perf_counter() - t0,
                partial=partial, rows=[asdict(r) for r in rows]), indent=1))
        return text

    groups = [g for g in GROUPS if g in args.only]
    for i, group in enumerate(groups):
        rows += GROUPS[group](p, device)
        print(f"[{group}] done, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if i < len(groups) - 1:
            write(partial=True)
    print(write(partial=False))


if __name__ == "__main__":
    main()
