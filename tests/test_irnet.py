"""IRNet's boundary branch: pairs and paths, affinity labels, loss, the frozen net, and train-irn."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsss.config import ConfigError
from wsss.data import DataConfig, build_dataset
from wsss.io import write_mask
from wsss.pseudo.irnet import (
    BoundaryNet,
    affinity_labels,
    boundary_loss,
    edge_to_affinity,
    infer_boundary,
    path_index,
)
from wsss.pseudo.random_walk import boundary_to_affinity
from wsss.pseudo.train_irn import TrainIrnConfig, irn_train_transform, load_boundary_net, train_irn


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BoundaryNet("resnet_tiny")


def _segment_distance(p, d):
    """Distance from point p to the segment from (0, 0) to d."""
    p, d = np.asarray(p, float), np.asarray(d, float)
    t = np.clip(p @ d / (d @ d), 0, 1)
    return float(np.linalg.norm(p - t * d))


# ----------------------------------------------------------------------------- directions and paths
@pytest.mark.parametrize("radius, count", [(3, 12), (5, 34), (10, 152)])
def test_path_index_directions_are_every_pair_once(radius, count):
    brute = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
             if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or (dy == 0 and dx > 0))}
    index = path_index(radius)
    assert len(index.directions) == count == len(brute)
    assert set(index.directions) == brute
    # with the mirrors, every offset within the radius is reached exactly once
    mirrored = [(-dy, -dx) for dy, dx in index.directions]
    assert len(set(index.directions) | set(mirrored)) == 2 * count


@pytest.mark.parametrize("radius", [3, 5, 10])
def test_paths_lie_on_and_cover_their_segment(radius):
    index = path_index(radius)
    for d, path in zip(index.directions, index.paths):
        assert (0, 0) in path and d in path and len(set(path)) == len(path)
        for p in path:
            assert _segment_distance(p, d) < 1, (d, p)
        # every point of the segment rounds to a pixel of the path
        for t in np.linspace(0, 1, 101):
            assert (round(t * d[0]), round(t * d[1])) in path, (d, t)


# ----------------------------------------------------------------------------- affinity labels
def _pair_loop(label, radius):
    """Expected (bg_pos, fg_pos, neg) by a loop over source pixels in IRN's window."""
    index = path_index(radius)
    m = radius - 1
    h, w = label.shape
    hc, wc = h - m, w - 2 * m
    out = np.zeros((3, len(index.directions), hc, wc), np.float32)
    for i, (dy, dx) in enumerate(index.directions):
        for y in range(hc):
            for x in range(wc):
                a, b = label[y, x + m], label[y + dy, x + m + dx]
                if a == 255 or b == 255:
                    continue
                if a != b:
                    out[2, i, y, x] = 1
                elif a == 0:
                    out[0, i, y, x] = 1
                else:
                    out[1, i, y, x] = 1
    return out


def test_affinity_labels_on_a_hand_built_map():
    # background | class 1 | void band | class 2
    label = np.zeros((8, 14), np.uint8)
    label[:, 4:7] = 1
    label[:, 7] = 255
    label[:, 8:] = 2
    radius, m = 3, 2
    index = path_index(radius)
    bg, fg, neg = (t.numpy() for t in affinity_labels(torch.from_numpy(label), index))
    assert bg.shape == (len(index.directions), 8 - m, 14 - 2 * m)
    np.testing.assert_array_equal(np.stack([bg, fg, neg]), _pair_loop(label, radius))
    right = index.directions.index((0, 1))
    right2 = index.directions.index((0, 2))
    col = lambda x: x - m  # window column of image column x
    assert bg[right, 0, col(2)] == 1                     # 0-0
    assert fg[right, 0, col(4)] == 1                     # 1-1
    assert neg[right, 0, col(3)] == 1                    # 0-1
    assert bg[right, 0, col(6)] + fg[right, 0, col(6)] + neg[right, 0, col(6)] == 0   # 1-void
    assert bg[:, :, col(7)].sum() + fg[:, :, col(7)].sum() + neg[:, :, col(7)].sum() == 0  # void source
    assert neg[right2, 0, col(6)] == 1                   # 1-2 across the band: both ends known
    assert fg[right2, 0, col(9)] == 1                    # 2-2
    assert np.all(bg + fg + neg <= 1)


