"""Command-line options generated from a stage's configuration dataclass.

A stage command lists the settings it exposes (:class:`Opt`: the help text, and the range or
option name where they are not the field's); everything else comes from the dataclass field: the
option's type (``int``, ``float``, ``str``, ``bool`` -> ``--x/--no-x``, ``Literal[...]`` -> its
choices, tuples and lists -> comma-separated values), and the default the help shows, read from the
dataclass so the two cannot drift apart. Options default to "not given", so a ``--config`` file's
values stand unless an option overrides them (:func:`wsss.config.load_config`).

Option names: ``data.kind`` -> ``--data-kind``, ``data.root`` -> ``--data-root``, ``data.split`` ->
``--split``, any other ``data.x`` -> ``--x``, ``irn.x`` (make-pseudo's boundary net) -> ``--irn-x``,
a field ``x_y`` -> ``--x-y``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from wsss.config import NONE, load_config


@dataclass(frozen=True)
class Opt:
    """One exposed setting. help: what it does (no default: that is read from the dataclass).
    name: the option's name where it is not derived from the field (``--format``). min / max
    (``min_open`` / ``max_open``): the accepted range of a number. note: said after the default
    (``[default: none, train from scratch]``). default_text: shown instead of the dataclass's
    default where the stage resolves it at run time (``channels / 2``). choices: allowed values of a
    ``str`` field whose names live in a registry. switch: a ``bool`` given as a single ``--x``
    (no ``--no-x``). path: ``dir`` or ``file`` for a path that must not be the other kind."""

    help: str
    name: str | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    note: str | None = None
    default_text: str | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False
    path: str | None = None


def option_name(path: str, opt: Opt | None = None) -> str:
    """The command-line name of the setting at dotted ``path``."""
    if opt is not None and opt.name:
        return opt.name
    head, _, rest = path.partition(".")
    if head == "data" and rest:
        name = {"kind": "data-kind", "root": "data-root"}.get(rest, rest)
    elif rest:
        name = f"{head}-{rest}"
    else:
        name = path
    return "--" + name.replace("_", "-").replace(".", "-")


def _param_name(path: str) -> str:
    return path.replace(".", "__")


def field_at(cls: type, path: str) -> tuple[Any, Any]:
    """The resolved annotation of the setting at dotted ``path`` of dataclass ``cls`` and its
    default (read from a default instance, nested configs included)."""
    owner, value = cls, cls()
    for part in path.split("."):
        if part not in {f.name for f in dataclasses.fields(owner)}:
            raise KeyError(f"{cls.__name__} has no setting '{path}'")
        owner, value = typing.get_type_hints(owner)[part], getattr(value, part)
    return owner, value


def _optional_inner(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _sequence_item(tp: Any) -> tuple[Any, int | None] | None:
    """(item type, fixed length or None) of a tuple / list annotation; None for other types."""
    origin = typing.get_origin(tp)
    if origin not in (tuple, list):
        return None
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return args[0], len(args)
    return (args[0] if args else float), None


NONE_WORDS = ("none", "null", "")
"""What an optional setting's option accepts for "no value" (the help shows such a default as none)."""


