"""The ``wsss`` command line: thin wrappers that parse options, resolve the
configuration and call one Python function per stage."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import click

from wsss.config import ConfigError, data_options, load_config, shell_command
from wsss.data import DATA_KINDS
from wsss.io import WsssDataError
from wsss.models.weights import WeightsMismatchError

# Errors a user can fix from the message alone: shown without a traceback.
USER_ERRORS = (WsssDataError, ConfigError, FileNotFoundError, PermissionError, WeightsMismatchError)
# Failures to write an output (a file where a folder should be, no permission, disk full...).
WRITE_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                errno.EDQUOT}


def _one_line(e: BaseException) -> str:
    """The user's message of an error; for one re-raised from a data-loader worker, the original
    error's own last line instead of the worker's traceback that PyTorch puts in the message."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
        text += " (raised in a data-loading worker)"
    return text


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


TRAINING_COMMANDS = ("pretrain", "train-cls", "train-irn", "train-seg")


def continue_command(argv: list[str]) -> str:
    """The shell-quoted command that continues an interrupted ``wsss`` call: the same one, with
    ``--resume`` for a training stage (and without ``--overwrite``, which would start again)."""
    import shlex

    args = [a for a in argv if a != "--overwrite"]
    if args and args[0] in TRAINING_COMMANDS and "--resume" not in args:
        args.append("--resume")
    return "wsss " + shlex.join(args)


