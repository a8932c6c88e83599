"""The reference-recipe options of train-seg (issue #14): each changes what it should and nothing else."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from wsss.config import ConfigError
from wsss.data import DataConfig
from wsss.engine import checkpoint as ckpt
from wsss.seg.heads import PSAHead
from wsss.seg.model import build_segmenter, cross_entropy
from wsss.seg.train import TrainSegConfig, build_from_config, train_seg

K = 5


def _slow_ohem_ce(logits, target, thresh, min_kept, weight=None, ignore=255):
    """OHEM cross entropy written out pixel by pixel: the labelled pixels whose probability of
    their class is at most max(thresh, k-th smallest), the (weighted) mean of their -log p."""
    probs = torch.softmax(logits, dim=1)
    pixels = []
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                c = int(target[b, i, j])
                if c != ignore:
                    pixels.append((float(probs[b, c, i, j]), -float(torch.log(probs[b, c, i, j])), c))
    if thresh > 0:
        ranked = sorted(p for p, _, _ in pixels)
        cut = thresh
        if min_kept > 0:
            cut = max(thresh, ranked[min(min_kept, len(ranked)) - 1])
        pixels = [px for px in pixels if px[0] <= cut]
    w = [1.0 if weight is None else float(weight[c]) for _, _, c in pixels]
    return sum(wi * nll for wi, (_, nll, _) in zip(w, pixels)) / sum(w)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 6, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, K, (2, 6, 7), generator=g)
    target[0, :2] = 255
    return logits, target


@pytest.mark.parametrize("thresh,min_kept", [(0.0, 0), (0.3, 0), (0.3, 40), (0.7, 5), (0.05, 1000)])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_with_ohem_and_class_weights_equals_the_pixel_loop(batch, thresh, min_kept, weighted):
    logits, target = batch
    weight = torch.tensor([0.5, 1.0, 2.0, 0.8, 1.3], dtype=torch.float64) if weighted else None
    got = cross_entropy(logits, target, 255, weight=weight, ohem_thresh=thresh, ohem_min_kept=min_kept)
    assert got.item() == pytest.approx(_slow_ohem_ce(logits, target, thresh, min_kept, weight), rel=1e-9)


def test_class_weights_are_torchs_weighted_mean_and_ohem_one_keeps_every_pixel(batch):
    logits, target = batch
    weight = torch.tensor([0.5, 1.0, 2.0, 0.8, 1.3], dtype=torch.float64)
    torch.testing.assert_close(cross_entropy(logits, target, 255, weight=weight),
                               F.cross_entropy(logits, target, weight=weight, ignore_index=255))
    plain = cross_entropy(logits, target, 255)
    torch.testing.assert_close(cross_entropy(logits, target, 255, ohem_thresh=1.0), plain)
    torch.testing.assert_close(cross_entropy(logits, target, 255, weight=torch.ones(K, dtype=torch.float64)), plain)
    # harder pixels only: the mean loss rises
    assert cross_entropy(logits, target, 255, ohem_thresh=0.2, ohem_min_kept=0) > plain


def _model(**kw):
    torch.manual_seed(0)
    return build_segmenter(kw.pop("head", "fcn"), "resnet_tiny", K, channels=8, **kw)


def test_ohem_and_class_weights_reach_every_cross_entropy_term():
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, K, (2, 32, 32))
    for head in ("fcn", "acf"):
        plain, ohem = _model(head=head), _model(head=head, ohem_thresh=0.5, ohem_min_kept=10,
                                                class_weights=[1, 2, 1, 1, 3])
        ohem.load_state_dict(plain.state_dict())
        plain.eval(), ohem.eval()
        with torch.no_grad():
            # random logits in place of the near-uniform untrained ones, so pixels differ in hardness
            out = {k: torch.randn_like(v) * 3 if torch.is_tensor(v) else v for k, v in plain(x).items()}
            a, b = plain.loss(out, y), ohem.loss(out, y)
        ce = {"weight": torch.tensor([1.0, 2, 1, 1, 3]), "ohem_thresh": 0.5, "ohem_min_kept": 10}
        for term, key in (("seg", "out"), ("aux", "aux"), ("coarse", "coarse")):
            if key in out:
                torch.testing.assert_close(b[term], cross_entropy(out[key], y, **ce))
                assert not torch.allclose(a[term], b[term])
    with pytest.raises(ValueError, match="one weight per class"):
        _model(class_weights=[1, 2]).loss(_model()(x), y)
    with pytest.raises(ValueError, match="ohem_thresh"):
        _model(ohem_thresh=1.5)


def test_aux_weight_zero_builds_no_auxiliary_head():
    with_aux, without = _model(), _model(aux_weight=0)
    assert without.aux_head is None and "aux" not in without.loss_weights
    extra = set(with_aux.state_dict()) - set(without.state_dict())
    assert extra and all(k.startswith("aux_head.") for k in extra)
    assert set(without.state_dict()) < set(with_aux.state_dict())
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, K, (1, 32, 32))
    out = without(x)
    assert "aux" not in out
    terms = without.loss(out, y)
    assert set(terms) == {"seg", "loss"} and torch.equal(terms["loss"], terms["seg"])


def test_acf_center_channels_sets_the_class_centre_width():
    cfg = TrainSegConfig(head="acf", backbone="resnet_tiny", channels=16)
    assert build_from_config(cfg, K).head.acf.reduce[0].out_channels == 8  # channels // 2 by default
    wide = build_from_config(TrainSegConfig(head="acf", backbone="resnet_tiny", channels=16, acf_center_channels=16), K)
    assert wide.head.acf.reduce[0].out_channels == 16 and wide.head.reduce[0].out_channels == 16


def test_psa_outside_window_only_matters_beyond_the_window():
    torch.manual_seed(0)
    excluded = PSAHead(in_channels=8, num_classes=K, channels=4, mask_size=5, shrink=1).eval()
    zero = PSAHead(in_channels=8, num_classes=K, channels=4, mask_size=5, shrink=1, outside="zero").eval()
    zero.load_state_dict(excluded.state_dict())
    with torch.no_grad():
        small = torch.randn(1, 8, 3, 3)  # 3 x 3 map: every pair lies inside the 5 x 5 window
        torch.testing.assert_close(zero(small)["logits"], excluded(small)["logits"], rtol=0, atol=0)
        large = torch.randn(1, 8, 7, 7)
        assert not torch.allclose(zero(large)["logits"], excluded(large)["logits"])
        # "zero": the out-of-window pairs enter the softmax with score 0 (semseg's psamask)
        branch = zero.psa.collect
        feats = branch.reduce(large)
        scores = branch.attention(feats)  # (1, 25, 7, 7): the 5 x 5 window of each position
        n = 49
        dense = torch.zeros(n, n)
        for q in range(n):
            qi, qj = divmod(q, 7)
            for p in range(n):
                pi, pj = divmod(p, 7)
                di, dj = pi - qi + 2, pj - qj + 2
                if 0 <= di < 5 and 0 <= dj < 5:
                    dense[p, q] = scores[0, di * 5 + dj, qi, qj]
        expected = feats.flatten(2) @ torch.softmax(dense, dim=0)
        torch.testing.assert_close(branch(large).flatten(2), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        PSAHead(in_channels=8, num_classes=K, channels=4, mask_size=5, outside="none")


def _cfg(toy_root, out, **kw):
    base = dict(
        data=DataConfig(kind="voc", root=str(toy_root), split="train"), val_split="val", head="fcn",
        backbone="resnet_tiny", channels=16, iterations=24, batch_size=4, crop=48, base_size=64, workers=0,
        device="cpu", out=str(out), log_every=0, lr=0.05,
    )
    base.update(kw)
    return TrainSegConfig(**base)


def test_keep_best_installs_the_best_val_weights_and_keeps_the_last(toy_root, tmp_path):
    out = train_seg(_cfg(toy_root, tmp_path / "run", keep_best=24), progress=False)  # evaluations at steps 12, 24
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_mIoU"]) for r in records if "val_mIoU" in r]
    assert [s for s, _ in evals] == [12, 24]
    best_step, best_miou = max(evals, key=lambda e: (e[1], e[0]))  # the last of equal scores, as PCAA's code
    done = json.loads((out / "done.json").read_text())
    assert done["best_step"] == best_step and done["best_val_mIoU"] == pytest.approx(best_miou)
    model, best, last = (load_file(str(out / name)) for name in ("model.safetensors", "best.safetensors",
                                                                 "last.safetensors"))
    final = ckpt.load_resume(out / ckpt.RESUME_NAME)["model"]
    for k in model:
        assert torch.equal(model[k], best[k]) and torch.equal(last[k], final[k].contiguous())
    # a window inside the last epoch compares only the final evaluation: the best is the last
    out2 = train_seg(_cfg(toy_root, tmp_path / "window", keep_best=11), progress=False)
    done2 = json.loads((out2 / "done.json").read_text())
    assert done2["best_step"] == 24
    a, b = load_file(str(out2 / "model.safetensors")), load_file(str(out2 / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if best_step == 12:  # the run above kept an earlier epoch: its installed weights are not the last
        assert any(not torch.equal(model[k], last[k]) for k in model)
    with pytest.raises(ConfigError, match="val_split"):
        train_seg(_cfg(toy_root, tmp_path / "noval", keep_best=10, val_split=None), progress=False)


def test_keep_best_off_writes_only_the_last_weights(toy_root, tmp_path):
    out = train_seg(_cfg(toy_root, tmp_path / "run", iterations=12), progress=False)
    assert not (out / "best.safetensors").exists() and not (out / "last.safetensors").exists()
    assert "best_step" not in json.loads((out / "done.json").read_text())
    final = ckpt.load_resume(out / ckpt.RESUME_NAME)["model"]
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[k], final[k].contiguous()) for k in weights)
    np.testing.assert_equal(sorted(weights), sorted(final))


def test_cli_options_reach_the_config(monkeypatch):
    from click.testing import CliRunner

    import wsss.seg.train as seg_train
    from wsss.cli import main

    seen = {}
    monkeypatch.setattr(seg_train, "train_seg", lambda cfg, **_: seen.setdefault("cfg", cfg))
    result = CliRunner().invoke(main, [
        "train-seg", "--data-root", "x", "--head", "psa", "--psa-outside", "zero", "--acf-center-channels", "64",
        "--aux-weight", "0", "--class-weights", "1,2.5", "--ohem-thresh", "0.7", "--ohem-min-kept", "5",
        "--head-lr-mult", "10", "--keep-best", "100"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.psa_outside, cfg.acf_center_channels, cfg.aux_weight, cfg.class_weights) == ("zero", 64, 0.0, (1.0, 2.5))
    assert (cfg.ohem_thresh, cfg.ohem_min_kept, cfg.head_lr_mult, cfg.keep_best) == (0.7, 5, 10.0, 100)
    bad = CliRunner().invoke(main, ["train-seg", "--data-root", "x", "--class-weights", "1,a"])
    assert bad.exit_code != 0 and "comma-separated list of numbers" in bad.output


def test_an_interrupted_keep_best_install_finishes_on_resume(toy_root, tmp_path):
    cfg = _cfg(toy_root, tmp_path / "run", keep_best=24)
    out = train_seg(cfg, progress=False)
    installed = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / "last.safetensors"))
    # the state a kill inside the install leaves: last weights moved aside, best not yet in place,
    # no done.json
    (out / "done.json").unlink()
    (out / "model.safetensors").unlink()
    train_seg(cfg, resume=True, progress=False)
    assert (out / "done.json").is_file()
    again, last_again = load_file(str(out / "model.safetensors")), load_file(str(out / "last.safetensors"))
    assert all(torch.equal(again[k], installed[k]) and torch.equal(last_again[k], last[k]) for k in again)


def test_acfnet_aspp_equals_its_branches_written_out():
    """ACFNet's ASPP base (Sec. 4.1): 1x1 and 3x3 at dilations 12 / 24 / 36, concatenated, fused by a 1x1
    block; against convolutions, batch norms and ReLUs written out with the module's own weights."""
    import torch.nn.functional as F

    from wsss.seg.heads import ASPP

    torch.manual_seed(0)
    aspp = ASPP(6, 4).eval()
    for m in aspp.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 40, 37)

    def block(seq, inp, dilation, padding):
        conv, bn = seq[0], seq[1]
        y = F.conv2d(inp, conv.weight, None, padding=padding, dilation=dilation)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        return torch.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])

    parts = [block(aspp.branches[0], x, 1, 0)] + [block(b, x, d, d) for b, d in zip(aspp.branches[1:], (12, 24, 36))]
    expected = block(aspp.project, torch.cat(parts, 1), 1, 0)
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), expected, rtol=1e-5, atol=1e-6)
    assert [b[0].dilation for b in aspp.branches] == [(1, 1), (12, 12), (24, 24), (36, 36)]


