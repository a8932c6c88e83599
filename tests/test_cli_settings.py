"""The stage commands' options are generated from their configuration dataclasses: every setting has
an option, every default the help shows is the dataclass's, and every option sets its setting."""
import dataclasses
import typing

import click
import pytest

from wsss.cli import main

STAGE_COMMANDS = ["eval", "pretrain", "train-cls", "extract-cam", "eval-cam", "make-pseudo", "train-irn",
                  "train-seg", "predict"]


def _stage(name):
    cmd = main.commands[name]
    return cmd, cmd.callback.settings_class, cmd.callback.settings


def _leaves(obj, prefix=""):
    """Every leaf setting of a config instance as (dotted path, value), written out independently of
    the generator: nested dataclass instances are walked into."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, value


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _option_of(cmd, path):
    param = "__".join(path.split("."))
    found = [p for p in cmd.params if p.name == param]
    assert len(found) == 1, f"{cmd.name}: no option for {path}"
    return found[0]


def test_every_stage_command_is_generated_from_its_config():
    assert {n for n, c in main.commands.items() if hasattr(c.callback, "settings_class")} == set(STAGE_COMMANDS)


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_every_setting_has_an_option_showing_the_dataclass_default(name):
    cmd, cls, options = _stage(name)
    skipped = cmd.callback.set_by_stage
    defaults = dict(_leaves(cls()))
    exposed = [p for p in defaults if not any(p == s or p.startswith(s + ".") for s in skipped)]
    assert sorted(options) == sorted(exposed), f"{name}: settings without an option, or options without a setting"
    for path in exposed:
        opt = _option_of(cmd, path)
        value = defaults[path]
        if options[path].default_text is not None:
            shown = options[path].default_text
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif value is None or value == "":
            shown = "none"
        elif isinstance(value, (list, tuple)):
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        assert f"[default: {shown}" in opt.help, f"{name} {opt.opts}: help {opt.help!r} does not show {shown!r}"
        assert opt.default is None  # an option not given leaves the --config file's value alone


def _other_value(opt: click.Option, current):
    """A valid command-line value for ``opt`` unlike ``current``, and what it should set."""
    opt = _unwrapped(opt)
    if opt.is_flag and not opt.secondary_opts:  # a single switch
        return [opt.opts[0]], True
    if opt.secondary_opts:  # --x/--no-x
        return ([opt.secondary_opts[0]], False) if current else ([opt.opts[0]], True)
    if isinstance(opt.type, click.Choice):
        choice = next(c for c in opt.type.choices if c != current)
        return [opt.opts[0], choice], choice
    if opt.callback is not None:  # comma-separated numbers
        n = len(current) if current else 3
        if opt.metavar == "MIN,MAX":
            n = 2
        values = [i + 1 for i in range(n)]
        if isinstance(current, (list, tuple)) and current and isinstance(current[0], float):
            values = [v / 4 for v in values]
        text = ",".join(str(v) for v in values)
        return [opt.opts[0], text], values
    if isinstance(opt.type, (click.IntRange, click.FloatRange)):
        lo = opt.type.min if opt.type.min is not None else 0
        hi = opt.type.max if opt.type.max is not None else lo + 10
        value = (lo + hi) / 2
        if isinstance(opt.type, click.IntRange):
            value = int(value) if int(value) != current else int(value) + 1
        elif value == current:
            value = (lo + value) / 2
        return [opt.opts[0], str(value)], value
    if opt.type is click.INT:
        return [opt.opts[0], str((current or 0) + 3)], (current or 0) + 3
    if opt.type is click.FLOAT:
        return [opt.opts[0], "0.375"], 0.375
    return [opt.opts[0], "some/where"], "some/where"


def _unwrapped(opt: click.Option) -> click.Option:
    """``opt`` with an optional setting's type (``OrNone``, which also reads none) as its inner type."""
    from wsss.cli_settings import OrNone

    if isinstance(opt.type, OrNone):
        import copy

        opt = copy.copy(opt)
        opt.type = opt.type.inner
    return opt


# eval scores a --data-root's val split unless --split says otherwise
IMPLIED = {("eval", "data.root"): {"data.split": "val"}}


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_every_option_sets_its_setting(name):
    cmd, cls, options = _stage(name)
    defaults = dict(_leaves(cls()))
    for path in options:
        opt = _option_of(cmd, path)
        args, want = _other_value(opt, defaults[path])
        ctx = cmd.make_context(name, list(args))
        cfg = cmd.callback.resolve(dict(ctx.params))
        got = _get(cfg, path)
        if isinstance(got, tuple):
            got = list(got)
        assert got == want and want != defaults[path], f"{name} {args} set {path} to {got!r}"
        # and nothing else
        expected = {**defaults, **IMPLIED.get((name, path), {})}
        for other, value in _leaves(cfg):
            if other != path:
                assert value == expected[other] or (isinstance(value, tuple) and list(value) == list(expected[other])), \
                    f"{name} {args} also changed {other}"


