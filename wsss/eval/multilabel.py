"""Multi-label classification figures: per-class average precision and F1."""
from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (no interpolation).

    ``scores``, ``targets``: (N,); returns NaN when the class has no positive.
    """
    order = np.argsort(-scores, kind="stable")
    t = targets[order] > 0
    if not t.any():
        return float("nan")
    hits = np.cumsum(t)
    precision = hits / np.arange(1, len(t) + 1)
    return float(precision[t].mean())


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """mAP (mean over classes with a positive) and micro F1 of ``sigmoid(logit) > threshold``.

    ``scores``: (N, K) probabilities; ``targets``: (N, K) multi-hot. Percent.
    """
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(targets.shape[1])])
    pred = scores > threshold
    t = targets > 0
    tp = float((pred & t).sum())
    denom = float(pred.sum() + t.sum())
    f1 = 2 * tp / denom if denom else float("nan")
    return {"mAP": 100 * float(np.nanmean(aps)), "F1": 100 * f1}
