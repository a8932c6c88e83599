"""Output folders of the per-image stages (extract-cam, make-pseudo, predict): the settings that
made a folder's files are recorded in its ``manifest.json``, a rerun with other settings is refused
instead of mixing outputs, and a rerun with the same ones continues with the ids not written yet.

:func:`output_settings` makes a stage's manifest from its config (the fields its class declares
``RUN_ONLY`` left out); :class:`ImageOutputs` is the driver of the stages' per-image loops."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from wsss.config import ConfigError, save_config, to_dict
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


def output_settings(cfg: Any, leave_out: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """The settings that define a per-image stage's outputs, as its ``manifest.json`` records them:
    ``cfg`` as a plain dict (:func:`~wsss.config.to_dict`) without the fields its class names in
    ``RUN_ONLY`` (how a run goes, not what it writes: ``device``, ``overwrite``, ...), the same for a
    nested config (make-pseudo's ``irn``: a training config's ``RUN_ONLY``), without ``leave_out``
    (settings this run does not use), then the ``extra`` entries (``class_names``, ...) in order."""
    settings = _without_run_only(cfg, to_dict(cfg))
    for key in leave_out:
        settings.pop(key)
    settings.update(extra)
    return settings


def _without_run_only(cfg: Any, plain: Mapping[str, Any]) -> dict[str, Any]:
    skip = getattr(cfg, "RUN_ONLY", ())
    return {k: _without_run_only(getattr(cfg, k), v) if dataclasses.is_dataclass(getattr(cfg, k)) else v
            for k, v in plain.items() if k not in skip}


def batches_by_key(items: Iterable[Any], batch_size: int, key: Callable[[Any], Any]) -> Iterator[list[Any]]:
    """Group ``items`` into lists of up to ``batch_size`` sharing ``key(item)`` (an image's size): a
    group is yielded as soon as it is full, the partly filled ones after the last item, so at most
    ``batch_size - 1`` items per key wait at any time. Each item is in exactly one group."""
    waiting: dict[Any, list[Any]] = {}
    for item in items:
        group = waiting.setdefault(key(item), [])
        group.append(item)
        if len(group) >= batch_size:
            yield waiting.pop(key(item))
    yield from waiting.values()


Track = Callable[..., Iterable]
"""``track(items, total=None)``: ``items`` with the stage's progress bar (:func:`wsss.engine.loop.tracked`)."""


class ImageOutputs:
    """The driver of a per-image stage (extract-cam, predict, make-pseudo and IRN's steps in it): its
    resumable output folder ``out`` of ``<id><suffix>`` files, ``what`` they are ("CAMs", "masks")
    in messages. A stage calls the steps in this order, doing its own work between them (loading a
    model, checking its inputs), so that a refusal comes before anything is written:

    1. :meth:`check`: refuse a folder whose manifest records other settings, before anything is
       loaded (optional: :meth:`open` checks too);
    2. :meth:`open`: rank 0 records the settings and the config (:func:`prepare_output`); every
       rank waits for it;
    3. :meth:`run`: this rank's ids not written yet (:func:`pending_ids`) through the stage's
       per-image function, or its own loop over them, with the progress bar; every rank waits
       for the last;
    4. :meth:`finish`: rank 0 writes ``done.json``.

    ``implied``: what a setting meant in manifests written before it existed (:func:`check_output_settings`).
    A folder without a manifest (make-pseudo's ``ir_label/``) uses :meth:`run` alone.
    """

    def __init__(self, out: str | Path, what: str, overwrite: bool = False,
                 implied: Mapping[str, Any] | None = None) -> None:
        self.out, self.what, self.overwrite, self.implied = Path(out), what, overwrite, implied

    def check(self, settings: Mapping[str, Any]) -> None:
        check_output_settings(self.out, settings, self.what, self.overwrite, self.implied)

    def open(self, settings: Mapping[str, Any], cfg: Any) -> Path:
        from wsss.engine import dist

        if dist.is_main():
            prepare_output(self.out, settings, cfg, self.what, self.overwrite, self.implied)
        dist.barrier()
        return self.out

    def run(self, ids: Sequence[str], suffix: str, desc: str, progress: bool,
            each: Callable[[str], Any] | None = None, *, loop: Callable[[list[str], Track], Any] | None = None,
            files: str | None = None) -> list[str]:
        """Make the pending ids' files: ``each(image_id)`` one after another, or ``loop(todo, track)``
        for a stage that walks them its own way (processes, batches), iterating ``track(items,
        total=None)`` for the progress bar. ``files``: the outputs' name in the "already done" line
        (default ``what``). Returns this rank's pending ids."""
        from wsss.engine import dist
        from wsss.engine.loop import tracked

        todo = pending_ids(ids, self.out, suffix, files or self.what, self.overwrite)

        def track(items, total=None):
            return tracked(items, desc, progress, total=total)

        if loop is not None:
            loop(todo, track)
        else:
            for image_id in track(todo):
                each(image_id)
        dist.barrier()
        return todo

    def finish(self, record: Mapping[str, Any]) -> None:
        from wsss.engine import dist

        if dist.is_main():
            write_json(self.out / "done.json", dict(record))