def interrupted_message(argv: list[str]) -> str:
    """What an interrupted stage kept, and the command that continues it."""
    kept = "every output file already written is complete (outputs are written atomically)"
    if argv and "--out" in argv[:-1]:
        out = Path(argv[argv.index("--out") + 1])
        resume = out / "resume.pt"
        if argv[0] in TRAINING_COMMANDS and resume.is_file():
            import torch

            step = torch.load(resume, map_location="cpu", weights_only=True).get("step")
            kept = f"the last checkpoint, step {step}, is in {resume}"
        elif out.is_dir():
            kept = f"the {sum(1 for _ in out.glob('*.png')) + sum(1 for _ in out.glob('*.npz'))} files finished in {out} are kept"
    return f"interrupted: {kept}. To continue: {continue_command(argv)}"


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _int_pair(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not MIN,MAX (two whole numbers)", param_hint=option)
    return [lo, hi]


def _number_list(text: str | None, option: str, kind: type = int) -> list | None:
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise click.BadParameter(f"'{text}' is not a comma-separated list of {what}", param_hint=option)


def _int_list(text: str | None, option: str) -> list[int] | None:
    return _number_list(text, option, int)


def _float_list(text: str | None, option: str) -> list[float] | None:
    return _number_list(text, option, float)


class WsssGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["wsss.argv"] = list(args)  # for the command that continues an interrupted stage
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        import signal

        try:
            signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        except ValueError:  # not the main thread
            pass
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\n" + interrupted_message(ctx.meta.get("wsss.argv", [])), err=True)
            sys.exit(130)
        except USER_ERRORS as e:
            raise click.ClickException(_one_line(e)) from e
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            raise click.ClickException(
                f"out of memory ({_one_line(e).splitlines()[0][:200]}). What finished is kept: rerun with a smaller "
                "--batch-size or --crop, fewer --scales, or --device cpu, and the stage continues where it stopped."
            ) from e
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            raise click.ClickException(
                f"cannot write {e.filename or 'an output'}: {e.strerror}. Choose an output folder you can write to "
                "(and that has space); what was written before is intact and a rerun continues from it."
            ) from e

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Stage order, not alphabetical: the help reads as the pipeline.
        return list(self.commands)


@click.group(cls=WsssGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="wsss")
def main() -> None:
    """Weakly-supervised semantic segmentation: image-level labels to a segmentation model.

    Stages: train-cls -> extract-cam -> make-pseudo -> train-seg; each reads
    the previous stage's folder and can be run alone.
    """


@main.command("make-toy")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write the dataset to (a VOC-layout tree).")
@click.option("--size", type=click.IntRange(32, 4096), default=128, help="Image side, pixels.")
@click.option("--num-train", type=click.IntRange(1), default=2000, help="Training images.")
@click.option("--num-val", type=click.IntRange(1), default=300, help="Validation images.")
@click.option("--seed", type=int, default=0, help="Random seed; the same seed gives byte-identical files.")
@click.option("--workers", type=click.IntRange(1), default=2, help="Worker processes.")
def make_toy_cmd(out: Path, size: int, num_train: int, num_val: int, seed: int, workers: int) -> None:
    """Write the built-in synthetic dataset (a miniature of PASCAL VOC)."""
    from wsss.data.toy import make_toy

    root = make_toy(out, size=size, num_train=num_train, num_val=num_val, seed=seed, workers=workers)
    click.echo(f"synthetic dataset ready at {root}")
    click.echo(f"  images:  {root / 'JPEGImages'}\n  masks:   {root / 'SegmentationClass'}")
    click.echo(f"  labels:  {root / 'cls_labels.npy'}\n  splits:  {root / 'ImageSets' / 'Segmentation'}")
    click.echo("next: " + shell_command("eval", "--pred", root / "SegmentationClass", "--gt", root / "SegmentationClass"))


@main.command("eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML file with eval settings; options below override it.")
@click.option("--pred", type=click.Path(file_okay=False), default=None, help="Folder of predicted masks (<id>.png).")
@click.option("--gt", type=click.Path(file_okay=False), default=None, help="Folder of ground-truth masks (<id>.png).")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Instead of --gt: score against this dataset's own ground truth, read and mapped by its reader (e.g. Cityscapes labelIds) [default: voc].")
@click.option("--data-root", default=None, help="Instead of --gt: the dataset folder.")
@click.option("--split", default=None, help="With --data-root: the split scored, every image of it [default: val].")
@click.option("--ids", type=click.Path(dir_okay=False), default=None, help="Image-list file to score [default: every PNG in --pred].")
@click.option("--classes", default=None, help="'voc', 'coco' or a class-names file [default: class_names.txt beside --gt, else VOC].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON with every figure [default: <pred>/eval.json].")
@click.option("--workers", type=click.IntRange(1), default=None, help="Threads decoding PNGs [default: 4].")
def eval_cmd(config_path, pred, gt, data_kind, data_root, split, ids, classes, out, workers) -> None:
    """Score masks: per-class IoU, FP, FN (percent) and mIoU, as papers report them."""
    from wsss.eval.masks import EvalConfig, evaluate_folders

    cfg = load_config(
        EvalConfig, config_path,
        {"pred": pred, "gt": gt, "ids": ids, "classes": classes, "out": out, "workers": workers,
         "data.kind": data_kind, "data.root": data_root, "data.split": split or ("val" if data_root else None)},
        section="eval",
    )
    if not cfg.pred or not (cfg.gt or cfg.data.root):
        raise click.UsageError("--pred and either --gt or --data-root are needed (or set eval.pred and eval.gt / "
                               "eval.data in --config)")
    metrics = evaluate_folders(cfg, progress=sys.stderr.isatty())
    click.echo(metrics.table())
    click.echo(f"mIoU {100 * metrics.miou:.2f}  FP {100 * metrics.mean_fp:.2f}  FN {100 * metrics.mean_fn:.2f}")
    from wsss.eval.metrics import collapse_warning

    warning = collapse_warning(metrics.confusion, metrics.class_names, "predicted pixels")
    if warning:
        click.echo(warning)
    click.echo(f"figures written to {Path(cfg.out) if cfg.out else Path(cfg.pred) / 'eval.json'}")


@main.command("pretrain")
@click.option("--tensorboard", is_flag=True, default=None, help="Also write TensorBoard events to OUT/tensorboard (pip install 'wsss[tensorboard]').")
@click.option("--model", default=None, help="Backbone to pretrain, e.g. resnet_tiny or conformer_tiny [default: resnet_tiny].")
@click.option("--out", default=None, help="Output folder [default: runs/pretrain].")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs over the corpus [default: 20].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Global batch, images [default: 64].")
@click.option("--lr", type=float, default=None, help="AdamW peak learning rate (warm-up, then cosine) [default: 2e-3].")
@click.option("--num-train", type=click.IntRange(1), default=None, help="Corpus training images [default: 10200].")
@click.option("--num-val", type=click.IntRange(1), default=None, help="Held-out corpus images scored for top-1 [default: 1020].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Training crop side (random-resized crops), pixels [default: 96].")
@click.option("--size", type=click.IntRange(32, 1024), default=None, help="Corpus image side, pixels [default: 128].")
@click.option("--corpus-seed", type=int, default=None, help="Seed the corpus images depend on [default: 0].")
@click.option("--cache", default=None, help="Folder for the rendered corpus, reused by later runs [default: OUT/corpus].")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many optimiser steps [default: all epochs].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data-loading processes [default: 1].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to train [default: auto].")
@click.option("--seed", type=int, default=None, help="Seed of data order, augmentation and initialisation [default: 0].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Train again from scratch in an --out that holds a run (refused without it).")
@click.option("--export-builtin", "export_name", default=None, help="When done, ship the backbone inside the package as builtin:NAME (writes wsss/pretrained/).")
@click.option("--list", "list_only", is_flag=True, help="List the built-in weights and how each was made, then exit.")
def pretrain_cmd(model, out, epochs, batch_size, lr, num_train, num_val, crop, size, corpus_seed, cache, max_steps, workers,
                 device, seed, resume, overwrite, export_name, list_only, tensorboard) -> None:
    """Pretrain a backbone on the synthetic 102-class corpus: the built-in stand-in for ImageNet weights.

    The result loads wherever a weights file does (--pretrained, --irn-weights); shipped ones as builtin:NAME.
    """
    from wsss.models.builtin import list_builtin, manifest_line

    if list_only:
        known = list_builtin()
        if not known:
            click.echo("no built-in weights are installed")
        for name, entry in known.items():
            click.echo(manifest_line(name, entry))
        return
    from wsss.cls.pretrain import BACKBONE_NAME, PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, None, {
        "model": model, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr, "num_train": num_train,
        "num_val": num_val, "crop": crop, "size": size, "corpus_seed": corpus_seed, "cache": cache, "max_steps": max_steps,
        "workers": workers, "device": device, "seed": seed, "tensorboard": tensorboard,
    }, section="pretrain")
    out_dir = pretrain(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())
    if export_name:
        import shlex

        from wsss.config import to_dict
        from wsss.models.builtin import export_builtin

        done = json.loads((out_dir / "done.json").read_text())
        settings = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "render_workers", "device", "out", "cache")}
        from wsss.data.corpus import CORPUS_CLASSES

        entry = {"model": cfg.model, "classes": len(CORPUS_CLASSES),
                 "top1": round(done["val_top1"], 2), "steps": done["steps"], "settings": settings,
                 # without --resume: the command that makes the file from nothing
                 "command": "wsss pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a != "--resume")}
        target = export_builtin(export_name, out_dir / BACKBONE_NAME, entry)
        click.echo(f"built-in weights builtin:{export_name} written to {target}")


@main.command("train-cls")
@click.option("--tensorboard", is_flag=True, default=None, help="Also write TensorBoard events to OUT/tensorboard (pip install 'wsss[tensorboard]').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe (configs/*.yaml); options below override it.")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, help="Folder datasets without splits/: write a seeded train/val split with this fraction for val [default: none, --split must name a split or be all].")
@click.option("--split", default=None, help="Training split [default: train].")
@click.option("--val-split", default=None, help="Split scored each epoch (mAP, F1) [default: val].")
@click.option("--model", default=None, help="Backbone: conformer_tiny|conformer_ti16|conformer_s16|conformer_b16|resnet50|resnet101|resnet50_v1c|resnet101_v1c|resnet_tiny [default: conformer_tiny].")
@click.option("--pretrained", default=None, help="Local ImageNet weights (.pth/.pt/.safetensors) or builtin:NAME (wsss pretrain --list) [default: none, train from scratch].")
@click.option("--strict-load/--no-strict-load", default=None, help="Refuse weights whose keys do not match (classifier heads aside) [default: strict].")
@click.option("--detach-branches/--no-detach-branches", default=None, help="Conformer: cut gradients between CNN and transformer branches [default: detach].")
@click.option("--drop-path", type=click.FloatRange(0, 1), default=None, help="Conformer stochastic-depth rate (the official recipe: 0.1) [default: 0].")
@click.option("--partial-pool", type=click.IntRange(0), default=None, help="Partial pooling S (PCAA Eq. 3), 0 = off [default: 0].")
@click.option("--region-masks", default=None, help="Partial pooling's region labels: a pseudo-mask folder, or gt for the ground truth (pixel supervision); required with --partial-pool.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs [default: 5].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Global batch, images, split over processes [default: 16].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Training crop side, pixels [default: 384].")
@click.option("--lr", type=float, default=None, help="CNN/backbone learning rate, poly decay [default: 5e-4].")
@click.option("--resize-long", default=None, help="Range of the random long-side resize, MIN,MAX pixels [default: 320,640].")
@click.option("--resize", type=click.Choice(["pil", "opencv"]), default=None, help="Kernel of the random long-side resize: pil (IRN's PIL bicubic; region masks PIL nearest) or opencv (OpenCV linear / nearest, the behaviour before) [default: pil].")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default=None, help="Optimiser [default: adamw].")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many optimiser steps [default: all epochs].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data-loading processes per GPU/process [default: 2].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to train [default: auto, a GPU if present].")
@click.option("--seed", type=int, default=None, help="Seed of data order, augmentation and initialisation [default: 0].")
@click.option("--out", default=None, help="Output folder [default: runs/cls].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Train again from scratch in an --out that holds a run (refused without it).")
def train_cls_cmd(config_path, data_kind, data_root, val_fraction, split, val_split, model, pretrained, strict_load, detach_branches,
                  partial_pool, region_masks, epochs, batch_size, crop, lr, max_steps, workers, device, seed, out, resize_long, resize, optimizer, drop_path, resume, overwrite, tensorboard) -> None:
    """Train the multi-label classifier (Conformer or ResNet) on image-level labels.

    Multi-GPU: torchrun --nproc_per_node N -m wsss train-cls ... (same results as one process).
    """
    from wsss.cls.train import TrainClsConfig, train_cls

    cfg = load_config(TrainClsConfig, config_path, {
        "data.kind": data_kind, "data.val_fraction": val_fraction, "data.root": data_root, "data.split": split, "val_split": val_split, "model": model,
        "pretrained": pretrained, "strict_load": strict_load, "detach_branches": detach_branches, "epochs": epochs,
        "partial_pool": partial_pool, "region_masks": region_masks,
        "batch_size": batch_size, "crop": crop, "lr": lr, "max_steps": max_steps, "workers": workers,
        "device": device, "seed": seed, "resize_long": _int_pair(resize_long, "--resize-long"), "resize": resize, "optimizer": optimizer, "drop_path": drop_path, "out": out,
        "tensorboard": tensorboard,
    }, section="train_cls")
    train_cls(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())


