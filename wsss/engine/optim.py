"""Optimiser groups and the optimisers built from them.

Models say which parameters form which group (:class:`GroupSpec`: e.g. a backbone and a head with
its own learning rate); the stages build the optimiser with :func:`make_optimizer`, and the training
loop (:mod:`wsss.engine.loop`) sets each group's learning rate per step from its ``schedule``.
Models import this module, not the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from wsss.config import ConfigError


@dataclass
class GroupSpec:
    """An optimiser group: its parameters, base lr and schedule name (a ``SCHEDULES`` key)."""

    name: str
    params: list[nn.Parameter]
    lr: float
    schedule: str
    weight_decay: float


def make_optimizer(kind: str, specs: Sequence[GroupSpec], momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adamw`` or ``sgd`` over the non-empty groups of ``specs``."""
    groups = [{"params": g.params, "lr": g.lr, "initial_lr": g.lr, "weight_decay": g.weight_decay,
               "schedule": g.schedule, "name": g.name} for g in specs if g.params]
    if kind == "adamw":
        return torch.optim.AdamW(groups)
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=momentum)
    raise ConfigError(f"optimizer '{kind}' is not known: use adamw or sgd")
