"""The ``wsss`` command line: thin wrappers that parse options, resolve the
configuration and call one Python function per stage."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import click

from wsss.cam.extract import CAM_METHODS, ExtractCamConfig
from wsss.cli_settings import Opt, comma_list, config_options
from wsss.cls.pretrain import PretrainConfig
from wsss.cls.train import TrainClsConfig
from wsss.config import ConfigError, data_options, shell_command
from wsss.data import DATA_KINDS
from wsss.eval.cams import EvalCamConfig
from wsss.eval.masks import EvalConfig
from wsss.io import WsssDataError
from wsss.models import list_backbones
from wsss.models.weights import WeightsMismatchError
from wsss.pseudo.make import MakePseudoConfig
from wsss.pseudo.train_irn import TrainIrnConfig
from wsss.seg.config import TrainSegConfig
from wsss.seg.heads import HEADS
from wsss.seg.predict import PredictConfig

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


DEVICE = Opt("Where to run: auto = a GPU if present.")


def _data(split: str, root: str = "Dataset folder.", split_default: str | None = None) -> dict[str, Opt]:
    """The dataset options every stage shares (a :class:`wsss.data.DataConfig`); ``split`` says
    which images the stage reads (``split_default``: the default shown where the stage sets it)."""
    return {
        "data.kind": Opt("Dataset layout.", choices=DATA_KINDS),
        "data.root": Opt(root),
        "data.split": Opt(split, default_text=split_default),
        "data.labels": Opt("Image-level label file replacing the dataset's own (cls_labels.npy; CSV or JSON "
                           "for folder datasets)."),
        "data.masks": Opt("Mask folder replacing the dataset's ground truth (train-seg: the make-pseudo folder)."),
        "data.list_file": Opt("Image-id list file read instead of the split's list."),
        "data.category_ids": Opt("coco: masks hold COCO category ids instead of contiguous class indices."),
        "data.val_fraction": Opt("Folder datasets without splits/: write a seeded train/val split with this "
                                 "fraction for val.", min=0, max=1, min_open=True, max_open=True,
                                 note="--split must name a split or be all"),
    }


def _training_run(prefix: str = "") -> dict[str, Opt]:
    """The run settings of a training stage (:class:`wsss.config.TrainRunConfig`)."""
    return {
        prefix + "workers": Opt("Data-loading processes per process.", min=0),
        prefix + "device": DEVICE,
        prefix + "amp": Opt("bfloat16 autocast on a GPU."),
        prefix + "seed": Opt("Seed of data order, augmentation and initialisation."),
        prefix + "out": Opt("Output folder."),
        prefix + "save_every": Opt("Also checkpoint every this many optimiser steps; 0 = at epoch ends only.", min=0),
        prefix + "log_every": Opt("A metrics.jsonl line every this many optimiser steps.", min=1),
        prefix + "tensorboard": Opt("Also write TensorBoard events to OUT/tensorboard (pip install "
                                    "'wsss[tensorboard]').", switch=True),
    }


MAX_STEPS = Opt("Stop after this many optimiser steps.", min=1, note="all epochs")
EPOCHS = Opt("Epochs.", min=1)
TRAIN_CROP = Opt("Training crop side, pixels.", min=16)


def _poly_sgd(momentum: str = "SGD momentum.") -> dict[str, Opt]:
    """The optimiser settings train-cls, train-irn and train-seg share."""
    return {"weight_decay": Opt("Weight decay.", min=0), "momentum": Opt(momentum, min=0),
            "poly_power": Opt("Power of the poly learning-rate decay.", min=0)}


def training_command(cls: type, section: str, options: dict[str, Opt]):
    """``config_options`` for a training stage, with ``--resume`` and ``--overwrite``."""
    resume = click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
    overwrite = click.option("--overwrite", is_flag=True,
                             help="Train again from scratch in an --out that holds a run (refused without it).")
    return lambda f: config_options(cls, section, options)(resume(overwrite(f)))

def _eval_split_default(overrides: dict) -> None:
    if overrides.get("data.root") and overrides.get("data.split") is None:
        overrides["data.split"] = "val"


EVAL_OPTIONS = {
    "pred": Opt("Folder of predicted masks (<id>.png).", path="dir"),
    "gt": Opt("Folder of ground-truth masks (<id>.png).", path="dir"),
    **_data("With --data-root: the split scored, every image of it.", split_default="val",
            root="Instead of --gt: the dataset folder, scored against its own ground truth, read and mapped by "
                 "its reader (e.g. Cityscapes labelIds)."),
    "ids": Opt("Image-list file to score.", path="file", note="every PNG in --pred"),
    "classes": Opt("'voc', 'coco' or a class-names file.", note="class_names.txt beside --gt, else VOC"),
    "out": Opt("JSON with every figure.", path="file", note="<pred>/eval.json"),
    "workers": Opt("Threads decoding PNGs.", min=1),
}


@main.command("eval")
@config_options(EvalConfig, "eval", EVAL_OPTIONS, prepare=_eval_split_default)
def eval_cmd(cfg) -> None:
    """Score masks: per-class IoU, FP, FN (percent) and mIoU, as papers report them."""
    from wsss.eval.masks import evaluate_folders

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

PRETRAIN_OPTIONS = {
    "model": Opt("Backbone to pretrain, e.g. resnet_tiny or conformer_tiny."),
    "size": Opt("Corpus image side, pixels.", min=32, max=1024),
    "crop": Opt("Training crop side (random-resized crops), pixels.", min=16),
    "num_train": Opt("Corpus training images.", min=1),
    "num_val": Opt("Held-out corpus images scored for top-1.", min=1),
    "corpus_seed": Opt("Seed the corpus images depend on."),
    "epochs": Opt("Epochs over the corpus.", min=1),
    "batch_size": Opt("Global batch, images.", min=1),
    "lr": Opt("AdamW peak learning rate (warm-up, then cosine)."),
    "weight_decay": Opt("AdamW weight decay.", min=0),
    "label_smoothing": Opt("Label smoothing of the cross entropy.", min=0, max=1, max_open=True),
    "render_workers": Opt("Processes rendering the corpus.", min=1),
    "cache": Opt("Folder for the rendered corpus, reused by later runs.", note="OUT/corpus"),
    "max_steps": MAX_STEPS,
    **_training_run(),
}


@main.command("pretrain")
@training_command(PretrainConfig, "pretrain", PRETRAIN_OPTIONS)
@click.option("--export-builtin", "export_name", default=None, help="When done, ship the backbone inside the package as builtin:NAME (writes wsss/pretrained/).")
@click.option("--list", "list_only", is_flag=True, help="List the built-in weights and how each was made, then exit.")
def pretrain_cmd(cfg, resume, overwrite, export_name, list_only) -> None:
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
    from wsss.cls.pretrain import BACKBONE_NAME, pretrain

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

TRAIN_CLS_OPTIONS = {
    **_data("Training split."),
    "val_split": Opt("Split scored each epoch (mAP, F1); none = no validation."),
    "model": Opt("Backbone: " + "|".join(list_backbones()) + "."),
    "pretrained": Opt("Local ImageNet weights (.pth/.pt/.safetensors) or builtin:NAME (wsss pretrain --list).",
                      note="train from scratch"),
    "strict_load": Opt("Refuse weights whose keys do not match (classifier heads aside)."),
    "detach_branches": Opt("Conformer: cut gradients between the CNN and transformer branches (AD-CAM Sec. 4.1)."),
    "drop_last_block": Opt("Conformer: remove the last block (conv_trans_12) so the CNN map is at stride 16 like "
                           "the token grid (AD-CAM Sec. 5.1); extraction uses the same."),
    "drop_path": Opt("Conformer stochastic-depth rate (the official recipe: 0.1).", min=0, max=1),
    "epochs": EPOCHS,
    "batch_size": Opt("Global batch, images, split over processes.", min=1),
    "crop": TRAIN_CROP,
    "resize_long": Opt("Range of the random long-side resize, MIN,MAX pixels."),
    "resize": Opt("Kernel of the random long-side resize: pil (IRN's PIL bicubic; region masks PIL nearest) or "
                  "opencv (OpenCV linear / nearest, the behaviour before)."),
    "optimizer": Opt("Optimiser."),
    "lr": Opt("CNN/backbone learning rate, poly decay."),
    "lr_transformer": Opt("Conformer: transformer-branch learning rate (constant)."),
    "head_lr_mult": Opt("ResNet: the classifier's learning rate as a multiple of --lr.", min=0, min_open=True),
    "partial_pool": Opt("Partial pooling S (PCAA Eq. 3), 0 = off.", min=0),
    "region_masks": Opt("Partial pooling's region labels: a pseudo-mask folder, or gt for the ground truth "
                        "(pixel supervision); required with --partial-pool."),
    **_poly_sgd(),
    "max_steps": MAX_STEPS,
    **_training_run(),
}


@main.command("train-cls")
@training_command(TrainClsConfig, "train_cls", TRAIN_CLS_OPTIONS)
def train_cls_cmd(cfg, resume, overwrite) -> None:
    """Train the multi-label classifier (Conformer or ResNet) on image-level labels.

    Multi-GPU: torchrun --nproc_per_node N -m wsss train-cls ... (same results as one process).
    """
    from wsss.cls.train import train_cls

    train_cls(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())

EXTRACT_CAM_OPTIONS = {
    "cls_dir": Opt("train-cls output folder (config.yaml + model.safetensors)."),
    "method": Opt("How class maps are made.", choices=tuple(CAM_METHODS)),
    **_data("Images to process."),
    "scales": Opt("Comma-separated image scales."),
    "flip": Opt("Also run the mirrored image at every scale (IRN's make_cam)."),
    "max_side": Opt("Downscale images whose long side is larger to this many pixels for extraction (maps resized "
                    "back); lowers peak memory.", min=16),
    "resize": Opt("Kernel of each scale's resize: pil (IRN's protocol: PIL bicubic, antialiased when downscaling) "
                  "or opencv (OpenCV cubic)."),
    "attn_renorm": Opt("AD-CAM: rows of A renormalised to 1 after dropping the cls token, as Sec. 4.3 states."),
    "batch_size": Opt("Images of the same size per forward (with their mirrors); a GPU speed-up, same maps to 1e-5.",
                      min=1),
    "amp": Opt("Network forwards in float16 autocast on a GPU (bfloat16 on a CPU); AD-CAM's attention stays "
               "float32. The maps move slightly: benchmarks/suite.py reports by how much."),
    "topk": Opt("AD-CAM: co-neighbours kept per token, k of Eq. 7.", min=1),
    "steps": Opt("AD-CAM: diffusion steps, T of Eq. 8.", min=0),
    "diffusion": Opt("AD-CAM diffusion direction (distribute: the paper's text)."),
    "device": DEVICE,
    "file_format": Opt("npz: <id>.npz, no pickle; irn: <id>.npy as IRN's make_cam writes it, for IRN-based code.",
                       name="--format"),
    "out": Opt("Output folder of <id>.npz (or .npy) files."),
    "overwrite": Opt("Redo images already written.", switch=True),
}


@main.command("extract-cam")
@config_options(ExtractCamConfig, "extract_cam", EXTRACT_CAM_OPTIONS)
def extract_cam_cmd(cfg) -> None:
    """Class activation maps (CAM, AD-CAM and Table 3's baselines) as IRN-format files.

    Resumable (images already written are skipped); torchrun shards the images over processes.
    """
    from wsss.cam.extract import extract_cams

    result = extract_cams(cfg, progress=sys.stderr.isatty())
    click.echo(f"CAMs written to {result}")
    click.echo("next: " + shell_command("eval-cam", "--cam-dir", result, *data_options(cfg.data)))


EVAL_CAM_OPTIONS = {
    "cam_dir": Opt("Folder of CAM files (.npz, or IRN's .npy)."),
    **_data("Split to score.", root="Dataset folder (ground-truth masks)."),
    "thresholds": Opt("Background thresholds swept, START,STOP,STEP."),
    "threshold": Opt("Fixed background threshold also reported (IRN reports seeds at it).", min=0, max=1),
    "out": Opt("JSON of the sweep (plot beside it).", note="<cam-dir>/eval_cam.json"),
    "workers": Opt("Threads reading CAM files and masks.", min=1),
}


@main.command("eval-cam")
@config_options(EvalCamConfig, "eval_cam", EVAL_CAM_OPTIONS)
def eval_cam_cmd(cfg) -> None:
    """Seed quality: background-threshold sweep, best mIoU with its FP and FN (AD-CAM Table 3)."""
    from wsss.eval.cams import evaluate_cams

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


# make-pseudo sets its boundary net's data, IR-label folder, output and device itself.
_IRN_SET_BY_MAKE_PSEUDO = ("irn.data", "irn.ir_labels", "irn.out", "irn.device")
MAKE_PSEUDO_OPTIONS = {
    "cam_dir": Opt("Folder of CAM files (.npz from extract-cam, or IRN's .npy)."),
    "refine": Opt("none: threshold; crf: dense CRF; ir-label: IRNet's training labels; irn: IR labels + IRNet + "
                  "random walk."),
    **_data("Images to process.", root="Dataset folder (the images, for the CRF and IRNet)."),
    "threshold": Opt("Background threshold of the seed (none, crf) or of the walk's scores (irn), in [0, 1]."),
    "conf_fg": Opt("ir-label/irn: confident-foreground threshold."),
    "conf_bg": Opt("ir-label/irn: confident-background threshold."),
    "calibrate_from": Opt("ir-label/irn: the CAMs' best seed threshold, or the eval-cam folder that found it; "
                          "--conf-fg/--conf-bg/--threshold are then read on IRN's CAM scale (seed threshold 0.15) "
                          "and mapped to these CAMs' (not IRN).", note="IRN's values as given"),
    "irn_dir": Opt("irn: an already trained boundary net (train-irn folder) instead of training one."),
    "irn_pad": Opt("irn: pad images to this square before the boundary net, as IRN pads to its 512 training "
                   "crop; 0 = off.", min=0, default_text="the boundary net's training crop"),
    "beta": Opt("irn: power of the affinities in the walk (Eq. 9)."),
    "exp_times": Opt("irn: the walk takes 2^exp_times steps.", min=0),
    "radius": Opt("irn: radius of the walk's affinity stencil, pixels of the stride-4 map.", min=1),
    "save_scores": Opt("irn: also write the walk's score maps (OUT/scores)."),
    "boundary_batch": Opt("irn: images of the same size per boundary-net forward; a GPU speed-up, same maps to 1e-5.",
                          min=1),
    "amp": Opt("irn: the boundary net's inference in float16 autocast on a GPU (bfloat16 on a CPU); the walk "
               "stays float64."),
    "mask_format": Opt("PNG masks with the VOC palette, or single-channel index PNGs (for IRN-based code, which "
                       "reads masks with imageio); the IR labels follow it."),
    "device": Opt("irn: where IRNet and the walk run (and the boundary net trains)."),
    "workers": Opt("Processes.", min=1),
    "out": Opt("Folder of the PNG masks."),
    "overwrite": Opt("Redo masks already written.", switch=True),
    # the boundary net make-pseudo trains (irn, without --irn-dir): train-irn's settings
    "irn.backbone": Opt("irn: IRNet's frozen backbone, resnet50|resnet101|resnet_tiny."),
    "irn.weights": Opt("irn: local ImageNet weights of that backbone, or builtin:NAME.",
                       note="random frozen features, with a warning"),
    "irn.epochs": Opt("irn: IRNet training epochs.", min=1),
    "irn.batch_size": Opt("irn: IRNet global batch, images.", min=1),
    "irn.crop": Opt("irn: IRNet training crop side, pixels.", min=16),
    "irn.scale_range": Opt("irn: range of IRNet's random rescale, MIN,MAX."),
    "irn.resize": Opt("irn: kernels of IRNet's training rescale, pil (IRN's) or opencv (the behaviour before)."),
    "irn.radius": Opt("irn: IRNet's training pairs are sampled within this distance on the stride-4 map (IRN: 10).",
                      min=1),
    "irn.lr": Opt("irn: IRNet learning rate, poly decay."),
    "irn.backbone_lr": Opt("irn: also train IRNet's backbone convolutions at this learning rate (not IRN); "
                           "0 = frozen, IRN's.", min=0),
    "irn.weight_decay": Opt("irn: IRNet weight decay.", min=0),
    "irn.momentum": Opt("irn: IRNet SGD momentum.", min=0),
    "irn.poly_power": Opt("irn: power of IRNet's poly decay.", min=0),
    "irn.max_steps": Opt("irn: stop IRNet's training after this many optimiser steps.", min=1, note="all epochs"),
    **{k: v for k, v in _training_run("irn.").items() if k not in _IRN_SET_BY_MAKE_PSEUDO},
}


@main.command("make-pseudo")
@config_options(MakePseudoConfig, "make_pseudo", MAKE_PSEUDO_OPTIONS, set_by_stage=_IRN_SET_BY_MAKE_PSEUDO)
def make_pseudo_cmd(cfg) -> None:
    """Pseudo masks from CAMs: thresholding, dense CRF, IRNet's IR labels, or the whole IRN path. Resumable."""
    from wsss.pseudo.make import make_pseudo

    result = make_pseudo(cfg, progress=sys.stderr.isatty())
    click.echo(f"pseudo masks written to {result}")
    click.echo(f"score them: wsss eval --pred {result} --gt <ground-truth mask folder>")


TRAIN_IRN_OPTIONS = {
    **_data("Training split."),
    "ir_labels": Opt("IR-label folder (wsss make-pseudo --refine ir-label)."),
    "backbone": Opt("Frozen ResNet: resnet50|resnet101|resnet_tiny."),
    "weights": Opt("Local ImageNet weights of the backbone, or builtin:NAME.", note="random frozen features, with a warning"),
    "epochs": EPOCHS,
    "batch_size": Opt("Global batch, images.", min=1),
    "crop": TRAIN_CROP,
    "scale_range": Opt("Range of the random rescale, MIN,MAX."),
    "resize": Opt("Kernels of the random rescale: pil (IRN's PIL bicubic image, PIL nearest label) or opencv "
                  "(OpenCV cubic / exact nearest, the behaviour before)."),
    "radius": Opt("Training pairs are sampled within this distance on the stride-4 map (IRN: 10).", min=1),
    "lr": Opt("Learning rate, poly decay."),
    "backbone_lr": Opt("Also train the backbone's convolutions at this learning rate (not IRN: for backbones whose "
                       "features do not tell object edges from texture edges); 0 = frozen, IRN's.", min=0),
    **_poly_sgd("SGD momentum (IRN's optimiser puts its weight decay there: 1e-4, in effect none)."),
    "max_steps": MAX_STEPS,
    **_training_run(),
}


@main.command("train-irn")
@training_command(TrainIrnConfig, "train_irn", TRAIN_IRN_OPTIONS)
def train_irn_cmd(cfg, resume, overwrite) -> None:
    """Train IRNet's class-boundary branch on IR labels (input of make-pseudo --refine irn)."""
    from wsss.pseudo.train_irn import train_irn

    train_irn(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())


TRAIN_SEG_OPTIONS = {
    **_data("Training split."),
    "data.masks": Opt("Training masks: the make-pseudo folder.", note="the dataset's ground truth"),
    "val_split": Opt("Split scored against ground truth during training; none = no validation."),
    "head": Opt("Segmentation head.", choices=tuple(HEADS)),
    "backbone": Opt("resnet50_v1c|resnet101_v1c|resnet50|resnet101|resnet_tiny, dilated to stride 8."),
    "pretrained": Opt("Local ImageNet weights of the backbone, or builtin:NAME.", note="from scratch"),
    "contract_dilation": Opt("Halve the first layer3 / layer4 block's dilation (mmseg's -d8 configs); the PCAA "
                             "repository and semseg do not."),
    "multi_grid": Opt("layer4's per-block dilation multipliers, e.g. 1,2,4 (PCAA's ADE20K: dilations 4 / 8 / 16)."),
    "channels": Opt("Head width (512 in the papers).", min=1),
    "pool_sizes": Opt("pcaa: S of each stacked module, comma-separated."),
    "patch_label_min_frac": Opt("pcaa: a class is positive in a patch where it covers more than this fraction of "
                                "it (PCAA's code: 0.01; Eq. 4: 0).", min=0, max=1, max_open=True),
    "focal_reduction": Opt("pcaa: stacked modules' focal terms summed (Eq. 10) or averaged (PCAA's code)."),
    "psa_mask_size": Opt("psa: attention window side, odd (63 suits crop 512).", min=1),
    "psa_outside": Opt("psa: pairs beyond the attention window get no weight, or enter the softmax at 0 (semseg's)."),
    "acf_center_channels": Opt("acf: width of the class centres.", min=1, default_text="channels / 2"),
    "msc_scales": Opt("Multi-scale inputs, e.g. 0.5,0.75 (deeplab-pytorch's DeepLab v2, AD-CAM / IRN's Seg): "
                      "each scale's and the pixel-wise max's loss at logit resolution; the max at test time."),
    "freeze_bn": Opt("Keep the backbone's batch norms at their ImageNet statistics, untrained (deeplab-pytorch)."),
    "acf_base": Opt("acf: base network, the plain dilated ResNet (ACFNet Tab. 1) or ResNet + ASPP (Tab. 2)."),
    "aux_weight": Opt("Weight of the auxiliary FCN head's loss; 0 = no auxiliary head (AD-CAM / IRN's DeepLab v2).",
                      min=0),
    "class_weights": Opt("Per-class cross-entropy weights, background first, comma-separated (ACFNet's "
                         "class-balanced loss)."),
    "ohem_thresh": Opt("Online hard-pixel bootstrapping: train on pixels whose class probability is at most this "
                       "(ACFNet: 0.7); 0 = off.", min=0, max=1),
    "ohem_min_kept": Opt("With --ohem-thresh: at least this many hardest pixels per batch (ACFNet: 100000).", min=0),
    "iterations": Opt("Optimiser steps.", min=1),
    "batch_size": Opt("Global batch, images, split over processes.", min=1),
    "crop": TRAIN_CROP,
    "base_size": Opt("Images are fit to (4 x base, base) before random scaling, pixels.", min=16),
    "scale_range": Opt("Range of the random scaling, MIN,MAX."),
    "photometric": Opt("Random photometric distortion (brightness, contrast, saturation, hue)."),
    "lr": Opt("Learning rate, poly decay per iteration."),
    "head_lr_mult": Opt("Heads' learning rate as a multiple of --lr (semseg's PSANet: 10).", min=0, min_open=True),
    **_poly_sgd(),
    "sync_bn": Opt("SyncBatchNorm under torchrun (statistics over the global batch)."),
    "val_every": Opt("Score the val split every this many epochs (and at the end).", min=1),
    "keep_best": Opt("Keep the weights of the best val mIoU among the evaluations in the last this many iterations "
                     "(PCAA's code: 10000); the last ones go to last.safetensors; 0 = keep the last.", min=0),
    **_training_run(),
}


@main.command("train-seg")
@training_command(TrainSegConfig, "train_seg", TRAIN_SEG_OPTIONS)
def train_seg_cmd(cfg, resume, overwrite) -> None:
    """Train a segmentation network (PCAA, ACFNet, PSANet, FCN, DeepLab v2) on pseudo masks.

    Multi-GPU: torchrun --nproc_per_node N -m wsss train-seg ... (SyncBatchNorm, same results as one process).
    """
    from wsss.seg.train import train_seg

    train_seg(cfg, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty())


@main.command("convert-weights")
@click.option("--from", "source", type=click.Choice(["pcaa"]), required=True, help="Format of CKPT: pcaa = a checkpoint of the official PCAA code (lsa1997/PCAA).")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, help="Folder for the wsss segmentation run (config.yaml, class_names.txt, model.safetensors).")
@click.option("--data-kind", type=click.Choice(["cityscapes", "ade20k", "pascal_context", "voc", "coco"]), default=None, help="Dataset the checkpoint was trained on: gives the class names [default: from the class count, 19 cityscapes / 150 ade20k / 59 pascal_context].")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Class-names file, one per line in the checkpoint's order (instead of --data-kind).")
@click.option("--multi-grid", default=None, callback=comma_list(int), help="layer4 multipliers the checkpoint was trained with (PCAA's ADE20K: 1,2,4) [default: none].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Sliding-window size predict uses [default: 768 cityscapes, else 512].")
@click.option("--base-size", type=click.IntRange(16), default=None, help="Resize base predict uses [default: 1024 cityscapes, else 512].")
@click.option("--strict/--no-strict", default=True, help="Refuse a checkpoint whose converted keys or shapes do not match [default: strict].")
def convert_weights_cmd(source, checkpoint, out, data_kind, classes_file, multi_grid, crop, base_size, strict) -> None:
    """Turn an official checkpoint into a wsss run that wsss predict loads."""
    from wsss.seg.convert import convert_pcaa

    from wsss.data.base import read_class_names

    names = read_class_names(classes_file) if classes_file is not None else None
    result = convert_pcaa(
        checkpoint, out, class_names=names, data_kind=data_kind, multi_grid=multi_grid,
        crop=crop, base_size=base_size, strict=strict,
    )
    data_kind = json.loads((result / "done.json").read_text())["data_kind"]
    click.echo(f"converted {checkpoint} to {result}. Next: wsss predict --seg-dir {result} --data-kind "
               f"{data_kind or '<kind>'} --data-root <dataset> --split val --out {result}_val")