@main.command("extract-cam")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe; options below override its extract_cam section.")
@click.option("--cls-dir", default=None, help="train-cls output folder (config.yaml + model.safetensors).")
@click.option("--method", type=click.Choice(["cam", "partial", "adcam", "attn-diffusion", "tscam"]), default=None, help="How class maps are made [default: cam].")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder.")
@click.option("--split", default=None, help="Images to process [default: train].")
@click.option("--scales", default=None, help="Comma-separated image scales [default: 1.0,0.5,1.5,2.0].")
@click.option("--attn-renorm/--no-attn-renorm", default=None, help="AD-CAM: rows of A renormalised to 1 after dropping the cls token, as Sec. 4.3 states [default: renorm].")
@click.option("--max-side", type=click.IntRange(16), default=None, help="Downscale images whose long side is larger to this many pixels for extraction (maps resized back); lowers peak memory [default: none].")
@click.option("--topk", type=click.IntRange(1), default=None, help="AD-CAM: co-neighbours kept per token, k of Eq. 7 [default: 50].")
@click.option("--steps", type=click.IntRange(0), default=None, help="AD-CAM: diffusion steps, T of Eq. 8 [default: 2].")
@click.option("--diffusion", type=click.Choice(["distribute", "average"]), default=None, help="AD-CAM diffusion direction [default: distribute, the paper's text].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to run [default: auto].")
@click.option("--format", "file_format", type=click.Choice(["npz", "irn"]), default=None, help="npz: <id>.npz, no pickle; irn: <id>.npy as IRN's make_cam writes it, for IRN-based code [default: npz].")
@click.option("--out", default=None, help="Output folder of <id>.npz (or .npy) files [default: runs/cam].")
@click.option("--overwrite", is_flag=True, default=None, help="Redo images already written.")
def extract_cam_cmd(config_path, cls_dir, method, data_kind, data_root, split, scales, max_side, attn_renorm, topk, steps, diffusion, device,
                    file_format, out, overwrite) -> None:
    """Class activation maps (CAM, AD-CAM and Table 3's baselines) as IRN-format files.

    Resumable (images already written are skipped); torchrun shards the images over processes.
    """
    from wsss.cam.extract import ExtractCamConfig, extract_cams

    scale_list = [float(s) for s in scales.split(",")] if scales else None
    cfg = load_config(ExtractCamConfig, config_path, {
        "cls_dir": cls_dir, "method": method, "data.kind": data_kind, "data.root": data_root, "data.split": split,
        "scales": scale_list, "max_side": max_side, "attn_renorm": attn_renorm, "topk": topk, "steps": steps, "diffusion": diffusion, "device": device, "out": out,
        "overwrite": overwrite, "file_format": file_format,
    }, section="extract_cam")
    result = extract_cams(cfg, progress=sys.stderr.isatty())
    click.echo(f"CAMs written to {result}")
    click.echo("next: " + shell_command("eval-cam", "--cam-dir", result, *data_options(cfg.data)))


