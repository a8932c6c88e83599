"""Tests of wsss.cam.adcam (AD-CAM, Sec. 4.2-4.3, Eq. 6-8, Theorem 4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.cam.adcam import (
    adcam_maps,
    attention_diffusion_maps,
    attention_matrix,
    coneighbor_similarity,
    diffuse,
    refine_attention,
    tscam_maps,
)

D = torch.float64


def _row_stochastic(B, N, *, seed=0, dtype=D, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(B, N, N, generator=g, dtype=dtype), dim=-1)


def _attn_blocks(B, N, L, *, seed=0, dtype=torch.float32):
    """L per-block (B, 1+N, 1+N) softmaxed attention maps."""
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(2 * torch.randn(B, 1 + N, 1 + N, generator=g), -1).to(dtype) for _ in range(L)]


# ----------------------------------------------------------------- slow reference loops
def _slow_S(A):
    N = len(A)
    return [[sum(math.sqrt(A[i][k] * A[j][k]) for k in range(N)) for j in range(N)] for i in range(N)]


def _slow_refine(A, S, k):
    N = len(A)
    out = []
    for i in range(N):
        order = sorted(range(N), key=lambda j: -S[i][j])  # distinct S in the test case
        keep = set(order[: min(k, N)])
        row = [A[i][j] if j in keep else 0.0 for j in range(N)]
        tot = sum(row)
        out.append([v / tot for v in row])
    return out


def _slow_diffuse(m, P, steps, mode):
    K, N = len(m), len(m[0])
    for _ in range(steps):
        new = [[0.0] * N for _ in range(K)]
        for c in range(K):
            for i in range(N):
                for j in range(N):
                    if mode == "distribute":  # pixel i sends m[i] * P[i][j] to pixel j
                        new[c][j] += m[c][i] * P[i][j]
                    else:  # pixel i averages its neighbours
                        new[c][i] += P[i][j] * m[c][j]
        m = new
    return m


# ----------------------------------------------------------------- Theorem 4.1 / Eq. 6
@pytest.mark.parametrize("n,overlap", [(4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (5, 2), (3, 1), (6, 5)])
def test_theorem_4_1_jaccard(n, overlap):
    """Rows i, j attend uniformly (1/n) to n tokens each: S_ij = 2J/(1+J), J = Jaccard."""
    N = 2 * n + 2
    Ni = set(range(n))
    Nj = set(range(n - overlap, 2 * n - overlap))
    A = torch.zeros(1, N, N, dtype=D)
    A[0, 0, sorted(Ni)] = 1.0 / n
    A[0, 1, sorted(Nj)] = 1.0 / n
    A[0, 2:] = 1.0 / N  # other rows: anything row-stochastic
    S = coneighbor_similarity(A)
    J = len(Ni & Nj) / len(Ni | Nj)
    expected = 2 * J / (1 + J)
    assert S[0, 0, 1].item() == pytest.approx(expected, abs=1e-12)
    assert S[0, 1, 0].item() == pytest.approx(expected, abs=1e-12)
    assert S[0, 0, 0].item() == pytest.approx(1.0, abs=1e-12)


def test_similarity_symmetric_bounded_unit_diagonal():
    A = _row_stochastic(3, 20, seed=1, sharp=3.0)
    S = coneighbor_similarity(A)
    assert S.shape == (3, 20, 20) and S.dtype == D
    torch.testing.assert_close(S, S.transpose(1, 2), rtol=0, atol=1e-14)
    assert S.min() >= 0 and S.max() <= 1 + 1e-12
    torch.testing.assert_close(torch.diagonal(S, dim1=1, dim2=2), torch.ones(3, 20, dtype=D), rtol=0, atol=1e-12)


def test_similarity_is_one_iff_rows_equal():
    A = _row_stochastic(1, 6, seed=2)
    A[0, 3] = A[0, 1]
    S = coneighbor_similarity(A)
    assert S[0, 1, 3].item() == pytest.approx(1.0, abs=1e-12)
    off = S[0] - torch.eye(6, dtype=D)
    off[1, 3] = off[3, 1] = 0
    assert off.max() < 1 - 1e-3


# ----------------------------------------------------------------- Eq. 7
@pytest.mark.parametrize("k", [1, 3, 10])
def test_refine_topk_rows(k):
    A = _row_stochastic(2, 16, seed=3)
    R = refine_attention(A, coneighbor_similarity(A), k=k)
    assert R.shape == A.shape and R.dtype == D
    assert ((R != 0).sum(-1) <= k).all()
    torch.testing.assert_close(R.sum(-1), torch.ones(2, 16, dtype=D), rtol=0, atol=1e-12)
    # kept entries are A's entries on the top-k of S, rescaled by one factor per row
    S = coneighbor_similarity(A)
    idx = S.topk(k, -1).indices
    kept = torch.gather(A, -1, idx)
    torch.testing.assert_close(torch.gather(R, -1, idx), kept / kept.sum(-1, keepdim=True))


@pytest.mark.parametrize("k", [16, 50, 10**6])
def test_refine_k_capped_keeps_all(k):
    A = _row_stochastic(2, 16, seed=4)
    R = refine_attention(A, coneighbor_similarity(A), k=k)
    torch.testing.assert_close(R, A, rtol=0, atol=1e-14)  # rows already sum to 1
    A2 = A * 0.7  # cls mass removed: rows sum to 0.7 -> renormalised
    torch.testing.assert_close(refine_attention(A2, coneighbor_similarity(A2), k=k), A, rtol=0, atol=1e-14)


def test_refine_zero_row_falls_back_to_identity():
    A = _row_stochastic(1, 5, seed=5)
    A[0, 2] = 0
    R = refine_attention(A, coneighbor_similarity(A), k=2)
    assert torch.isfinite(R).all()
    torch.testing.assert_close(R[0, 2], torch.eye(5, dtype=D)[2])
    torch.testing.assert_close(R.sum(-1), torch.ones(1, 5, dtype=D))
    with pytest.raises(ValueError):
        refine_attention(A, coneighbor_similarity(A), k=0)


# ----------------------------------------------------------------- Eq. 8
def test_distribute_conserves_activation():
    A = _row_stochastic(2, 30, seed=6)
    R = refine_attention(A, coneighbor_similarity(A), k=7)
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 4, 30, generator=g, dtype=D)
    for steps in (1, 2, 5):
        out = diffuse(cam, R, steps=steps, mode="distribute")
        torch.testing.assert_close(out.sum(-1), cam.sum(-1), rtol=1e-13, atol=0)
    assert diffuse(cam, R).dtype == D


def test_average_preserves_constant_map():
    A = _row_stochastic(2, 30, seed=7)
    R = refine_attention(A, coneighbor_similarity(A), k=7)
    cam = torch.full((2, 3, 30), 0.37, dtype=D)
    torch.testing.assert_close(diffuse(cam, R, steps=3, mode="average"), cam, rtol=0, atol=1e-14)
    # distribute generally does not keep a constant map (A~ is not doubly stochastic)
    assert not torch.allclose(diffuse(cam, R, steps=1, mode="distribute"), cam)


def test_modes_coincide_for_symmetric_matrix():
    g = torch.Generator().manual_seed(8)
    X = torch.rand(1, 12, 12, generator=g, dtype=D)
    Ssym = X + X.transpose(1, 2)
    # symmetric doubly-stochastic matrix via Sinkhorn on a symmetric positive matrix
    for _ in range(500):
        Ssym = Ssym / Ssym.sum(-1, keepdim=True)
        Ssym = 0.5 * (Ssym + Ssym.transpose(1, 2))
    cam = torch.rand(1, 3, 12, generator=g, dtype=D)
    torch.testing.assert_close(diffuse(cam, Ssym, 2, "distribute"), diffuse(cam, Ssym, 2, "average"))


def test_steps_zero_is_identity_and_bad_args():
    A = _row_stochastic(1, 8, seed=9)
    cam = torch.rand(1, 2, 8, dtype=D)
    assert torch.equal(diffuse(cam, A, steps=0), cam)
    assert torch.equal(diffuse(cam, A, steps=0, mode="average"), cam)
    with pytest.raises(ValueError):
        diffuse(cam, A, mode="bogus")
    with pytest.raises(ValueError):
        diffuse(cam, A, steps=-1)
    with pytest.raises(ValueError):
        diffuse(cam[..., :7], A)


def test_direction_single_transfer():
    """Pixel 0 attends only to pixel 1: distribute moves 0's activation to 1; average pulls 1's value into 0."""
    P = torch.eye(3, dtype=D)[None].clone()
    P[0, 0] = torch.tensor([0.0, 1.0, 0.0], dtype=D)
    cam = torch.tensor([[[5.0, 1.0, 2.0]]], dtype=D)
    torch.testing.assert_close(diffuse(cam, P, 1, "distribute"), torch.tensor([[[0.0, 6.0, 2.0]]], dtype=D))
    torch.testing.assert_close(diffuse(cam, P, 1, "average"), torch.tensor([[[1.0, 1.0, 2.0]]], dtype=D))


# ----------------------------------------------------------------- slow-loop equivalence
@pytest.mark.parametrize("mode", ["distribute", "average"])
def test_matches_slow_loops_n7(mode):
    N, K, k, T = 7, 2, 3, 2
    A = _row_stochastic(1, N, seed=10, sharp=2.0) * 0.9  # rows sum to 0.9 like cls-stripped attention
    g = torch.Generator().manual_seed(1)
    cam = torch.rand(1, K, N, generator=g, dtype=D)
    Al = A[0].tolist()
    S_ref = _slow_S(Al)
    S = coneighbor_similarity(A)
    torch.testing.assert_close(S[0], torch.tensor(S_ref, dtype=D), rtol=0, atol=1e-14)
    R_ref = _slow_refine(Al, S_ref, k)
    R = refine_attention(A, S, k=k)
    torch.testing.assert_close(R[0], torch.tensor(R_ref, dtype=D), rtol=0, atol=1e-14)
    M_ref = _slow_diffuse(cam[0].tolist(), R_ref, T, mode)
    torch.testing.assert_close(diffuse(cam, R, T, mode)[0], torch.tensor(M_ref, dtype=D), rtol=0, atol=1e-14)


def test_adcam_maps_pipeline_matches_parts():
    B, K, h, w, L = 2, 3, 3, 4, 3
    N = h * w
    blocks = _attn_blocks(B, N, L, seed=11, dtype=D)
    g = torch.Generator().manual_seed(2)
    cam = torch.randn(B, K, h, w, generator=g, dtype=D)
    out = adcam_maps(cam, blocks, k=5, steps=2)
    A = attention_matrix(blocks, renorm=True)  # Sec. 4.3's rows summing to 1, the default
    R = refine_attention(A, coneighbor_similarity(A), 5)
    ref = diffuse(cam.clamp_min(0).reshape(B, K, N), R, 2).reshape(B, K, h, w)
    assert out.shape == (B, K, h, w) and out.dtype == D
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    assert out.min() >= 0
    # negatives are clamped before diffusion (Eq. 2 CAM is ReLU'd): total = sum of positive part
    torch.testing.assert_close(out.sum((-1, -2)), cam.clamp_min(0).sum((-1, -2)))
    with pytest.raises(ValueError):
        adcam_maps(cam[..., :3], blocks)


def test_attention_diffusion_maps_uses_unrefined_rownormalised_A():
    B, K, h, w = 1, 2, 2, 3
    blocks = _attn_blocks(B, h * w, 2, seed=12, dtype=D)
    cam = torch.rand(B, K, h, w, dtype=D)
    A = attention_matrix(blocks)
    P = A / A.sum(-1, keepdim=True)
    for mode in ("distribute", "average"):
        ref = diffuse(cam.reshape(B, K, -1), P, 2, mode).reshape(cam.shape)
        torch.testing.assert_close(attention_diffusion_maps(cam, blocks, mode=mode), ref)
    # k >= N in AD-CAM is the same as Att-Diffu only
    torch.testing.assert_close(adcam_maps(cam, blocks, k=100), attention_diffusion_maps(cam, blocks))


def test_tscam_maps():
    B, K, h, w = 2, 3, 2, 2
    blocks = _attn_blocks(B, h * w, 4, seed=13, dtype=D)
    cam = torch.randn(B, K, h, w, dtype=D)
    cls_row = sum(b[:, 0, 1:] for b in blocks) / len(blocks)  # (B, N)
    ref = cam.clamp_min(0) * cls_row.reshape(B, 1, h, w)
    out = tscam_maps(cam, blocks)
    assert out.dtype == D
    torch.testing.assert_close(out, ref)


# ----------------------------------------------------------------- Sec. 4.2
def test_attention_matrix_manual():
    B, N, L = 2, 5, 3
    blocks = _attn_blocks(B, N, L, seed=14)
    A = attention_matrix(blocks)
    assert A.shape == (B, N, N) and A.dtype == torch.float32
    manual = torch.zeros(B, N, N)
    for b in blocks:
        manual += b[:, 1:, 1:]
    torch.testing.assert_close(A, manual / L)
    # not renormalised: rows sum to 1 - mean attention to cls
    cls_col = sum(b[:, 1:, 0] for b in blocks) / L
    torch.testing.assert_close(A.sum(-1), 1 - cls_col)
    # renormalised (Sec. 4.3's reading): the same block divided by its row sums, rows sum to 1
    torch.testing.assert_close(attention_matrix(blocks, renorm=True), (manual / L) / (1 - cls_col)[..., None])
    torch.testing.assert_close(attention_matrix(blocks, renorm=True).sum(-1), torch.ones(B, N))
    # half-precision inputs come back float32; per-head input is averaged over heads
    assert attention_matrix([b.half() for b in blocks]).dtype == torch.float32
    heads = torch.stack([blocks[0], blocks[0] * 0 + blocks[1]], 1)  # (B, 2, 1+N, 1+N)
    torch.testing.assert_close(attention_matrix([heads]), ((blocks[0] + blocks[1]) / 2)[:, 1:, 1:])
    with pytest.raises(ValueError):
        attention_matrix([])
    with pytest.raises(ValueError):
        attention_matrix([blocks[0], blocks[0][:, :4, :4]])


# ----------------------------------------------------------------- autocast
def test_float32_under_autocast():
    B, K, h, w = 1, 2, 4, 4
    N = h * w
    blocks = _attn_blocks(B, N, 3, seed=15)
    cam = torch.rand(B, K, h, w)
    A = attention_matrix(blocks)
    S = coneighbor_similarity(A)
    R = refine_attention(A, S, 5)
    ref = {
        "A": A, "S": S, "R": R,
        "d": diffuse(cam.reshape(B, K, N), R, 2),
        "adcam": adcam_maps(cam, blocks, k=5),
        "attdiff": attention_diffusion_maps(cam, blocks),
        "ts": tscam_maps(cam, blocks),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        A2 = attention_matrix(blocks)
        S2 = coneighbor_similarity(A2)
        R2 = refine_attention(A2, S2, 5)
        got = {
            "A": A2, "S": S2, "R": R2,
            "d": diffuse(cam.reshape(B, K, N), R2, 2),
            "adcam": adcam_maps(cam, blocks, k=5),
            "attdiff": attention_diffusion_maps(cam, blocks),
            "ts": tscam_maps(cam, blocks),
        }
    for name in ref:
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], ref[name]), name
    # bf16 inputs are computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = diffuse(cam.reshape(B, K, N).bfloat16(), R.bfloat16(), 2)
    assert out.dtype == torch.float32


def test_renormalised_rows_change_which_neighbours_adcam_keeps():
    """A patch that attends mostly to cls has small raw similarities; renormalised, its row counts fully."""
    B, K, h, w, L = 1, 2, 3, 4, 2
    N = h * w
    blocks = _attn_blocks(B, N, L, seed=21, dtype=D)
    # patch 0 sends 90% of its attention to cls in every block
    for b in blocks:
        b[:, 1, :] *= 0.1 / b[:, 1, 1:].sum(-1, keepdim=True) * (b[:, 1, 1:].sum(-1, keepdim=True) > 0)
        b[:, 1, 0] = 0.9
    cam = torch.rand(B, K, h, w, generator=torch.Generator().manual_seed(3), dtype=D)
    raw = adcam_maps(cam, blocks, k=3, renorm=False)
    ref = diffuse(cam.reshape(B, K, N), refine_attention(A := attention_matrix(blocks, renorm=True),
                                                         coneighbor_similarity(A), 3), 2).reshape(B, K, h, w)
    torch.testing.assert_close(adcam_maps(cam, blocks, k=3), ref, rtol=0, atol=1e-14)
    assert not torch.allclose(raw, ref)


def test_large_maps_take_the_banded_eq6_and_gathered_eq7_paths_to_the_same_result():
    """From 1,024 tokens Eq. 6 is computed in symmetric bands (issue #16's speed-up) and Eq. 7 on
    the kept entries only: equal to the plain product and to mask-then-normalise."""
    from wsss.cam.adcam import _SYMMETRIC_FROM

    g = torch.Generator().manual_seed(0)
    n = _SYMMETRIC_FROM + 77
    A = torch.rand(2, n, n, generator=g, dtype=torch.float64) ** 4
    A /= A.sum(-1, keepdim=True)
    S = coneighbor_similarity(A)
    R = A.sqrt()
    torch.testing.assert_close(S, R @ R.transpose(1, 2), rtol=1e-12, atol=1e-14)
    assert torch.equal(S, S.transpose(1, 2))
    k = 50
    mask = torch.zeros_like(A).scatter_(-1, S.topk(k, dim=-1).indices, 1.0)
    expected = mask * A
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(refine_attention(A, S, k=k), expected, rtol=1e-12, atol=1e-15)


def test_adcam_extraction_equals_the_whole_matrix_computation(monkeypatch):
    """AD-CAM through the extraction method (chunked attention without autograd, banded Eq. 6,
    gathered Eq. 7) equals the whole-matrix computation it replaced to 1e-5: every block's full
    (B, heads, N, N) softmax (the autograd path), the plain product sqrt(A) sqrt(A)^T and
    mask-then-normalise."""
    import wsss.cam.adcam as adcam_module
    from wsss.cam.extract import CAM_METHODS, ExtractCamConfig
    from wsss.cls.models import build_classifier
    from wsss.models.conformer import Attention

    torch.manual_seed(0)
    # float64: the random network's attention is nearly uniform, so in float32 the k-th and
    # (k+1)-th co-neighbours of a row can differ by less than the round-off of either computation
    model = build_classifier("conformer_tiny", 5).eval().double()
    x = torch.randn(2, 3, 160, 224, dtype=torch.float64)  # 10 x 14 tokens
    cfg = ExtractCamConfig(method="adcam", topk=8)
    monkeypatch.setattr(Attention, "CHUNK_ELEMENTS", {"cpu": 1})  # 16-row chunks
    monkeypatch.setattr(adcam_module, "_SYMMETRIC_FROM", 16)  # banded Eq. 6 at this size too
    with torch.no_grad():
        fast = CAM_METHODS["adcam"](model, x, cfg)
    feats = model.net.forward_features(x, return_attn=True)  # autograd on: whole matrices
    cam = torch.relu(torch.nn.functional.conv2d(feats.cnn, model.net.conv_cls_head.weight[:, :, None, None]))
    with torch.no_grad():
        A = torch.stack([a.detach() for a in feats.attn]).mean(0)[:, 1:, 1:]
        A = A / A.sum(-1, keepdim=True)
        R = A.sqrt()
        S = R @ R.transpose(1, 2)
        mask = torch.zeros_like(A).scatter_(-1, S.topk(8, dim=-1).indices, 1.0)
        P = mask * A
        P = P / P.sum(-1, keepdim=True)
        m = cam.detach().flatten(2)
        for _ in range(cfg.steps):
            m = m @ P
    torch.testing.assert_close(fast, m.reshape(fast.shape), rtol=1e-9, atol=1e-9)
