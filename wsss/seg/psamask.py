"""Point-wise spatial attention maps from over-complete masks, PSANet Eq. 9, in plain PyTorch.

At every position ``i = (k, l)`` of an ``H x W`` map a PSANet branch predicts a
mask ``h_i`` of ``hm x wm`` cells centred on ``i``: cell ``(hh + s - k, hw + t - l)``
(``hh = (hm - 1) // 2``, ``hw = (wm - 1) // 2``) is the weight between ``i`` and
``j = (s, t)``. With the over-complete size ``(2H - 1) x (2W - 1)`` every ``j``
of the map falls inside the window of every ``i`` (Eq. 9 with 0-based indices);
with a smaller mask, as when a model trained at one crop size runs on a larger
image, pairs outside the window get ``fill``.

:func:`psamask` only moves values, so it is exact and its gradient is a
scatter-add of the output gradient. The index is computed once per
``(H, W, mask size, mode, device)`` and cached; no Python loop runs per pixel.
"""
from __future__ import annotations

import functools

import torch

MODES = ("collect", "distribute")


def psamask(
    mask: torch.Tensor,
    mode: str,
    *,
    mask_size: tuple[int, int] | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """Scatter over-complete masks into ``H*W x H*W`` attention maps (PSANet Eq. 9).

    Args:
        mask: ``(B, hm * wm, H, W)``; channel ``r * wm + c`` at position ``i`` is
            mask cell ``(r, c)`` of ``h_i``.
        mode: ``"collect"`` (``h_i`` says how much ``i`` takes from each ``j``) or
            ``"distribute"`` (``h_j`` says how much ``j`` gives to each ``i``).
        mask_size: ``(hm, wm)``, both odd; default ``(2H - 1, 2W - 1)``.
        fill: value of the pairs outside the mask window (only when the mask is
            smaller than over-complete); ``-inf`` gives them no weight after a softmax.

    Returns:
        ``A`` of shape ``(B, H*W, H*W)`` laid out for aggregation as
        ``z = x.flatten(2) @ A`` (``z_q = sum_p A[p, q] x_p``, Eq. 8):
        collect ``A[p, q] = h_q[p - q]``, distribute ``A[p, q] = h_p[q - p]``,
        where ``h_i[d]`` is the cell of ``h_i`` at offset ``d`` from its centre.
        The two modes are transposes of each other for the same mask.
    """
    if mode not in MODES:
        raise ValueError(f"unknown psamask mode {mode!r}; use one of {', '.join(MODES)}")
    if mask.dim() != 4:
        raise ValueError(f"mask must be (B, hm*wm, H, W), got shape {tuple(mask.shape)}")
    batch, channels, height, width = mask.shape
    hm, wm = mask_size if mask_size is not None else (2 * height - 1, 2 * width - 1)
    if hm % 2 == 0 or wm % 2 == 0:
        raise ValueError(f"mask_size must be odd so that it has a centre cell, got {(hm, wm)}")
    if channels != hm * wm:
        raise ValueError(
            f"mask has {channels} channels but mask_size {(hm, wm)} needs {hm * wm}; "
            f"for an {height}x{width} map the over-complete size is {(2 * height - 1, 2 * width - 1)}"
        )
    index = _gather_index(height, width, hm, wm, mode, str(mask.device))
    flat = mask.reshape(batch, -1)
    # The last column holds `fill`; out-of-window pairs point at it.
    padded = torch.cat([flat, flat.new_full((batch, 1), fill)], dim=1)
    return padded[:, index].view(batch, height * width, height * width)


@functools.lru_cache(maxsize=16)
def _gather_index(height: int, width: int, hm: int, wm: int, mode: str, device: str) -> torch.Tensor:
    """Flat index into ``cat([mask.reshape(B, -1), fill])`` for every ``A[p, q]``, ``(H*W*H*W,)``."""
    n = height * width
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    p, q = torch.arange(n)[:, None], torch.arange(n)[None, :]
    # Collect reads the mask of the receiving position q at offset p - q; distribute the
    # mask of the giving position p at offset q - p.
    owner, other = (q, p) if mode == "collect" else (p, q)
    row = ys[other] - ys[owner] + (hm - 1) // 2
    col = xs[other] - xs[owner] + (wm - 1) // 2
    inside = (row >= 0) & (row < hm) & (col >= 0) & (col < wm)
    index = (row * wm + col) * n + owner.expand(n, n)
    index = torch.where(inside, index, torch.full_like(index, hm * wm * n))
    return index.flatten().to(device)


__all__ = ["MODES", "psamask"]
