"""IRN random walk: the stencil walk against a slow, loop-built dense reference (IRN's formulation)."""


import numpy as np
import pytest
import torch

from wsss.pseudo.random_walk import (
    boundary_to_affinity,
    dense_transition_matrix,
    full_stencil,
    irn_postprocess,
    propagate,
    propagate_batch,
    random_walk,
    stencil_offsets,
    stencil_paths,
    stencil_weights,
)

RADIUS, BETA, EXP_TIMES = 5, 10, 8


# ----------------------------------------------------------------------------- slow reference
def _path_pixels(p, q):
    """Pixels on IRN's path between p and q: inside their bounding box and closer than 1 pixel to
    the line through them (squared distance (dy*x - dx*y)^2 / |d|^2 < 1, relative to p)."""
    (py, px), (qy, qx) = p, q
    dy, dx = qy - py, qx - px
    out = []
    for y in range(min(py, qy), max(py, qy) + 1):
        for x in range(min(px, qx), max(px, qx) + 1):
            if (dy * (x - px) - dx * (y - py)) ** 2 / (dy * dy + dx * dx) < 1:
                out.append((y, x))
    return out


def _reference_affinity(boundary, radius=RADIUS):
    """Dense N x N affinity, by loops over pixel pairs: 1 - max boundary on the path, diag 1."""
    b = boundary.double().numpy()
    h, w = b.shape
    n = h * w
    A = np.zeros((n, n))
    for py in range(h):
        for px in range(w):
            A[py * w + px, py * w + px] = 1.0
            for qy in range(h):
                for qx in range(w):
                    d2 = (qy - py) ** 2 + (qx - px) ** 2
                    if 0 < d2 < radius * radius:
                        m = max(b[y, x] for y, x in _path_pixels((py, px), (qy, qx)))
                        A[py * w + px, qy * w + qx] = 1.0 - m
    return torch.from_numpy(A)


def _reference_walk(x, boundary, beta=BETA, exp_times=EXP_TIMES):
    A = _reference_affinity(boundary)
    assert torch.equal(A, A.T)
    A = A ** beta
    T = A / A.sum(0, keepdim=True)  # column-normalised, IRN's to_transition_matrix
    for _ in range(exp_times):
        T = T @ T
    k, h, w = x.shape
    return (x.double().reshape(k, -1) @ T).reshape(k, h, w)


def _case(h, w, k, seed):
    g = torch.Generator().manual_seed(seed)
    # boundaries: mostly low values with a few strong lines, like a real boundary map
    b = torch.rand(h, w, generator=g, dtype=torch.float64) ** 4 * 0.5
    b[h // 2, :] = torch.rand(w, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b[:, w // 3] = torch.maximum(b[:, w // 3], torch.rand(h, generator=g, dtype=torch.float64))
    cams = torch.rand(k, h, w, generator=g, dtype=torch.float64)
    cams = cams / cams.flatten(1).max(1).values[:, None, None]
    x = cams * (1 - b)
    return b, x


# ----------------------------------------------------------------------------- stencil / paths
def test_stencil_counts_and_shape():
    s = stencil_offsets(5)
    assert len(s) == 34 and len(set(s)) == 34
    assert len(full_stencil(5)) == 69 and len(set(full_stencil(5))) == 69
    # half disk: dy > 0, or dy == 0 and dx > 0; union with the mirrors is the open disk minus self
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in s)
    disk = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    assert set(full_stencil(5)) - {(0, 0)} == disk
    assert len(stencil_offsets(10)) == 152  # IRN's training radius


def test_paths_match_loop_rule():
    for d, path in zip(stencil_offsets(5), stencil_paths(5)):
        assert set(path) == set(_path_pixels((0, 0), d))
        assert (0, 0) in path and d in path
    # a few spelled out
    paths = dict(zip(stencil_offsets(5), stencil_paths(5)))
    assert set(paths[(0, 3)]) == {(0, 0), (0, 1), (0, 2), (0, 3)}
    # diagonal paths are "thick": every pixel closer than 1 to the line
    assert set(paths[(2, 2)]) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)}
    assert set(paths[(1, 2)]) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    assert set(paths[(1, -4)]) == {(y, x) for y in (0, 1) for x in range(-4, 1)}
    assert set(paths[(3, 1)]) == {(y, x) for y in range(4) for x in (0, 1)}
    assert set(paths[(3, 3)]) == {(y, x) for y in range(4) for x in range(4) if abs(x - y) <= 1}


def test_affinity_one_on_zero_boundary_and_zero_outside():
    h, w = 7, 9
    aff = boundary_to_affinity(torch.zeros(h, w, dtype=torch.float64))
    assert aff.shape == (34, h, w)
    for i, (dy, dx) in enumerate(stencil_offsets(5)):
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[: h - dy, max(0, -dx) : w - max(0, dx)] = True
        assert torch.all(aff[i][inside] == 1)
        assert torch.all(aff[i][~inside] == 0)