def test_options_override_the_config_file_and_unset_ones_keep_it(tmp_path):
    (tmp_path / "r.yaml").write_text("train_seg:\n  lr: 0.5\n  crop: 64\n  data: {root: /data/voc}\n")
    cmd = main.commands["train-seg"]
    ctx = cmd.make_context("train-seg", ["--config", str(tmp_path / "r.yaml"), "--crop", "96"])
    cfg = cmd.callback.resolve(dict(ctx.params))
    assert (cfg.lr, cfg.crop, cfg.data.root, cfg.data.split) == (0.5, 96, "/data/voc", "train")


def test_eval_scores_the_val_split_of_a_dataset_root_by_default():
    cmd = main.commands["eval"]
    resolve = cmd.callback.resolve
    assert resolve(dict(cmd.make_context("eval", ["--pred", "p", "--data-root", "r"]).params)).data.split == "val"
    assert resolve(dict(cmd.make_context("eval", ["--pred", "p", "--data-root", "r", "--split", "train"]).params)
                   ).data.split == "train"


def test_bad_number_lists_name_the_option():
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["train-cls", "--resize-long", "320"])
    assert res.exit_code == 2 and "'320' is not MIN,MAX (two whole numbers)" in res.output
    assert "--resize-long" in res.output
    res = CliRunner().invoke(main, ["extract-cam", "--scales", "1,x"])
    assert res.exit_code == 2 and "'1,x' is not a comma-separated list of numbers" in res.output


def test_fixed_choices_come_from_the_annotations_and_registries():
    from wsss.cam.extract import CAM_METHODS
    from wsss.seg.heads import HEADS

    assert set(_option_of(main.commands["train-seg"], "head").type.choices) == set(HEADS)
    assert set(_option_of(main.commands["extract-cam"], "method").type.choices) == set(CAM_METHODS)
    focal = typing.get_args(typing.get_type_hints(_stage("train-seg")[1])["focal_reduction"])
    assert tuple(_option_of(main.commands["train-seg"], "focal_reduction").type.choices) == focal


def test_every_fixed_choice_is_a_literal_or_a_registry():
    """A str setting whose option offers choices takes them from its Literal annotation, or from a
    registry (dataset kinds, CAM methods, heads): no list of choices written out by hand."""
    from wsss.data import DATA_KINDS

    registries = {tuple(DATA_KINDS), tuple(__import__("wsss.cam.extract", fromlist=["x"]).CAM_METHODS),
                  tuple(__import__("wsss.seg.heads", fromlist=["x"]).HEADS)}
    for name in STAGE_COMMANDS:
        cmd, cls, options = _stage(name)
        for path, spec in options.items():
            if spec.choices is not None:
                assert tuple(spec.choices) in registries, f"{name} {path}: choices by hand"


def _optional_paths(cls, options):
    from wsss.cli_settings import _optional_inner, field_at

    return [p for p in options if _optional_inner(tp := field_at(cls, p)[0]) is not tp]


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_none_unsets_an_optional_setting_the_config_file_sets(name, tmp_path):
    """`--pretrained none` (or null, or '') over a --config file naming weights trains from scratch:
    every optional setting's option reads none as None, and other values as before."""
    import yaml

    cmd, cls, options = _stage(name)
    paths = _optional_paths(cls, options)
    for path in paths:
        opt = _option_of(cmd, path)
        args, value = _other_value(opt, None)
        assert value is not None
        nested = value
        for part in reversed(path.split(".")):
            nested = {part: nested}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(nested))
        base = ["--config", str(tmp_path / "c.yaml")]
        from_file = cmd.callback.resolve(dict(cmd.make_context(name, base).params))
        got = _get(from_file, path)
        assert (list(got) if isinstance(got, tuple) else got) == value, f"{name}: the file did not set {path}"
        for word in ("none", "None", "null", ""):
            cfg = cmd.callback.resolve(dict(cmd.make_context(name, base + [opt.opts[0], word]).params))
            assert _get(cfg, path) is None, f"{name} {opt.opts[0]} {word!r} left {path} = {_get(cfg, path)!r}"


def test_optional_settings_are_found():
    cmd, cls, options = _stage("train-seg")
    assert {"pretrained", "val_split", "msc_scales", "data.masks"} <= set(_optional_paths(cls, options))
    assert "lr" not in _optional_paths(cls, options)
