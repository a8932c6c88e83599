"""Checkpoints: weights as safetensors, training state as plain types.

A run folder holds ``model.safetensors`` (the weights a later stage loads) and
``resume.pt`` (optimizer, scheduler, epoch, step, RNG states, all tensors or
plain Python values, so ``torch.load(weights_only=True)`` reads it). Both are
written atomically, weights first: a resume file always points at weights at
least as new as itself.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wsss.io import atomic_write

WEIGHTS_NAME = "model.safetensors"
RESUME_NAME = "resume.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Any, what: str) -> None:
    """Load a finished run's ``state`` into ``model``, refusing (ValueError) a state whose keys do
    not match, with the first 20 missing and unexpected keys: ``{source} does not match {what}``."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match {what}: missing {result.missing_keys[:20]}, "
            f"unexpected {result.unexpected_keys[:20]}"
        )


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_file(str(path))


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_to_plain(v) for v in x]
    return x


def _to_tuple(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuple(v) for v in x)
    return x


def save_resume(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """The state :func:`save_resume` wrote. ``mmap``: map the tensors instead of reading them (for a
    look at the plain entries, ``config`` or ``step``, without loading a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
