"""Segmentation heads and segmenter (wsss.seg): shapes, gradients, losses, and each paper's equations."""
from __future__ import annotations

import pytest
import torch

from wsss.io import IGNORE_INDEX
from wsss.seg import HEADS, build_segmenter, patch_labels
from wsss.seg.heads import PCAA, ClassAttention, class_centers
from wsss.seg.model import sigmoid_focal_loss
from wsss.seg.psamask import psamask

K = 4
SIZES = [(65, 47), (64, 64)]  # odd: the stride-8 map is 9 x 6, not a multiple of S = 4


def batch(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with blocky labels (learnable) and a void stripe."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, height, width, generator=g)
    coarse = torch.randint(0, K, (2, 1, height // 16 + 1, width // 16 + 1), generator=g).float()
    target = torch.nn.functional.interpolate(coarse, scale_factor=16, mode="nearest")[:, 0, :height, :width].long()
    target[:, :3] = IGNORE_INDEX
    x[:, 0] += target.float()  # the labels are visible in the input, so a few steps can fit them
    return x, target


class HeadContract:
    """The contract of every head, run on a tiny dilated ResNet; one subclass per head."""

    HEAD: str
    KWARGS: dict = {}
    LOSS_TERMS: set[str] = {"seg", "aux", "loss"}

    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        return build_segmenter(self.HEAD, "resnet_tiny", K, **self.KWARGS)

    @pytest.mark.parametrize("size", SIZES)
    def test_output_shapes(self, size):
        model = self.make()
        x, target = batch(*size)
        out = model(x)
        assert out["out"].shape == (2, K, *size)
        assert out["aux"].shape == (2, K, *size)
        for key in model.head.dense_outputs:
            assert out[key].shape == (2, K, *size)
        model.eval()
        with torch.no_grad():
            assert model(x[:1])["out"].shape == (1, K, *size)

    def test_every_parameter_gets_a_gradient(self):
        model = self.make()
        x, target = batch(*SIZES[0])
        model.loss(model(x), target)["loss"].backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, name
                assert torch.isfinite(p.grad).all(), name
                # timm zero-initialises each bottleneck's last BN, which blocks the gradient of
                # the residual branches' first convs at initialisation; the heads have no such zeros.
                if not name.startswith("backbone."):
                    assert p.grad.abs().sum() > 0, name

    def test_loss_terms_and_decrease(self):
        model = self.make()
        x, target = batch(*SIZES[1])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(10):
            terms = model.loss(model(x), target)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            losses.append(terms["loss"].item())
        assert set(terms) == self.LOSS_TERMS
        expected = sum(model.loss_weights[k] * v for k, v in terms.items() if k != "loss")
        assert torch.allclose(terms["loss"], expected)
        assert losses[-1] < 0.95 * losses[0], losses


class TestFCN(HeadContract):
    HEAD = "fcn"
    KWARGS = {"channels": 16}


class TestDeepLabV2(HeadContract):
    HEAD = "deeplabv2"


class TestPCAA(HeadContract):
    HEAD = "pcaa"
    KWARGS = {"channels": 16, "pool_sizes": 4}
    LOSS_TERMS = {"seg", "aux", "focal", "loss"}

    def test_patch_logits(self):
        out = self.make()(batch(*SIZES[0])[0])
        assert [tuple(p.shape) for p in out["patch_logits"]] == [(2, K, 4, 4)]


class TestPCAAStacked(TestPCAA):
    KWARGS = {"channels": 16, "pool_sizes": (4, 8)}

    def test_patch_logits(self):
        out = self.make()(batch(*SIZES[0])[0])
        assert [tuple(p.shape) for p in out["patch_logits"]] == [(2, K, 4, 4), (2, K, 8, 8)]


    def test_official_code_loss_options(self):
        """focal_reduction="mean" averages the stacked modules' focal terms (PCAA's code; Eq. 10 sums
        them) and patch_label_min_frac is the patch-label threshold (the code's 0.01; Eq. 4's 0)."""
        paper = self.make()
        code = build_segmenter("pcaa", "resnet_tiny", K, focal_reduction="mean", patch_label_min_frac=0.01,
                               **self.KWARGS)
        x, target = batch(*SIZES[1])
        target[1, 20:21, 20:22] = (target[1, 20, 20] + 1) % K  # 2 px: under 1% of its patch, positive for Eq. 4 only
        out = paper(x)
        focal = [sigmoid_focal_loss(p, patch_labels(target, K, p.shape[-1], stride=8)) for p in out["patch_logits"]]
        assert torch.allclose(paper.loss(out, target)["focal"], sum(focal))
        focal_code = [sigmoid_focal_loss(p, patch_labels(target, K, p.shape[-1], stride=8, threshold=0.01))
                      for p in out["patch_logits"]]
        assert torch.allclose(code.loss(out, target)["focal"], sum(focal_code) / len(focal_code))
        assert not torch.equal(patch_labels(target, K, 4, stride=8), patch_labels(target, K, 4, stride=8, threshold=0.01))
        with pytest.raises(ValueError, match="focal_reduction"):
            build_segmenter("pcaa", "resnet_tiny", K, focal_reduction="avg", **self.KWARGS)


class TestACF(HeadContract):
    HEAD = "acf"
    KWARGS = {"channels": 16}
    LOSS_TERMS = {"seg", "aux", "coarse", "loss"}

    def test_paper_loss_weights(self):
        assert self.make().loss_weights == {"seg": 0.7, "coarse": 0.6, "aux": 0.4}


class TestPSA(HeadContract):
    HEAD = "psa"
    # Smaller than over-complete for the 5 x 3 shrunken map of 65 x 47: out-of-window pairs occur.
    KWARGS = {"channels": 16, "mask_size": 7}


def test_unknown_head_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_segmenter("pcca", "resnet_tiny", K)
    assert "'pcaa'" in str(err.value)
    for name in HEADS:
        assert name in str(err.value)


# --- PCAA ------------------------------------------------------------------------------


def test_patch_labels_on_hand_built_masks():
    v = IGNORE_INDEX
    target = torch.tensor(
        [
            [0, 0, 1, v],
            [0, 0, v, v],
            [v, v, 2, 0],
            [v, v, 2, 2],
        ]
    )[None]
    labels = patch_labels(target, 3, 2)
    assert labels.shape == (1, 3, 2, 2)
    expected = torch.zeros(3, 2, 2)
    expected[0, 0, 0] = 1  # all class 0
    expected[1, 0, 1] = 1  # one class-1 pixel among 3 void: still positive
    expected[[0, 2], 1, 1] = 1  # mixed patch: both classes
    # the all-void patch (1, 0) is negative for every class
    assert torch.equal(labels[0], expected)
    # void dilutes: class 1 covers 1/4 of its patch, not 1/1 of its labelled pixels
    assert patch_labels(target, 3, 2, threshold=0.3)[0, 1, 0, 1] == 0
    assert patch_labels(target, 3, 2, threshold=0.2)[0, 1, 0, 1] == 1


def test_patch_labels_pad_like_the_feature_map():
    # 5 x 5 labels, stride 1, S = 2: replicated to 6 x 6, so the last row and column
    # belong to the bottom/right patches, as the padded feature pixels do.
    target = torch.zeros(1, 5, 5, dtype=torch.long)
    target[0, 4, 4] = 1
    labels = patch_labels(target, 2, 2)
    assert labels[0, 1].tolist() == [[0, 0], [0, 1]]
    assert labels[0, 0].tolist() == [[1, 1], [1, 1]]


def test_pcaa_pool_size_one_is_the_cam_classifier_score():
    torch.manual_seed(0)
    module = PCAA(8, K, pool_size=1).eval()
    x = torch.randn(2, 8, 6, 5)
    _, patch_logits = module(x)
    cam_logits = module.cam(x)  # Eq. 1
    assert torch.allclose(torch.sigmoid(patch_logits), torch.sigmoid(cam_logits.mean(dim=(2, 3), keepdim=True)))


def test_pcaa_pads_a_non_divisible_map_by_replication():
    torch.manual_seed(0)
    module = PCAA(8, K, pool_size=4).eval()
    x = torch.randn(1, 8, 9, 6)
    out, patch_logits = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    padded = x[..., torch.arange(12).clamp(max=8)[:, None], torch.arange(8).clamp(max=5)]
    out_padded, patch_logits_padded = module(padded)
    assert torch.allclose(out, out_padded[..., :9, :6], atol=1e-6)
    assert torch.allclose(patch_logits, patch_logits_padded, atol=1e-6)


def test_focal_loss_with_gamma_zero_is_bce():
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 2, (2, 3, 4, 4)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(sigmoid_focal_loss(logits, labels, gamma=0.0), bce)
    assert sigmoid_focal_loss(logits, labels) < bce


# --- ACF -------------------------------------------------------------------------------


def test_class_centers_follow_eq2():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(2, 4, 7, generator=g, dtype=torch.float64), dim=1)
    got = class_centers(features, probs, eps=0.0)
    for b in range(2):
        for i in range(4):
            num = sum(probs[b, i, j] * features[b, :, j] for j in range(7))
            den = sum(probs[b, i, j] for j in range(7))
            assert torch.allclose(got[b, i], num / den)


def test_class_attention_uses_coarse_class_probabilities():
    torch.manual_seed(0)
    module = ClassAttention(6, 3).eval().double()
    features = torch.randn(1, 6, 3, 4, dtype=torch.float64)
    coarse = torch.randn(1, K, 3, 4, dtype=torch.float64)
    reduced = module.reduce(features).flatten(2)[0]  # (C', N)
    probs = torch.softmax(coarse, dim=1).flatten(2)[0]  # over classes, per pixel
    n = reduced.shape[1]
    centers = [sum(probs[i, j] * reduced[:, j] for j in range(n)) / (probs[i].sum() + module.eps) for i in range(K)]
    attended = torch.stack([sum(probs[i, j] * centers[i] for i in range(K)) for j in range(n)], dim=1)  # Eq. 3
    expected = module.refine(attended.view(1, 3, 3, 4))
    assert torch.allclose(module(features, coarse), expected)


# --- PSA -------------------------------------------------------------------------------


def psamask_loops(mask: torch.Tensor, mode: str, hm: int, wm: int) -> torch.Tensor:
    """PSANet Eq. 9 one pair at a time: position i = (k, l), other position j = (s, t)."""
    b, _, height, width = mask.shape
    out = torch.zeros(b, height * width, height * width, dtype=mask.dtype)
    for k in range(height):
        for l in range(width):
            for s in range(height):
                for t in range(width):
                    r, c = (hm - 1) // 2 + s - k, (wm - 1) // 2 + t - l
                    if 0 <= r < hm and 0 <= c < wm:
                        i, j = k * width + l, s * width + t
                        # collect: i gathers from j -> A[j, i]; distribute: i gives to j -> A[i, j]
                        p, q = (j, i) if mode == "collect" else (i, j)
                        out[:, p, q] = mask[:, r * wm + c, k, l]
    return out


@pytest.mark.parametrize("height, width, mask_size", [(3, 5, None), (4, 4, None), (4, 4, (3, 5))])
def test_psamask_matches_loops(height, width, mask_size):
    hm, wm = mask_size or (2 * height - 1, 2 * width - 1)
    mask = torch.randn(2, hm * wm, height, width)
    for mode in ("collect", "distribute"):
        assert torch.equal(psamask(mask, mode, mask_size=mask_size), psamask_loops(mask, mode, hm, wm)), mode
    collect = psamask(mask, "collect", mask_size=mask_size)
    assert torch.equal(collect, psamask(mask, "distribute", mask_size=mask_size).transpose(1, 2))


def test_psamask_fill_and_errors():
    mask = torch.randn(1, 9, 4, 4)
    out = psamask(mask, "collect", mask_size=(3, 3), fill=float("-inf"))
    assert torch.isinf(out).sum() == 16 * 16 - (psamask_loops(mask, "collect", 3, 3) != 0).sum()
    with pytest.raises(ValueError, match="over-complete size is"):
        psamask(mask, "collect")
    with pytest.raises(ValueError, match="odd"):
        psamask(torch.randn(1, 8, 4, 4), "collect", mask_size=(2, 4))


def test_psamask_gradcheck():
    mask = torch.randn(1, 3 * 5, 2, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("collect", "distribute"):
        assert torch.autograd.gradcheck(lambda m: psamask(m, mode), (mask,))
