"""``wsss pretrain``: a backbone trained on the synthetic corpus, the demo's ImageNet.

AD-CAM, IRN and PCAA all start from ImageNet weights; nothing can be
downloaded here, so the package trains its tiny backbones on
:mod:`wsss.data.corpus` (102 single-label classes, none of them a demo class)
with an ImageNet-style recipe and ships the result as built-in weights
(``--pretrained builtin:NAME``, see :mod:`wsss.models.builtin`).

Recipe (the usual ImageNet one, shortened): random-resized crops (scale
0.5-1, not ImageNet's 0.08-1: a corpus image holds one central object, which
smaller crops would cut away; aspect 3/4-4/3) with flips, cross entropy with label smoothing 0.1,
AdamW, half-cosine lr after a linear warm-up over the first 5% of steps. A
ResNet is the backbone at its ImageNet output stride 32 with global average
pooling and a linear ``fc``; a Conformer is the whole official architecture
(last block kept, branches not detached: its ImageNet training) with both
heads, each trained with the smoothed cross entropy, as the Conformer
release trains them. Top-1 on the held-out split is reported each epoch
(the Conformer's: its two heads' summed logits).

Outputs in ``out``: as train-cls (``config.yaml``, ``model.safetensors``,
``resume.pt``, ``metrics.jsonl``, ``done.json``), and ``backbone.safetensors``:
the weights under the backbone's own names (timm's for ResNets, the official
release's for Conformers), what ``--pretrained`` loads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss.data.transforms import normalize
from wsss.config import ConfigError, TrainRunConfig, check_choices
from wsss.data.corpus import CORPUS_CLASSES, CORPUS_VERSION, render_corpus_sample
from wsss.engine import checkpoint as ckpt
from wsss.engine import dist
from wsss.engine.loop import GroupSpec, LoopSettings, SeededTrainSet, make_optimizer, train_loop
from wsss.io import atomic_write, write_json

BACKBONE_NAME = "backbone.safetensors"


@dataclass
class PretrainConfig(TrainRunConfig):
    """Settings of ``wsss pretrain``.

    model: backbone name (``resnet_tiny``, ``conformer_tiny``, ...).
    size: corpus image side, pixels (the demo's 128). crop: training crop side.
    num_train / num_val: corpus images per split (classes cycle, so splits are balanced).
    corpus_seed: the corpus's seed (the images depend on it alone); seed: data order and init.
    epochs, batch_size (global), lr (AdamW, warm-up + cosine), weight_decay, label_smoothing.
    cache: folder of the rendered corpus (default ``out/corpus``), reused when its settings match.
    """

    model: str = "resnet_tiny"
    size: int = 128
    # 96-pixel crops of the 128-pixel images: scale augmentation, at half the CPU time of 128
    crop: int = 96
    num_train: int = 10200
    num_val: int = 1020
    corpus_seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    render_workers: int = 2
    cache: str | None = None
    max_steps: int | None = None
    # and TrainRunConfig's run settings (workers, device, amp, seed, out, save_every, log_every,
    # tensorboard), with this stage's default of:
    out: str = "runs/pretrain"
    workers: int = 1


# -- the corpus on disk ------------------------------------------------------------------------


def _render(job: tuple[int, str, int, int]) -> tuple[int, np.ndarray, int]:
    seed, split, index, size = job
    image, label = render_corpus_sample(seed, split, index, size)
    return index, image, label


def corpus_arrays(cfg: PretrainConfig, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The rendered split as ``(N, size, size, 3)`` uint8 (memory-mapped) and ``(N,)`` int64 labels.

    Cached in ``cfg.cache`` (default ``out/corpus``) as ``<split>.npy`` + ``<split>_labels.npy``
    beside an info file written last; a cache made with other settings is rendered again.
    """
    n = cfg.num_train if split == "train" else cfg.num_val
    root = Path(cfg.cache or Path(cfg.out) / "corpus")
    info = {"version": CORPUS_VERSION, "seed": cfg.corpus_seed, "size": cfg.size, "count": n,
            "classes": len(CORPUS_CLASSES)}
    info_path = root / f"{split}.json"
    images_path, labels_path = root / f"{split}.npy", root / f"{split}_labels.npy"
    if info_path.is_file() and images_path.is_file() and labels_path.is_file():
        try:
            if json.loads(info_path.read_text()) == info:
                return np.load(images_path, mmap_mode="r"), np.load(labels_path)
        except ValueError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    info_path.unlink(missing_ok=True)
    tmp = images_path.with_suffix(".npy.tmp")
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, cfg.size, cfg.size, 3))
    labels = np.zeros(n, np.int64)
    jobs = [(cfg.corpus_seed, split, i, cfg.size) for i in range(n)]
    bar = tqdm(total=n, desc=f"corpus {split}", unit="img", disable=not progress)
    if cfg.render_workers > 1:
        import multiprocessing

        from wsss.data.toy import _init_worker

        with multiprocessing.get_context("spawn").Pool(cfg.render_workers, initializer=_init_worker) as pool:
            for i, image, label in pool.imap_unordered(_render, jobs, chunksize=64):
                images[i], labels[i] = image, label
                bar.update()
    else:
        for i, image, label in map(_render, jobs):
            images[i], labels[i] = image, label
            bar.update()
    bar.close()
    images.flush()
    del images
    tmp.replace(images_path)
    atomic_write(labels_path, lambda t: np.save(t, labels))
    write_json(info_path, info)
    return np.load(images_path, mmap_mode="r"), labels


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, out: int,
                        scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop, drawn from ``rng``: a box of ``scale`` of the area and
    log-uniform ``ratio``, resized to ``out x out`` (falls back to the whole image)."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        r = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = int(round(np.sqrt(area * r))), int(round(np.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (out, out), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (out, out), interpolation=cv2.INTER_LINEAR)


