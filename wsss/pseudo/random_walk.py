"""IRNet random walk (Ahn et al., CVPR 2019) without the dense N x N transition matrix.

IRN (``misc/indexing.py: propagate_to_edge``) builds, for a stride-4 map of N = h * w pixels,

* ``A`` (N x N): ``A[p, q] = affinity(p, q) ** beta`` for every pair within the radius
  (one half-disk direction d per unordered pair, mirrored so that A is symmetric), ``A[p, p] = 1``
  and 0 elsewhere;
* ``T = A / A.sum(0)`` (column-normalised, ``T = A D^-1`` with ``D = diag(A.sum(0))``), then squares
  it ``exp_times`` times (``T^(2^exp_times)``, 256 for the default 8);
* ``rw = x @ T^(2^exp_times)`` with ``x`` the (K, N) row-stacked CAMs times ``(1 - boundary)``.

That costs N^2 memory (527 MB fp32 for one 375x500 image) and ~26 TFLOP.  Since A is symmetric,
``x T = (T^T x^T)^T = (D^-1 A x^T)^T``, so ``rw`` is ``2^exp_times`` steps of the local update

    v(p) <- sum_e A(p, p + e) v(p + e) / D(p),      D(p) = sum_e A(p, p + e),

over the 69-entry stencil e in {0} u S u -S (S the 34 half-disk directions of radius 5).  This module
does exactly that: memory linear in N, about 1 GFLOP for a 375x500 image, same result as the dense
product (to rounding) in the same precision.

IRN facts this module follows (jiwoon-ahn/irn, checked against ``misc/indexing.py``,
``step/make_sem_seg_labels.py``, ``net/resnet50_irn.py``):

* directions (``PathIndex.get_all_dir_paths``): ``(0, dx)`` for ``dx = 1 .. r-1`` plus ``(dy, dx)``
  for ``dy = 1 .. r-1``, ``dx = -(r-1) .. r-1`` with ``dy^2 + dx^2 < r^2`` (strict).  That is the
  "lower" half disk (dy > 0, or dy == 0 and dx > 0); 34 directions for r = 5.
* path rule: the path from p to p + d is every offset (y, x) in the bounding box of (0, 0) and d
  whose distance to the line through 0 and d is below one pixel,
  ``(dy * x - dx * y)^2 / (dy^2 + dx^2) < 1``; it includes both end points.  The pair's affinity is
  ``1 - max(boundary)`` over the path (``edge_to_affinity``).  IRN pads the boundary map with 1.0
  (left/right by r, bottom by r), so pairs whose far end is outside the image get affinity 0 and
  are cropped away anyway.
* ``A`` diagonal is 1 (explicit identity, not 1 - boundary(p)); ``A = aff ** beta`` (beta 10) with
  the diagonal still 1; column normalisation (``torch.sum(.., dim=0)``); ``rw = x @ T``.
* ``x`` = ``cam_dict['cam']`` (the K foreground classes of the image only, stride-4, each divided by
  its max) times ``(1 - edge)``.  There is NO background plane in the walk: background enters only
  in post-processing as the constant ``sem_seg_bg_thres`` = 0.25 plane.
* post-processing (``make_sem_seg_labels``): bilinear x4 (align_corners=False), crop to H x W,
  divide by the global max over all classes and pixels, prepend the 0.25 plane, argmax (first
  maximum wins, i.e. ties go to background), map through ``keys = [0] + (cam keys + 1)``, uint8.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "stencil_offsets",
    "stencil_paths",
    "full_stencil",
    "boundary_to_affinity",
    "stencil_weights",
    "random_walk",
    "irn_postprocess",
    "dense_transition_matrix",
    "propagate",
    "propagate_batch",
]


@lru_cache(maxsize=None)
def _offsets(radius: int) -> tuple[tuple[int, int], ...]:
    r = int(radius)
    if r < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    dirs = [(0, dx) for dx in range(1, r)]
    for dy in range(1, r):
        for dx in range(-r + 1, r):
            if dx * dx + dy * dy < r * r:
                dirs.append((dy, dx))
    return tuple(dirs)


def stencil_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """IRN's half-disk directions ``(dy, dx)`` for ``radius`` (34 for radius 5).

    ``(0, dx)`` for ``0 < dx < r`` and ``(dy, dx)`` for ``0 < dy < r``, ``|dx| < r`` with
    ``dy^2 + dx^2 < r^2``: the half disk below the pixel (dy > 0) plus the right half of its row.
    Every unordered pair of pixels within the radius is one (p, p + d) with d in this list; the full
    69-entry stencil is ``[(0, 0)] + S + [-d for d in S]`` (see :func:`full_stencil`).
    The order here is IRN's search order (IRN then regroups directions by path length; the order
    does not matter for the walk).
    """
    return list(_offsets(radius))


def full_stencil(radius: int = 5) -> list[tuple[int, int]]:
    """Self, the half-disk directions and their mirrors: 69 entries for radius 5."""
    s = stencil_offsets(radius)
    return [(0, 0)] + s + [(-dy, -dx) for dy, dx in s]


@lru_cache(maxsize=None)
def _path(d: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    dy, dx = d
    length_sq = dy * dy + dx * dx
    y0, y1 = sorted((0, dy))
    x0, x1 = sorted((0, dx))
    coords = []
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            # distance from (y, x) to the line through (0, 0) and d, squared, below 1 pixel
            if (dy * x - dx * y) ** 2 < length_sq:
                coords.append((y, x))
    return tuple(coords)


def stencil_paths(radius: int = 5) -> list[tuple[tuple[int, int], ...]]:
    """For each direction of :func:`stencil_offsets`, the offsets on IRN's path (end points included)."""
    return [_path(d) for d in _offsets(radius)]


