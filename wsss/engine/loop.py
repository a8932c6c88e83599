"""The training loop every trainable stage shares (train-cls, train-seg, IRNet).

A stage builds its model, optimiser and augmented dataset, then hands them to
:func:`train_loop`, which owns what must be identical everywhere:

* data order: the global batches of epoch ``e`` are a permutation fixed by
  ``(seed, e)``; item ``i`` draws its augmentation from ``(seed, e, i)`` (the
  dataset reads ``self.epoch``), so a run resumed mid-epoch, or split over
  ``torchrun`` processes, sees exactly the crops of an uninterrupted run;
* the learning-rate schedule per optimiser group (``initial_lr`` and a
  ``schedule`` name from :data:`wsss.engine.schedule.SCHEDULES`), set per step;
* checkpoints: ``resume.pt`` (plain types, loads with ``weights_only=True``)
  and the weights as safetensors, at epoch ends and every ``save_every`` steps;
  ``--resume`` refuses a changed configuration and names what changed (a setting the run's
  checkpoint predates counts as the value it implied then: :func:`resumed_config`);
* a NaN or infinite loss stops the run naming the step, leaving the last good
  checkpoint in place;
* progress bar, JSON-lines metrics, DistributedDataParallel.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.config import ConfigError, TrainRunConfig, load_config, read_yaml, save_config, to_dict
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.engine.optim import GroupSpec, make_optimizer  # noqa: F401  (re-exported)
from wsss.engine.schedule import SCHEDULES
from wsss.io import append_jsonl, write_json, write_text


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch: a permutation fixed by (seed, epoch),
    last incomplete batch dropped (IRN drops it too)."""
    perm = np.random.default_rng([seed, 1_000_003, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class _ShardSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch, starting at a given batch."""

    def __init__(self, batches: list[np.ndarray], start: int, rank: int, world: int):
        self.batches, self.start, self.rank, self.world = batches, start, rank, world

    def __iter__(self):
        for b in self.batches[self.start :]:
            yield b[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        return len(self.batches) - self.start


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float) -> None:
    """Each group's lr = its ``initial_lr`` x its schedule at ``step`` of ``total``."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * SCHEDULES[g["schedule"]](step, total, power)


class SeededTrainSet(Dataset):
    """A training set over a dataset's images whose item ``i`` in epoch ``e`` draws its
    augmentation from ``rng(i)``, fixed by ``(cfg.seed, e, i)``; :func:`train_loop` sets
    ``epoch``. So a resumed run, or one split over processes, sees the same items."""

    def __init__(self, ds, cfg) -> None:
        self.ds, self.cfg, self.epoch = ds, cfg, 0

    def __len__(self) -> int:
        return len(self.ds)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.epoch, index])


@dataclass
class LoopSettings:
    """What the loop needs from a stage's config.

    name: the stage's name in messages and the progress bar.
    epochs / max_steps: the run's length (``max_steps`` caps it: tests, smoke runs).
    batch_size: the global batch, split evenly over processes.
    implied: what a setting meant in runs whose checkpoint was written before it existed
    (``{"resize": "opencv"}``); ``--resume`` compares the run's recorded value as that.
    tensorboard: also write TensorBoard events to ``out/tensorboard`` (:class:`TensorBoardLog`).
    """

    name: str
    out: Path
    seed: int
    batch_size: int
    epochs: int
    max_steps: int | None = None
    poly_power: float = 0.9
    workers: int = 0
    amp: bool = False
    save_every: int = 0
    log_every: int = 20
    grad_clip: float | None = None
    weights_name: str = ckpt.WEIGHTS_NAME
    implied: Mapping[str, Any] = field(default_factory=dict)
    tensorboard: bool = False

    @classmethod
    def from_config(cls, config: TrainRunConfig, name: str, epochs: int, **overrides: Any) -> "LoopSettings":
        """The loop's settings read from a stage's config (a :class:`~wsss.config.TrainRunConfig`):
        its run settings, ``batch_size``, and ``max_steps`` / ``poly_power`` where it has them;
        ``overrides`` for what the stage derives (train-seg's ``max_steps`` from its iterations)."""
        values = dict(
            name=name, out=Path(config.out), seed=config.seed, batch_size=config.batch_size, epochs=epochs,
            workers=config.workers, amp=config.amp, save_every=config.save_every, log_every=config.log_every,
            tensorboard=config.tensorboard,
        )
        for key in ("max_steps", "poly_power"):
            if hasattr(config, key):
                values[key] = getattr(config, key)
        values.update(overrides)
        return cls(**values)


