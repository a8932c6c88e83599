"""Segmentation metrics as WSSS papers report them.

Protocol (IRN / AD-CAM): a confusion matrix with rows = ground truth and
columns = prediction, pixels labelled 255 in the ground truth skipped. Per
class c with TP = M[c, c], G = row sum, P = column sum, U = G + P - TP:

* IoU = TP / U
* FP rate = (P - TP) / U  (pixels wrongly given class c)
* FN rate = (G - TP) / U  (pixels of class c given to another class)

so IoU + FP + FN = 1 for every class that occurs. mIoU (and the mean FP/FN)
is the mean over classes present in the ground truth or the prediction,
background included; a class absent from both is left out (nanmean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from wsss.io import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix; mergeable across processes.

    ``update`` takes ground truth and prediction of the same shape with values
    in ``[0, K)``; ground-truth pixels equal to ``ignore_index`` are skipped. A
    prediction outside ``[0, K)`` on a scored pixel is an error.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> None:
        gt = _to_numpy(gt).reshape(-1).astype(np.int64)
        pred = _to_numpy(pred).reshape(-1).astype(np.int64)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels but the prediction has {pred.size}")
        keep = gt != self.ignore_index
        gt, pred = gt[keep], pred[keep]
        k = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            raise ValueError(f"ground truth holds class id {int(gt.max())} outside 0..{k - 1} (255 = ignore)")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            bad = pred[(pred < 0) | (pred >= k)]
            raise ValueError(f"prediction holds class id {int(bad[0])} outside 0..{k - 1} on a scored pixel")
        self.mat += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.mat += other.mat
        return self

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default torch.distributed group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        t = torch.from_numpy(self.mat.copy())
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        self.mat = t.cpu().numpy()

    def reset(self) -> None:
        self.mat[:] = 0

    def compute(self, class_names: Sequence[str] | None = None) -> "SegMetrics":
        return SegMetrics.from_confusion(self.mat, class_names)


@dataclass
class SegMetrics:
    """Per-class and mean figures; per-class arrays hold NaN for a class absent
    from both ground truth and prediction. Rates are fractions in [0, 1]."""

    iou: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    miou: float
    mean_fp: float
    mean_fn: float
    pixel_acc: float
    class_names: list[str]
    confusion: np.ndarray

    @classmethod
    def from_confusion(cls, mat: np.ndarray, class_names: Sequence[str] | None = None) -> "SegMetrics":
        mat = np.asarray(mat, dtype=np.float64)
        k = mat.shape[0]
        tp = np.diag(mat)
        gt = mat.sum(1)
        pred = mat.sum(0)
        union = gt + pred - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            fp = np.where(union > 0, (pred - tp) / union, np.nan)
            fn = np.where(union > 0, (gt - tp) / union, np.nan)
        present = union > 0
        total = mat.sum()
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
        return cls(
            iou=iou,
            fp=fp,
            fn=fn,
            miou=float(iou[present].mean()) if present.any() else float("nan"),
            mean_fp=float(fp[present].mean()) if present.any() else float("nan"),
            mean_fn=float(fn[present].mean()) if present.any() else float("nan"),
            pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
            class_names=names,
            confusion=mat.astype(np.int64),
        )

    def to_dict(self) -> dict:
        """JSON-ready figures in percent (as papers print them); absent classes are null."""

        def pct(v: float) -> float | None:
            return None if np.isnan(v) else round(100.0 * float(v), 4)

        return {
            "mIoU": pct(self.miou),
            "FP": pct(self.mean_fp),
            "FN": pct(self.mean_fn),
            "pixel_acc": pct(self.pixel_acc),
            "per_class": {
                name: {"IoU": pct(self.iou[i]), "FP": pct(self.fp[i]), "FN": pct(self.fn[i])}
                for i, name in enumerate(self.class_names)
            },
            "confusion": self.confusion.tolist(),
        }

    def table(self) -> str:
        """A per-class table and a summary line, figures in percent."""
        width = max(10, max(len(n) for n in self.class_names) + 2)
        lines = [f"{'class':<{width}}{'IoU':>8}{'FP':>8}{'FN':>8}"]
        for i, name in enumerate(self.class_names):
            if np.isnan(self.iou[i]):
                lines.append(f"{name:<{width}}{'-':>8}{'-':>8}{'-':>8}")
            else:
                lines.append(
                    f"{name:<{width}}{100 * self.iou[i]:8.2f}{100 * self.fp[i]:8.2f}{100 * self.fn[i]:8.2f}"
                )
        lines.append("-" * (width + 24))
        lines.append(
            f"{'mean':<{width}}{100 * self.miou:8.2f}{100 * self.mean_fp:8.2f}{100 * self.mean_fn:8.2f}"
            f"   pixel acc {100 * self.pixel_acc:.2f}"
        )
        return "\n".join(lines)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def cam_to_mask(cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Seed mask from normalised CAMs: a background plane at ``threshold``, argmax.

    ``cams``: (n, H, W) maps of the image's classes in [0, 1]; ``keys``: (n,)
    mask class ids of those maps (foreground label index + 1). Ties go to
    background (argmax takes the first maximum and background is plane 0).
    """
    cams = np.asarray(cams, dtype=np.float32)
    bg = np.full((1,) + cams.shape[1:], threshold, dtype=np.float32)
    stack = np.concatenate([bg, cams], axis=0)
    lut = np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.uint8)
    return lut[np.argmax(stack, axis=0)]


