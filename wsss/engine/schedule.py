"""Learning-rate schedules, as multipliers of each group's base lr."""
from __future__ import annotations


def poly(step: int, total: int, power: float = 0.9) -> float:
    """Poly decay ``(1 - step / total) ** power`` (IRN, PCAA), clamped at 0."""
    return max(0.0, 1.0 - step / max(1, total)) ** power


def constant(step: int, total: int, power: float = 0.9) -> float:
    return 1.0


SCHEDULES = {"poly": poly, "constant": constant}