class CorpusTrainSet(SeededTrainSet):
    """Augmented corpus images: random-resized crop, flip, ImageNet normalisation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: PretrainConfig):
        super().__init__(labels, cfg)
        self.images, self.labels = images, labels

    def __getitem__(self, index: int):
        rng = self.rng(index)
        x = random_resized_crop(np.asarray(self.images[index]), rng, self.cfg.crop)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        return torch.from_numpy(normalize(np.ascontiguousarray(x))), int(self.labels[index])


class _EvalSet(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: list[int]):
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return torch.from_numpy(normalize(np.asarray(self.images[j]))), int(self.labels[j])


# -- the network -----------------------------------------------------------------------------------


class PretrainNet(nn.Module):
    """The backbone with its ImageNet-style classification head(s); ``logits(x)`` is what top-1 scores."""

    def __init__(self, model: str, num_classes: int):
        super().__init__()
        from wsss.models import build_backbone

        self.is_conformer = model.startswith("conformer")
        if self.is_conformer:
            self.net = build_backbone(model, num_classes=num_classes, detach_branches=False, drop_last_block=False)
        else:
            self.net = build_backbone(model)
            self.fc = nn.Linear(self.net.out_channels["layer4"], num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.is_conformer:
            return list(self.net(x))
        return [self.fc(self.net(x)["layer4"].mean(dim=(2, 3)))]

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The weights under the names ``--pretrained`` expects (the head as ``fc.*`` for ResNets)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if not self.is_conformer:
            state.update({f"fc.{k}": v.detach().cpu().contiguous() for k, v in self.fc.state_dict().items()})
        return state


@torch.no_grad()
def evaluate_top1(model: PretrainNet, images: np.ndarray, labels: np.ndarray, device: torch.device,
                  batch_size: int = 100, progress: bool = True) -> dict[str, float]:
    """Top-1 (percent) on the held-out split; each rank scores its share."""
    model.eval()
    indices = list(range(dist.rank(), len(labels), dist.world_size()))
    loader = DataLoader(_EvalSet(images, labels, indices), batch_size=batch_size)
    correct = torch.zeros(2, device=device)
    for x, y in tqdm(loader, desc="val", disable=not progress, leave=False, unit="batch"):
        logits = sum(model(x.to(device)))
        correct += torch.stack([(logits.argmax(1).cpu() == y).sum(), torch.tensor(len(y))]).to(device).float()
    correct = dist.all_reduce_sum(correct)
    return {"top1": float(100 * correct[0] / correct[1].clamp(min=1))}


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the stage; returns the output folder. ``resume`` continues from ``out/resume.pt``;
    ``overwrite`` starts again in a folder that holds a run (refused otherwise)."""
    from wsss.models import list_backbones

    if cfg.model not in list_backbones():
        raise ConfigError(f"unknown model {cfg.model!r}; known: {', '.join(list_backbones())}")
    check_choices(cfg)
    out = Path(cfg.out)
    device = dist.init_distributed(cfg.device)
    if dist.is_main():
        corpus_arrays(cfg, "train", progress)
        corpus_arrays(cfg, "val", progress)
    dist.barrier()
    train_images, train_labels = corpus_arrays(cfg, "train", False)
    val_images, val_labels = corpus_arrays(cfg, "val", False)

    torch.manual_seed(cfg.seed)
    model = PretrainNet(cfg.model, len(CORPUS_CLASSES)).to(device)
    optimizer = make_optimizer("adamw", [GroupSpec("all", list(model.parameters()), cfg.lr, "cosine", cfg.weight_decay)])

    def loss_fn(net: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, y = batch
        losses = [F.cross_entropy(o.float(), y, label_smoothing=cfg.label_smoothing) for o in net(x)]
        return {"loss": sum(losses)}

    settings = LoopSettings.from_config(cfg, "pretrain", cfg.epochs)
    last = train_loop(
        model=model, optimizer=optimizer, train_set=CorpusTrainSet(train_images, train_labels, cfg), config=cfg,
        settings=settings, device=device, loss_fn=loss_fn, resume=resume, overwrite=overwrite, progress=progress,
        evaluate=lambda epoch, final: evaluate_top1(model, val_images, val_labels, device, progress=progress),
    )
    if dist.is_main():
        if last is not None or not (out / BACKBONE_NAME).is_file():
            from wsss.models.weights import save_safetensors

            state = ckpt.load_weights_file(out / ckpt.WEIGHTS_NAME)
            model.load_state_dict(state)
            save_safetensors(model.backbone_state(), out / BACKBONE_NAME,
                             metadata={"model": cfg.model, "corpus_classes": str(len(CORPUS_CLASSES))})
        if last is not None:
            print(f"pretrain done: backbone {out / BACKBONE_NAME}, val top-1 {last['val_top1']:.2f}% "
                  f"over {len(CORPUS_CLASSES)} classes")
    dist.barrier()
    return out
