"""Image-level label files.

IRN's ``cls_labels.npy`` is a pickled dict saved with ``np.save``: key = image
id with the underscores removed, as an int (``2007_000032`` -> 2007000032),
value = float32 multi-hot over the foreground classes. Other tools store string
ids. Both are read; ids stay strings everywhere else in wsss, because
``2007_000032`` does not survive a round trip through an integer type.
"""
from __future__ import annotations

import csv
import difflib
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from wsss.io import WsssDataError, atomic_write


def irn_key(image_id: str) -> int | str:
    """The key IRN uses for ``image_id``: digits without underscores as an int, else the id."""
    compact = image_id.replace("_", "")
    return int(compact) if compact.isdigit() else image_id


def load_cls_labels(path: str | Path) -> dict:
    """Read a ``cls_labels.npy`` (IRN format); returns the raw dict (int or str keys)."""
    path = Path(path)
    if not path.is_file():
        raise WsssDataError(f"label file not found: {path}")
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as e:
        raise WsssDataError(f"cannot read {path} as a cls_labels.npy file: {e}") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise WsssDataError(
            f"{path} must hold a dict image id -> multi-hot vector (IRN's cls_labels.npy), got {type(obj).__name__}"
        )
    return obj


def save_cls_labels(path: str | Path, labels: Mapping[str, np.ndarray]) -> Path:
    """Write labels in IRN's format (int keys where the id is numeric)."""
    data = {irn_key(k): np.asarray(v, dtype=np.float32) for k, v in labels.items()}
    return atomic_write(path, lambda tmp: np.save(tmp, data, allow_pickle=True))


class LabelTable:
    """Image id (string) -> multi-hot foreground label, from any supported source."""

    def __init__(self, table: Mapping, num_fg: int, source: str):
        self.num_fg = num_fg
        self.source = source
        self._table = {}
        for key, value in table.items():
            vec = np.asarray(value, dtype=np.float32).reshape(-1)
            if vec.shape[0] != num_fg:
                raise WsssDataError(
                    f"{source}: label of '{key}' has {vec.shape[0]} entries, the dataset has {num_fg} foreground classes"
                )
            self._table[key] = vec

    def _lookup(self, image_id: str) -> np.ndarray | None:
        # COCO label files key images by the numeric part of COCO_train2014_000000000009.
        tail = re.search(r"(\d+)$", image_id)
        for key in (image_id, irn_key(image_id), int(tail.group(1)) if tail else None):
            if key is not None and key in self._table:
                return self._table[key]
        return None

    def get(self, image_id: str) -> np.ndarray | None:
        vec = self._lookup(image_id)
        return None if vec is None else vec.copy()

    def __contains__(self, image_id: str) -> bool:
        return self._lookup(image_id) is not None

    @classmethod
    def from_npy(cls, path: str | Path, num_fg: int) -> "LabelTable":
        return cls(load_cls_labels(path), num_fg, str(path))


def read_named_labels(path: str | Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a CSV or JSON labels file (image id -> class names) into multi-hot vectors.

    CSV: one row per image, ``id,name1;name2`` or ``id,name1,name2,...``
    (a header row starting with ``id`` or ``image`` is skipped). JSON: an
    object ``{"id": ["name1", "name2"], ...}``. ``class_names`` includes
    background at index 0; naming an unknown class is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise WsssDataError(f"labels file not found: {path}")
    fg = list(class_names[1:])
    index = {name: i for i, name in enumerate(fg)}
    raw: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise WsssDataError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise WsssDataError(f"{path} must hold an object mapping image id -> list of class names")
        for key, names in data.items():
            if isinstance(names, str):
                names = [names]
            raw[str(key)] = [str(n) for n in names]
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for row_no, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip():
                    continue
                if row_no == 1 and row[0].strip().lower() in ("id", "image", "image_id", "filename"):
                    continue
                names = [n.strip() for cell in row[1:] for n in cell.split(";") if n.strip()]
                raw[Path(row[0].strip()).stem] = names
    else:
        raise WsssDataError(f"labels file {path} must be .csv or .json")
    out = {}
    for image_id, names in raw.items():
        vec = np.zeros(len(fg), dtype=np.float32)
        for name in names:
            if name not in index:
                close = difflib.get_close_matches(name, fg, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise WsssDataError(
                    f"{path}: image '{image_id}' names class '{name}', which is not in the class list.{hint} "
                    f"Known classes: {', '.join(fg)}"
                )
            vec[index[name]] = 1.0
        out[image_id] = vec
    return out