@main.command("eval-cam")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe; options below override its eval_cam section.")
@click.option("--cam-dir", default=None, help="Folder of CAM files (.npz, or IRN's .npy).")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder (ground-truth masks).")
@click.option("--split", default=None, help="Split to score [default: train].")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Fixed background threshold also reported (IRN reports seeds at it) [default: 0.15].")
@click.option("--out", default=None, help="JSON of the sweep [default: <cam-dir>/eval_cam.json; plot beside it].")
def eval_cam_cmd(config_path, cam_dir, data_kind, data_root, split, threshold, out) -> None:
    """Seed quality: background-threshold sweep, best mIoU with its FP and FN (AD-CAM Table 3)."""
    from wsss.eval.cams import EvalCamConfig, evaluate_cams

    cfg = load_config(EvalCamConfig, config_path, {
        "cam_dir": cam_dir, "data.kind": data_kind, "data.root": data_root, "data.split": split, "out": out,
        "threshold": threshold,
    }, section="eval_cam")
    res = evaluate_cams(cfg, progress=sys.stderr.isatty())
    click.echo(res.best.table())
    click.echo(f"seed mIoU {100 * res.best.miou:.2f}  FP {100 * res.best.mean_fp:.2f}  FN {100 * res.best.mean_fn:.2f}"
               f"  at background threshold {res.best_threshold:.2f} (the best: AD-CAM's and SEAM's protocol)")
    fixed = res.at(cfg.threshold)
    click.echo(f"seed mIoU {100 * fixed.miou:.2f}  FP {100 * fixed.mean_fp:.2f}  FN {100 * fixed.mean_fn:.2f}"
               f"  at background threshold {cfg.threshold:.2f} (fixed: IRN's protocol)")


@main.command("visualize")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default="voc", help="Dataset layout.")
@click.option("--data-root", required=True, help="Dataset folder.")
@click.option("--split", default="train", help="Split the ids come from.")
@click.option("--ids", default=None, help="Comma-separated image ids [default: the split's first --num].")
@click.option("--num", type=click.IntRange(1), default=6, help="Images when --ids is not given.")
@click.option("--cam", "cams", multiple=True, help="NAME=DIR of a CAM folder (repeatable), e.g. --cam adcam=runs/adcam.")
@click.option("--mask", "masks", multiple=True, help="NAME=DIR of a mask folder (repeatable), e.g. --mask pseudo=runs/pseudo or --mask ir=runs/pseudo/ir_label.")
@click.option("--boundary", "boundaries", multiple=True, help="NAME=DIR of a boundary-map folder (repeatable), e.g. --boundary irn=runs/pseudo/boundary.")
@click.option("--threshold", type=float, default=0.25, help="Background threshold of the seed masks shown.")
@click.option("--out", required=True, help="PNG file to write.")
def visualize_cmd(data_kind, data_root, split, ids, num, cams, masks, boundaries, threshold, out) -> None:
    """PNG grid per image: image, CAM heatmap per class, seed mask, boundary maps, other masks, ground truth."""
    from wsss.data import DataConfig, build_dataset
    from wsss.viz import cam_grid

    def pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
        result = {}
        for item in items:
            if "=" not in item:
                raise click.UsageError(f"--{what} takes NAME=DIR, got '{item}'")
            name, path = item.split("=", 1)
            result[name] = path
        return result

    ds = build_dataset(DataConfig(kind=data_kind, root=data_root, split=split))
    chosen = ids.split(",") if ids else ds.ids[:num]
    path = cam_grid(ds, chosen, out, cam_dirs=pairs(cams, "cam"), mask_dirs=pairs(masks, "mask"),
                    boundary_dirs=pairs(boundaries, "boundary"), threshold=threshold)
    click.echo(f"figure written to {path}")