# Settings that cannot change what is trained: a resumed run may use other values.
RUNTIME_ONLY = TrainRunConfig.RUN_ONLY


def _resume_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in RUNTIME_ONLY}


def resumed_config(config: Any, out: Path, resume: bool, implied: Mapping[str, Any], stage: str) -> Any:
    """``config`` as a ``--resume`` of the run in ``out`` continues it.

    A run whose checkpoint (``resume.pt``) was written before a setting existed was trained with
    that setting's old behaviour, ``implied[key]`` (train-cls / train-irn: ``{"resize": "opencv"}``).
    Where ``config`` leaves such a setting at its default, the resumed run takes the implied value
    (and says so), so it goes on as it began instead of being refused as changed or silently
    switching behaviour mid-run; any other value is compared with the implied one by
    :func:`train_loop`, as every setting is. Without ``resume``, a checkpoint, or such a setting:
    ``config`` as it is. Use the same ``implied`` in :class:`LoopSettings`.
    """
    path = Path(out) / ckpt.RESUME_NAME
    if not resume or not implied or not path.is_file() or (Path(out) / "done.json").is_file():
        return config
    recorded = ckpt.load_resume(path, mmap=True).get("config", {})  # train_loop reads the tensors
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    adopted = {k: v for k, v in implied.items() if k not in recorded and getattr(config, k) == defaults.get(k)}
    if not adopted:
        return config
    if dist.is_main():
        print(f"{stage}: {out} was started before {', '.join(adopted)} existed; it continues with "
              + ", ".join(f"{k}={v}" for k, v in adopted.items()) + ", as it was trained")
    return dataclasses.replace(config, **adopted)


def _record_predated(path: Path, config: Any, keys: Sequence[str]) -> None:
    """Add the settings a run's ``config.yaml`` predates, with the values it resumed with."""
    if not keys or not path.is_file():
        return
    data = read_yaml(path)
    now = to_dict(config)
    data.update({k: now[k] for k in keys if k not in data})
    write_text(path, yaml.safe_dump(data, sort_keys=False))


