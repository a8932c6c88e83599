"""AD-CAM: attention-based class activation diffusion (pure tensor functions).

Implements Sec. 4.2-4.3 of "Attention-based Class Activation Diffusion for
Weakly-Supervised Semantic Segmentation" (AD-CAM), plus the two baselines of its
Table 3 ("Att-Diffu only" and a TS-CAM-style coupling). No model code lives here:
every function takes tensors (CAMs, attention maps) and returns tensors.

Notation (paper -> code)
------------------------
* ``M_k``   vanilla CAM of class k (Eq. 2: ``ReLU(F_k) / max ReLU(F_k)``) on the
  token grid, here ``cam`` of shape (B, K, h, w) or flattened (B, K, N), N = h*w.
* ``A``     attention matrix, mean over heads and transformer blocks, patch tokens
  only: (B, N, N) (Sec. 4.2) -> :func:`attention_matrix`.
* ``S``     co-neighbour similarity (Eq. 6) -> :func:`coneighbor_similarity`.
* ``A~``    refined attention ``NORM(TOP(S, k) (x) A)`` (Eq. 7) -> :func:`refine_attention`.
* ``M'_k``  AD-CAM after T diffusion steps (Eq. 8) -> :func:`diffuse`, :func:`adcam_maps`.

Choices taken from the paper (see each docstring for details)
--------------------------------------------------------------
* Diffusion *replaces* the map: Eq. 8 defines ``M(t+1)`` from ``M(t)`` only, with
  ``M(0)`` "the initial (vanilla) CAM"; "After T steps of diffusion, we obtain the
  AD-CAM M'_k". The original CAM is not added back; it survives only through the
  self-attention ``A~_ii`` (each pixel keeps that share of its own activation).
* Negative activations: ``M(0)`` is the Eq. 2 CAM, which is ``ReLU``-ed (and
  max-normalised). The map-level entry points clamp the input at 0 before any
  coupling (a no-op for a proper Eq. 2 CAM). :func:`diffuse` itself is a plain
  linear operator and does not clamp.
* Direction: the text says "each pixel i diffuses its own activation to neighbors
  and also receives activation from the pixels which take i as nearest neighbors",
  "in proportion to the corresponding attentions (from this pixel to its neighbors
  in A~)", i.e. ``M(t+1) = A~^T M(t)`` (mode ``"distribute"``, default). Eq. 8 as
  printed (``sum_j A~_ji M_k(i)``) is garbled (the sum index does not reach M);
  the averaging form ``M(t+1) = A~ M(t)`` of earlier attention-CAM work is mode
  ``"average"``.
* Numerics: everything runs in float32 (float64 stays float64), with autocast
  disabled, so bf16/fp16 autocast regions give the same result as fp32 code.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

__all__ = [
    "attention_matrix",
    "coneighbor_similarity",
    "refine_attention",
    "diffuse",
    "adcam_maps",
    "attention_diffusion_maps",
    "tscam_maps",
]

_MODES = ("distribute", "average")


# --------------------------------------------------------------------------- helpers
@contextmanager
def _no_autocast(t: torch.Tensor):
    """Disable autocast on CPU and on ``t``'s device type inside the block."""
    with torch.autocast(device_type="cpu", enabled=False):
        if t.device.type == "cpu":
            yield
        else:
            with torch.autocast(device_type=t.device.type, enabled=False):
                yield