def test_affinity_matches_loop_reference():
    b, _ = _case(8, 11, 1, seed=3)
    aff = boundary_to_affinity(b)
    ref = _reference_affinity(b)
    h, w = b.shape
    for i, (dy, dx) in enumerate(stencil_offsets(5)):
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                want = ref[y * w + x, y2 * w + x2].item() if (0 <= y2 < h and 0 <= x2 < w) else 0.0
                assert aff[i, y, x].item() == pytest.approx(want, abs=0)


def test_dense_transition_matches_loop_reference():
    b, _ = _case(9, 10, 1, seed=5)
    T = dense_transition_matrix(boundary_to_affinity(b), BETA, RADIUS)
    A = _reference_affinity(b) ** BETA
    torch.testing.assert_close(T, A / A.sum(0, keepdim=True), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- walk vs dense
@pytest.mark.parametrize("h,w,k,seed", [(12, 15, 3, 0), (9, 20, 2, 1), (13, 13, 1, 2)])
def test_walk_matches_dense_reference(h, w, k, seed):
    b, x = _case(h, w, k, seed)
    ref = _reference_walk(x, b)
    got = random_walk(x, boundary_to_affinity(b), beta=BETA, exp_times=EXP_TIMES)
    assert got.dtype == torch.float64 and got.shape == (k, h, w)
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-6, rel
    keys = np.array([3, 7, 14][:k])
    size = (4 * h - 2, 4 * w - 3)
    assert np.array_equal(irn_postprocess(got, keys, size), irn_postprocess(ref, keys, size))


def test_batched_walk_gives_each_image_its_own_walk():
    """propagate_batch stacks images of one size (different class counts) in one walk: each result
    equals that image walked alone, exactly, and equals the dense reference."""
    cases = [_case(10, 13, k, seed) for k, seed in [(1, 20), (3, 21), (2, 22)]]
    cams = [x / (1 - b) for b, x in cases]  # propagate multiplies by (1 - boundary) itself
    got = propagate_batch(cams, [b for b, _ in cases], exp_times=4)
    for (b, x), c, g in zip(cases, cams, got):
        assert g.shape == c.shape
        assert torch.equal(g, propagate(c, b, exp_times=4))
        T = dense_transition_matrix(boundary_to_affinity(b), BETA, RADIUS)
        ref = (x.reshape(len(x), -1) @ torch.linalg.matrix_power(T, 16)).reshape_as(x)
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="one size"):
        propagate_batch([cams[0], cams[0][:, :5]], [cases[0][0], cases[0][0][:5]])


def test_walk_few_steps_exact():
    # exp_times = 0 is a single step x @ T; check it and exp_times=2 against the plain dense product
    b, x = _case(10, 12, 2, seed=4)
    aff = boundary_to_affinity(b)
    T = dense_transition_matrix(aff, BETA, RADIUS)
    for e in (0, 2):
        ref = (x.reshape(2, -1) @ torch.linalg.matrix_power(T, 2 ** e)).reshape_as(x)
        got = random_walk(x, aff, exp_times=e)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_walk_invariants():
    """T = A D^-1 is column-stochastic; for the row-vector walk x -> x T that means
    (D^-1 A is row-stochastic) constants are fixed points, and, A being symmetric, the
    degree-weighted mass sum_p D(p) x(p) is conserved exactly (d^T D^-1 A = 1^T A = d^T).
    The plain sum of x is NOT conserved."""
    b, x = _case(11, 14, 3, seed=6)
    aff = boundary_to_affinity(b)
    A = _reference_affinity(b) ** BETA
    deg = A.sum(0).reshape(11, 14)
    rw = random_walk(x, aff)
    torch.testing.assert_close((rw * deg).sum((1, 2)), (x * deg).sum((1, 2)), rtol=1e-12, atol=0)
    const = torch.full((2, 11, 14), 0.7, dtype=torch.float64)
    torch.testing.assert_close(random_walk(const, aff), const, rtol=1e-12, atol=0)
    # an averaging operator: values stay within the input's range
    assert rw.min() >= x.min() - 1e-12 and rw.max() <= x.max() + 1e-12
    # stencil weights are the rows of D^-1 A: each pixel's 69 weights sum to 1
    wts = stencil_weights(aff)
    assert wts.shape == (69, 11, 14)
    torch.testing.assert_close(wts.sum(0), torch.ones(11, 14, dtype=torch.float64))


