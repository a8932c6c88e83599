"""``wsss convert-weights --from pcaa``: an official PCAA checkpoint as a wsss segmentation run.

The PCAA repository (lsa1997/PCAA, ``networks/caanet.py``) saves ``model.state_dict()`` of its
DDP-wrapped ``Seg_Model``: keys under ``module.``, a deep-stem ResNet in ``backbone.stem``, the
head in ``head.conva`` / ``head.module_list.<i>`` / ``head.convb`` / ``head.conv_seg`` and the
auxiliary head in ``dsn``. The same network in wsss is ``build_segmenter("pcaa", "resnet*_v1c",
...)`` with the full layer3 / layer4 dilation of that code (``contract_dilation=False``). Three
tensors change shape or order on the way, the rest are renamed:

* ``gcn.conv1`` and ``fuse`` are 1x1 ``Conv2d`` over the patch axis there, ``Conv1d`` here: the
  trailing 1 of the kernel is dropped;
* the head's last 3x3 conv reads ``cat([convb(y), backbone features])`` there and
  ``cat([backbone features, post(y)])`` here: its input channels are swapped back in that order.

The result is a folder that ``wsss predict`` loads strictly, with ``config.yaml`` (the network's
settings read from the checkpoint's shapes), ``class_names.txt``, ``model.safetensors`` and
``done.json`` naming the source checkpoint.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import torch

from wsss.config import ConfigError, save_config
from wsss.data import DataConfig
from wsss.engine import checkpoint as ckpt
from wsss.io import write_json, write_text
from wsss.seg.config import CLASS_NAMES_FILE, TrainSegConfig
from wsss.seg.model import build_from_config

# PCAA's deep stem (nn.Sequential: conv, bn, relu, conv, bn, relu, conv, bn, relu) -> wsss's v1c stem.
_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}
_BLOCKS = {"resnet50_v1c": 6, "resnet101_v1c": 23}  # layer3 depth tells the two apart


def read_pcaa_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a PCAA ``.pth`` (plain, or under ``state_dict`` / ``model``), the ``module.``
    prefix of its DDP wrapper removed: read as every weights file is (:func:`wsss.models.weights.read_state_dict`)."""
    from wsss.models.weights import read_state_dict

    try:
        return read_state_dict(Path(path))
    except ValueError as e:
        raise ConfigError(f"{e} (is it a PCAA checkpoint?)") from e


def _last_conv_index(state: dict, prefix: str) -> str:
    """conv_seg / dsn end with the classifier at index 3, or 4 when PCAA's ``--dropout`` added a Dropout2d."""
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})
    if not indices:
        raise ConfigError(f"the checkpoint has no '{prefix}*' tensors: not a PCAA Seg_Model state dict")
    return str(indices[-1])


