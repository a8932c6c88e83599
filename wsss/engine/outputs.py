"""Output folders of the per-image stages (extract-cam, make-pseudo, predict): the settings that
made a folder's files are recorded in its ``manifest.json``, a rerun with other settings is refused
instead of mixing outputs, and a rerun with the same ones continues with the ids not written yet."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from wsss.config import ConfigError, save_config
from wsss.io import write_json

MANIFEST = "manifest.json"


def check_output_settings(out: str | Path, settings: Mapping[str, Any], what: str, overwrite: bool = False,
                          implied: Mapping[str, Any] | None = None) -> None:
    """Refuse to add outputs to a folder whose ``manifest.json`` records other settings.

    Stages that skip finished items on a rerun call this first, so a resumed run
    never mixes outputs made with different parameters. ``what`` names the
    outputs in the message ("CAMs", "masks"). ``implied``: the value a setting
    had before it was recorded, for manifests written before it existed; a mapping
    for a nested setting (``{"irn": {"resize": "opencv"}}``) fills in the keys that
    the recorded mapping lacks.
    """
    path = Path(out) / MANIFEST
    if overwrite or not path.is_file():
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    old = {**(implied or {}), **recorded}
    for k, v in (implied or {}).items():
        if isinstance(v, Mapping) and isinstance(recorded.get(k), Mapping):
            old[k] = {**v, **recorded[k]}
    changed = sorted(k for k in settings if settings[k] != old.get(k))
    if changed:
        raise ConfigError(
            f"{out} holds {what} made with other settings ({', '.join(changed)}); "
            "pass --overwrite to replace them or choose another --out"
        )


def check_provenance(folder: str | Path, class_names: Sequence[str], what: str) -> None:
    """Refuse a CAM, score or mask folder made for another class list than the dataset's (as its
    ``manifest.json`` records), in one line naming both lists; folders without the record (older
    ones, IRN's own) pass, and their class ids are still checked where they are read."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("class_names")
    except ValueError:
        return
    if recorded is not None and list(recorded) != list(class_names):
        raise ConfigError(
            f"{folder} holds {what} made for the classes [{', '.join(recorded)}], but this dataset has "
            f"[{', '.join(class_names)}]. Use {what} made from this dataset, or point --data-root at theirs."
        )


def prepare_output(out: str | Path, settings: Mapping[str, Any], cfg: Any, what: str, overwrite: bool = False,
                   implied: Mapping[str, Any] | None = None) -> Path:
    """Open a resumable output folder: refuse other settings (:func:`check_output_settings`),
    create it, record ``settings`` in ``manifest.json`` and ``cfg`` in ``config.yaml``."""
    out = Path(out)
    check_output_settings(out, settings, what, overwrite, implied)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, dict(settings))
    save_config(cfg, out / "config.yaml")
    return out


def pending_ids(ids: Sequence[str], out: str | Path, suffix: str, what: str, overwrite: bool = False,
                announce: bool = True) -> list[str]:
    """This process's ids (every ``world``-th one under ``torchrun``) whose ``out/<id><suffix>``
    is not written yet (all of them with ``overwrite``); says how many are already done, so a
    rerun reads as a continuation (rank 0 only)."""
    from wsss.engine import dist

    ids = list(ids)[dist.rank() :: dist.world_size()]
    announce = announce and dist.is_main()
    out = Path(out)
    todo = list(ids) if overwrite else [i for i in ids if not (out / f"{i}{suffix}").is_file()]
    if announce and len(todo) < len(ids):
        print(f"{len(ids) - len(todo)} of {len(ids)} {what} already in {out}; continuing")
    return todo
