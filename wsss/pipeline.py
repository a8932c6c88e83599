"""Recipes: the stages chained from one YAML file, each in its own folder of one run directory.

A recipe (``pipelines/*.yaml``) is a list of steps::

    run_dir: runs/voc_adcam
    requires: [...]                      # files / folders checked before anything starts
    steps:
      - name: cls                        # output folder: <run_dir>/cls
        stage: train_cls                 # one of STAGES
        settings: {model: conformer_s16, data: {root: "{data_root}"}, ...}
      - name: cam
        stage: extract_cam
        settings: {cls_dir: "{cls}", ...}  # "{cls}" = the cls step's folder

In strings, ``{run_dir}``, ``{<step name>}`` (that step's folder) and any
top-level ``vars`` entry (e.g. ``{data_root}``) are replaced. A step's
``out`` (or ``out``-like setting of its stage) is always its own folder.

Skipping and resuming: a step whose folder holds ``done.json`` and the same
resolved settings (``recipe_step.json``) is skipped; an unfinished step is
continued (training resumes from its checkpoint, per-image stages skip the
images done). A step whose settings changed, or that depends on a step that
reran, is rerun from scratch and the recipe says so; its old folder is kept
beside it as ``<name>.old`` (or ``.old.1``, ``.old.2``...: an old folder is never
overwritten), so nothing is lost. Before any of this, the whole recipe is
validated (settings keys and types, input paths): a typo in the last step stops
the run before the first folder is touched.

Under ``torchrun`` every process runs the recipe: rank 0 alone decides what
to skip and moves old folders, the stages that split their work over
processes (:data:`DISTRIBUTED_STAGES`) run in all of them, and the others
(dataset generation, evaluation, figures, reports) run in rank 0 while the
rest wait.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss.config import ConfigError, from_dict, read_yaml
from wsss.engine import dist
from wsss.io import write_json, write_text
from wsss.registry import Registry

STEP_FILE = "recipe_step.json"


def _train_cls(settings: dict, out: Path, progress: bool) -> None:
    from wsss.cls.train import TrainClsConfig, train_cls

    train_cls(from_dict(TrainClsConfig, {**settings, "out": str(out)}), resume=True, progress=progress)


def _extract_cam(settings: dict, out: Path, progress: bool) -> None:
    from wsss.cam.extract import ExtractCamConfig, extract_cams

    extract_cams(from_dict(ExtractCamConfig, {**settings, "out": str(out)}), progress=progress)


def _eval_cam(settings: dict, out: Path, progress: bool) -> None:
    from wsss.eval.cams import EvalCamConfig, evaluate_cams

    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_cams(from_dict(EvalCamConfig, {**settings, "out": str(out / "eval.json")}), progress=progress)
    best = result.best
    print(f"seed mIoU {100 * best.miou:.2f} at threshold {result.best_threshold:.2f} "
          f"(FP {100 * best.mean_fp:.2f}, FN {100 * best.mean_fn:.2f})")


def _make_pseudo(settings: dict, out: Path, progress: bool) -> None:
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo

    make_pseudo(from_dict(MakePseudoConfig, {**settings, "out": str(out)}), progress=progress)


def _eval(settings: dict, out: Path, progress: bool) -> None:
    from wsss.eval.masks import EvalConfig, evaluate_folders

    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_folders(from_dict(EvalConfig, {**settings, "out": str(out / "eval.json")}), progress=progress)
    print(f"mIoU {100 * metrics.miou:.2f}  FP {100 * metrics.mean_fp:.2f}  FN {100 * metrics.mean_fn:.2f}")
    from wsss.eval.metrics import collapse_warning

    warning = collapse_warning(metrics.confusion, metrics.class_names, "predicted pixels")
    if warning:
        print(warning)


def _train_seg(settings: dict, out: Path, progress: bool) -> None:
    from wsss.seg.train import TrainSegConfig, train_seg

    train_seg(from_dict(TrainSegConfig, {**settings, "out": str(out)}), resume=True, progress=progress)


def _predict(settings: dict, out: Path, progress: bool) -> None:
    from wsss.seg.predict import PredictConfig, predict

    predict(from_dict(PredictConfig, {**settings, "out": str(out)}), progress=progress)


def _make_toy(settings: dict, out: Path, progress: bool) -> None:
    from wsss.data.toy import make_toy

    make_toy(out, progress=progress, **settings)


def _figure(settings: dict, out: Path, progress: bool) -> None:
    from wsss.data import DataConfig, build_dataset
    from wsss.viz import cam_grid

    ds = build_dataset(from_dict(DataConfig, settings["data"]))
    ids = settings.get("ids") or ds.ids[: settings.get("num", 4)]
    cam_grid(ds, ids, out / "figure.png", cam_dirs=settings.get("cams", {}), mask_dirs=settings.get("masks", {}),
             boundary_dirs=settings.get("boundaries", {}), threshold=settings.get("threshold", 0.25))
    print(f"figure: {out / 'figure.png'}")


def _report(settings: dict, out: Path, progress: bool) -> None:
    """Tables of mIoU (FP, FN) from eval folders, printed and saved as Markdown and JSON."""
    tables = []
    for table in settings["tables"]:
        rows = {}
        for row, cells in table["rows"].items():
            rows[row] = {col: _read_score(path) for col, path in cells.items()}
        tables.append({"title": table["title"], "note": table.get("note", ""), "rows": rows})
    md = "\n\n".join(_markdown(t) for t in tables) + "\n"
    write_text(out / "report.md", md)
    write_json(out / "report.json", tables)
    print(md)


def _read_score(folder: str) -> dict | None:
    path = Path(folder) / "eval.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    best = data.get("best", data)
    return {"mIoU": best["mIoU"], "FP": best["FP"], "FN": best["FN"]}


def _markdown(table: dict) -> str:
    cols = list(dict.fromkeys(c for cells in table["rows"].values() for c in cells))
    lines = [f"### {table['title']}", ""]
    if table["note"]:
        lines += [table["note"], ""]
    lines += ["| | " + " | ".join(f"{c} mIoU (FP / FN)" for c in cols) + " |",
              "| --- |" + " ---: |" * len(cols)]
    for row, cells in table["rows"].items():
        vals = []
        for c in cols:
            s = cells.get(c)
            vals.append("-" if s is None else f"{s['mIoU']:.2f} ({s['FP']:.1f} / {s['FN']:.1f})")
        lines.append(f"| {row} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


STAGES: Registry = Registry("stage", error=ConfigError, sort_known=False, items=[
    ("make_toy", _make_toy),
    ("train_cls", _train_cls),
    ("extract_cam", _extract_cam),
    ("eval_cam", _eval_cam),
    ("make_pseudo", _make_pseudo),
    ("eval", _eval),
    ("train_seg", _train_seg),
    ("predict", _predict),
    ("figure", _figure),
    ("report", _report),
])


def _stage_config(stage: str) -> type | None:
    """The config dataclass a stage's settings map onto (``None``: checked by :data:`_PLAIN_KEYS`)."""
    if stage == "train_cls":
        from wsss.cls.train import TrainClsConfig as cls
    elif stage == "extract_cam":
        from wsss.cam.extract import ExtractCamConfig as cls
    elif stage == "eval_cam":
        from wsss.eval.cams import EvalCamConfig as cls
    elif stage == "make_pseudo":
        from wsss.pseudo.make import MakePseudoConfig as cls
    elif stage == "eval":
        from wsss.eval.masks import EvalConfig as cls
    elif stage == "train_seg":
        from wsss.seg.train import TrainSegConfig as cls
    elif stage == "predict":
        from wsss.seg.predict import PredictConfig as cls
    else:
        return None
    return cls