@main.command("make-pseudo")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe; options below override its make_pseudo section.")
@click.option("--cam-dir", default=None, help="Folder of CAM files (.npz from extract-cam, or IRN's .npy).")
@click.option("--refine", type=click.Choice(["none", "crf", "ir-label", "irn"]), default=None, help="none: threshold; crf: dense CRF; ir-label: IRNet's training labels; irn: IR labels + IRNet + random walk [default: irn].")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder (the images, for the CRF).")
@click.option("--split", default=None, help="Images to process [default: train].")
@click.option("--threshold", type=float, default=None, help="Background threshold of the seed, in [0, 1] [default: 0.25].")
@click.option("--conf-fg", type=float, default=None, help="ir-label: confident-foreground threshold [default: 0.30].")
@click.option("--conf-bg", type=float, default=None, help="ir-label: confident-background threshold [default: 0.05].")
@click.option("--irn-backbone", default=None, help="irn: IRNet's frozen backbone, resnet50|resnet101|resnet_tiny [default: resnet50].")
@click.option("--irn-weights", default=None, help="irn: local ImageNet weights of that backbone, or builtin:NAME [default: none, random frozen features, with a warning].")
@click.option("--irn-dir", default=None, help="irn: an already trained boundary net (train-irn folder) instead of training one.")
@click.option("--irn-epochs", type=click.IntRange(1), default=None, help="irn: IRNet training epochs [default: 3].")
@click.option("--irn-batch-size", type=click.IntRange(1), default=None, help="irn: IRNet global batch, images [default: 32].")
@click.option("--irn-crop", type=click.IntRange(16), default=None, help="irn: IRNet training crop side, pixels [default: 512].")
@click.option("--irn-backbone-lr", type=click.FloatRange(0), default=None, help="irn: also train IRNet's backbone convolutions at this learning rate (not IRN); 0 = frozen, IRN's [default: 0].")
@click.option("--beta", type=float, default=None, help="irn: power of the affinities in the walk (Eq. 9) [default: 10].")
@click.option("--exp-times", type=click.IntRange(0), default=None, help="irn: the walk takes 2^exp_times steps [default: 8].")
@click.option("--save-scores/--no-save-scores", default=None, help="irn: also write the walk's score maps (OUT/scores) [default: no].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="irn: where IRNet and the walk run [default: auto].")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: 2].")
@click.option("--irn-resize", type=click.Choice(["pil", "opencv"]), default=None, help="irn: kernels of IRNet's training rescale, pil (IRN's) or opencv (the behaviour before) [default: pil].")
@click.option("--irn-pad", type=click.IntRange(0), default=None, help="irn: pad images to this square before the boundary net, as IRN pads to its 512 training crop; 0 = off [default: the boundary net's training crop].")
@click.option("--mask-format", type=click.Choice(["palette", "index"]), default=None, help="PNG masks with the VOC palette, or single-channel index PNGs (for IRN-based code, which reads masks with imageio) [default: palette].")
@click.option("--calibrate-from", default=None, help="ir-label/irn: the CAMs' best seed threshold, or the eval-cam folder that found it; --conf-fg/--conf-bg/--threshold are then read on IRN's CAM scale (seed threshold 0.15) and mapped to these CAMs' (not IRN) [default: none, IRN's values as given].")
@click.option("--out", default=None, help="Folder of palette PNG masks [default: runs/pseudo].")
@click.option("--overwrite", is_flag=True, default=None, help="Redo masks already written.")
def make_pseudo_cmd(config_path, cam_dir, refine, data_kind, data_root, split, threshold, conf_fg, conf_bg, irn_backbone,
                    irn_weights, irn_dir, irn_epochs, irn_batch_size, irn_crop, irn_backbone_lr, beta, exp_times, save_scores, device,
                    workers, irn_resize, irn_pad, mask_format, calibrate_from, out, overwrite) -> None:
    """Pseudo masks from CAMs: thresholding, dense CRF, IRNet's IR labels, or the whole IRN path. Resumable."""
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo

    cfg = load_config(MakePseudoConfig, config_path, {
        "cam_dir": cam_dir, "refine": refine, "data.kind": data_kind, "data.root": data_root, "data.split": split,
        "threshold": threshold, "conf_fg": conf_fg, "conf_bg": conf_bg, "workers": workers, "irn_pad": irn_pad, "mask_format": mask_format, "out": out,
        "overwrite": overwrite, "irn.backbone": irn_backbone, "irn.weights": irn_weights, "irn_dir": irn_dir,
        "irn.epochs": irn_epochs, "irn.batch_size": irn_batch_size, "irn.crop": irn_crop, "irn.resize": irn_resize,
        "irn.backbone_lr": irn_backbone_lr, "calibrate_from": calibrate_from,
        "save_scores": save_scores, "device": device, "beta": beta, "exp_times": exp_times,
    }, section="make_pseudo")
    result = make_pseudo(cfg, progress=sys.stderr.isatty())
    click.echo(f"pseudo masks written to {result}")
    click.echo(f"score them: wsss eval --pred {result} --gt <ground-truth mask folder>")


@main.command("train-irn")
@click.option("--tensorboard", is_flag=True, default=None, help="Also write TensorBoard events to OUT/tensorboard (pip install 'wsss[tensorboard]').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe; options below override its train_irn section.")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder.")
@click.option("--split", default=None, help="Training split [default: train].")
@click.option("--ir-labels", default=None, help="IR-label folder (wsss make-pseudo --refine ir-label) [default: runs/ir_label].")
@click.option("--backbone", default=None, help="Frozen ResNet: resnet50|resnet101|resnet_tiny [default: resnet50].")
@click.option("--weights", default=None, help="Local ImageNet weights of the backbone, or builtin:NAME [default: none, random frozen features, with a warning].")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs [default: 3].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Global batch, images [default: 32].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Training crop side, pixels [default: 512].")
@click.option("--lr", type=float, default=None, help="Learning rate, poly decay [default: 0.1].")
@click.option("--backbone-lr", type=click.FloatRange(0), default=None, help="Also train the backbone's convolutions at this learning rate (not IRN: for backbones whose features do not tell object edges from texture edges); 0 = frozen, IRN's [default: 0].")
@click.option("--resize", type=click.Choice(["pil", "opencv"]), default=None, help="Kernels of the random rescale: pil (IRN's PIL bicubic image, PIL nearest label) or opencv (OpenCV cubic / exact nearest, the behaviour before) [default: pil].")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many optimiser steps [default: all epochs].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data-loading processes per process [default: 2].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to train [default: auto].")
@click.option("--seed", type=int, default=None, help="Seed of data order and augmentation [default: 0].")
@click.option("--out", default=None, help="Output folder [default: runs/irn].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Train again from scratch in an --out that holds a run (refused without it).")
def train_irn_cmd(config_path, data_kind, data_root, split, ir_labels, backbone, weights, epochs, batch_size, crop, lr,
                  backbone_lr, resize, max_steps, workers, device, seed, out, resume, overwrite, tensorboard) -> None:
    """Train IRNet's class-boundary branch on IR labels (input of make-pseudo --refine irn)."""
    from wsss.pseudo.train_irn import TrainIrnConfig, train_irn

    cfg = load_config(TrainIrnConfig, config_path, {
        "data.kind": data_kind, "data.root": data_root, "data.split": split, "ir_labels": ir_labels,
        "backbone": backbone, "weights": weights, "epochs": epochs, "batch_size": batch_size, "crop": crop, "lr": lr,
        "backbone_lr": backbone_lr, "resize": resize, "max_steps": max_steps, "workers": workers, "device": device, "seed": seed, "out": out,
        "tensorboard": tensorboard,
    }, section="train_irn")
    train_irn(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())