def test_affinity_labels_batched_like_single():
    labels = torch.randint(0, 3, (2, 12, 16), dtype=torch.uint8)
    labels[0, 3:5] = 255
    index = path_index(4)
    batched = affinity_labels(labels, index)
    for b in range(2):
        for t, single in zip(batched, affinity_labels(labels[b], index)):
            assert torch.equal(t[b], single)


# ----------------------------------------------------------------------------- affinity and loss
def test_edge_to_affinity_is_one_minus_max_along_the_path():
    torch.manual_seed(0)
    radius, m = 4, 3
    boundary = torch.rand(2, 1, 10, 13, dtype=torch.float64)
    index = path_index(radius)
    aff = edge_to_affinity(boundary, index)
    b = boundary[:, 0].numpy()
    assert aff.shape == (2, len(index.directions), 10 - m, 13 - 2 * m)
    for n in range(2):
        for i, (d, path) in enumerate(zip(index.directions, index.paths)):
            for y in range(10 - m):
                for x in range(13 - 2 * m):
                    expected = 1 - max(b[n, y + py, x + m + px] for py, px in path)
                    assert aff[n, i, y, x].item() == pytest.approx(expected, abs=0), (n, d, y, x)
    # the inference-time affinities of the random walk agree inside the window
    full = boundary_to_affinity(boundary[0, 0], radius)
    torch.testing.assert_close(aff[0], full[:, : 10 - m, m : 13 - m], rtol=0, atol=0)


def test_edge_to_affinity_gradient_goes_to_each_paths_maximum():
    # the grouped gather must train exactly as one max per path pixel would (IRN's max_pool2d)
    torch.manual_seed(1)
    radius, m = 5, 4
    boundary = torch.rand(2, 1, 12, 15, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, len(path_index(radius).directions), 12 - m, 15 - 2 * m, dtype=torch.float64)
    index = path_index(radius)
    (edge_to_affinity(boundary, index) * weights).sum().backward()
    b = boundary.detach()[:, 0]
    expected = torch.zeros_like(b)
    for i, path in enumerate(index.paths):
        for y in range(12 - m):
            for x in range(15 - 2 * m):
                for n in range(2):
                    values = [b[n, y + py, x + m + px] for py, px in path]
                    py, px = path[int(torch.stack(values).argmax())]
                    expected[n, y + py, x + m + px] -= weights[n, i, y, x]
    torch.testing.assert_close(boundary.grad[:, 0], expected, rtol=0, atol=1e-12)


def test_boundary_loss_by_hand():
    aff = torch.tensor([0.9, 0.2, 0.6, 0.3])
    bg = torch.tensor([1.0, 1.0, 0.0, 0.0])
    fg = torch.tensor([0.0, 0.0, 1.0, 0.0])
    neg = torch.tensor([0.0, 0.0, 0.0, 1.0])
    out = boundary_loss(aff, bg, fg, neg)
    e = 1e-5
    want_bg = -(math.log(0.9 + e) + math.log(0.2 + e)) / (2 + e)
    want_fg = -math.log(0.6 + e) / (1 + e)
    want_neg = -math.log(1 + e - 0.3) / (1 + e)
    assert out["bg"].item() == pytest.approx(want_bg, rel=1e-6)
    assert out["fg"].item() == pytest.approx(want_fg, rel=1e-6)
    assert out["neg"].item() == pytest.approx(want_neg, rel=1e-6)
    assert out["loss"].item() == pytest.approx((want_bg / 2 + want_fg / 2 + want_neg) / 2, rel=1e-6)
    # global denominators (DDP) replace the local label sums
    halves = boundary_loss(aff, bg, fg, neg, counts=(4.0, 2.0, 2.0))
    assert halves["bg"].item() == pytest.approx(want_bg * (2 + e) / (4 + e), rel=1e-6)