_PLAIN_KEYS = {
    "make_toy": {"size", "num_train", "num_val", "seed", "workers"},
    "figure": {"data", "ids", "num", "cams", "masks", "boundaries", "threshold"},
    "report": {"tables"},
}
# Settings that name an input file or folder (checked to exist unless an earlier step makes it).
_PATH_KEYS = {"root", "labels", "masks", "list_file", "pretrained", "weights", "region_masks", "cls_dir", "cam_dir",
              "irn_dir", "seg_dir", "pred", "gt", "ids"}


def _input_paths(settings: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, path) of every input path in a step's settings."""
    found = []
    if isinstance(settings, dict):
        for k, v in settings.items():
            key = f"{prefix}{k}"
            if isinstance(v, str) and k in _PATH_KEYS and v:
                found.append((key, v))
            elif isinstance(v, dict) and k in ("cams", "boundaries", "masks"):  # figure: {name: folder}
                found += [(f"{key}.{n}", p) for n, p in v.items() if isinstance(p, str)]
            elif isinstance(v, dict):
                found += _input_paths(v, key + ".")
    return found


def validate_recipe(recipe: Recipe) -> None:
    """Check every step before anything is skipped, moved or run: its settings keys and types
    (through the stage's config dataclass), and that each input path it names exists or is made
    by an earlier step; also the recipe's ``requires``. All problems are listed in one error."""
    from difflib import get_close_matches

    from wsss.models.builtin import is_builtin, resolve_weights

    problems = [f"requires: {r} does not exist" for r in recipe.requires if not Path(r).exists()]
    made: list[str] = []
    for step in recipe.steps:
        where = f"step '{step.name}' ({step.stage})"
        cls = _stage_config(step.stage)
        if cls is not None:
            try:
                from_dict(cls, {**step.settings, "out": str(recipe.run_dir / step.name)}, where=where)
            except ConfigError as e:
                problems.append(str(e) if str(e).startswith(where) else f"{where}: {e}")
        else:
            allowed = _PLAIN_KEYS[step.stage]
            for key in sorted(set(step.settings) - allowed):
                close = get_close_matches(key, allowed, n=1)
                problems.append(f"{where}: unknown setting '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
                                + f" (known: {', '.join(sorted(allowed))})")
        for key, path in _input_paths(step.settings):
            if any(path == m or path.startswith(m + "/") for m in made):
                continue
            if is_builtin(path):
                try:
                    resolve_weights(path)
                except FileNotFoundError as e:
                    problems.append(f"{where}: {key}: {e}")
            elif not Path(path).exists():
                problems.append(f"{where}: {key}: {path} does not exist")
        made.append(str(recipe.run_dir / step.name))
    if problems:
        raise ConfigError(f"the recipe has {len(problems)} problem(s); nothing was run, skipped or moved:\n"
                          + "\n".join(f"  - {p}" for p in problems)
                          + "\nFix them in the recipe (or set the paths with --var) and run it again.")