@main.command("train-seg")
@click.option("--tensorboard", is_flag=True, default=None, help="Also write TensorBoard events to OUT/tensorboard (pip install 'wsss[tensorboard]').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe (configs/*.yaml); options below override its train_seg section.")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, help="Folder datasets without splits/: write a seeded train/val split with this fraction for val [default: none, --split must name a split or be all].")
@click.option("--split", default=None, help="Training split [default: train].")
@click.option("--masks", default=None, help="Training masks: the make-pseudo folder [default: the dataset's ground truth].")
@click.option("--val-split", default=None, help="Split scored against ground truth during training [default: val].")
@click.option("--head", type=click.Choice(["pcaa", "acf", "psa", "fcn", "deeplabv2"]), default=None, help="Segmentation head [default: pcaa].")
@click.option("--backbone", default=None, help="resnet50_v1c|resnet101_v1c|resnet50|resnet101|resnet_tiny, dilated to stride 8 [default: resnet101_v1c].")
@click.option("--pretrained", default=None, help="Local ImageNet weights of the backbone, or builtin:NAME [default: none, from scratch].")
@click.option("--contract-dilation/--no-contract-dilation", default=None, help="Halve the first layer3 / layer4 block's dilation (mmseg's -d8 configs); the PCAA repository and semseg do not [default: contract].")
@click.option("--multi-grid", default=None, help="layer4's per-block dilation multipliers, e.g. 1,2,4 (PCAA's ADE20K: dilations 4 / 8 / 16) [default: none].")
@click.option("--patch-label-min-frac", type=click.FloatRange(0, 1, max_open=True), default=None, help="pcaa: a class is positive in a patch where it covers more than this fraction of it (PCAA's code: 0.01; Eq. 4: 0) [default: 0].")
@click.option("--focal-reduction", type=click.Choice(["sum", "mean"]), default=None, help="pcaa: stacked modules' focal terms summed (Eq. 10) or averaged (PCAA's code) [default: sum].")
@click.option("--psa-outside", type=click.Choice(["excluded", "zero"]), default=None, help="psa: pairs beyond the attention window get no weight, or enter the softmax at 0 (semseg's) [default: excluded].")
@click.option("--acf-center-channels", type=click.IntRange(1), default=None, help="acf: width of the class centres [default: channels / 2].")
@click.option("--aux-weight", type=click.FloatRange(0), default=None, help="Weight of the auxiliary FCN head's loss; 0 = no auxiliary head (AD-CAM / IRN's DeepLab v2) [default: 0.4].")
@click.option("--class-weights", default=None, help="Per-class cross-entropy weights, background first, comma-separated (ACFNet's class-balanced loss) [default: none].")
@click.option("--ohem-thresh", type=click.FloatRange(0, 1), default=None, help="Online hard-pixel bootstrapping: train on pixels whose class probability is at most this (ACFNet: 0.7); 0 = off [default: 0].")
@click.option("--ohem-min-kept", type=click.IntRange(0), default=None, help="With --ohem-thresh: at least this many hardest pixels per batch (ACFNet: 100000) [default: 100000].")
@click.option("--head-lr-mult", type=click.FloatRange(0, min_open=True), default=None, help="Heads' learning rate as a multiple of --lr (semseg's PSANet: 10) [default: 1].")
@click.option("--keep-best", type=click.IntRange(0), default=None, help="Keep the weights of the best val mIoU among the evaluations in the last this many iterations (PCAA's code: 10000); the last ones go to last.safetensors; 0 = keep the last [default: 0].")
@click.option("--iterations", type=click.IntRange(1), default=None, help="Optimiser steps [default: 20000].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Global batch, images, split over processes [default: 16].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Training crop side, pixels [default: 512].")
@click.option("--lr", type=float, default=None, help="Learning rate, poly decay per iteration [default: 0.01].")
@click.option("--channels", type=click.IntRange(1), default=None, help="Head width (512 in the papers) [default: 512].")
@click.option("--base-size", type=click.IntRange(16), default=None, help="Images are fit to (4 x base, base) before random scaling, pixels [default: 512].")
@click.option("--val-every", type=click.IntRange(1), default=None, help="Score the val split every this many epochs (and at the end) [default: 1].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data-loading processes per process [default: 2].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to train [default: auto].")
@click.option("--seed", type=int, default=None, help="Seed of data order, augmentation and initialisation [default: 0].")
@click.option("--out", default=None, help="Output folder [default: runs/seg].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Train again from scratch in an --out that holds a run (refused without it).")
def train_seg_cmd(config_path, data_kind, data_root, val_fraction, split, masks, val_split, head, backbone, pretrained,
                  contract_dilation, multi_grid, patch_label_min_frac, focal_reduction, psa_outside, acf_center_channels,
                  aux_weight, class_weights, ohem_thresh, ohem_min_kept, head_lr_mult, keep_best, iterations,
                  batch_size, crop, lr, workers, device, seed, out, channels, base_size, val_every, resume, overwrite, tensorboard) -> None:
    """Train a segmentation network (PCAA, ACFNet, PSANet, FCN, DeepLab v2) on pseudo masks.

    Multi-GPU: torchrun --nproc_per_node N -m wsss train-seg ... (SyncBatchNorm, same results as one process).
    """
    from wsss.seg.train import TrainSegConfig, train_seg

    cfg = load_config(TrainSegConfig, config_path, {
        "data.kind": data_kind, "data.val_fraction": val_fraction, "data.root": data_root, "data.split": split, "data.masks": masks,
        "val_split": val_split, "head": head, "backbone": backbone, "pretrained": pretrained,
        "contract_dilation": contract_dilation, "multi_grid": _int_list(multi_grid, "--multi-grid"),
        "patch_label_min_frac": patch_label_min_frac, "focal_reduction": focal_reduction,
        "psa_outside": psa_outside, "acf_center_channels": acf_center_channels, "aux_weight": aux_weight,
        "class_weights": _float_list(class_weights, "--class-weights"), "ohem_thresh": ohem_thresh,
        "ohem_min_kept": ohem_min_kept, "head_lr_mult": head_lr_mult, "keep_best": keep_best,
        "iterations": iterations, "batch_size": batch_size, "crop": crop, "lr": lr, "workers": workers,
        "device": device, "seed": seed, "channels": channels, "base_size": base_size, "val_every": val_every, "out": out,
        "tensorboard": tensorboard,
    }, section="train_seg")
    train_seg(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())