def pcaa_key_map(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Official PCAA key -> wsss key, for every key of ``state``; unknown keys are refused."""
    seg_last = _last_conv_index(state, "head.conv_seg.")
    dsn_last = _last_conv_index(state, "dsn.") if any(k.startswith("dsn.") for k in state) else None
    rules = [
        (r"backbone\.stem\.(\d)\.(.+)", lambda m: f"backbone.{_STEM[m.group(1)]}.{m.group(2)}" if m.group(1) in _STEM else None),
        (r"(backbone\.layer\d\..+)", lambda m: m.group(1)),
        (r"head\.conva\.([01])\.(.+)", lambda m: f"head.reduce.{m.group(1)}.{m.group(2)}"),
        (r"head\.convb\.([01])\.(.+)", lambda m: f"head.post.{m.group(1)}.{m.group(2)}"),
        (r"head\.conv_seg\.([01])\.(.+)", lambda m: f"head.fuse.{m.group(1)}.{m.group(2)}"),
        (rf"head\.conv_seg\.{seg_last}\.(.+)", lambda m: f"head.cls.1.{m.group(1)}"),
        (r"head\.module_list\.(\d+)\.conv_cam\.(.+)", lambda m: f"head.pcaa.{m.group(1)}.cam.1.{m.group(2)}"),
        (r"head\.module_list\.(\d+)\.gcn\.conv1\.(.+)", lambda m: f"head.pcaa.{m.group(1)}.gcu_node.{m.group(2)}"),
        (r"head\.module_list\.(\d+)\.gcn\.conv2\.(.+)", lambda m: f"head.pcaa.{m.group(1)}.gcu_channel.{m.group(2)}"),
        (r"head\.module_list\.(\d+)\.fuse\.(.+)", lambda m: f"head.pcaa.{m.group(1)}.global_fuse.{m.group(2)}"),
        (r"head\.module_list\.(\d+)\.proj_(query|key|value)\.(.+)",
         lambda m: f"head.pcaa.{m.group(1)}.{m.group(2)}.{m.group(3)}"),
        (r"head\.module_list\.(\d+)\.conv_out\.([01])\.(.+)", lambda m: f"head.pcaa.{m.group(1)}.out.{m.group(2)}.{m.group(3)}"),
    ]
    if dsn_last is not None:
        rules += [
            (r"dsn\.([01])\.(.+)", lambda m: f"aux_head.convs.0.{m.group(1)}.{m.group(2)}"),
            (rf"dsn\.{dsn_last}\.(.+)", lambda m: f"aux_head.cls.1.{m.group(1)}"),
        ]
    mapping, unknown = {}, []
    for key in state:
        for pattern, target in rules:
            m = re.fullmatch(pattern, key)
            if m and (name := target(m)) is not None:
                mapping[key] = name
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{len(unknown)} checkpoint keys are not part of PCAA's Seg_Model: {unknown[:20]}")
    return mapping


def pcaa_network_settings(state: dict[str, torch.Tensor]) -> dict:
    """The wsss network settings a PCAA state dict implies: backbone, classes, head width, S per module."""
    depth = len({k.split(".")[2] for k in state if k.startswith("backbone.layer3.")})
    backbone = next((name for name, blocks in _BLOCKS.items() if blocks == depth), None)
    if backbone is None:
        raise ConfigError(f"layer3 has {depth} blocks: PCAA's ResNet-50 has 6, ResNet-101 23")
    modules = sorted({int(k.split(".")[2]) for k in state if k.startswith("head.module_list.")})
    if not modules:
        raise ConfigError("the checkpoint has no head.module_list: not a PCAA (caanet) model")
    pool_sizes = []
    for i in modules:
        nodes = state[f"head.module_list.{i}.gcn.conv1.weight"].shape[0]
        side = math.isqrt(nodes)
        if side * side != nodes:
            raise ConfigError(f"module {i} has {nodes} patches: wsss's PCAA needs square S x S patch grids")
        pool_sizes.append(side)
    return {
        "backbone": backbone,
        "num_classes": state["head.module_list.0.conv_cam.weight"].shape[0],
        "channels": state["head.conva.0.weight"].shape[0],
        "pool_sizes": tuple(pool_sizes),
        "aux": any(k.startswith("dsn.") for k in state),
    }


def convert_pcaa_state(state: dict[str, torch.Tensor], channels: int) -> dict[str, torch.Tensor]:
    """Rename PCAA's tensors to wsss's, squeeze the two 1x1 ``Conv2d`` over patches and swap the
    final conv's input halves (``channels`` = the head width, the first half of PCAA's concat)."""
    mapping = pcaa_key_map(state)
    out = {}
    for key, value in state.items():
        name = mapping[key]
        if name.endswith((".gcu_node.weight", ".global_fuse.weight")):
            value = value.squeeze(-1)
        if name == "head.fuse.0.weight":
            value = torch.cat([value[:, channels:], value[:, :channels]], dim=1)
        out[name] = value.contiguous()
    return out


def class_names_of(data_kind: str | None, num_classes: int) -> tuple[str, list[str]]:
    """The dataset kind and its class names: ``data_kind``'s, or the one dataset with
    ``num_classes`` classes (19 Cityscapes, 150 ADE20K, 59 Pascal Context, 21 VOC, 81 COCO)."""
    from wsss.data.coco import COCO_CLASSES
    from wsss.data.scenes import ADE20K_CLASSES, CITYSCAPES_CLASSES, PASCAL_CONTEXT59_CLASSES
    from wsss.data.voc import VOC_CLASSES

    names = {"cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES, "pascal_context": PASCAL_CONTEXT59_CLASSES,
             "voc": VOC_CLASSES, "coco": COCO_CLASSES}
    if data_kind is None:
        matches = [kind for kind, classes in names.items() if len(classes) == num_classes]
        if len(matches) != 1:
            raise ConfigError(f"the checkpoint predicts {num_classes} classes: say which dataset with --data-kind, "
                              "or give --classes")
        data_kind = matches[0]
    return data_kind, list(names[data_kind])


def convert_pcaa(
    checkpoint: str | Path,
    out: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    data_kind: str | None = None,
    multi_grid: Sequence[int] | None = None,
    crop: int | None = None,
    base_size: int | None = None,
    strict: bool = True,
) -> Path:
    """Write a wsss train-seg run folder holding an official PCAA checkpoint; returns the folder
    (its ``done.json`` names the source and the dataset kind).

    ``class_names``: one per output class, in the checkpoint's order (its dataset's train ids);
    none: ``data_kind``'s classes, or, without it, those of the one dataset with the checkpoint's
    class count (:func:`class_names_of`). ``multi_grid``: layer4's multipliers the checkpoint was
    trained with (PCAA's ADE20K runs: 1, 2, 4); it cannot be read from the weights. ``crop`` /
    ``base_size``: what ``wsss predict`` uses for sliding windows and the resize (default PCAA's:
    768 / 1024 on Cityscapes, 512 / 512 otherwise). ``strict``: refuse a checkpoint whose
    converted keys or shapes do not match the network.
    """
    out = Path(out)
    if (out / "done.json").is_file():
        raise ConfigError(f"{out} already holds a finished run (done.json): choose a new --out")
    state = read_pcaa_checkpoint(checkpoint)
    net = pcaa_network_settings(state)
    if class_names is None:
        data_kind, class_names = class_names_of(data_kind, net["num_classes"])
    if len(class_names) != net["num_classes"]:
        raise ConfigError(
            f"the checkpoint predicts {net['num_classes']} classes but {len(class_names)} class names were given: "
            "name the dataset it was trained on (--data-kind) or give a class-names file (--classes)"
        )
    city = data_kind == "cityscapes"
    cfg = TrainSegConfig(
        data=DataConfig(kind=data_kind) if data_kind else DataConfig(), head="pcaa", backbone=net["backbone"],
        pretrained=None, contract_dilation=False, multi_grid=tuple(multi_grid) if multi_grid else None,
        channels=net["channels"], pool_sizes=net["pool_sizes"], aux_weight=0.4 if net["aux"] else 0.0,
        patch_label_min_frac=0.01, focal_reduction="mean", crop=crop or (768 if city else 512),
        base_size=base_size or (1024 if city else 512), out=str(out),
    )
    model = build_from_config(cfg, net["num_classes"])
    converted = convert_pcaa_state(state, net["channels"])
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    shapes = [f"{k}: {tuple(converted[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(converted))
              if converted[k].shape != own[k].shape]
    if strict and (missing or unexpected or shapes):
        raise ConfigError(
            f"{checkpoint} does not convert to wsss's PCAA network: missing {missing[:20]}, unexpected "
            f"{unexpected[:20]}, shape mismatches {shapes[:10]} (pass strict=False / --no-strict to keep what fits)"
        )
    model.load_state_dict({k: v for k, v in converted.items() if k in own and v.shape == own[k].shape},
                          strict=strict)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_text(out / CLASS_NAMES_FILE, "\n".join(class_names))
    ckpt.save_weights(model, out / ckpt.WEIGHTS_NAME)
    write_json(out / "done.json", {"converted_from": str(checkpoint), "format": "pcaa", "data_kind": data_kind,
                                   "tensors": len(converted), "weights": str(out / ckpt.WEIGHTS_NAME)})
    return out