def backup_folder(out: Path) -> Path:
    """A free name beside ``out`` for its previous outputs: ``<name>.old``, else ``.old.1``, ``.old.2``..."""
    backup = out.with_name(out.name + ".old")
    n = 0
    while backup.exists():
        n += 1
        backup = out.with_name(f"{out.name}.old.{n}")
    return backup


DISTRIBUTED_STAGES = frozenset({"train_cls", "extract_cam", "make_pseudo", "train_seg", "predict"})
"""Stages that use every ``torchrun`` process (DDP training or images split over ranks)."""


@dataclass
class Step:
    name: str
    stage: str
    settings: dict = field(default_factory=dict)


@dataclass
class Recipe:
    run_dir: Path
    steps: list[Step]
    requires: list[str] = field(default_factory=list)
    description: str = ""


_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_recipe(path: str | Path, run_dir: str | Path | None = None, variables: dict[str, str] | None = None) -> Recipe:
    """Read a recipe, check its steps and stages, and resolve every ``{name}`` reference."""
    raw = read_yaml(path)
    unknown = set(raw) - {"run_dir", "vars", "steps", "requires", "description"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                          "a recipe has run_dir, vars, requires, description and steps")
    run = Path(run_dir or raw.get("run_dir") or "runs/recipe")
    values = {k: str(v) for k, v in (raw.get("vars") or {}).items()}
    values.update({k: str(v) for k, v in (variables or {}).items() if v is not None})
    values["run_dir"] = str(run)
    steps = []
    for i, s in enumerate(raw.get("steps") or []):
        if not isinstance(s, dict) or "name" not in s or "stage" not in s:
            raise ConfigError(f"{path}: step {i + 1} needs a name and a stage")
        if s["stage"] not in STAGES:
            raise ConfigError(f"{path}: step '{s['name']}': {STAGES.unknown_message(s['stage'])}")
        if s["name"] in values:
            raise ConfigError(f"{path}: step name '{s['name']}' is used twice (or clashes with a variable)")
        values[s["name"]] = str(run / s["name"])
        steps.append(Step(s["name"], s["stage"], s.get("settings") or {}))
    names = [s.name for s in steps]
    for step in steps:
        later = sorted(r for r in _refs(step.settings) if r in names and names.index(r) >= names.index(step.name))
        step.settings = _resolve(step.settings, values, f"{path}: step '{step.name}'")
        if later:
            raise ConfigError(f"{path}: step '{step.name}' uses the output of a later step: {later}")
    requires = [_resolve(r, values, f"{path}: requires") for r in raw.get("requires") or []]
    return Recipe(run_dir=run, steps=steps, requires=requires, description=raw.get("description", ""))