@main.command("convert-weights")
@click.option("--from", "source", type=click.Choice(["pcaa"]), required=True, help="Format of CKPT: pcaa = a checkpoint of the official PCAA code (lsa1997/PCAA).")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, help="Folder for the wsss segmentation run (config.yaml, class_names.txt, model.safetensors).")
@click.option("--data-kind", type=click.Choice(["cityscapes", "ade20k", "pascal_context", "voc", "coco"]), default=None, help="Dataset the checkpoint was trained on: gives the class names [default: from the class count, 19 cityscapes / 150 ade20k / 59 pascal_context].")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Class-names file, one per line in the checkpoint's order (instead of --data-kind).")
@click.option("--multi-grid", default=None, help="layer4 multipliers the checkpoint was trained with (PCAA's ADE20K: 1,2,4) [default: none].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Sliding-window size predict uses [default: 768 cityscapes, else 512].")
@click.option("--base-size", type=click.IntRange(16), default=None, help="Resize base predict uses [default: 1024 cityscapes, else 512].")
@click.option("--strict/--no-strict", default=True, help="Refuse a checkpoint whose converted keys or shapes do not match [default: strict].")
def convert_weights_cmd(source, checkpoint, out, data_kind, classes_file, multi_grid, crop, base_size, strict) -> None:
    """Turn an official checkpoint into a wsss run that wsss predict loads."""
    from wsss.seg.convert import convert_pcaa

    names = None
    if classes_file is not None:
        names = [n for n in classes_file.read_text().splitlines() if n.strip()]
    result = convert_pcaa(
        checkpoint, out, class_names=names, data_kind=data_kind, multi_grid=_int_list(multi_grid, "--multi-grid"),
        crop=crop, base_size=base_size, strict=strict,
    )
    data_kind = json.loads((result / "done.json").read_text())["data_kind"]
    click.echo(f"converted {checkpoint} to {result}. Next: wsss predict --seg-dir {result} --data-kind "
               f"{data_kind or '<kind>'} --data-root <dataset> --split val --out {result}_val")


