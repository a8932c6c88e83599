"""Load weights from a local file into a model, refusing anything that does not fit.

wsss never downloads weights: every checkpoint is a file the user names.
:func:`load_weights` reads ``.safetensors`` files, and anything else with
``torch.load(weights_only=True)`` (``.pth`` / ``.pt``); it unwraps
``{"state_dict": ...}``-style checkpoints and DDP's ``module.`` prefix, renames
keys of known foreign layouts (:func:`detect_format`), drops classifier heads
that cannot fit (saying so), and raises :class:`WeightsMismatchError` listing
every other missing, unexpected or mis-shaped tensor. ``strict=False`` is the
explicit way to load a partial match; what did not load is then logged.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from wsss.io import atomic_write

HEAD_PREFIXES: tuple[str, ...] = ("fc.", "head.", "classifier.", "conv_cls_head.", "trans_cls_head.")
"""Key prefixes of classifier heads: dropped when the model cannot take them."""

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")
_LIST_LIMIT = 20

KeyMap = Callable[[str], str | None]


class WeightsMismatchError(ValueError):
    """The checkpoint's tensors do not match the model's; ``report`` says how."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What :func:`load_weights` did; key names are the model's (after any key map).

    ``loaded``: copied into the model. ``missing``: model keys the checkpoint
    does not provide (they keep their current values). ``unexpected``:
    checkpoint keys the model does not have. ``dropped``: checkpoint keys left
    out on purpose (classifier heads that do not fit, keys a key map excludes).
    ``mismatched``: keys in both whose shapes differ, as ``(key, checkpoint
    shape, model shape)``.
    """

    path: Path
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)


# mmcv/mmseg ResNetV1c stem (Sequential of conv, BN, ReLU x3) -> timm deep stem + bn1.
_MMCV_STEM = {
    "stem.0.": "conv1.0.",
    "stem.1.": "conv1.1.",
    "stem.3.": "conv1.3.",
    "stem.4.": "conv1.4.",
    "stem.6.": "conv1.6.",
    "stem.7.": "bn1.",
}


def mmcv_resnet_key(key: str) -> str:
    """mmcv ResNet(V1c) names -> timm names; ``layer*`` and ``fc`` names are identical."""
    for old, new in _MMCV_STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def mmseg_backbone_key(key: str) -> str | None:
    """A whole mmseg segmentor checkpoint: keep ``backbone.*`` (renamed), leave out the heads."""
    if not key.startswith("backbone."):
        return None
    return mmcv_resnet_key(key[len("backbone."):])


def wsss_backbone_key(key: str) -> str | None:
    """A wsss network (train-cls ResNet CAM net, train-seg model): keep ``backbone.*``, leave out the heads."""
    return key[len("backbone."):] if key.startswith("backbone.") else None


KEY_MAPS: dict[str, KeyMap | None] = {
    "resnet": None,
    "wsss_network": wsss_backbone_key,
    "mmcv_resnet": mmcv_resnet_key,
    "mmseg_segmentor": mmseg_backbone_key,
    "conformer": None,
    "unknown": None,
}
"""Key map of each layout :func:`detect_format` names (``None``: names are used as they are)."""


def detect_format(keys: Sequence[str] | Mapping[str, object]) -> str:
    """Name the layout of a state dict from its keys (a ``KEY_MAPS`` key).

    ``resnet``: torchvision or timm ResNet names (the two are identical, 7x7 or
    deep stem); ``mmcv_resnet``: open-mmlab ResNet / ResNetV1c (``stem.N``);
    ``mmseg_segmentor``: the same under ``backbone.`` beside decode heads;
    ``wsss_network``: a wsss ResNet network (``backbone.`` + timm names beside
    its heads), e.g. a ``train-cls`` ResNet's ``model.safetensors``, whose
    backbone can start IRNet or a segmentation network;
    ``conformer``: the official Conformer release (its names are wsss's module
    names); ``unknown``: anything else, used as it is.
    """
    names = set(keys)
    has_layers = any(k.startswith("layer1.") for k in names)
    if "backbone.stem.0.weight" in names:
        return "mmseg_segmentor"
    if "backbone.conv1.weight" in names or "backbone.conv1.0.weight" in names:
        return "wsss_network"
    if "stem.0.weight" in names and has_layers:
        return "mmcv_resnet"
    if has_layers and ("conv1.weight" in names or "conv1.0.weight" in names):
        return "resnet"
    if "trans_patch_conv.weight" in names:
        return "conformer"
    return "unknown"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a local file, on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, unwrapping ``state_dict`` / ``model`` /
    ``model_state`` / ``model_state_dict`` entries and a ``module.`` prefix on
    every key. Raises ``FileNotFoundError`` or a ``ValueError`` saying what the
    file holds instead.
    """
    from wsss.models.builtin import resolve_weights

    path = resolve_weights(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path}. "
            "wsss never downloads weights: download the checkpoint and pass its local path."
        )
    if path.suffix == ".safetensors":
        try:
            state = load_file(path, device="cpu")
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"cannot read {path} with torch.load(weights_only=True): {e}\n"
                "If it pickles Python objects besides tensors and you trust its source, load it yourself "
                "and save its state_dict with wsss.models.weights.save_safetensors."
            ) from e
        except (RuntimeError, EOFError) as e:
            raise ValueError(f"{path} is not a PyTorch checkpoint or is truncated: {e}") from e
        state = _unwrap(obj, path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    key_map: KeyMap | None = None,
    left_out_reason: str | None = None,
    drop_mismatched_heads: bool = True,
    head_prefixes: Sequence[str] = HEAD_PREFIXES,
    log: Callable[[str], object] = print,
) -> LoadReport:
    """Copy the tensors of the checkpoint at ``path`` into ``model``.

    Args:
        model: the module whose ``state_dict`` names the checkpoint must match.
            To fill the backbone of a bigger net, pass that backbone.
        path: local ``.pth`` / ``.pt`` / ``.safetensors`` file (see :func:`read_state_dict`).
        strict: raise :class:`WeightsMismatchError` on any missing, unexpected
            or mis-shaped tensor (heads aside). With ``False`` the matching
            tensors are loaded and the rest is logged and reported.
        key_map: renames each checkpoint key to the model's name (``None``
            leaves the key out). By default the map of the detected layout
            (:func:`detect_format`, :data:`KEY_MAPS`) is used.
        left_out_reason: what the keys ``key_map`` leaves out are, for the message (instead of
            listing them).
        drop_mismatched_heads: checkpoint keys under ``head_prefixes`` that the
            model cannot take (a different shape, e.g. a 1000-way ImageNet
            classifier, or no such key) are dropped with a message; the model's
            own head keys then keep their initialisation (listed in ``missing``,
            not an error).
        log: receives one line per message.

    A model's ``num_batches_tracked`` buffers absent from the checkpoint (old
    torchvision files, safetensors exports) keep their values and are not
    reported: they only count updates.
    """
    from wsss.models.builtin import resolve_weights

    path = resolve_weights(path)
    raw = read_state_dict(path)
    if key_map is None:
        fmt = detect_format(raw)
        key_map = KEY_MAPS[fmt]
    else:
        fmt = "custom key_map"
    report = LoadReport(path=path, format=fmt)

    state: dict[str, torch.Tensor] = {}
    mapped_out: list[str] = []
    for key, tensor in raw.items():
        new_key = key if key_map is None else key_map(key)
        if new_key is None:
            mapped_out.append(key)
        else:
            state[new_key] = tensor
    if mapped_out:
        report.dropped.extend(mapped_out)
        if left_out_reason:
            log(f"left out {len(mapped_out)} checkpoint tensors: {left_out_reason}")
        else:
            log(f"left out {len(mapped_out)} checkpoint keys the {fmt} key map excludes: {_preview(mapped_out)}")

    target = model.state_dict()
    prefixes = tuple(head_prefixes)

    def is_head(key: str) -> bool:
        return drop_mismatched_heads and key.startswith(prefixes)

    to_load: dict[str, torch.Tensor] = {}
    dropped_heads: set[str] = set()
    for key, tensor in state.items():
        if key not in target:
            if is_head(key):
                report.dropped.append(key)
                log(f"dropped {_ways(tensor)}head {key} {_shape(tensor)}: the model has no {key}")
            else:
                report.unexpected.append(key)
        elif tensor.shape != target[key].shape:
            if is_head(key):
                report.dropped.append(key)
                dropped_heads.add(key)
                log(f"dropped {_ways(tensor)}head {key} {_shape(tensor)} -> model has {_shape(target[key])}")
            else:
                report.mismatched.append((key, _shape(tensor), _shape(target[key])))
        else:
            to_load[key] = tensor
    report.missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    report.missing += sorted(dropped_heads)
    blocking_missing = [k for k in report.missing if not is_head(k)]
    head_missing = [k for k in report.missing if is_head(k)]

    problems = bool(blocking_missing or report.unexpected or report.mismatched)
    if problems and strict:
        raise WeightsMismatchError(_mismatch_message(model, report, blocking_missing), report)

    model.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    log(f"loaded {len(to_load)}/{len(target)} tensors of {type(model).__name__} from {path} ({fmt} layout)")
    if head_missing:
        log(f"kept the initialisation of {len(head_missing)} head tensors: {_preview(head_missing)}")
    if problems:
        for line in _problem_lines(report, blocking_missing):
            log("not loaded: " + line)
    return report


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state_dict`` as a ``.safetensors`` file, atomically.

    Tensors are copied to contiguous CPU tensors first, so views and tensors
    sharing storage (tied weights) are accepted. ``metadata``: string pairs
    stored in the header (e.g. the backbone name).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a safetensors file must end in .safetensors (load_weights picks the reader from it)")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    meta = dict(metadata) if metadata is not None else None
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Wrappers may nest (a trainer's {"model": {"state_dict": ...}}); each level is one of _WRAPPER_KEYS.
    for _ in range(len(_WRAPPER_KEYS) + 1):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(
        f"{path} does not hold a state dict (a mapping of parameter names to tensors): it holds {_describe(obj)}. "
        f"Save model.state_dict(), or a dict with it under one of {', '.join(repr(k) for k in _WRAPPER_KEYS)}."
    )


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {_shape(obj)}"
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        names = _preview([str(k) for k in others], 8)
        return f"a dict with {tensors} tensors and {len(others)} other entries ({names})"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _mismatch_message(model: nn.Module, report: LoadReport, missing: list[str]) -> str:
    lines = [f"{report.path} does not match {type(model).__name__} (checkpoint layout: {report.format}):"]
    lines += ["  " + line for line in _problem_lines(report, missing)]
    hint = _stem_hint(missing, report.unexpected)
    if hint:
        lines.append(hint)
    lines.append(
        "Check that the checkpoint was made for this architecture. To load only the matching tensors, "
        "pass strict=False (what does not load is then logged and listed in the returned report)."
    )
    return "\n".join(lines)


def _problem_lines(report: LoadReport, missing: list[str]) -> list[str]:
    lines = []
    if missing:
        lines.append(f"missing from the checkpoint ({len(missing)}): {_preview(missing)}")
    if report.unexpected:
        lines.append(f"unexpected in the checkpoint ({len(report.unexpected)}): {_preview(report.unexpected)}")
    if report.mismatched:
        shown = [f"{k} checkpoint {a} vs model {b}" for k, a, b in report.mismatched]
        lines.append(f"shape mismatch ({len(shown)}): {_preview(shown)}")
    return lines


def _stem_hint(missing: list[str], unexpected: list[str]) -> str | None:
    if "conv1.0.weight" in missing and "conv1.weight" in unexpected:
        return (
            "The checkpoint has a 7x7 stem (resnet50/resnet101) but the model a deep stem (_v1c): "
            "build resnet50/resnet101 or pass deep_stem=False."
        )
    if "conv1.weight" in missing and "conv1.0.weight" in unexpected:
        return (
            "The checkpoint has a deep 3x3 stem (_v1c) but the model a 7x7 stem: "
            "build the _v1c variant or pass deep_stem=True."
        )
    return None


def _preview(items: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _ways(tensor: torch.Tensor) -> str:
    return f"{tensor.shape[0]}-way " if tensor.ndim >= 1 else ""


__all__ = [
    "HEAD_PREFIXES",
    "KEY_MAPS",
    "LoadReport",
    "WeightsMismatchError",
    "detect_format",
    "load_weights",
    "mmcv_resnet_key",
    "mmseg_backbone_key",
    "read_state_dict",
    "save_safetensors",
]