def test_float32_walk_close_to_float64():
    """float32 vs float64 (report numbers are from benchmarks/ and this test's cases)."""
    flips = 0
    total = 0
    for seed, (h, w) in enumerate([(24, 31), (30, 30), (20, 40)]):
        b, x = _case(h, w, 3, seed=10 + seed)
        aff = boundary_to_affinity(b)
        r64 = random_walk(x, aff)
        r32 = random_walk(x.float(), aff.float(), dtype=torch.float32)
        assert r32.dtype == torch.float32
        assert ((r32.double() - r64).abs().max() / r64.abs().max()).item() < 1e-3
        keys, size = np.array([0, 5, 9]), (4 * h, 4 * w)
        flips += int((irn_postprocess(r32, keys, size) != irn_postprocess(r64, keys, size)).sum())
        total += 16 * h * w
    assert flips / total < 1e-3, (flips, total)


# ----------------------------------------------------------------------------- post-processing
def test_postprocess_irn_rules():
    h, w = 3, 4
    rw = torch.zeros(2, h, w, dtype=torch.float64)
    rw[0] = 2.0  # class plane 0 normalised to 0.5 by the global max 4
    rw[1, 0, 0] = 4.0
    rw[1, 2, 3] = 0.5  # 0.125 after normalisation, but plane 0 wins
    lab = irn_postprocess(rw, np.array([4, 11]), (10, 14))
    assert lab.dtype == np.uint8 and lab.shape == (10, 14)
    assert lab[0, 0] == 12  # key 11 + 1
    assert lab[9, 13] == 5  # key 4 + 1
    # ties with the 0.25 background plane go to background
    tie = torch.full((1, h, w), 0.25, dtype=torch.float64)
    tie[0, 0, 0] = 1.0
    lab = irn_postprocess(tie, [2], (12, 16))
    assert lab[0, 0] == 3 and lab[11, 15] == 0
    # all-zero walk: background everywhere (IRN would produce NaNs)
    assert (irn_postprocess(torch.zeros(2, h, w), [0, 1], (12, 16)) == 0).all()


def test_postprocess_bilinear_crop():
    g = torch.Generator().manual_seed(0)
    rw = torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    size = (17, 25)
    up = torch.nn.functional.interpolate(rw[None], scale_factor=4, mode="bilinear",
                                         align_corners=False)[0, :, :17, :25]
    up = up / up.max()
    want = torch.cat([torch.full((1, 17, 25), 0.25, dtype=torch.float64), up]).argmax(0).numpy()
    keys = np.array([1, 2, 19])
    assert np.array_equal(irn_postprocess(rw, keys, size), np.array([0, 2, 3, 20])[want])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_walk_cuda_matches_cpu():
    b, x = _case(40, 50, 3, seed=7)
    aff = boundary_to_affinity(b)
    cpu = random_walk(x, aff)
    gpu = random_walk(x.cuda(), aff.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)


def test_a_closed_boundary_confines_the_walk():
    """Eq. 9's point: the walk spreads a class only where no boundary separates. With a closed
    ring of boundary 1 every path across it has affinity 0, so the values inside the ring depend
    only on the seed inside and those outside only on the seed outside. A seed blurred across the
    ring comes back as the ring's interior after IRN's post-processing (the part that leaked out is
    averaged over the whole large outside), where thresholding the seed spills over the ring."""
    h = w = 28
    b = torch.zeros(h, w, dtype=torch.float64)
    b[3, 3:12] = b[11, 3:12] = b[3:12, 3] = b[3:12, 11] = 1.0  # ring around rows/cols 4..10
    ring = b > 0
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[4:11, 4:11] = True
    outside = ~inside & ~ring
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    seed = torch.exp(-((yy - 7.0) ** 2 + (xx - 7.0) ** 2) / (2 * 3.5**2)).double()[None]
    x = seed * (1 - b)
    aff = boundary_to_affinity(b)
    rw = random_walk(x, aff)
    assert torch.equal(rw[0][ring], torch.zeros(int(ring.sum()), dtype=torch.float64))  # isolated, x = 0 there
    noise = torch.rand(h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for region in (inside, outside):
        other = x.clone()
        other[0][~region] = noise[~region]  # change every seed value off the region
        torch.testing.assert_close(random_walk(other, aff)[0][region], rw[0][region], rtol=1e-12, atol=0)
    # 256 steps flatten the interior to one level: within 1% of its own maximum
    assert rw[0][inside].min() > 0.99 * rw[0][inside].max()
    # IRN's post-processing: the class fills the interior, everything else is background
    lab = irn_postprocess(rw, [6], (4 * h, 4 * w))
    want = np.zeros((4 * h, 4 * w), np.uint8)
    want[18:42, 18:42] = 7  # interior cells 4..10 at stride 4, less the half cells bilinear blends
    core = want == 7
    assert (lab[core] == 7).all()
    assert (lab[:10] == 0).all() and (lab[:, :10] == 0).all() and (lab[:, 50:] == 0).all() and (lab[50:] == 0).all()
    # thresholding the seed at the same 0.25 instead spills over the ring
    spill = (seed[0] / seed.max() > 0.25) & outside
    assert int(spill.sum()) > 10, int(spill.sum())