@main.command("predict")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="YAML recipe; options below override its predict section.")
@click.option("--seg-dir", default=None, help="train-seg output folder (config.yaml + model.safetensors).")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Dataset layout [default: voc].")
@click.option("--data-root", default=None, help="Dataset folder.")
@click.option("--split", default=None, help="Images to segment [default: train].")
@click.option("--mode", type=click.Choice(["whole", "slide"]), default=None, help="Whole image or sliding window [default: whole].")
@click.option("--scales", default=None, help="Comma-separated scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 [default: 1.0].")
@click.option("--flip/--no-flip", default=None, help="Also segment the mirrored image [default: no flip].")
@click.option("--crf/--no-crf", default=None, help="Dense-CRF post-processing [default: off].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to run [default: auto].")
@click.option("--out", default=None, help="Folder for the palette PNG masks [default: runs/pred].")
@click.option("--overwrite", is_flag=True, help="Redo images already in --out.")
def predict_cmd(config_path, seg_dir, data_kind, data_root, split, mode, scales, flip, crf, device, out, overwrite) -> None:
    """Segment images with a train-seg model; palette PNGs that wsss eval scores."""
    from wsss.seg.predict import PredictConfig, predict

    parsed = None
    if scales is not None:
        try:
            parsed = [float(s) for s in scales.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(f"'{scales}' is not a comma-separated list of numbers", param_hint="--scales")
    cfg = load_config(PredictConfig, config_path, {
        "seg_dir": seg_dir, "data.kind": data_kind, "data.root": data_root, "data.split": split, "mode": mode,
        "scales": parsed, "flip": flip, "crf": crf, "device": device, "out": out, "overwrite": overwrite or None,
    }, section="predict")
    predict(cfg, progress=sys.stderr.isatty())


@main.group("prepare")
def prepare_group() -> None:
    """Turn raw dataset downloads (VOC + SBD, COCO, Cityscapes) into the trees wsss reads. Resumable."""


@prepare_group.command("voc")
@click.option("--voc", type=click.Path(file_okay=False, path_type=Path), required=True, help="VOC2012 folder (or VOCdevkit, or the folder holding it).")
@click.option("--sbd", type=click.Path(file_okay=False, path_type=Path), required=True, help="SBD's benchmark_RELEASE/dataset folder (cls/, train.txt, val.txt), or benchmark_RELEASE.")
@click.option("--workers", type=click.IntRange(1), default=2, help="Worker processes.")
@click.option("--mask-format", type=click.Choice(["palette", "index"]), default="palette", help="PNG masks with the VOC palette, or single-channel index PNGs (for code reading masks with imageio or OpenCV).")
def prepare_voc_cmd(voc: Path, sbd: Path, workers: int, mask_format: str) -> None:
    """VOC 2012 + SBD: the train_aug masks, list and labels.

    Writes SegmentationClassAug/, ImageSets/Segmentation/train_aug.txt and cls_labels.npy in the VOC folder.
    """
    from wsss.data.prepare import prepare_voc

    click.echo(prepare_voc(voc, sbd, workers=workers, mask_format=mask_format, progress=sys.stderr.isatty()).line)


@prepare_group.command("coco")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True, help="COCO folder (holding train2014/, val2014/); masks go to ROOT/mask/<split>/.")
@click.option("--annotations", type=click.Path(dir_okay=False, path_type=Path), multiple=True, required=True, help="instances_train2014.json or instances_val2014.json (repeatable).")
@click.option("--workers", type=click.IntRange(1), default=2, help="Worker processes.")
def prepare_coco_cmd(root: Path, annotations: tuple[Path, ...], workers: int) -> None:
    """COCO 2014: masks from the instance annotations, lists and labels.

    Writes ROOT/mask/<split>/*.png (class index 0..80, 255 ignore), train14.txt / val14.txt and cls_labels.npy.
    """
    from wsss.data.prepare import prepare_coco

    click.echo(prepare_coco(root, list(annotations), workers=workers, progress=sys.stderr.isatty()).line)


@prepare_group.command("cityscapes")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True, help="Cityscapes folder holding gtFine/<split>/<city>/.")
@click.option("--workers", type=click.IntRange(1), default=2, help="Worker processes.")
def prepare_cityscapes_cmd(root: Path, workers: int) -> None:
    """Cityscapes: labelTrainIds masks from the labelIds ones.

    Writes *_gtFine_labelTrainIds.png (19 train ids, 255 ignore) beside every *_gtFine_labelIds.png.
    """
    from wsss.data.prepare import prepare_cityscapes

    click.echo(prepare_cityscapes(root, workers=workers, progress=sys.stderr.isatty()).line)


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", default=None, help="HTML file to write [default: RUN_DIR/report.html].")
@click.option("--title", default=None, help="Page title [default: the folder's name].")
@click.option("--link-images", is_flag=True, help="Link the PNGs instead of embedding them (a smaller file that only works beside the run folder).")
def report_cmd(run_dir: Path, out, title, link_images) -> None:
    """One self-contained report.html for a run folder: tables, every eval (per-class IoU / FP / FN
    bars, threshold curves) and the figures, embedded."""
    from wsss.report import write_html_report

    path = write_html_report(run_dir, out, title=title, embed=not link_images)
    click.echo(f"report: {path}")


def _run_recipe_cli(recipe_path: Path, out: str | None, variables: tuple[str, ...], only: str | None) -> None:
    from wsss.engine import dist
    from wsss.pipeline import layout, load_recipe, run_recipe

    values = {}
    for item in variables:
        if "=" not in item:
            raise click.UsageError(f"--var takes NAME=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        values[k] = v
    recipe = load_recipe(recipe_path, run_dir=out, variables=values)
    if recipe.description and dist.is_main_process_env():
        click.echo(recipe.description)
    try:
        run_recipe(recipe, progress=sys.stderr.isatty(), only=only.split(",") if only else None)
        if dist.is_main():
            click.echo("\nrun directory:\n" + layout(recipe))
            report = recipe.run_dir / "report" / "report.md"
            if report.is_file():
                click.echo(f"tables: {report} (and report.json)")
            figure = recipe.run_dir / "figure" / "figure.png"
            if figure.is_file():
                click.echo(f"figure: {figure}")
        dist.barrier()
    finally:
        dist.cleanup()  # every rank leaves the process group before exiting


@main.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", default=None, help="Run directory [default: the recipe's run_dir].")
@click.option("--var", "variables", multiple=True, help="NAME=VALUE for a {NAME} in the recipe (repeatable), e.g. --var voc_root=/data/VOC2012.")
@click.option("--only", default=None, help="Comma-separated step names to run (the others are left as they are).")
def run_cmd(recipe: Path, out, variables, only) -> None:
    """Run a recipe (pipelines/*.yaml): every stage in order, each skipped when complete.

    A rerun after a crash or kill continues where it stopped; a step whose settings changed reruns
    (with everything that reads it) and says so.
    """
    _run_recipe_cli(recipe, out, variables, only)


@main.command("demo")
@click.option("--out", default="runs/demo", help="Run directory.")
def demo_cmd(out: str) -> None:
    """The whole pipeline on the built-in synthetic dataset, on CPU (12-21 minutes on 2 cores, as measured):
    toy data, Conformer CAM and AD-CAM seeds, IRN pseudo masks, PCAA and FCN, tables and a figure."""
    from importlib.resources import files

    _run_recipe_cli(Path(str(files("wsss") / "recipes" / "demo.yaml")), out, (), None)


if __name__ == "__main__":
    main()