def _toy_batch():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    label = torch.zeros(2, 16, 16, dtype=torch.uint8)
    label[:, :, 8:] = 1
    label[1, 4:8] = 255
    x[:, :, :, 32:] += 2.0  # the classes look different
    return x, label


def test_loss_decreases_and_backbone_stays_frozen():
    net = _tiny_net()
    index = path_index(5)
    x, label = _toy_batch()
    frozen = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("taps.", "head.")) for n in trainable)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    net.train()
    assert net.training and not net.backbone.training
    assert not any(m.training for m in net.backbone.modules())
    labels = affinity_labels(label, index)
    losses = []
    for _ in range(6):
        loss = boundary_loss(edge_to_affinity(net.boundary(x), index), *labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert all(p.grad is None for p in net.backbone.parameters())
    for k, v in net.backbone.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, frozen[k]), k


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (18, 31)])
def test_boundary_size_for_any_input(hw):
    net = _tiny_net().eval()
    out = net(torch.randn(1, 3, *hw))
    assert out.shape == (1, 1, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))


def test_infer_boundary_averages_the_mirror():
    net = _tiny_net()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    b = infer_boundary(net, image)
    assert b.shape == (10, 13) and float(b.min()) >= 0 and float(b.max()) <= 1
    from wsss.cls.transforms import normalize

    x = torch.from_numpy(normalize(image))[None]
    with torch.no_grad():
        want = torch.sigmoid((net(x)[0, 0] + net(x.flip(-1))[0, 0].flip(-1)) / 2)
    torch.testing.assert_close(b, want)
    assert infer_boundary(net, image, scales=(1.0, 0.5), flip=False).shape == (10, 13)