PREDICT_OPTIONS = {
    "seg_dir": Opt("train-seg output folder (config.yaml + model.safetensors)."),
    **_data("Images to segment."),
    "mode": Opt("Whole image or sliding window."),
    "scales": Opt("Comma-separated scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75."),
    "flip": Opt("Also segment the mirrored image."),
    "crop": Opt("slide: window side, pixels; 0 = the training crop.", min=0),
    "stride": Opt("slide: window step, pixels; 0 = two thirds of the window.", min=0),
    "crf": Opt("Dense-CRF post-processing."),
    "batch_size": Opt("Images of the same size per forward; a GPU speed-up, same masks.", min=1),
    "amp": Opt("Forwards in float16 autocast on a GPU (bfloat16 on a CPU); a few labels may change: "
               "benchmarks/suite.py reports how many."),
    "device": DEVICE,
    "out": Opt("Folder for the palette PNG masks."),
    "overwrite": Opt("Redo images already in --out.", switch=True),
}


@main.command("predict")
@config_options(PredictConfig, "predict", PREDICT_OPTIONS)
def predict_cmd(cfg) -> None:
    """Segment images with a train-seg model; palette PNGs that wsss eval scores."""
    from wsss.seg.predict import predict

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
    """The whole pipeline on the built-in synthetic dataset, on CPU (about 6 minutes on 2 cores, as measured):
    toy data, Conformer CAM and AD-CAM seeds, IRN pseudo masks, PCAA and FCN, tables and a figure."""
    from importlib.resources import files

    _run_recipe_cli(Path(str(files("wsss") / "recipes" / "demo.yaml")), out, (), None)


if __name__ == "__main__":
    main()
