"""Built-in pretrained backbones: ``--pretrained builtin:NAME``.

The files in ``wsss/pretrained/`` were made by ``wsss pretrain`` on the synthetic
corpus (:mod:`wsss.data.corpus`) and stand in for ImageNet weights in the demo,
the tests and CPU trials; on real data, bring real ImageNet weights. Each file
is described by one entry of ``wsss/pretrained/manifest.json``: the model, the
corpus and training settings, the command that made it, its steps and held-out
top-1, and its SHA-256. Every place that takes a weights file takes a
``builtin:NAME`` too (:func:`resolve_weights` is called where files are read).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "pretrained"
MANIFEST = BUILTIN_DIR / "manifest.json"
PREFIX = "builtin:"
MAX_BYTES = 4 * 1024 * 1024


def list_builtin() -> dict[str, dict]:
    """``{name: manifest entry}`` of the shipped weights."""
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def is_builtin(spec: str | os.PathLike | None) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve_weights(spec: str | os.PathLike) -> Path:
    """The file a weights setting names: ``builtin:NAME`` -> the shipped file; else the path itself."""
    if not is_builtin(spec):
        return Path(spec)
    name = str(spec)[len(PREFIX):]
    known = list_builtin()
    if name not in known:
        listing = ", ".join(f"builtin:{k}" for k in sorted(known)) or "none are installed"
        raise FileNotFoundError(f"no built-in weights named {name!r}; known: {listing} (wsss pretrain --list)")
    path = BUILTIN_DIR / known[name]["file"]
    if not path.is_file():
        raise FileNotFoundError(f"built-in weights {spec} should be at {path} but the file is missing; reinstall wsss")
    return path


def manifest_line(name: str, entry: dict) -> str:
    return (f"builtin:{name}  {entry['model']}  top-1 {entry['top1']:.2f}% on {entry['classes']} corpus classes, "
            f"{entry['steps']} steps, {entry['bytes'] / 2 ** 20:.2f} MiB  ({entry['command']})")


def export_builtin(name: str, backbone_file: Path, entry: dict) -> Path:
    """Copy a ``wsss pretrain`` backbone into the package as ``builtin:NAME`` and record it in the manifest."""
    size = backbone_file.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{backbone_file} is {size / 2 ** 20:.2f} MiB; built-in weights are at most 4 MiB")
    BUILTIN_DIR.mkdir(parents=True, exist_ok=True)
    target = BUILTIN_DIR / f"{name}.safetensors"
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(backbone_file, tmp)
    tmp.replace(target)
    manifest = list_builtin()
    manifest[name] = {**entry, "file": target.name, "bytes": size,
                      "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n", encoding="utf-8")
    tmp.replace(MANIFEST)
    return target