def _refs(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_refs(v) for v in obj)) if obj else set()
    return set(_REF.findall(obj)) if isinstance(obj, str) else set()


def _resolve(obj: Any, values: dict[str, str], where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _resolve(v, values, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, values, where) for v in obj]
    if isinstance(obj, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in values:
                raise ConfigError(f"{where}: '{{{m.group(1)}}}' names no step or variable")
            return values[m.group(1)]
        return _REF.sub(sub, obj)
    return obj


def _dependencies(recipe: Recipe) -> dict[str, set[str]]:
    """Steps each step reads from: those whose folder appears in its settings."""
    folders = {str(recipe.run_dir / s.name): s.name for s in recipe.steps}
    deps = {}
    for step in recipe.steps:
        text = json.dumps(step.settings)
        deps[step.name] = {name for folder, name in folders.items()
                           if name != step.name and re.search(re.escape(folder) + r'(?=["/])', text)}
    return deps


def _fingerprint(step: Step, upstream: dict[str, str]) -> str:
    payload = json.dumps({"stage": step.stage, "settings": step.settings, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_recipe(recipe: Recipe, *, progress: bool = True, only: list[str] | None = None) -> dict[str, str]:
    """Run the recipe's steps in order (``only``: just these, plus nothing else);
    returns each step's state: ``skipped``, ``ran`` or ``reran``. The whole recipe is checked first
    (:func:`validate_recipe`): a typo anywhere stops it before any folder is touched."""
    validate_recipe(recipe)
    _init_distributed(recipe, only)
    main = dist.is_main()
    if main:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
    deps = _dependencies(recipe)
    fingerprints: dict[str, str] = {}
    states: dict[str, str] = {}
    for step in recipe.steps:
        out = recipe.run_dir / step.name
        fp = _fingerprint(step, {d: fingerprints[d] for d in sorted(deps[step.name])})
        fingerprints[step.name] = fp
        if only and step.name not in only:
            continue
        state = _rank0(step, lambda: _prepare_step(step, out, fp, deps, states))
        states[step.name] = state
        if state == "skipped":
            continue
        t0 = time.time()
        if step.stage in DISTRIBUTED_STAGES:
            STAGES[step.stage](step.settings, out, progress and main)
        else:
            _rank0(step, lambda: STAGES[step.stage](step.settings, out, progress))
        dist.barrier()
        if main:
            if not (out / "done.json").is_file():
                write_json(out / "done.json", {"stage": step.stage})
            print(f"[{step.name}] done in {time.time() - t0:.0f} s")
    if main and any(s.stage == "report" for s in recipe.steps):
        # report.html is written once the last step is done, so that figures made after the report
        # step are on the page too
        from wsss.report import write_html_report

        report_dir = next(recipe.run_dir / s.name for s in recipe.steps if s.stage == "report")
        if report_dir.is_dir():
            write_html_report(recipe.run_dir, report_dir / "report.html", title=recipe.description or None)
    return states


def _rank0(step: Step, work: Callable[[], Any]) -> Any:
    """Run ``work`` in rank 0 and give every rank its result; if it fails, every rank fails (the
    others with a message naming the step) instead of waiting for rank 0 in the next collective."""
    result, failure = None, None
    if dist.is_main():
        try:
            result = work()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            failure = e
    rank0_outcome = dist.broadcast_object((result, None if failure is None else f"{type(failure).__name__}: {failure}"))
    if failure is not None:
        raise failure
    if rank0_outcome[1] is not None:
        raise ConfigError(f"step '{step.name}' failed in rank 0 ({rank0_outcome[1]}); stopping this rank too")
    return rank0_outcome[0]


def _prepare_step(step: Step, out: Path, fp: str, deps: dict[str, set[str]], states: dict[str, str]) -> str:
    """Decide whether ``step`` is skipped, run or rerun (moving its old folder aside), say so,
    and record its fingerprint; rank 0 only."""
    record = out / STEP_FILE
    old = json.loads(record.read_text()) if record.is_file() else None
    if old and old.get("fingerprint") == fp and (out / "done.json").is_file():
        print(f"[{step.name}] complete, skipped ({out})")
        return "skipped"
    if old and old.get("fingerprint") != fp:
        changed = [d for d in sorted(deps[step.name]) if states.get(d) in ("ran", "reran")]
        why = f"it reads {', '.join(changed)}, which ran again" if changed else "its settings changed"
        backup = backup_folder(out)
        out.rename(backup)
        print(f"[{step.name}] rerunning from scratch: {why} (previous outputs kept in {backup})")
        state = "reran"
    else:
        verb = "continuing" if out.exists() else "running"
        print(f"[{step.name}] {verb}: {step.stage} -> {out}")
        state = "ran"
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, {"fingerprint": fp, "stage": step.stage, "settings": step.settings})
    return state


def _init_distributed(recipe: Recipe, only: list[str] | None = None) -> None:
    """Under ``torchrun``, start the process group the stages will share: gloo when every step
    that names a device says cpu, else the default for this machine (NCCL on GPUs). One group
    serves every step, so on a GPU machine the steps that use every process must agree on CPU
    or GPU (NCCL cannot carry the CPU steps' tensors)."""
    import os

    import torch

    steps = [s for s in recipe.steps if s.stage in DISTRIBUTED_STAGES and (not only or s.name in only)]
    devices = {s.settings.get("device", "auto") for s in steps}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available() and "cpu" in devices \
            and devices != {"cpu"}:
        on_cpu = sorted(s.name for s in steps if s.settings.get("device", "auto") == "cpu")
        raise ConfigError(
            f"under torchrun on a GPU machine the steps {on_cpu} run on cpu and others on the GPU; one process "
            "group cannot serve both. Set the same device on every training, extraction, pseudo-mask and "
            "prediction step, or run the cpu steps in a separate, single-process call (wsss run --only ...)"
        )
    dist.init_distributed("cpu" if devices == {"cpu"} else "auto")


def layout(recipe: Recipe) -> str:
    """The run directory's folders, one line per step."""
    lines = [f"{recipe.run_dir}/"]
    for step in recipe.steps:
        lines.append(f"  {step.name + '/':<22} {step.stage}")
    return "\n".join(lines)