class ThresholdSweep:
    """Background-threshold sweep for CAM seeds (AD-CAM Table 3 protocol).

    For each threshold t the seed is ``argmax([t, cam_1..cam_n])``; one
    confusion matrix per threshold is accumulated over the dataset, so the best
    threshold is chosen on the whole set, as the papers do.

    The per-pixel work is shared across thresholds: a pixel's prediction at t
    is its top class where ``max cam > t`` and background otherwise, so it is
    its top class at exactly the thresholds below its top value. Each image
    costs one argmax and one histogram of (ground truth, top class, number of
    thresholds below the top value); a cumulative sum over that count gives
    every threshold's confusion matrix, the counts of thresholding at each t
    (tested against that), where the direct way costs one pass over the pixels
    per threshold (101 on the default grid).
    """

    def __init__(self, num_classes: int, thresholds: Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX):
        if thresholds is None:
            thresholds = np.round(np.arange(0.0, 1.0001, 0.01), 2)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise ValueError("thresholds must be a non-empty 1-D sequence")
        self.matrices = [ConfusionMatrix(num_classes, ignore_index) for _ in self.thresholds]

    def update(self, gt: np.ndarray, cams: np.ndarray, keys: np.ndarray) -> None:
        cams = np.asarray(cams, dtype=np.float32)
        keys = np.asarray(keys, dtype=np.int64)
        if cams.shape[0] != keys.shape[0]:
            raise ValueError(f"{cams.shape[0]} CAM planes but {keys.shape[0]} class keys")
        if cams.shape[1:] != gt.shape:
            raise ValueError(f"CAM size {cams.shape[1:]} differs from the mask size {gt.shape}")
        if cams.shape[0] == 0:
            top_val = np.full(gt.shape, -np.inf, dtype=np.float32)
            top_cls = np.zeros(gt.shape, dtype=np.int64)
        else:
            idx = np.argmax(cams, axis=0)
            top_val = np.take_along_axis(cams, idx[None], axis=0)[0]
            top_cls = keys[idx]
        k, n_t = self.matrices[0].num_classes, len(self.thresholds)
        g = np.asarray(gt).reshape(-1).astype(np.int64)
        keep = g != self.matrices[0].ignore_index
        g, c, v = g[keep], top_cls.reshape(-1)[keep], top_val.reshape(-1)[keep]
        if g.size and (g.min() < 0 or g.max() >= k):
            raise ValueError(f"ground truth holds class id {int(g.max())} outside 0..{k - 1} (255 = ignore)")
        if c.size and (c.min() < 0 or c.max() >= k):
            bad = c[(c < 0) | (c >= k)]
            raise ValueError(f"prediction holds class id {int(bad[0])} outside 0..{k - 1} on a scored pixel")
        # below[p]: how many thresholds lie strictly below the pixel's top value; the pixel is its top
        # class at those (strict '>': ties go to background, as in cam_to_mask's argmax, which also
        # compares in float32: a CAM value of float32(t) is background at t)
        order = np.argsort(self.thresholds, kind="stable")
        below = np.searchsorted(self.thresholds[order].astype(np.float32), v, side="left")
        hist = np.bincount((g * k + c) * (n_t + 1) + below, minlength=k * k * (n_t + 1)).reshape(k * k, n_t + 1)
        # fg[:, j]: pixels still foreground at the j-th smallest threshold (count of below > j)
        fg = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        total = hist.sum(1)
        for j, i in enumerate(order):
            mat = self.matrices[i].mat
            f = fg[:, j].reshape(k, k)
            mat += f
            mat[:, 0] += (total.reshape(k, k) - f).sum(1)

    def all_reduce(self) -> None:
        for cm in self.matrices:
            cm.all_reduce()

    def results(self, class_names: Sequence[str] | None = None) -> "SweepResult":
        metrics = [cm.compute(class_names) for cm in self.matrices]
        mious = np.array([m.miou for m in metrics])
        best = int(np.nanargmax(mious))
        return SweepResult(thresholds=self.thresholds.copy(), mious=mious, best_index=best, metrics=metrics)


@dataclass
class SweepResult:
    thresholds: np.ndarray
    mious: np.ndarray
    best_index: int
    metrics: list[SegMetrics]

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[self.best_index])

    @property
    def best(self) -> SegMetrics:
        return self.metrics[self.best_index]

    def at(self, threshold: float) -> SegMetrics:
        """The figures at one threshold of the sweep (an error if it was not swept)."""
        hits = np.flatnonzero(np.isclose(self.thresholds, threshold, atol=1e-6))
        if not len(hits):
            raise ValueError(f"threshold {threshold} was not swept")
        return self.metrics[int(hits[0])]

    def to_dict(self) -> dict:
        curve = []
        for t, m in zip(self.thresholds, self.metrics):
            d = m.to_dict()
            curve.append({"threshold": float(t), "mIoU": d["mIoU"], "FP": d["FP"], "FN": d["FN"]})
        return {"best_threshold": self.best_threshold, "best": self.best.to_dict(), "curve": curve}


def collapse_warning(confusion: np.ndarray, class_names: Sequence[str] | None = None, what: str = "predictions",
                     share: float = 0.97) -> str | None:
    """A warning when (nearly) every scored pixel is given one class, though the ground truth holds
    others: a predictor that learnt nothing but the prior. ``confusion``: rows ground truth,
    columns prediction. ``None`` when the predictions are spread over classes."""
    mat = np.asarray(confusion, dtype=np.float64)
    total = mat.sum()
    if total <= 0:
        return None
    predicted = mat.sum(0) / total
    truth = mat.sum(1) / total
    top = int(predicted.argmax())
    if predicted[top] < share or truth[top] > share:
        return None
    name = class_names[top] if class_names is not None else f"class {top}"
    return (f"warning: {100 * predicted[top]:.1f}% of the {what} are '{name}' although the ground truth has "
            f"{100 * truth[top]:.1f}% of it: the model collapsed to one class. Check the learning rate, the "
            "training masks (wsss eval on them) and the number of iterations.")