@pytest.mark.parametrize("pad", [0, 48])
def test_a_batch_of_images_gets_the_boundaries_each_gets_alone(pad):
    """#16 item 3: infer_boundary_batch (images of one size and their mirrors in one forward) equals
    infer_boundary image by image, with IRN's padding and with two scales."""
    from wsss.pseudo.irnet import infer_boundary_batch

    net = _tiny_net()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (37, 45, 3), dtype=np.uint8) for _ in range(3)]
    for scales in ((1.0,), (1.0, 0.5)):
        got = infer_boundary_batch(net, images, scales=scales, pad=pad)
        assert got.shape == (3, 10, 12)
        for image, b in zip(images, got):
            torch.testing.assert_close(b, infer_boundary(net, image, scales=scales, pad=pad), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        infer_boundary_batch(net, [images[0], images[1][:30]])


def test_amp_boundaries_stay_near_float32():
    """#16 item 3: infer_boundary_batch(amp=True) runs the forwards under autocast (bfloat16 on this
    CPU): float32 maps within 0.02 of fp32's, and not equal to them (the autocast ran). make-pseudo
    writes them as 8-bit PNGs (steps of 1/255)."""
    from wsss.pseudo.irnet import infer_boundary_batch

    net = _tiny_net()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (37, 45, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        ref = infer_boundary_batch(net, images, scales=(1.0, 0.5), pad=48)
        got = infer_boundary_batch(net, images, scales=(1.0, 0.5), pad=48, amp=True)
    assert got.dtype == torch.float32 and 0 < float((got - ref).abs().max()) < 0.02


def test_backbone_by_name_without_weights_warns():
    with pytest.warns(UserWarning, match="from scratch"):
        BoundaryNet("resnet_tiny")


# ----------------------------------------------------------------------------- train-irn
def test_train_transform_shapes_and_fill():
    rng = np.random.default_rng(0)
    image = np.full((20, 30, 3), 128, np.uint8)
    label = np.ones((20, 30), np.uint8)
    x, y = irn_train_transform(image, label, rng, scale_range=(0.5, 0.6), crop=64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert y.shape == (16, 16) and y.dtype == np.uint8
    assert set(np.unique(y)) == {1, 255}  # the padding is unknown


def test_stride4_labels_sample_as_irns_pil_rescale():
    """IRN: imutils.pil_rescale(label, 0.25, 0) = PIL's nearest resize of the crop to a quarter."""
    from PIL import Image

    from wsss.pseudo import train_irn

    rng = np.random.default_rng(3)
    label = rng.integers(0, 6, (64, 64)).astype(np.uint8)
    crop = label.copy()
    # identity augmentation: scale 1, no flip, a crop equal to the image
    class Fixed:
        def uniform(self, lo, hi):
            return 1.0

        def random(self):
            return 1.0

        def integers(self, lo, hi):
            return 0

    _, y = train_irn.irn_train_transform(np.zeros((64, 64, 3), np.uint8), crop, Fixed(), scale_range=(1, 1), crop=64)
    pil = np.asarray(Image.fromarray(label).resize((16, 16), resample=Image.NEAREST))
    np.testing.assert_array_equal(y, pil)
    np.testing.assert_array_equal(y, label[2::4, 2::4])


def _restated_irn_transform(image, label, seed, scale_range, crop, resize_image, resize_label):
    """irn_train_transform written out step by step with the same random draws: one rescale for
    both (``resize_*(a, (h', w'))``), flip, normalise, crop (pad 0 / 255), label at pixels 4i + 2."""
    from _restate import normalise_pad_crop

    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(scale_range[0], scale_range[1]))
    h, w = image.shape[:2]
    size = (int(np.round(h * scale)), int(np.round(w * scale)))  # IRN's pil_rescale
    image, label = resize_image(image, size), resize_label(label, size)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    chw, cropped = normalise_pad_crop(image, label, rng, crop)
    return chw, cropped[2::4, 2::4]


def _pil(resample):
    from _restate import pil_resizer

    return pil_resizer(resample)


def _irn_image_and_label():
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (50, 75, 3)).astype(np.uint8)
    label = rng.integers(0, 4, (50, 75)).astype(np.uint8)  # a label that changes at every pixel
    label[label == 3] = 255
    return image, label


def test_train_transform_resizes_with_irns_pil_kernels_by_default():
    from PIL import Image

    image, label = _irn_image_and_label()
    for seed in range(8):  # scales 0.5-1.5 around the 64 crop: padded and cropped, flipped and not
        x, y = irn_train_transform(image, label, np.random.default_rng(seed), scale_range=(0.5, 1.5), crop=64)
        rx, ry = _restated_irn_transform(image, label, seed, (0.5, 1.5), 64, _pil(Image.BICUBIC), _pil(Image.NEAREST))
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        assert set(np.unique(y)) <= {0, 1, 2, 255}  # nearest: no value the label does not hold


def test_train_transform_opencv_option_is_the_previous_kernels():
    import cv2

    image, label = _irn_image_and_label()

    def old(interp):  # the calls train-irn made before the setting existed
        return lambda a, size: cv2.resize(a, size[::-1], interpolation=interp)

    differs = False
    for seed in range(8):
        x, y = irn_train_transform(image, label, np.random.default_rng(seed), scale_range=(0.5, 1.5), crop=64,
                                   resize="opencv")
        rx, ry = _restated_irn_transform(image, label, seed, (0.5, 1.5), 64, old(cv2.INTER_CUBIC),
                                         old(cv2.INTER_NEAREST_EXACT))
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        differs |= not np.array_equal(x, irn_train_transform(image, label, np.random.default_rng(seed),
                                                             scale_range=(0.5, 1.5), crop=64)[0])
    assert differs  # the option changes something


@pytest.fixture(scope="module")
def ir_labels(toy_root, tmp_path_factory):
    """Stand-in IR labels: the toy ground truth with a void band at each mask's edges."""
    ds = build_dataset(DataConfig(kind="voc", root=str(toy_root), split="train"))
    folder = tmp_path_factory.mktemp("ir_label")
    for image_id in ds.ids:
        mask = ds.load(image_id).mask.copy()
        edge = np.zeros(mask.shape, bool)
        edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        edge[1:] |= mask[1:] != mask[:-1]
        mask[edge] = 255
        write_mask(folder / f"{image_id}.png", mask)
    return folder


def _cfg(toy_root, ir_labels, out, **kw):
    base = dict(data=DataConfig(kind="voc", root=str(toy_root), split="train"), ir_labels=str(ir_labels),
                backbone="resnet_tiny", epochs=2, batch_size=8, crop=64, radius=5, workers=0, device="cpu",
                out=str(out), log_every=1, max_steps=7, save_every=3)
    base.update(kw)
    return TrainIrnConfig(**base)


def _train(cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_irn(cfg, progress=False, **kw)


def test_train_irn_resume_gives_the_same_weights(toy_root, ir_labels, tmp_path, monkeypatch):
    out_a = _train(_cfg(toy_root, ir_labels, tmp_path / "a"))
    lines = [json.loads(l) for l in (out_a / "metrics.jsonl").read_text().splitlines()]
    assert len([l for l in lines if "loss" in l]) == 7
    assert all(math.isfinite(l["loss"]) for l in lines if "loss" in l)
    assert json.loads((out_a / "done.json").read_text())["steps"] == 7

    cfg_b = _cfg(toy_root, ir_labels, tmp_path / "b")
    from _restate import stop_at_step

    real_step = stop_at_step(monkeypatch, torch.optim.SGD, 5)  # killed after the step-3 checkpoint, mid-epoch
    with pytest.raises(KeyboardInterrupt):
        _train(cfg_b)
    assert not (tmp_path / "b" / "done.json").exists()
    assert torch.load(tmp_path / "b" / "resume.pt", weights_only=True)["step"] == 3
    # the interrupted run's weights are a mid-training checkpoint: refused, with the command that finishes it
    with pytest.raises(ConfigError, match=r"unfinished train-irn run \(no done.json\).*--resume"):
        load_boundary_net(tmp_path / "b")
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    _train(cfg_b, resume=True)

    wa = load_file(str(out_a / "boundary.safetensors"))
    wb = load_file(str(tmp_path / "b" / "boundary.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)

    # a weights file whose keys do not match is refused, naming them
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(out_a, tmp_path / "bad")
    state = dict(wa)
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad" / "boundary.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['head.weight'\], unexpected \['extra.weight'\]"):
        load_boundary_net(tmp_path / "bad")
    init = _tiny_net(seed=0).state_dict()
    assert not torch.equal(init["head.weight"], wa["head.weight"])  # training moved the branch
    for k in init:
        if k.startswith("backbone."):
            assert torch.equal(init[k], wa[k]), k  # ... and never the backbone

    net = load_boundary_net(out_a)
    assert not net.training
    torch.testing.assert_close(net.state_dict()["head.weight"], wa["head.weight"], rtol=0, atol=0)
    image = np.zeros((30, 41, 3), np.uint8)
    assert infer_boundary(net, image).shape == (8, 11)


def test_train_irn_refuses_a_changed_config(toy_root, ir_labels, tmp_path):
    _train(_cfg(toy_root, ir_labels, tmp_path / "r", max_steps=1, save_every=1, epochs=1))
    (tmp_path / "r" / "done.json").unlink()
    with pytest.raises(ConfigError, match="configuration changed \\(lr\\)"):
        _train(_cfg(toy_root, ir_labels, tmp_path / "r", max_steps=1, save_every=1, epochs=1, lr=0.5), resume=True)


def test_train_irn_checks_its_inputs(toy_root, ir_labels, tmp_path):
    with pytest.raises(ConfigError, match="too small for pairs of radius 10"):
        _train(_cfg(toy_root, ir_labels, tmp_path / "c", radius=10))
    with pytest.raises(Exception, match="have no IR label"):
        _train(_cfg(toy_root, tmp_path / "empty", tmp_path / "c"))


def test_boundary_inference_pads_as_irns_edge_displacement():
    """IRN's EdgeDisplacement: zero-pad image and mirror (after normalising) to crop_size on the
    right/bottom, crop the logits to ceil(H/4) x ceil(W/4), average with the flipped-back mirror."""
    import math

    import torch.nn.functional as F

    from wsss.cls.transforms import normalize

    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        net = BoundaryNet("resnet_tiny")
    net.eval()
    image = np.random.default_rng(0).integers(0, 256, (37, 45, 3)).astype(np.uint8)
    x = torch.from_numpy(normalize(image))[None]
    x = torch.cat([x, x.flip(-1)])
    padded = F.pad(x, [0, 64 - 45, 0, 64 - 37])
    with torch.no_grad():
        logits = net(padded)[..., : math.ceil(37 / 4), : math.ceil(45 / 4)]
        expected = torch.sigmoid((logits[0, 0] + logits[1, 0].flip(-1)) / 2)
        got = infer_boundary(net, image, pad=64)
        unpadded = infer_boundary(net, image, pad=0)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, unpadded)  # GroupNorm sees the padding, as in IRN
    # an image larger than the pad size is run as it is (IRN would crop it)
    with torch.no_grad():
        big = np.zeros((70, 50, 3), np.uint8)
        assert infer_boundary(net, big, pad=64).shape == (18, 13)


def test_train_irn_refuses_a_bad_resize_kernel(toy_root, ir_labels, tmp_path):
    image, label = _irn_image_and_label()
    with pytest.raises(ConfigError, match="resize must be 'pil' or 'opencv', got 'cubic'"):
        irn_train_transform(image, label, np.random.default_rng(0), scale_range=(0.5, 1.5), crop=64, resize="cubic")
    with pytest.raises(ConfigError, match="resize must be 'pil' or 'opencv', got 'cv2'"):
        _train(_cfg(toy_root, ir_labels, tmp_path / "bad", resize="cv2"))
    assert not (tmp_path / "bad").exists()


def test_train_irn_run_recorded_before_resize_existed_resumes_with_opencv(toy_root, ir_labels, tmp_path, monkeypatch):
    import yaml

    from _restate import as_recorded_before
    from wsss.pseudo import train_irn as module

    out = tmp_path / "old"
    _train(_cfg(toy_root, ir_labels, out, max_steps=2, save_every=1, epochs=1, resize="opencv"))
    as_recorded_before(out, "resize")  # as written before the setting existed

    used = []
    real = module.irn_train_transform

    def spy(*a, **k):
        used.append(k["resize"])
        return real(*a, **k)

    monkeypatch.setattr(module, "irn_train_transform", spy)
    _train(_cfg(toy_root, ir_labels, out, max_steps=2, save_every=1, epochs=1), resume=True)  # the default, pil
    assert used and set(used) == {"opencv"}
    assert yaml.safe_load((out / "config.yaml").read_text())["resize"] == "opencv"
    assert torch.load(out / "resume.pt", weights_only=True)["config"]["resize"] == "opencv"
    # a run recorded with pil is not resumed with opencv
    _train(_cfg(toy_root, ir_labels, tmp_path / "new", max_steps=1, save_every=1, epochs=1))
    (tmp_path / "new" / "done.json").unlink()
    with pytest.raises(ConfigError, match="configuration changed \\(resize\\)"):
        _train(_cfg(toy_root, ir_labels, tmp_path / "new", max_steps=1, save_every=1, epochs=1, resize="opencv"),
               resume=True)


def test_backbone_lr_trains_the_backbone_convolutions_only(toy_root, ir_labels, tmp_path):
    """``backbone_lr > 0`` (not IRN, which freezes the backbone): the backbone's convolutions learn,
    its BatchNorms keep their weights and statistics, and the finished run loads with them."""
    out = _train(_cfg(toy_root, ir_labels, tmp_path / "bb", backbone_lr=0.05, max_steps=3, save_every=0))
    trained = load_file(str(out / "boundary.safetensors"))
    init = _tiny_net(seed=0).state_dict()
    convs = [k for k in init if k.startswith("backbone.") and init[k].dim() == 4]
    norms = [k for k in init if k.startswith("backbone.") and init[k].dim() <= 1]
    assert convs and norms
    assert all(not torch.equal(init[k], trained[k]) for k in convs)
    for k in norms:  # BatchNorm weight, bias, running mean / var, batch count
        assert torch.equal(init[k], trained[k]), k
    net = load_boundary_net(out)
    for k in convs:
        torch.testing.assert_close(net.state_dict()[k], trained[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="backbone_lr must be >= 0"):
        _train(_cfg(toy_root, ir_labels, tmp_path / "neg", backbone_lr=-1.0))
