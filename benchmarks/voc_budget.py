"""The projected time of each step of the VOC recipes on one device and N CPU workers, from the
benchmark suite's rows, beside IRN's logged times and AD-CAM Table 2's (issue #16 item 4).

    python benchmarks/suite.py --device cuda --out suite_gpu.md --json suite_gpu.json
    python benchmarks/voc_budget.py suite_gpu.json --workers 8 --out budget.md

Each step's time is its count (images, optimiser steps) from the recipe's own settings times the
suite's per-image or per-step time, so the projection follows the recipe as it is written:

* train-cls: ``len(split) // batch_size * epochs`` steps at the suite's train-cls step, plus one
  val pass an epoch (a single-scale, unflipped forward per val image: the extract-cam row over the
  sum of its scales' squared factors, times 2 for its flips);
* extract-cam: images x the suite's per-image time, rescaled by the sum of the squared scale factors
  (the recipe's against the suite's);
* eval-cam: images x the suite's sweep (101 thresholds) rescaled to the recipe's threshold count;
  one process (its ``workers`` only decode files);
* make-pseudo irn: IR labels (CPU, ``--workers`` processes), IRNet training
  (``len(split) // batch * epochs`` steps), then per image the boundary net, the walk and IRN's
  post-processing on the device;
* train-seg: ``iterations`` steps, plus its val passes (single scale, unflipped: half the predict row);
* predict: images x the suite's per-image time (one scale with flip) x the sum of the squared
  scales (x 1/2 without flip); eval: images x the confusion-matrix row.

Rows measured at other sizes than the recipe's (a batch, a crop, an image size: the quick and smoke
profiles) are rescaled linearly by pixels and batch, which the table says; only the ``full``
profile (the suite's default on a GPU) measures at the recipes' sizes. Split sizes are VOC 2012's
(``--images`` changes them). Loading images is not counted: with enough workers it overlaps the
device's work.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss.config import from_dict  # noqa: E402
from wsss.pipeline import _stage_config, load_recipe  # noqa: E402

RECIPES = [ROOT / "pipelines" / "voc_adcam_irn_pcaa.yaml", ROOT / "pipelines" / "voc_r50_cam_irn.yaml"]
# PASCAL VOC 2012 + SBD: train_aug, train, val
IMAGES = {"train_aug": 10582, "train": 1464, "val": 1449}
VOC_IMAGE = (375, 500)  # the suite's image size and a typical VOC image's
# AD-CAM Table 2's unit of time: ResNet-50 CAM (classifier training and CAM extraction) on VOC
UNIT_H = 0.7
# The public IRN logs on VOC train_aug (issue #16), for the steps that correspond
IRN_LOG = {
    "train_cls": "train_cam 12 min",
    "extract_cam": "make_cam 10-12 min on 3 GPUs (30-36 min on one)",
    "ir-label": "cam_to_ir_label 34 min on 20 CPU processes",
    "train-irn": "train_irn 17 min",
    "walk": "make_sem_seg_labels 1.22 s / image (3.6 h)",
}


@dataclass
class Estimate:
    step: str
    part: str
    count: float
    unit: str
    seconds: float | None
    basis: str
    irn: str = ""


class Rows:
    """The suite's rows by key; ``fallback``: a second suite run's payload whose rows stand in for
    keys the first lacks (a GPU run without pydensecrf has no IR-label row, and the CRFs run on the
    CPU anyway), each marked with the run it came from."""

    def __init__(self, payload: dict, fallback: dict | None = None):
        self.payload = payload
        self.by_key = {}
        if fallback:
            source = f"from the {fallback.get('device', '?')} run"
            self.by_key = {r["key"]: {**r, "source": source} for r in fallback["rows"] if r.get("key")}
        self.by_key.update({r["key"]: r for r in payload["rows"] if r.get("key")})

    def get(self, key: str) -> dict | None:
        return self.by_key.get(key)


def _family(model: str) -> str:
    return "conformer" if model.startswith("conformer") else "resnet"


def _sq(scales) -> float:
    return sum(float(s) ** 2 for s in scales)


def _pixel_factor(row: dict) -> tuple[float, str]:
    """Per-image rows: (the VOC image's pixels / the row's, a note when they differ)."""
    h, w = row["params"].get("image", VOC_IMAGE)
    if (h, w) == VOC_IMAGE:
        return 1.0, ""
    return VOC_IMAGE[0] * VOC_IMAGE[1] / (h * w), f"rescaled from {h}x{w}"


def _step_factor(row: dict, batch: int, crop: int) -> tuple[float, str]:
    """Per-step rows: (batch x crop pixels of the recipe / the row's, a note when they differ)."""
    b, c = row["params"]["batch"], row["params"]["crop"]
    if (b, c) == (batch, crop):
        return 1.0, ""
    return batch * crop**2 / (b * c**2), f"rescaled from batch {b}, crop {c}"


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _missing(step: str, part: str, count: float, unit: str, key: str) -> Estimate:
    return Estimate(step, part, count, unit, None, f"no suite row '{key}'")


def _model_note(row: dict, model: str | None) -> str:
    measured = row["params"].get("model")
    return f"measured on {measured}" if model and measured and measured != model else ""


def _per_image(rows: Rows, step: str, part: str, key: str, n: float, factor: float = 1.0, divide: int = 1,
               note: str = "", irn: str = "", model: str | None = None) -> Estimate:
    row = rows.get(key)
    if row is None:
        return _missing(step, part, n, "images", key)
    pix, pnote = _pixel_factor(row)
    seconds = n * row["seconds"] * factor * pix / divide
    return Estimate(step, part, n, "images", seconds,
                    _join(f"{row['seconds']:.3g} s / image ({key})", row.get("source", ""), note,
                          _model_note(row, model), pnote, f"over {divide} processes" if divide > 1 else ""), irn)


def _per_step(rows: Rows, step: str, part: str, key: str, steps: int, batch: int, crop: int, model: str,
              irn: str = "") -> Estimate:
    row = rows.get(key)
    if row is None:
        return _missing(step, part, steps, "steps", key)
    f, note = _step_factor(row, batch, crop)
    return Estimate(step, part, steps, "steps", steps * row["seconds"] * f,
                    _join(f"{row['seconds']:.3g} s / step ({key})", row.get("source", ""), _model_note(row, model), note),
                    irn)


def _forward_key(rows: Rows, family: str) -> tuple[str, float]:
    """A single-scale unflipped classifier forward per image: the CAM row over its scales and flips."""
    key = f"extract-cam:cam:{family}"
    row = rows.get(key)
    return key, (1.0 / (_sq(row["params"]["scales"]) * (2 if row["params"].get("flip") else 1)) if row else 1.0)


def _variant(rows: Rows, key: str, batch: int = 1, amp: bool = False) -> str:
    """The suite row a step's settings run as: ``KEY:amp`` with ``amp`` (the suite's inference AMP rows
    are batched), else ``KEY:batch`` for a batch above one, where the suite measured them."""
    if amp and rows.get(key + ":amp"):
        return key + ":amp"
    if batch > 1 and rows.get(key + ":batch"):
        return key + ":batch"
    return key


def project(recipe_path: str | Path, rows: Rows, workers: int, images: dict[str, int] | None = None) -> list[Estimate]:
    """Every step of the recipe with its projected seconds (``None`` where the suite has no row)."""
    images = {**IMAGES, **(images or {})}
    recipe = load_recipe(recipe_path, variables={"voc_root": "VOC", "weights": "W"})
    by_out = {str(recipe.run_dir / s.name): s for s in recipe.steps}
    cfgs = {}
    out: list[Estimate] = []
    for step in recipe.steps:
        cls = _stage_config(step.stage)
        if cls is None:  # report, figure, make_toy: seconds at most
            continue
        cfg = cfgs[step.name] = from_dict(cls, step.settings)
        name = step.name
        if step.stage == "train_cls":
            n = images[cfg.data.split]
            fam = _family(cfg.model)
            out.append(_per_step(rows, name, f"train-cls {cfg.model}", _variant(rows, f"train-cls:{fam}", amp=cfg.amp),
                                 n // cfg.batch_size * cfg.epochs,
                                 cfg.batch_size, cfg.crop, cfg.model, IRN_LOG["train_cls"] if fam == "resnet" else ""))
            if cfg.val_split:
                key, f = _forward_key(rows, fam)
                out.append(_per_image(rows, name, "val passes (one a epoch)", key, images[cfg.val_split] * cfg.epochs, f,
                                      note="single-scale forward", model=cfg.model))
        elif step.stage == "extract_cam":
            model = cfgs[by_out[cfg.cls_dir].name].model
            key = _variant(rows, f"extract-cam:{cfg.method}:{_family(model)}", cfg.batch_size, cfg.amp)
            row = rows.get(key)
            f = _sq(cfg.scales) * (2 if cfg.flip else 1) / (_sq(row["params"]["scales"]) * 2) if row else 1.0
            out.append(_per_image(rows, name, f"{cfg.method} ({model})", key, images[cfg.data.split], f,
                                  note="" if f == 1.0 else f"x {f:.2f} for the recipe's scales",
                                  irn=IRN_LOG["extract_cam"], model=model))
        elif step.stage == "eval_cam":
            start, stop, inc = cfg.thresholds  # the grid evaluate_cams sweeps
            count = np.unique(np.append(np.round(np.arange(start, stop + inc / 2, inc), 6), round(cfg.threshold, 6))).size
            out.append(_per_image(rows, name, "seed sweep", "eval-cam:sweep", images[cfg.data.split], count / 101,
                                  note=f"{count} thresholds"))
        elif step.stage == "make_pseudo":
            n = images[cfg.data.split]
            if cfg.refine != "irn":
                out.append(Estimate(name, f"refine {cfg.refine}", n, "images", None, "not projected"))
                continue
            out.append(_per_image(rows, name, "IR labels (CPU)", "make-pseudo:ir-label", n, divide=workers,
                                  irn=IRN_LOG["ir-label"]))
            irn = cfg.irn
            out.append(_per_step(rows, name, f"train IRNet ({irn.backbone})", _variant(rows, "train-irn", amp=irn.amp),
                                 n // irn.batch_size * irn.epochs,
                                 irn.batch_size, irn.crop, irn.backbone, IRN_LOG["train-irn"]))
            key = _variant(rows, "make-pseudo:boundary", cfg.boundary_batch, cfg.amp)
            out.append(_per_image(rows, name, "boundary maps", key, n, model=irn.backbone))
            walk = _per_image(rows, name, "random walk + post-processing", "make-pseudo:walk", n,
                              irn=IRN_LOG["walk"])
            post = _per_image(rows, name, "", "make-pseudo:post", n)
            if walk.seconds is not None and post.seconds is not None:
                walk.seconds += post.seconds
                walk.basis = _join(walk.basis, post.basis)
            else:
                walk.seconds, walk.basis = None, _join(walk.basis if walk.seconds is None else "", post.basis)
            out.append(walk)
        elif step.stage == "eval":
            src = by_out.get(cfg.pred)
            split = Path(cfg.ids).stem if cfg.ids else (cfgs[src.name].data.split if src else "val")
            out.append(_per_image(rows, name, "scoring", "eval:confusion", images.get(split, images["val"])))
        elif step.stage == "train_seg":
            model = f"{cfg.head}:{cfg.backbone}"
            out.append(_per_step(rows, name, f"train-seg {model}", _variant(rows, f"train-seg:{cfg.head}", amp=cfg.amp),
                                 cfg.iterations, cfg.batch_size, cfg.crop, model))
            if cfg.val_split:
                epochs = cfg.iterations / max(1, images[cfg.data.split] // cfg.batch_size)
                passes = math.floor(epochs / max(1, cfg.val_every)) + 1
                out.append(_per_image(rows, name, f"val passes ({passes})", f"predict:{cfg.head}",
                                      images[cfg.val_split] * passes, 0.5, note="single scale, no flip", model=model))
        elif step.stage == "predict":
            seg = cfgs[by_out[cfg.seg_dir].name]
            head = seg.head
            f = _sq(cfg.scales) * (1.0 if cfg.flip else 0.5)
            if cfg.mode == "slide":
                out.append(Estimate(name, f"predict {head}", images[cfg.data.split], "images", None,
                                    "slide mode not projected"))
                continue
            key = _variant(rows, f"predict:{head}", cfg.batch_size, cfg.amp)
            out.append(_per_image(rows, name, f"predict {head}", key, images[cfg.data.split], f,
                                  note=f"x {f:.2f} for {len(cfg.scales)} scales{' + flip' if cfg.flip else ''}",
                                  model=f"{head}:{seg.backbone}"))
    return out


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def seed_time(estimates: list[Estimate]) -> float | None:
    """AD-CAM Table 2's quantity: classifier training (with its val passes) and CAM extraction."""
    parts = [e for e in estimates if e.part.startswith(("train-cls", "val passes (one", "cam (", "adcam ("))]
    if not parts or any(e.seconds is None for e in parts):
        return None
    return sum(e.seconds for e in parts)


def report(rows: Rows, workers: int, recipes=RECIPES, images: dict[str, int] | None = None) -> str:
    p = rows.payload
    lines = [f"VOC time budget from the suite's rows (profile {p['profile']}: {p['device']} {p.get('device_name', '')}, "
             f"torch {p['torch']}, CUDA {p.get('cuda') or '-'}), one device and {workers} CPU workers.", ""]
    if p["profile"] != "full":
        lines += [f"The {p['profile']} profile measures at smaller sizes than the recipes'; its rows are rescaled "
                  "linearly by pixels and batch, so this is a rough projection only.", ""]
    seeds = {}
    for path in recipes:
        est = project(path, rows, workers, images)
        known = [e.seconds for e in est if e.seconds is not None]
        missing = sum(e.seconds is None for e in est)
        lines += [f"**{Path(path).name}**", "", "| step | part | count | time | from | IRN's log |",
                  "| --- | --- | ---: | ---: | --- | --- |"]
        lines += [f"| {e.step} | {e.part} | {e.count:,.0f} {e.unit} | {_fmt(e.seconds)} | {e.basis} | {e.irn} |" for e in est]
        lines += ["", f"Total: {_fmt(sum(known))}" + (f" ({missing} parts not projected)" if missing else ""), ""]
        seeds[Path(path).name] = seed_time(est)
    ad, r50 = seeds.get("voc_adcam_irn_pcaa.yaml"), seeds.get("voc_r50_cam_irn.yaml")
    if ad is not None:
        lines.append(f"Seed generation (train-cls + extract-cam), AD-CAM Table 2's measure: AD-CAM {_fmt(ad)} = "
                     f"{ad / 3600 / UNIT_H:.2f} ut (1 ut = {UNIT_H} h; the paper: 2.2 ut, issue #16's goal 1.5 ut)"
                     + (f", ResNet-50 CAM {_fmt(r50)} = {r50 / 3600 / UNIT_H:.2f} ut; AD-CAM / CAM "
                        f"{ad / r50:.2f}x (the paper: 2.2x)" if r50 else "") + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite_json", help="the rows of `benchmarks/suite.py --json FILE`")
    ap.add_argument("--workers", type=int, default=8, help="CPU processes of the CPU-bound parts (IR labels)")
    ap.add_argument("--recipes", nargs="*", default=[str(r) for r in RECIPES])
    ap.add_argument("--images", nargs="*", default=[], metavar="SPLIT=N",
                    help=f"split sizes [default: {' '.join(f'{k}={v}' for k, v in IMAGES.items())}]")
    ap.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    ap.add_argument("--fallback", default=None, metavar="JSON",
                    help="another suite run's rows for the keys SUITE_JSON lacks (e.g. a CPU run's IR labels)")
    args = ap.parse_args()
    images = {}
    for item in args.images:
        split, _, n = item.partition("=")
        if not n.isdigit():
            ap.error(f"--images takes SPLIT=N, got '{item}'")
        images[split] = int(n)
    fallback = json.loads(Path(args.fallback).read_text()) if args.fallback else None
    text = report(Rows(json.loads(Path(args.suite_json).read_text()), fallback), args.workers, args.recipes, images)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