def boundary_to_affinity(boundary: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Boundary map (H, W) in [0, 1] -> affinity (D, H, W), D = len(stencil_offsets(radius)).

    ``aff[i, y, x] = 1 - max(boundary[y + py, x + px] for (py, px) on the path of direction i)``,
    and 0 where ``(y, x) + d_i`` is outside the image (IRN pads the boundary with 1.0).
    Computed in the boundary's dtype (floating) on its device.
    """
    if boundary.dim() == 3 and boundary.shape[0] == 1:
        boundary = boundary[0]
    if boundary.dim() != 2:
        raise ValueError(f"boundary must be (H, W), got {tuple(boundary.shape)}")
    if not boundary.is_floating_point():
        boundary = boundary.float()
    h, w = boundary.shape
    p = int(radius)
    padded = F.pad(boundary[None, None], (p, p, p, p), value=1.0)[0, 0]
    out = []
    for path in stencil_paths(radius):
        m = None
        for py, px in path:
            s = padded[p + py : p + py + h, p + px : p + px + w]
            m = s if m is None else torch.maximum(m, s)
        out.append(1.0 - m)
    return torch.stack(out, 0)


def stencil_weights(affinity: torch.Tensor, *, beta: float = 10, radius: int = 5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Row-normalised stencil weights (69, H, W): ``w[e, p] = A(p, p + e) / D(p)``.

    Entry order is :func:`full_stencil`: self, half-disk d, mirrored -d.  ``A(p, p - d)`` is
    ``A(p - d, p) = aff[d, p - d] ** beta`` (symmetry); it is 0 where ``p - d`` is outside.
    """
    offs = stencil_offsets(radius)
    if affinity.dim() != 3 or affinity.shape[0] != len(offs):
        raise ValueError(f"affinity must be ({len(offs)}, H, W) for radius {radius}, "
                         f"got {tuple(affinity.shape)}")
    _, h, w = affinity.shape
    a = affinity.to(dtype).clamp(min=0).pow(beta)
    r = int(radius)
    # mirrored entries: A(p, p - d) = a[d, p - d]; shift a[d] by +d (zeros shifted in)
    ap = F.pad(a[None], (r, r, r, r))[0]
    mirrored = torch.stack([ap[i, r - dy : r - dy + h, r - dx : r - dx + w]
                            for i, (dy, dx) in enumerate(offs)], 0)
    weights = torch.cat([torch.ones_like(a[:1]), a, mirrored], 0)
    weights /= weights.sum(0, keepdim=True)
    return weights


def random_walk(x: torch.Tensor, affinity: torch.Tensor, *, beta: float = 10, exp_times: int = 8,
                radius: int = 5, dtype: torch.dtype = torch.float64,
                cpu_threads: int | None = 1) -> torch.Tensor:
    """IRN's ``x @ T^(2^exp_times)`` with ``T = A D^-1``, as ``2^exp_times`` local stencil steps.

    Args:
        x: (K, H, W) what IRN walks: the stride-4 CAMs of the image's K foreground classes (no
            background plane) times ``(1 - boundary)``.  Or (B, K, H, W): B images of one size,
            each walked on its own affinity, in one loop (see :func:`propagate_batch`).
        affinity: (D, H, W) from :func:`boundary_to_affinity` (same H, W, same radius); (B, D, H, W)
            with a batched ``x``.
        beta: affinity exponent (IRN: 10).
        exp_times: T is squared this many times, i.e. ``2^exp_times`` walk steps (IRN: 8 -> 256).
        cpu_threads: on CPU, torch's intra-op thread count during the step loop (restored after).
            The loop is ~17k small element-wise ops; with several OpenMP threads on a busy
            machine it ran 100x slower (0.27 s -> 26 s on 2 shared cores), so 1 by default.
            None leaves the setting alone.  (torch.set_num_threads is process-wide.)
        dtype: compute dtype; the result is returned in it.  float64 by default: float32 is ~1.5x
            faster but differs by up to ~4e-4 relative after 256 steps and flipped 9 of 750,000
            labels (4 random 375x500 cases), so it is not label-identical to the fp64 result.

    Returns x's shape.  Works on any device (computed on ``x``'s device); memory is O(69 * H * W)
    per image.  A batch gives each image exactly the values it gets alone (same operations in the
    same order; the images never mix); it only shares the per-step overhead of the ~17k small ops,
    which is what a 128 px image's walk is made of.
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    single = x.dim() == 3
    if single:
        x, affinity = x[None], affinity[None]
    if x.dim() != 4 or affinity.dim() != 4:
        raise ValueError(f"x must be (K, H, W) or (B, K, H, W), got {tuple(x.shape)}")
    b, k, h, w = x.shape
    if affinity.shape[0] != b or tuple(affinity.shape[2:]) != (h, w):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not match x {tuple(x.shape)}")
    device = x.device
    stencil = full_stencil(radius)
    weights = torch.stack([stencil_weights(a.to(device), beta=beta, radius=radius, dtype=dtype)
                           for a in affinity])
    r = max(max(abs(dy), abs(dx)) for dy, dx in stencil)  # radius - 1
    # Flat layout: rows padded to wp = w + 2r columns and r zero rows above and below, flattened, so
    # that every stencil shift (dy, dx) is the flat offset dy * wp + dx and every term of a step is
    # one contiguous slice.  The step is computed over the h padded-width rows; weights are zero in
    # the pad columns, so those stay zero and keep serving as the border.
    wp = w + 2 * r
    n_out = h * wp
    start = r * wp + r  # r flat zeros before row 0 of the padded grid, and r after its end
    buf = torch.zeros((b, k, (h + 2 * r) * wp + 2 * r), dtype=dtype, device=device)
    grid = buf[:, :, r : r + (h + 2 * r) * wp].view(b, k, h + 2 * r, wp)
    wflat = torch.zeros((b, len(stencil), h, wp), dtype=dtype, device=device)
    wflat[:, :, :, r : r + w] = weights
    wflat = wflat.reshape(b, len(stencil), 1, n_out)
    grid[:, :, r : r + h, r : r + w] = x.to(dtype)
    inner = buf[:, :, start : start + n_out]
    views = [buf[:, :, start + dy * wp + dx : start + dy * wp + dx + n_out] for dy, dx in stencil]
    wviews = [wflat[:, e] for e in range(len(stencil))]
    acc = torch.empty((b, k, n_out), dtype=dtype, device=device)
    old_threads = torch.get_num_threads()
    set_threads = device.type == "cpu" and cpu_threads is not None and cpu_threads != old_threads
    if set_threads:
        torch.set_num_threads(int(cpu_threads))
    try:
        for _ in range(2 ** int(exp_times)):
            torch.mul(views[0], wviews[0], out=acc)
            for e in range(1, len(stencil)):
                acc.addcmul_(views[e], wviews[e])
            inner.copy_(acc)
    finally:
        if set_threads:
            torch.set_num_threads(old_threads)
    out = grid[:, :, r : r + h, r : r + w].clone()
    if single:
        out = out[0]
    return out[0] if squeeze else out


def propagate(cams: torch.Tensor, boundary: torch.Tensor, *, beta: float = 10, exp_times: int = 8,
              radius: int = 5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """IRN's ``propagate_to_edge``: walk ``cams * (1 - boundary)`` on the boundary's affinities.

    cams (K, h, w) stride-4 foreground CAMs, boundary (h, w) -> rw (K, h, w), computed on the
    CAMs' device. One image of :func:`propagate_batch`.
    """
    return propagate_batch([cams], [boundary], beta=beta, exp_times=exp_times, radius=radius, dtype=dtype)[0]


def propagate_batch(cams: Sequence[torch.Tensor], boundaries: Sequence[torch.Tensor], *, beta: float = 10,
                    exp_times: int = 8, radius: int = 5,
                    dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """:func:`propagate` for several images of one stride-4 size in one walk -> list of (K_i, h, w).

    Same values as calling :func:`propagate` on each image (the images are stacked, never mixed;
    class planes are padded with zeros to the largest K, and a zero plane stays zero).
    """
    if len(cams) != len(boundaries):
        raise ValueError(f"{len(cams)} CAM stacks but {len(boundaries)} boundary maps")
    if not cams:
        return []
    bds = [bd[0] if bd.dim() == 3 else bd for bd in boundaries]
    sizes = {tuple(bd.shape) for bd in bds} | {tuple(c.shape[1:]) for c in cams}
    if len(sizes) != 1:
        raise ValueError(f"propagate_batch needs images of one size, got {sorted(sizes)}")
    kmax = max(int(c.shape[0]) for c in cams)
    device = cams[0].device
    affs, xs = [], []
    for c, bd in zip(cams, bds):
        bd = bd.to(device=device, dtype=dtype)
        affs.append(boundary_to_affinity(bd, radius))
        x = c.to(dtype) * (1 - bd)
        xs.append(F.pad(x, (0, 0, 0, 0, 0, kmax - x.shape[0])))
    rw = random_walk(torch.stack(xs), torch.stack(affs), beta=beta, exp_times=exp_times, radius=radius,
                     dtype=dtype)
    return [rw[i, : c.shape[0]] for i, c in enumerate(cams)]


def irn_postprocess(rw: torch.Tensor, keys: Sequence[int] | np.ndarray | torch.Tensor,
                    image_size: tuple[int, int], threshold: float = 0.25) -> np.ndarray:
    """IRN's ``make_sem_seg_labels`` after the walk -> (H, W) uint8 labels.

    rw: (K, h, w) walk result for the image's K foreground classes; keys: their 0-based class
    indices (``cam_dict['keys']``); image_size: (H, W) of the original image.

    Bilinear x4 (align_corners=False), crop to H x W, divide by the global max, prepend a constant
    ``threshold`` plane (sem_seg_bg_thres), argmax (ties -> the first, i.e. background), label =
    ``[0, keys + 1][argmax]``.  One deviation: where the global max is <= 0 (IRN would divide by 0 and
    get NaNs) the map is not divided and every pixel becomes background.
    """
    if rw.dim() == 4:  # IRN's (K, 1, h, w)
        rw = rw[:, 0]
    hh, ww = int(image_size[0]), int(image_size[1])
    keys = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys, dtype=np.int64)
    if keys.shape != (rw.shape[0],):
        raise ValueError(f"{rw.shape[0]} planes but keys {keys.shape}")
    up = F.interpolate(rw[:, None], scale_factor=4, mode="bilinear",
                       align_corners=False)[:, 0, :hh, :ww]
    if up.shape[-2:] != (hh, ww):
        raise ValueError(f"rw {tuple(rw.shape)} x4 is smaller than the image {image_size}")
    if up.numel() and up.shape[0]:
        m = up.max()
        if m > 0:
            up = up / m
    bg = torch.full((1, hh, ww), float(threshold), dtype=up.dtype, device=up.device)
    pred = torch.argmax(torch.cat([bg, up], 0), dim=0).cpu().numpy()
    lut = np.concatenate([[0], keys + 1])
    return lut[pred].astype(np.uint8)


def dense_transition_matrix(affinity: torch.Tensor, beta: float = 10, radius: int = 5,
                            dtype: torch.dtype | None = None) -> torch.Tensor:
    """IRN's dense ``T = A / A.sum(0)`` (N x N, N = H * W) from the (D, H, W) affinity.

    For tests and benchmarks only: N^2 memory.  ``A[p, p + d] = A[p + d, p] = aff[d, p] ** beta``,
    ``A[p, p] = 1``.  Row-vector walk: ``x.reshape(K, N) @ T`` (one step).
    """
    offs = stencil_offsets(radius)
    _, h, w = affinity.shape
    dtype = dtype or affinity.dtype
    n = h * w
    a = affinity.to(dtype).clamp(min=0).pow(beta)
    idx = torch.arange(n, device=affinity.device).view(h, w)
    A = torch.zeros((n, n), dtype=dtype, device=affinity.device)
    for i, (dy, dx) in enumerate(offs):
        ys = slice(0, h - dy)
        xs = slice(max(0, -dx), w - max(0, dx))
        src = idx[ys, xs].reshape(-1)
        dst = idx[dy:, :][: h - dy, max(0, dx) : w - max(0, -dx)].reshape(-1)
        val = a[i, ys, xs].reshape(-1)
        A[src, dst] = val
        A[dst, src] = val
    A.fill_diagonal_(1.0)
    A /= A.sum(0, keepdim=True)
    return A
