"""Learning-rate schedules, as multipliers of each group's base lr."""
from __future__ import annotations


def poly(step: int, total: int, power: float = 0.9) -> float:
    """Poly decay ``(1 - step / total) ** power`` (IRN, PCAA), clamped at 0."""
    return max(0.0, 1.0 - step / max(1, total)) ** power


def constant(step: int, total: int, power: float = 0.9) -> float:
    return 1.0


def cosine(step: int, total: int, power: float = 0.9) -> float:
    """Linear warm-up over the first 5% of steps, then half-cosine decay to 0 (the ImageNet
    recipes of timm and DeiT, which ``wsss pretrain`` follows); ``power`` is unused."""
    import math

    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


SCHEDULES = {"poly": poly, "constant": constant, "cosine": cosine}