def test_acf_base_aspp_replaces_only_the_base_feature_map():
    plain = build_from_config(TrainSegConfig(head="acf", backbone="resnet_tiny", channels=16), K)
    aspp = build_from_config(TrainSegConfig(head="acf", backbone="resnet_tiny", channels=16, acf_base="aspp"), K)
    p, a = set(plain.state_dict()), set(aspp.state_dict())
    assert {k for k in p ^ a if not k.startswith("head.reduce.")} == set()
    assert any(k.startswith("head.reduce.branches.3.") for k in a)
    out = aspp(torch.randn(1, 3, 32, 32))
    assert out["out"].shape == (1, K, 32, 32) and out["coarse"].shape == (1, K, 32, 32)


def test_msc_inputs_are_deeplab_pytorchs_max_over_scales_and_their_losses():
    """msc_scales (deeplab-pytorch's MSC): inference = the pixel-wise max of the image's logits and
    each scale's (bilinear to the image's logit size), upsampled; training loss = the sum of the
    cross entropies of [image, each scale, max] at their own sizes, labels resized by PIL's nearest."""
    import torch.nn.functional as F
    from PIL import Image

    from wsss.seg.model import cross_entropy

    torch.manual_seed(0)
    plain = build_from_config(TrainSegConfig(head="deeplabv2", backbone="resnet_tiny", aux_weight=0), K)
    msc = build_from_config(TrainSegConfig(head="deeplabv2", backbone="resnet_tiny", aux_weight=0,
                                           msc_scales=(0.5, 0.75)), K)
    msc.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 41, 53)
    y = torch.randint(0, K, (2, 41, 53))
    y[0, :5] = 255

    def head_logits(inp):
        return plain.head(plain.backbone(inp)["layer4"])["logits"]

    with torch.no_grad():
        plain.eval(), msc.eval()
        full = head_logits(x)
        scaled = [head_logits(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in (0.5, 0.75)]
        up = [F.interpolate(s, size=full.shape[-2:], mode="bilinear", align_corners=False) for s in scaled]
        fused = torch.maximum(full, torch.maximum(up[0], up[1]))
        want = F.interpolate(fused, size=(41, 53), mode="bilinear", align_corners=False)
        torch.testing.assert_close(msc(x)["out"], want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain(x)["out"], want)

        msc.train()
        for m in msc.modules():  # the loss, not the batch statistics, is under test here
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        out = msc(x)

        def pil_nearest(labels, size):
            return torch.stack([torch.from_numpy(np.array(
                Image.fromarray(l.numpy().astype(np.uint8)).resize(size[::-1], Image.NEAREST))).long() for l in labels])

        expected = sum(cross_entropy(logit, pil_nearest(y, logit.shape[-2:])) for logit in [full] + scaled + [fused])
        torch.testing.assert_close(msc.loss(out, y)["seg"], expected, rtol=1e-5, atol=1e-6)


def test_freeze_bn_keeps_the_backbones_statistics_and_affine_weights():
    cfg = TrainSegConfig(head="fcn", backbone="resnet_tiny", channels=8, freeze_bn=True)
    model = build_from_config(cfg, K).train()
    bn_names = [n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if k.rsplit(".", 1)[0] in bn_names}
    assert len(before) == 5 * len(bn_names)  # weight, bias, running mean / var, batches tracked
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(m.training for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d))  # heads train theirs
    groups = model.param_groups(lr=0.1, weight_decay=0.0)
    opt = torch.optim.SGD([p for g in groups for p in g.params], lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, K, (2, 32, 32))
    model.loss(model(x), y)["loss"].backward()
    opt.step()
    after = model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    unfrozen = build_from_config(TrainSegConfig(head="fcn", backbone="resnet_tiny", channels=8), K).train()
    unfrozen(x)
    assert not all(torch.equal(before[k], unfrozen.backbone.state_dict()[k]) for k in before if "running_mean" in k)