class ProgressLog:
    """Progress lines for logs that are not a terminal (cluster jobs), where the bar is off: every
    ``interval`` seconds (``WSSS_LOG_INTERVAL_S``, default 60) one line with items done, rate and ETA."""

    def __init__(self, name: str, total: int, done: int = 0, unit: str = "steps", enabled: bool | None = None):
        import os
        import sys

        self.name, self.total, self.start_done, self.unit = name, total, done, unit
        self.interval = float(os.environ.get("WSSS_LOG_INTERVAL_S", "60"))
        self.enabled = (not sys.stderr.isatty()) if enabled is None else enabled
        self.t0 = self.last = time.time()

    def update(self, done: int) -> str | None:
        now = time.time()
        if not self.enabled or now - self.last < self.interval:
            return None
        self.last = now
        rate = (done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = (f"{self.name}: {done}/{self.total} {self.unit} ({100 * done / max(1, self.total):.0f}%), "
                f"{rate:.2f} {self.unit}/s, ETA {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 1e7 else '?'}")
        print(line, flush=True)
        return line


def tracked(items, desc: str, progress: bool, unit: str = "img", total: int | None = None):
    """Iterate ``items`` with a progress bar on a terminal (rank 0), or :class:`ProgressLog` lines
    when the output is not one: the per-image stages' loops. ``total``: for an iterator (a pool's
    results), which is then consumed as it comes."""
    if total is None:
        items = list(items)
        total = len(items)
    main = dist.is_main()
    log = ProgressLog(desc, total, unit="images", enabled=None if main and not progress else False)
    for i, item in enumerate(tqdm(items, total=total, desc=desc, disable=not (progress and main), unit=unit)):
        yield item
        log.update(i + 1)


def check_fresh_output(out: Path, stage: str, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one (unless ``overwrite``, which clears
    the old run's markers first: its ``done.json``, ``resume.pt`` and ``metrics.jsonl``)."""
    done, partial = out / "done.json", out / ckpt.RESUME_NAME
    if overwrite:
        if dist.is_main():
            for f in (done, partial, out / "metrics.jsonl"):
                f.unlink(missing_ok=True)
        dist.barrier()
        return
    if done.is_file():
        raise ConfigError(
            f"{out} already holds a finished {stage} run (done.json). Nothing was changed. "
            f"Choose a new --out, or pass --overwrite to train it again from scratch."
        )
    if partial.is_file():
        step = ckpt.load_resume(partial).get("step", "?")
        raise ConfigError(
            f"{out} holds an unfinished {stage} run (checkpoint at step {step}). Nothing was changed. "
            f"Pass --resume to continue it, or --overwrite to start again from scratch."
        )


def require_finished(folder: Path, stage: str, continue_hint: str) -> None:
    """A consumer of a training run refuses one that did not finish (no ``done.json``)."""
    if not (Path(folder) / "done.json").is_file():
        raise ConfigError(
            f"{folder} is an unfinished {stage} run (no done.json): its weights are a mid-training checkpoint. "
            f"Finish it first: {continue_hint}"
        )


def finished_run_weights(run_dir: str | Path, stage: str, weights_name: str = ckpt.WEIGHTS_NAME) -> Path:
    """The weights file of a finished ``stage`` run in ``run_dir`` (``wsss train-cls`` or ``train-seg``):
    refused with the command to run when the folder lacks ``config.yaml`` or the weights, and with
    the command that finishes it when it has no ``done.json`` (:func:`require_finished`)."""
    import shlex

    run_dir = Path(run_dir)
    weights = run_dir / weights_name
    if not (run_dir / "config.yaml").is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a {stage} output folder (needs config.yaml and {weights_name}); "
            f"run 'wsss {stage} --out {run_dir}' first"
        )
    require_finished(run_dir, stage, f"wsss {stage} --config {shlex.quote(str(run_dir / 'config.yaml'))} --resume")
    return weights


def load_run(run_dir: str | Path, stage: str, build: Callable[[Any, dict], tuple[nn.Module, str]],
             config_class: type | None = None, weights_name: str = ckpt.WEIGHTS_NAME,
             device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """The network a finished ``stage`` run wrote to ``run_dir``, in eval mode on ``device``, and
    its configuration (a ``config_class`` instance; without one, the ``config.yaml`` dict).

    ``build(cfg, state)`` makes the empty network from the run's configuration and weights (a head's
    size may come from the weights) and says what it is, for the message; the weights load
    strictly: keys that do not match are refused, naming the missing and unexpected ones
    (:func:`~wsss.engine.checkpoint.load_state_strict`). A folder that is not such a run, or one whose
    training did not finish, is refused with the command to run (:func:`finished_run_weights`)."""
    run_dir = Path(run_dir)
    weights = finished_run_weights(run_dir, stage, weights_name)
    cfg = load_config(config_class, run_dir / "config.yaml") if config_class else read_yaml(run_dir / "config.yaml")
    state = ckpt.load_weights_file(weights)
    model, what = build(cfg, state)
    ckpt.load_state_strict(model, state, weights, what)
    return model.to(device).eval(), cfg


class TensorBoardLog:
    """TensorBoard events beside ``metrics.jsonl`` (which stays the source of truth), in
    ``out/tensorboard``: every logged loss term as ``train/<name>``, the learning rate of each
    parameter group as ``lr/<i>``, each epoch's record as ``epoch/<name>`` (validation figures
    included) and the images ``evaluate`` returns (HWC uint8 arrays) as ``val/<name>``. A resumed
    run drops the events written after its checkpoint's step (``purge_step``), so curves do not
    fold back on themselves. Needs the ``tensorboard`` package (``pip install 'wsss[tensorboard]'``).
    """

    def __init__(self, out: Path, step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer imports the tensorboard package
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'wsss[tensorboard]' "
                              f"(or pip install tensorboard) ({e})") from None
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"), purge_step=step or None)

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, values: Mapping[str, Any], step: int) -> None:
        for k, v in values.items():
            self.writer.add_image(f"val/{k}", v, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def train_loop(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    config: Any,
    settings: LoopSettings,
    device: torch.device,
    loss_fn: Callable[[nn.Module, tuple], dict[str, torch.Tensor]],
    evaluate: Callable[[int, bool], dict[str, float]] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    finish: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Train ``model`` until the configured number of steps, then write
    ``done.json`` (steps, weights path, the last val figures); returns the last
    epoch's record (train loss and whatever ``evaluate`` returned), or ``None``
    when ``out`` was already complete (``done.json`` present).

    ``train_set`` has an ``epoch`` attribute the loop sets before each epoch.
    ``loss_fn(ddp_model, batch)`` returns a dict whose ``loss`` is minimised;
    its other scalar entries are logged. ``evaluate(epoch, final)`` runs at each
    epoch end (``final`` on the last) and returns val figures, or {} to skip. Logged values are averaged over
    processes; a loss whose terms are already each process's share of a global
    sum returns them multiplied by the process count. ``config`` (a dataclass) is written to
    ``config.yaml`` on a fresh start and compared on ``--resume``. ``finish()`` runs on the main
    process after the last step, before ``done.json`` is written (so a run interrupted in it is
    not marked done); what it returns is added to ``done.json``.

    Nothing finished is overwritten implicitly: without ``resume`` or ``overwrite``, an ``out``
    holding a finished run (``done.json``) or a partial one (``resume.pt``) is refused with the
    command that continues it. ``overwrite`` first removes the old run's ``done.json``,
    checkpoint and metrics, so half-trained weights never sit beside an old ``done.json``.
    """
    s = settings
    out = Path(s.out)
    world = dist.world_size()
    if s.batch_size % world:
        raise ConfigError(f"batch_size {s.batch_size} is not divisible by the {world} processes")
    n = len(train_set)
    if n < s.batch_size:
        raise ConfigError(f"{n} training images are fewer than one batch of {s.batch_size}")
    steps_per_epoch = n // s.batch_size
    total_steps = steps_per_epoch * s.epochs
    if s.max_steps is not None:
        total_steps = min(total_steps, s.max_steps)

    step = _start_or_resume(model, optimizer, config, s, total_steps, resume, overwrite)
    if step is None:
        return None
    run = _Run(model=model, ddp_model=_wrap_ddp(model, device), optimizer=optimizer, train_set=train_set,
               config=config, settings=s, device=device, loss_fn=loss_fn, total_steps=total_steps,
               steps_per_epoch=steps_per_epoch, step=step, progress=progress and dist.is_main())
    last_record: dict[str, Any] = {}
    try:
        while run.step < total_steps:
            epoch = run.step // steps_per_epoch
            running, count = run.train_one_epoch(epoch)
            if run.step % steps_per_epoch == 0 or run.step >= total_steps:
                last_record = run.end_of_epoch(epoch, running, count, evaluate)
    finally:
        run.close()
    _write_done(out, s, run.step, last_record, finish)
    return last_record


def _start_or_resume(model: nn.Module, optimizer: torch.optim.Optimizer, config: Any, s: LoopSettings,
                     total_steps: int, resume: bool, overwrite: bool) -> int | None:
    """The step a run starts at: 0 for a fresh start (the folder checked and ``config.yaml`` written),
    the checkpoint's step on ``--resume`` (model, optimiser and RNG restored, a changed configuration
    refused), ``None`` when ``--resume`` finds the run complete."""
    out = Path(s.out)
    main_proc = dist.is_main()
    if not resume:
        check_fresh_output(out, s.name, overwrite)
    if resume and (out / "done.json").is_file():
        if main_proc:
            print(f"{out} is complete (done.json); nothing to resume")
        return None
    if resume and (out / ckpt.RESUME_NAME).is_file():
        state = ckpt.load_resume(out / ckpt.RESUME_NAME)
        now = _resume_settings(config)
        predated = [k for k in s.implied if k not in state["config"] and k in now]
        recorded = {**{k: s.implied[k] for k in predated}, **state["config"]}
        if recorded != now:
            changed = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
            raise ConfigError(
                f"cannot resume {out}: the configuration changed ({', '.join(changed)}). "
                f"Use the same settings, or a new --out folder."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        if main_proc:
            _record_predated(out / "config.yaml", config, predated)
            print(f"resuming {out} at step {step}/{total_steps}")
        return step
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    return 0


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    if dist.world_size() > 1:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@dataclass
class _Run:
    """One run between its start (or resume) and ``done.json``: the epochs' steps, the checkpoints,
    and the logs (progress bar, metrics.jsonl, TensorBoard) they feed."""

    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    config: Any
    settings: LoopSettings
    device: torch.device
    loss_fn: Callable[[nn.Module, tuple], dict[str, torch.Tensor]]
    total_steps: int
    steps_per_epoch: int
    step: int
    progress: bool

    def __post_init__(self) -> None:
        s, main_proc = self.settings, dist.is_main()
        self.out = Path(s.out)
        self.board = TensorBoardLog(self.out, self.step) if s.tensorboard and main_proc else None
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=s.name, disable=not self.progress, unit="step")
        self.log = ProgressLog(s.name, self.total_steps, self.step, enabled=None if main_proc and not self.progress else False)
        self.t0 = time.time()

    def save(self) -> None:
        """``resume.pt`` and the weights at the current step (main process)."""
        if not dist.is_main():
            return
        ckpt.save_resume(self.out / ckpt.RESUME_NAME, {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": ckpt.rng_state(),
            "config": _resume_settings(self.config),
        })
        ckpt.save_weights(self.model, self.out / self.settings.weights_name)

    def train_one_epoch(self, epoch: int) -> tuple[float, int]:
        """The rest of ``epoch`` from the current step (to its end or the run's last step); returns
        the sum of the logged losses and the number of steps taken."""
        s, out, world = self.settings, self.out, dist.world_size()
        n = len(self.train_set)
        self.train_set.epoch = epoch
        batches = epoch_batches(n, s.batch_size, s.seed, epoch)
        loader = DataLoader(
            self.train_set, batch_sampler=_ShardSampler(batches, self.step % self.steps_per_epoch, dist.rank(), world),
            num_workers=s.workers, generator=torch.Generator().manual_seed(s.seed), persistent_workers=False,
        )
        use_amp = s.amp and self.device.type == "cuda"
        self.ddp_model.train()
        running, count = 0.0, 0
        for batch in loader:
            set_lr(self.optimizer, self.step, self.total_steps, s.poly_power)
            batch = tuple(b.to(self.device, non_blocking=True) if torch.is_tensor(b) else b for b in batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms = self.loss_fn(self.ddp_model, batch)
            loss = terms["loss"].float()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{s.name}: loss is {loss.item()} at step {self.step} (epoch {epoch}); the last good checkpoint is "
                    f"{out / ckpt.RESUME_NAME}. Lower the learning rate or check the inputs, then rerun with --resume."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.optimizer.step()
            self.step += 1
            names = list(terms)
            summed = dist.all_reduce_sum(torch.stack([terms[k].detach().float() for k in names])) / world
            logged = dict(zip(names, summed.tolist()))
            running += logged["loss"]
            count += 1
            self._log_step(epoch, logged)
            if s.save_every and self.step % s.save_every == 0:
                self.save()
            if self.step >= self.total_steps:
                break
        return running, count

    def _log_step(self, epoch: int, logged: Mapping[str, float]) -> None:
        s, step = self.settings, self.step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logged['loss']:.4f}", epoch=epoch)
        self.log.update(step)
        if dist.is_main() and s.log_every and step % s.log_every == 0:
            append_jsonl(self.out / "metrics.jsonl", {"step": step, "epoch": epoch, **logged,
                                                      "lr": self.optimizer.param_groups[0]["lr"]})
            if self.board is not None:
                self.board.scalars("train", logged, step)
                self.board.scalars("lr", {str(i): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}, step)

    def end_of_epoch(self, epoch: int, running: float, count: int,
                     evaluate: Callable[[int, bool], dict[str, float]] | None) -> dict[str, Any]:
        """Evaluate, checkpoint and write the epoch's metrics line; returns the epoch's record."""
        step = self.step
        record = {"epoch": epoch, "step": step, "train_loss": running / max(1, count),
                  "time_s": round(time.time() - self.t0, 1)}
        if evaluate is not None:
            figures = evaluate(epoch, step >= self.total_steps)
            images = {k: v for k, v in figures.items() if isinstance(v, np.ndarray)}
            record.update({f"val_{k}": v for k, v in figures.items() if k not in images})
            if self.board is not None:
                self.board.images(images, step)
        self.save()
        if dist.is_main():
            append_jsonl(self.out / "metrics.jsonl", record)
            if self.board is not None:
                self.board.scalars("epoch", record, step)
            tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        return record

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()


def _write_done(out: Path, s: LoopSettings, step: int, last_record: Mapping[str, Any],
                finish: Callable[[], dict[str, Any]] | None) -> None:
    """``done.json``: steps, weights path, the last val figures and what ``finish()`` adds (main process)."""
    if not dist.is_main():
        return
    final = {"steps": step, "weights": str(out / s.weights_name)}
    final.update({k: v for k, v in last_record.items() if k.startswith("val_")})
    if finish is not None:
        final.update(finish())
    write_json(out / "done.json", final)