class OrNone(click.ParamType):
    """An optional setting's option type: ``none`` (or ``null``, or an empty string) sets it to None,
    overriding a ``--config`` file's value; anything else is read by ``inner`` (a click type)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is NONE or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            return NONE
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        try:
            return self.inner.get_metavar(param, ctx)
        except TypeError:  # click < 8.2: get_metavar(param)
            return self.inner.get_metavar(param)


def comma_list(item: type, length: int | None = None, optional: bool = False) -> Callable:
    """A click callback turning ``"a,b,c"`` into a list of ``item`` (int or float); with ``length``,
    exactly that many; with ``optional``, ``none`` gives :data:`wsss.config.NONE`."""
    what = "whole numbers" if item is int else "numbers"

    def parse(ctx: click.Context, param: click.Parameter, text: str | None):
        if text is None:
            return None
        if optional and text.strip().lower() in NONE_WORDS:
            return NONE
        try:
            values = [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = None
        if values is None or (length is not None and len(values) != length):
            if length == 2:
                raise click.BadParameter(f"'{text}' is not MIN,MAX (two {what})")
            count = f"{length} " if length else ""
            raise click.BadParameter(f"'{text}' is not a comma-separated list of {count}{what}")
        return values

    return parse


def render_default(value: Any, opt: Opt) -> str:
    """How the help shows a default ``value`` of the option ``name``."""
    if opt.default_text is not None:
        shown = opt.default_text
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif value is None or value == "":
        shown = "none"
    elif isinstance(value, (list, tuple)):
        shown = ",".join(_number(v) for v in value)
    elif isinstance(value, Path):
        shown = str(value)
    else:
        shown = _number(value)
    return shown + (f", {opt.note}" if opt.note else "")


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _click_option(cls: type, path: str, opt: Opt) -> click.Option:
    tp, default = field_at(cls, path)
    name = option_name(path, opt)
    optional = _optional_inner(tp) is not tp
    tp = _optional_inner(tp)
    kwargs: dict[str, Any] = {"default": None}
    decls: list[str]
    if tp is bool:
        decls = [name] if opt.switch else [f"{name}/--no-{name[2:]}"]
        if opt.switch:
            kwargs["is_flag"] = True
    else:
        decls = [name]
        seq = _sequence_item(tp)
        if typing.get_origin(tp) is typing.Literal:
            kwargs["type"] = click.Choice([str(a) for a in typing.get_args(tp)])
        elif opt.choices is not None:
            kwargs["type"] = click.Choice(list(opt.choices))
        elif opt.path is not None:
            kwargs["type"] = click.Path(file_okay=opt.path == "file", dir_okay=opt.path == "dir")
        elif seq is not None:
            kwargs["callback"] = comma_list(*seq, optional=optional)
            item, length = seq
            kwargs["metavar"] = "MIN,MAX" if length == 2 else ",".join(["N"] * length) if length else "N,N,..."
        elif tp in (int, float):
            if opt.min is None and opt.max is None:
                kwargs["type"] = tp
            else:
                rng = click.IntRange if tp is int else click.FloatRange
                kwargs["type"] = rng(opt.min, opt.max, min_open=opt.min_open, max_open=opt.max_open)
        if optional and seq is None:
            kwargs["type"] = OrNone(click.types.convert_type(kwargs.get("type", tp)))
    kwargs["help"] = f"{opt.help} [default: {render_default(default, opt)}]"
    return click.Option(decls + [_param_name(path)], **kwargs)


def config_options(cls: type, section: str | None, options: dict[str, Opt], *, config: bool = True,
                   prepare: Callable[[dict], None] | None = None, set_by_stage: tuple[str, ...] = (),
                   config_help: str | None = None) -> Callable:
    """Give a click command one option per entry of ``options`` (dotted setting path -> :class:`Opt`),
    in that order, and ``--config`` (a YAML file, read at ``section``) before them; the command
    function receives the resolved configuration as its first argument instead of the options.
    ``prepare(overrides)`` may adjust the dotted overrides (None = not given) before they are read.
    ``set_by_stage``: settings (or whole sections) the stage sets itself, so no option exposes them.

    The wrapped function keeps ``settings_class``, ``settings`` and ``resolve(params)`` (the
    configuration from click's parsed parameters) for the tests that check every field is exposed."""
    for path in options:
        field_at(cls, path)  # a typo in a path fails at import, naming it

    def resolve(params: dict) -> Any:
        overrides = {path: params.pop(_param_name(path), None) for path in options}
        if prepare is not None:
            prepare(overrides)
        return load_config(cls, params.pop("config_path", None), overrides, section=section)

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(**params: Any) -> Any:
            cfg = resolve(params)
            return f(cfg, **params)

        params = command.__dict__.setdefault("__click_params__", [])
        for path in reversed(list(options)):
            params.append(_click_option(cls, path, options[path]))
        if config:
            where = f"its {section} section" if section else "it"
            params.append(click.Option(
                ["--config", "config_path"], type=click.Path(dir_okay=False, path_type=Path), default=None,
                help=config_help or f"YAML file of settings (a recipe, or a run's config.yaml); options below "
                                    f"override {where}."))
        command.settings_class = cls
        command.settings = options
        command.set_by_stage = set_by_stage
        command.resolve = resolve
        return command

    return decorate