def _fdtype(*ts: torch.Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64 (half / bfloat16 / ints -> float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_square(A: torch.Tensor, name: str = "A") -> None:
    if A.ndim != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be (B, N, N), got {tuple(A.shape)}")


def _row_normalise(R: torch.Tensor) -> torch.Tensor:
    """Make every row of a non-negative (B, N, N) matrix sum to 1.

    A row whose sum is 0 has no neighbour to send activation to; it becomes the
    identity row (the pixel keeps its own activation). This keeps the operator
    row-stochastic (so "distribute" still conserves activation) instead of
    producing NaN (0/0) or silently deleting the pixel's activation.
    """
    s = R.sum(dim=-1, keepdim=True)
    zero = s <= 0
    return _zero_rows_to_identity(R / torch.where(zero, torch.ones_like(s), s), zero)


def _zero_rows_to_identity(R: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Rows of (B, N, N) ``R`` marked in ``zero`` (B, N, 1) become identity rows."""
    if bool(zero.any()):
        eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R)
        R = torch.where(zero, eye, R)
    return R


def _flatten_cam(cam: torch.Tensor, N: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    if cam.ndim != 4:
        raise ValueError(f"cam must be (B, K, h, w), got {tuple(cam.shape)}")
    B, K, h, w = cam.shape
    if h * w != N:
        raise ValueError(f"cam grid {h}x{w} = {h * w} tokens does not match attention N = {N}")
    return cam.reshape(B, K, N), (B, K, h, w)


def _block_mean(attn_maps: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Mean over blocks of per-block (B, 1+N, 1+N) maps (a (B, H, 1+N, 1+N) entry is head-averaged first)."""
    if isinstance(attn_maps, torch.Tensor):
        attn_maps = [attn_maps]
    if len(attn_maps) == 0:
        raise ValueError("attn_maps is empty")
    dt = _fdtype(*attn_maps)
    blocks = []
    for i, a in enumerate(attn_maps):
        if a.ndim == 4:  # (B, heads, T, T): average the heads (Sec. 4.2)
            a = a.to(dt).mean(dim=1)
        if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attn_maps[{i}] must be (B, 1+N, 1+N), got {tuple(a.shape)}")
        if blocks and a.shape != blocks[0].shape:
            raise ValueError(f"attn_maps[{i}] has shape {tuple(a.shape)}, block 0 has {tuple(blocks[0].shape)}")
        blocks.append(a.to(dt))
    if len(blocks) == 1:  # already a mean (``return_attn="mean"``): no copy of the N x N map
        return blocks[0]
    with _no_autocast(blocks[0]):
        return torch.stack(blocks, 0).mean(0)


# --------------------------------------------------------------------------- Sec. 4.2
def attention_matrix(attn_maps: Sequence[torch.Tensor], renorm: bool = False) -> torch.Tensor:
    """Attention matrix ``A`` of Sec. 4.2: ``A = 1/L sum_i A_i`` over the L blocks.

    Args:
        attn_maps: list of L per-block attention maps, each (B, 1+N, 1+N), already
            softmaxed and averaged over heads (token 0 is the cls token; a
            (B, heads, 1+N, 1+N) entry is averaged over heads here).

    Returns:
        (B, N, N) float32 (float64 if the inputs are), the block mean with the cls
        row and column removed; entries in [0, 1].

    With ``renorm`` each row is divided by its sum after the cls row and column are removed, so
    every row sums to 1 as Sec. 4.3 states ("In A, the sum on each row equals to 1", which Eq. 6's
    range and equality case rely on); :func:`adcam_maps` does this by default. Without it, rows are
    *not* renormalised. The paper defines ``A_i in R^{hw x hw}`` (patches
    only) and states "In A, the sum on each row equals to 1" to bound S, but
    describes no renormalisation step; after dropping the cls column each row sums
    to ``1 - (attention to cls) <= 1``. That bound still gives ``S in [0, 1]``
    (Cauchy-Schwarz), and Eq. 7's NORM makes ``A~`` row-stochastic anyway. The only
    effect of not renormalising is on ``S`` (hence on which top-k are kept):
    a row with a lot of mass on cls has smaller co-neighbour similarities.
    """
    A = _block_mean(attn_maps)[:, 1:, 1:]
    if renorm:
        A = A / A.sum(-1, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return A.contiguous()


# --------------------------------------------------------------------------- Sec. 4.3
def coneighbor_similarity(A: torch.Tensor) -> torch.Tensor:
    """Co-neighbour similarity, Eq. 6: ``S_ij = sum_k sqrt(A_ik * A_jk)``.

    Computed as the matrix product ``sqrt(A) @ sqrt(A)^T`` (A is non-negative;
    tiny negative round-off is clamped to 0 before the square root); from 1,024 tokens on, only
    its blocks on and above the diagonal, mirrored below (S is symmetric).

    Args:
        A: (B, N, N) attention, entries >= 0, rows summing to <= 1.

    Returns:
        S: (B, N, N), symmetric, in [0, 1] (up to round-off) when rows of A sum to
        at most 1 (Cauchy-Schwarz); ``S_ii = sum_k A_ik`` (1 for row-stochastic A).
        For two rows attending uniformly (1/n) to n tokens each, ``S_ij =
        2J / (1 + J)`` with J their Jaccard similarity (Theorem 4.1).
    """
    _check_square(A)
    dt = _fdtype(A)
    with _no_autocast(A):
        R = A.to(dt).clamp_min(0).sqrt()
        N = R.shape[-1]
        if N < _SYMMETRIC_FROM:
            return torch.bmm(R, R.transpose(1, 2))
        # S is symmetric: compute the blocks on and above the diagonal, a band of rows at a time,
        # and mirror them below (0.68x the time of the full product at N = 2,961 on a CPU)
        S = torch.empty(R.shape[0], N, N, dtype=dt, device=R.device)
        Rt = R.transpose(1, 2)
        edges = [round(i * N / _SYMMETRIC_BANDS) for i in range(_SYMMETRIC_BANDS + 1)]
        for a0, a1 in zip(edges[:-1], edges[1:]):
            band = torch.bmm(R[:, a0:a1], Rt[:, :, a0:])
            S[:, a0:a1, a0:] = band
            S[:, a1:, a0:a1] = band[:, :, a1 - a0:].transpose(1, 2)
            # the diagonal block from its upper triangle too: a BLAS kernel need not give (i, j) and
            # (j, i) the same summation order (torch 2.14's CPU bmm does not), and S is exactly symmetric
            diag = band[:, :, : a1 - a0]
            S[:, a0:a1, a0:a1] = diag.triu() + diag.triu(1).transpose(1, 2)
        return S


# Eq. 6 in symmetric bands from this many tokens on (a scale-1 VOC image has ~750, scale 2 ~3,000).
_SYMMETRIC_FROM = 1024
_SYMMETRIC_BANDS = 8


def refine_attention(A: torch.Tensor, S: torch.Tensor, k: int = 50) -> torch.Tensor:
    """Co-neighbour AM refinement, Eq. 7: ``A~ = NORM(TOP(S, k) (x) A)``.

    For every row i keep the k columns j with the largest ``S_ij`` (the row's
    top-k co-neighbours, self included: the paper does not exclude it), zero the
    rest of ``A``'s row (Hadamard product with the 0/1 top-k mask), then
    normalise each row to sum to 1 (NORM). Ties in S are broken by ``torch.topk``.

    Args:
        A: (B, N, N) attention (>= 0).
        S: (B, N, N) co-neighbour similarity (Eq. 6).
        k: neighbours kept per row; capped at N (k >= N keeps every entry, so the
            result is just the row-normalised A). Paper: k = 50.

    Returns:
        A~: (B, N, N) float32 (float64 if an input is), at most k non-zeros per
        row, every row sums to 1. A row that is all zero after masking (only for
        degenerate A: softmax attention is strictly positive) becomes the identity
        row: the pixel then keeps its own activation instead of a 0/0 = NaN row or
        losing its activation, so diffusion stays conservative.
    """
    _check_square(A)
    _check_square(S, "S")
    if S.shape != A.shape:
        raise ValueError(f"S {tuple(S.shape)} and A {tuple(A.shape)} differ")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    N = A.shape[-1]
    k = min(int(k), N)
    dt = _fdtype(A, S)
    with _no_autocast(A):
        A = A.to(dt).clamp_min(0)
        if k == N:
            return _row_normalise(A)
        # TOP(S, k) (x) A then NORM, on the k kept entries of each row only
        idx = S.to(dt).topk(k, dim=-1).indices
        vals = A.gather(-1, idx)
        total = vals.sum(dim=-1, keepdim=True)
        zero = total <= 0
        R = torch.zeros_like(A).scatter_(-1, idx, vals / torch.where(zero, torch.ones_like(total), total))
        return _zero_rows_to_identity(R, zero)  # as _row_normalise


def diffuse(cam: torch.Tensor, A_ref: torch.Tensor, steps: int = 2, mode: str = "distribute") -> torch.Tensor:
    """Attention-based CAM diffusion, Eq. 8, iterated ``steps`` (T) times.

    Args:
        cam: (B, K, N) class maps over the flattened token grid (N = h*w).
        A_ref: (B, N, N) row-stochastic transition matrix (A~ of Eq. 7, or the
            row-normalised A for "Att-Diffu only").
        steps: T >= 0 (paper: T = 2); 0 returns the input (as float32/64).
        mode:
            ``"distribute"`` (default, the paper's text): each pixel i sends its
            activation to the pixels j in proportion to its attention row,
            ``M(t+1) = A~^T M(t)`` with M a column over pixels; in the (K, N)
            layout ``m_new[k, j] = sum_i m[k, i] A~[i, j]``. Conserves the total
            activation of every class (rows of A~ sum to 1).
            ``"average"``: each pixel takes the attention-weighted mean of its
            neighbours, ``M(t+1) = A~ M(t)``, ``m_new[k, i] = sum_j A~[i, j] m[k, j]``.
            Preserves constant maps. Both modes coincide when A~ is symmetric.

    Returns:
        (B, K, N) float32 (float64 if an input is). The result replaces the CAM
        (Eq. 8 has no term adding ``M(0)`` back). Linear: no clamping here; with
        a non-negative cam and A~ the output is non-negative. Values are not
        renormalised (in "distribute" mode the per-class sum is kept, so the
        maximum usually drops): normalise per class before thresholding.
        Autocast is disabled inside.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_square(A_ref, "A_ref")
    if cam.ndim != 3 or cam.shape[0] != A_ref.shape[0] or cam.shape[-1] != A_ref.shape[-1]:
        raise ValueError(f"cam must be (B, K, N) matching A_ref {tuple(A_ref.shape)}, got {tuple(cam.shape)}")
    dt = _fdtype(cam, A_ref)
    with _no_autocast(cam):
        m = cam.to(dt)
        P = A_ref.to(dt)
        if mode == "average":
            P = P.transpose(1, 2)
        for _ in range(steps):
            m = torch.bmm(m, P)
        return m


# --------------------------------------------------------------------------- full maps
def adcam_maps(
    cam: torch.Tensor,
    attn_maps: Sequence[torch.Tensor],
    *,
    k: int = 50,
    steps: int = 2,
    mode: str = "distribute",
    renorm: bool = True,
) -> torch.Tensor:
    """AD-CAM on the token grid: Sec. 4.2 + Eq. 6, 7, 8.

    ``A`` = :func:`attention_matrix`, ``S`` = Eq. 6, ``A~`` = Eq. 7 (top-``k``),
    then T = ``steps`` diffusion steps (Eq. 8) of ``M(0) = ReLU(cam)``.

    Args:
        cam: (B, K, h, w) CAM on the token grid (Eq. 2, i.e. ReLU'd, per-class max
            normalised, values in [0, 1]); negatives are clamped to 0 here because
            Eq. 2's CAM is ReLU'd before it is diffused.
        attn_maps: per-block (B, 1+N, 1+N) head-averaged attention, N = h*w.
        k, steps, mode: see :func:`refine_attention` and :func:`diffuse`
            (paper: k = 50, T = 2, "distribute").
        renorm: rows of ``A`` renormalised to 1 after dropping the cls token (Sec. 4.3's reading,
            the default); ``False``: the raw patch block, whose rows sum to 1 - attention to cls, so
            patches attending strongly to cls fall out of each other's top-k.

    Returns:
        (B, K, h, w) float32 (float64 if inputs are), >= 0, not renormalised.
    """
    A = attention_matrix(attn_maps, renorm=renorm)
    m, shape = _flatten_cam(cam, A.shape[-1])
    S = coneighbor_similarity(A)
    A_ref = refine_attention(A, S, k=k)
    return diffuse(m.clamp_min(0), A_ref, steps=steps, mode=mode).reshape(shape)


def attention_diffusion_maps(
    cam: torch.Tensor,
    attn_maps: Sequence[torch.Tensor],
    *,
    steps: int = 2,
    mode: str = "distribute",
) -> torch.Tensor:
    """Table 3 "Att-Diffu only": Eq. 8 diffusion with the unrefined attention.

    Same as :func:`adcam_maps` without the co-neighbour refinement: the
    transition matrix is ``A`` (Sec. 4.2) with its rows normalised to 1 (the
    NORM of Eq. 7 without TOP; all-zero rows become identity rows).

    Args:
        cam: (B, K, h, w) CAM (clamped at 0), attn_maps: per-block (B, 1+N, 1+N).

    Returns:
        (B, K, h, w) float32 (float64 if inputs are).
    """
    A = attention_matrix(attn_maps)
    m, shape = _flatten_cam(cam, A.shape[-1])
    with _no_autocast(A):
        P = _row_normalise(A.clamp_min(0))
    return diffuse(m.clamp_min(0), P, steps=steps, mode=mode).reshape(shape)


def tscam_maps(cam: torch.Tensor, attn_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """TS-CAM-style coupling (Table 3 "TS-CAM"): CAM times the semantic-agnostic attention map.

    TS-CAM (Gao et al., ICCV 2021) couples token semantics with a
    "semantic-agnostic attention map": the attention from the cls token to the
    patch tokens, averaged over heads and over all transformer blocks. The AD-CAM
    paper describes it as "multiplying CAM by the ... attention maps (extracted by
    using class tokens)" and builds the ViT map "by calculating the attention
    matrix between classification and all tokens" (footnote 1); Table 3 runs it on
    the same Conformer, with the CNN-branch CAM as the semantic map. So:

        ``tscam_k(p) = ReLU(cam_k(p)) * a(p)``, ``a = (1/L sum_i A_i)[cls, 1:]``

    reshaped to (h, w). ``a`` is the raw cls row (not renormalised; it sums to
    ``1 - A[cls, cls]``); one scale per image, so any later per-class max
    normalisation removes it. TS-CAM sums over blocks instead of averaging: the
    factor L is likewise removed by that normalisation.

    Args:
        cam: (B, K, h, w) CAM (clamped at 0), attn_maps: per-block (B, 1+N, 1+N),
            N = h*w.

    Returns:
        (B, K, h, w) float32 (float64 if inputs are), >= 0.
    """
    A_full = _block_mean(attn_maps)
    N = A_full.shape[-1] - 1
    m, shape = _flatten_cam(cam, N)
    dt = _fdtype(cam, A_full)
    with _no_autocast(A_full):
        a = A_full[:, 0, 1:].to(dt)  # (B, N): cls -> patches
        out = m.to(dt).clamp_min(0) * a[:, None, :]
    return out.reshape(shape)
