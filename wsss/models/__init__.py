"""Backbones by name: ``build_backbone("resnet50", **CAM_OS16)``.

The registry is a dict plus a decorator: ``@register_backbone("name")`` on a
function that takes keyword arguments and returns the module. ResNets are
built by :mod:`wsss.models.resnet`; Conformers by :mod:`wsss.models.conformer`,
imported only when one is built. Weights are never downloaded: load a local
file with ``pretrained_path=`` (ResNets) or :func:`load_weights`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from wsss.models.resnet import CAM_OS16, SEG_OS8, RESNET_CONFIGS, ResNetBackbone, build_resnet
from wsss.models.weights import LoadReport, WeightsMismatchError, load_weights, save_safetensors
from wsss.registry import Registry

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

BACKBONES: Registry = Registry("backbone")

# The names conformer.CONFORMER_CONFIGS provides; listed here so that listing
# backbones does not import that module.
CONFORMER_NAMES = ("conformer_tiny", "conformer_ti16", "conformer_s16", "conformer_b16")


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding ``fn`` to :data:`BACKBONES` under ``name``."""

    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``; ``kwargs`` go to its builder
    (for ResNets: :func:`wsss.models.resnet.build_resnet`)."""
    return BACKBONES.lookup(name)(**kwargs)


def _build_conformer(name: str, **kwargs) -> nn.Module:
    try:
        from wsss.models.conformer import CONFORMER_CONFIGS
    except ImportError as e:
        raise ImportError(f"cannot build {name!r}: wsss.models.conformer could not be imported ({e})") from e
    if name not in CONFORMER_CONFIGS:
        raise ValueError(f"wsss.models.conformer has no {name!r}; it provides {', '.join(CONFORMER_CONFIGS)}")
    return CONFORMER_CONFIGS[name](**kwargs)


for _name in RESNET_CONFIGS:
    register_backbone(_name)(functools.partial(build_resnet, _name))
for _name in CONFORMER_NAMES:
    register_backbone(_name)(functools.partial(_build_conformer, _name))
del _name

__all__ = [
    "BACKBONES",
    "CAM_OS16",
    "SEG_OS8",
    "LoadReport",
    "ResNetBackbone",
    "WeightsMismatchError",
    "build_backbone",
    "build_resnet",
    "list_backbones",
    "load_weights",
    "register_backbone",
    "save_safetensors",
]
