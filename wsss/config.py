"""YAML configuration mapped onto per-stage dataclasses.

Each stage declares a dataclass of its settings. A YAML file fills it, command
line options override the file, and the resolved result is written next to the
stage's outputs (``config.yaml``) so every run can be reproduced. Keys are
checked: an unknown key is an error naming it and the closest valid key, and a
value of the wrong type is an error naming the key and the expected type.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, TypeVar

import yaml

from wsss.io import write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or option is invalid; the message says how to fix it."""


@dataclass
class TrainRunConfig:
    """The run settings every training stage (``pretrain``, ``train-cls``, ``train-irn``,
    ``train-seg``) shares; a stage's config extends it, and the training loop reads them
    (:meth:`wsss.engine.loop.LoopSettings.from_config`). The YAML stays flat, and ``config.yaml``
    lists them after the stage's own settings (:func:`config_fields`).

    workers: data-loading processes per process. device: ``auto`` (a GPU if present), ``cpu`` or
    ``cuda``. amp: bfloat16 autocast on a GPU. seed: data order, augmentation and initialisation.
    out: the run's folder. save_every: also checkpoint every this many steps (0: at epoch ends
    only). log_every: a metrics.jsonl line every this many steps.
    """

    workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    seed: int = 0
    out: str = "runs/train"
    save_every: int = 0
    log_every: int = 20
    # TensorBoard events in out/tensorboard as well as metrics.jsonl (needs wsss[tensorboard]); not a
    # training setting: a resumed run may switch it.
    tensorboard: bool = False

    RUN_ONLY: ClassVar[tuple[str, ...]] = ("workers", "tensorboard")
    """Settings that cannot change what is trained: a ``--resume`` may use other values
    (:data:`wsss.engine.loop.RUNTIME_ONLY`), and make-pseudo's manifest leaves them out of ``irn``."""


def config_fields(cfg: Any) -> list[dataclasses.Field]:
    """The fields of a config dataclass (class or instance) in the order ``config.yaml`` and error
    messages list them: a training stage's own settings first, then :class:`TrainRunConfig`'s."""
    fields = list(dataclasses.fields(cfg))
    cls = cfg if isinstance(cfg, type) else type(cfg)
    if not issubclass(cls, TrainRunConfig):
        return fields
    shared = {f.name for f in dataclasses.fields(TrainRunConfig)}
    return [f for f in fields if f.name not in shared] + [f for f in fields if f.name in shared]


def _closest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists/ints where
    YAML's types differ from Python's (YAML has no tuples; 1 is a valid float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} settings, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(choice_error(where, args, value))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def choice_error(name: str, choices: tuple, value: Any) -> str:
    """The message for a setting ``name`` whose ``value`` is not one of its fixed ``choices``."""
    allowed = f"'{choices[0]}' or '{choices[1]}'" if len(choices) == 2 else f"one of {', '.join(map(str, choices))}"
    return f"{name} must be {allowed}, got '{value}'"


def check_choices(cfg: Any, where: str = "") -> None:
    """Refuse a setting of ``cfg`` (a config dataclass, nested ones included) declared
    ``Literal[...]`` whose value is not one of its choices: the check a YAML file or option gets in
    :func:`from_dict`, for configurations built in Python."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        name = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_choices(value, name)
        elif typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            raise ConfigError(choice_error(name, typing.get_args(tp), value))


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in config_fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown configuration key '{path}' for {cls.__name__}.{_closest(str(key), list(fields))} "
                f"Valid keys: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-ready dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in config_fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in nested dicts, creating levels as needed."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


class _SetToNone:
    """An override meaning "set this key to None" (plain None means "not given")."""

    def __repr__(self) -> str:
        return "NONE"


NONE = _SetToNone()
"""Override value of :func:`load_config` that sets the key to None, e.g. ``--pretrained none``
over a ``--config`` file that names weights."""


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """File values, then ``overrides`` (dotted keys; None values are skipped, so
    unset command-line options keep the file's value; :data:`NONE` sets the key to None), then the
    dataclass defaults.

    ``section``: when the file holds several stages' settings (a recipe), read
    only that top-level key. A file without that key is read whole when its keys
    are settings of ``cls`` (the ``config.yaml`` a stage saves in its output
    folder), and refused otherwise, so a wrong file is never silently ignored.
    """
    data: dict = {}
    if path is not None:
        data = read_yaml(path)
        if section is not None:
            if section in data:
                data = data[section] or {}
            elif data and not set(data) & {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(
                    f"{path} has no '{section}' section (it has {', '.join(sorted(data))}) and is not a "
                    f"{section} config: point --config at a file with a '{section}:' section, or at the "
                    f"config.yaml a {section} run saved"
                )
    data = _deep_copy(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, None if value is NONE else value)
    return from_dict(cls, data)


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved configuration (atomic) next to a stage's outputs."""
    return write_text(path, dump_config(cfg))


def shell_command(*parts: Any) -> str:
    """A ``wsss`` command line that pastes into a shell as it is (every part quoted as needed)."""
    import shlex

    return "wsss " + " ".join(shlex.quote(str(p)) for p in parts)


def data_options(data: Any, split: str | None = None) -> list[str]:
    """The command-line options that name ``data`` (a :class:`wsss.data.DataConfig`), so a printed
    next command reads the same images: kind, root, split, and the label / mask / list overrides."""
    opts = ["--data-kind", data.kind, "--data-root", data.root, "--split", split or data.split]
    return opts


def gt_folder(ds: Any) -> str:
    """The ground-truth mask folder of a dataset, for a printed ``wsss eval`` command."""
    if getattr(ds, "mask_dirs", None):
        return str(ds.mask_dirs[0])
    return str(getattr(ds, "mask_dir", "<ground-truth masks>"))


# Output-folder bookkeeping lives in wsss.engine.outputs; these names stay importable from here.
_MOVED_TO_OUTPUTS = ("MANIFEST", "check_output_settings", "check_provenance", "prepare_output", "pending_ids")


def __getattr__(name: str):
    if name in _MOVED_TO_OUTPUTS:
        from wsss.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
