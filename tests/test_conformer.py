"""Tests of wsss.models.conformer against a plain re-statement of the official
Conformer forward and the official Conformer-S/16 state-dict layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.models.conformer import (
    CONFORMER_CONFIGS,
    Conformer,
    ConformerFeatures,
    conformer_s16,
    conformer_tiny,
)

FIXTURE = Path(__file__).parent / "fixtures" / "conformer_s16_state_dict.txt"
TINY = dict(patch_size=16, base_channel=16, channel_ratio=1, embed_dim=64, depth=6, num_heads=2, mlp_ratio=4.0)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norms, BN running stats, biases and cls token, so that eps,
    eval-mode BN and every bias are exercised."""
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                fill(m.running_mean, -0.2, 0.2)
                fill(m.running_var, 0.5, 2.0)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                fill(m.weight, 0.5, 1.5)
                fill(m.bias, -0.2, 0.2)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                fill(m.bias, -0.1, 0.1)
        fill(model.cls_token, -1.0, 1.0)
    return model


# ---------------------------------------------------------------------------
# Reference forward: official Conformer restated op by op from the state dict.
# ---------------------------------------------------------------------------

def ref_bn(x, sd, p, eps=1e-6):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], training=False, momentum=0.0, eps=eps)


def ref_ln(x, sd, p, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def ref_linear(x, sd, p):
    return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]


def ref_conv_block(x, sd, p, stride=1, x_t=None):
    shortcut = x
    y = F.relu(ref_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    if x_t is not None:
        y = y + x_t
    x2 = F.relu(ref_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
    y = ref_bn(F.conv2d(x2, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    if f"{p}.residual_conv.weight" in sd:
        shortcut = ref_bn(F.conv2d(shortcut, sd[f"{p}.residual_conv.weight"], stride=stride), sd, f"{p}.residual_bn")
    return F.relu(y + shortcut), x2


def ref_vit_block(x, sd, p, heads):
    b, n, d = x.shape
    hd = d // heads
    y = ref_ln(x, sd, f"{p}.norm1")
    qkv = ref_linear(y, sd, f"{p}.attn.qkv")
    outs, maps = [], []
    for h in range(heads):
        q = qkv[..., h * hd:(h + 1) * hd]
        k = qkv[..., d + h * hd:d + (h + 1) * hd]
        v = qkv[..., 2 * d + h * hd:2 * d + (h + 1) * hd]
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)
        outs.append(a @ v)
        maps.append(a)
    x = x + ref_linear(torch.cat(outs, dim=-1), sd, f"{p}.attn.proj")
    y = ref_ln(x, sd, f"{p}.norm2")
    x = x + ref_linear(F.gelu(ref_linear(y, sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return x, torch.stack(maps).mean(0)


def ref_fcu_down(x2, cls, sd, p, dw):
    y = F.avg_pool2d(F.conv2d(x2, sd[f"{p}.conv_project.weight"], sd[f"{p}.conv_project.bias"]), dw, dw)
    y = F.gelu(ref_ln(y.flatten(2).transpose(1, 2), sd, f"{p}.ln"))
    return torch.cat([cls, y], dim=1)


def ref_fcu_up(t, sd, p, h, w, up):
    b, _, d = t.shape
    y = t[:, 1:].transpose(1, 2).reshape(b, d, h, w)
    y = F.relu(ref_bn(F.conv2d(y, sd[f"{p}.conv_project.weight"], sd[f"{p}.conv_project.bias"]), sd, f"{p}.bn"))
    return y.repeat_interleave(up, dim=2).repeat_interleave(up, dim=3)


def ref_forward(sd, x, *, patch_size, depth, num_heads, drop_last_block, **_):
    """Official forward (pengzhiliang/Conformer) restated, with zero padding
    to the needed multiple and cropping of the CNN map."""
    _, _, H, W = x.shape
    stride = 16 if drop_last_block else 32
    mult = math.lcm(patch_size, stride)
    x = F.pad(x, (0, -W % mult, 0, -H % mult))
    xb = F.relu(ref_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1", eps=1e-5))
    xb = F.max_pool2d(xb, 3, 2, 1)
    xc, _ = ref_conv_block(xb, sd, "conv_1")
    dw = patch_size // 4
    t = F.conv2d(xb, sd["trans_patch_conv.weight"], sd["trans_patch_conv.bias"], stride=dw)
    grid = tuple(t.shape[-2:])
    t = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
    t, a = ref_vit_block(t, sd, "trans_1", num_heads)
    attn = [a]
    per = depth // 3
    schedule = [(i, 1, dw) for i in range(2, per + 1)]
    schedule += [(i, 2 if i == per + 1 else 1, dw // 2) for i in range(per + 1, 2 * per + 1)]
    schedule += [(i, 2 if i == 2 * per + 1 else 1, dw // 4) for i in range(2 * per + 1, depth + 1)]
    if drop_last_block:
        schedule = schedule[:-1]
    for i, s, sdw in schedule:
        p = f"conv_trans_{i}"
        xc, x2 = ref_conv_block(xc, sd, f"{p}.cnn_block", stride=s)
        t_in = ref_fcu_down(x2, t[:, :1], sd, f"{p}.squeeze_block", sdw) + t
        t, a = ref_vit_block(t_in, sd, f"{p}.trans_block", num_heads)
        attn.append(a)
        x_r = ref_fcu_up(t, sd, f"{p}.expand_block", x2.shape[2] // sdw, x2.shape[3] // sdw, sdw)
        xc, _ = ref_conv_block(xc, sd, f"{p}.fusion_block", stride=2 if i == depth else 1, x_t=x_r)
    xc = xc[:, :, :-(-H // stride), :-(-W // stride)]
    t = ref_ln(t, sd, "trans_norm", eps=1e-5)
    conv_logits = ref_linear(xc.mean(dim=(2, 3)), sd, "conv_cls_head")
    trans_logits = ref_linear(t[:, 0], sd, "trans_cls_head")
    return dict(cnn=xc, cls=t[:, 0], tokens=t[:, 1:], grid=grid, attn=attn,
                conv_logits=conv_logits, trans_logits=trans_logits)


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return bool(((a - b).abs().max() / b.abs().max().clamp_min(1.0)) < tol)


@pytest.mark.parametrize("drop_last_block", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_reference_forward(drop_last_block, dtype, tol):
    cfg = dict(TINY, qkv_bias=True, drop_last_block=drop_last_block)
    torch.manual_seed(0)
    model = randomise(Conformer(num_classes=5, **cfg)).to(dtype).eval()
    x = torch.randn(2, 3, 80, 112, dtype=dtype)
    sd = model.state_dict()
    with torch.no_grad():
        ref = ref_forward(sd, x, **cfg)
        feats = model.forward_features(x, return_attn=True)
        conv_logits, trans_logits = model(x)
    assert isinstance(feats, ConformerFeatures)
    assert feats.grid == ref["grid"]
    for key in ("cnn", "cls", "tokens"):
        assert getattr(feats, key).shape == ref[key].shape, key
        assert close(getattr(feats, key), ref[key], tol), key
    assert close(conv_logits, ref["conv_logits"], tol)
    assert close(trans_logits, ref["trans_logits"], tol)
    assert len(feats.attn) == len(ref["attn"]) == (5 if drop_last_block else 6)
    for a, r in zip(feats.attn, ref["attn"]):
        assert a.shape == r.shape
        assert close(a, r, tol)


def read_fixture() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape, dtype = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def test_s16_state_dict_matches_official():
    expected = read_fixture()
    assert len(expected) == 718
    with torch.device("meta"):
        model = conformer_s16(num_classes=1000)
    got = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    assert sorted(got) == sorted(expected)
    assert sum(p.numel() for p in model.parameters()) == 37_673_424
    assert model.cnn_channels == 1024 and model.embed_dim == 384 and model.cnn_stride == 32


def test_drop_last_block_keys_are_subset():
    with torch.device("meta"):
        full = conformer_s16(num_classes=1000)
        short = conformer_s16(num_classes=1000, drop_last_block=True)
    full_sd, short_sd = full.state_dict(), short.state_dict()
    assert set(short_sd) < set(full_sd)
    assert {k.split(".")[0] for k in set(full_sd) - set(short_sd)} == {"conv_trans_12"}
    assert all(short_sd[k].shape == full_sd[k].shape for k in short_sd)
    assert short.cnn_stride == 16 and short.cnn_channels == 1024 and short.num_transformer_blocks == 11
    assert full.num_transformer_blocks == 12


def test_configs_build():
    assert set(CONFORMER_CONFIGS) == {"conformer_tiny", "conformer_ti16", "conformer_s16", "conformer_b16"}
    with torch.device("meta"):
        ti = CONFORMER_CONFIGS["conformer_ti16"](num_classes=20)
        b = CONFORMER_CONFIGS["conformer_b16"](num_classes=20)
    assert ti.cnn_channels == 256 and ti.embed_dim == 384
    assert b.cnn_channels == 1536 and b.embed_dim == 576
    assert b.trans_1.attn.num_heads == 9


@pytest.mark.parametrize("drop_last_block", [False, True])
def test_return_attn(drop_last_block):
    torch.manual_seed(0)
    model = randomise(conformer_tiny(num_classes=4, drop_last_block=drop_last_block)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = model.forward_features(x)
        with_attn = model.forward_features(x, return_attn=True)
        logits = model(x)
    assert plain.attn is None
    n = 1 + with_attn.grid[0] * with_attn.grid[1]
    assert len(with_attn.attn) == model.num_transformer_blocks == (5 if drop_last_block else 6)
    for a in with_attn.attn:
        assert a.shape == (2, n, n) and a.dtype == torch.float32
        assert torch.allclose(a.sum(-1), torch.ones(2, n), atol=1e-5)
    # with the maps asked for, attention is computed explicitly instead of by the fused kernel:
    # the same arithmetic up to float rounding
    for key in ("cnn", "cls", "tokens"):
        torch.testing.assert_close(getattr(plain, key), getattr(with_attn, key), rtol=1e-4, atol=1e-4)
    pooled = model.pooling(plain.cnn).flatten(1)
    assert torch.equal(logits[0], model.conv_cls_head(pooled))
    assert torch.equal(logits[1], model.trans_cls_head(plain.cls))
    # "mean": the blocks' mean, summed as they run, and the same features
    with torch.no_grad():
        mean = model.forward_features(x, return_attn="mean")
    assert len(mean.attn) == 1
    torch.testing.assert_close(mean.attn[0], torch.stack(with_attn.attn).mean(0), rtol=1e-6, atol=1e-7)
    for key in ("cnn", "cls", "tokens"):
        assert torch.equal(getattr(mean, key), getattr(with_attn, key))
    with pytest.raises(ValueError, match="return_attn"):
        model.forward_features(x, return_attn="sum")
    # with autograd on, the mean is differentiable (no in-place update of a map it saved)
    grad_mean = model.forward_features(x, return_attn="mean").attn[0]
    grad_mean.sum().backward()
    torch.testing.assert_close(grad_mean.detach(), mean.attn[0], rtol=1e-6, atol=1e-7)


def test_attention_in_chunks_equals_the_whole_explicit_attention(monkeypatch):
    """Without autograd the map and output come from query-row chunks (AD-CAM's extraction, issue
    #16); with it, from the whole (B, heads, N, N) softmax. Both are the same arithmetic."""
    from wsss.models.conformer import Attention

    torch.manual_seed(0)
    model = randomise(conformer_tiny(num_classes=4, drop_last_block=True)).eval()
    x = torch.randn(2, 3, 96, 128)  # 6 x 8 = 48 tokens + cls: chunks of 16 rows -> 4 chunks
    monkeypatch.setattr(Attention, "CHUNK_ELEMENTS", {"cpu": 1})
    with torch.no_grad():
        chunked = model.forward_features(x, return_attn=True)
    whole = model.forward_features(x, return_attn=True)  # autograd on: the whole-tensor path
    for a, b in zip(chunked.attn, whole.attn):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    for key in ("cnn", "cls", "tokens"):
        torch.testing.assert_close(getattr(chunked, key), getattr(whole, key).detach(), rtol=1e-4, atol=1e-5)
    attn = model.trans_1.attn
    q, k, v = (torch.randn(2, attn.num_heads, 49, 8) for _ in range(3))
    out, mean = attn._attention_in_chunks(q, k, v, "cpu")
    heads = attn._attention(q, k, "cpu")
    torch.testing.assert_close(out, heads @ v, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean, heads.mean(1), rtol=1e-6, atol=1e-7)


def grads(model: Conformer, loss: torch.Tensor) -> dict[str, bool]:
    """Which parameters get a non-zero gradient from ``loss``."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


@pytest.mark.parametrize("detach", [False, True])
def test_detach_branches(detach):
    torch.manual_seed(0)
    model = randomise(conformer_tiny(num_classes=3, detach_branches=detach)).eval()
    x = torch.randn(2, 3, 64, 64)
    groups = model.param_groups()
    ids = {name: id(p) for name, p in model.named_parameters()}
    cnn_ids = {id(p) for p in groups["cnn"]}
    trans_ids = {id(p) for p in groups["transformer"]}
    assert not cnn_ids & trans_ids and len(cnn_ids | trans_ids) == len(ids)

    conv_logits, trans_logits = model(x)
    from_trans = grads(model, trans_logits.square().sum())
    conv_logits, trans_logits = model(x)
    from_conv = grads(model, conv_logits.square().sum())

    cnn_only = "conv_trans_3.cnn_block.conv1.weight"
    trans_only = "conv_trans_3.trans_block.attn.qkv.weight"
    assert from_trans[trans_only] and from_conv[cnn_only]
    assert from_trans[cnn_only] is not detach
    assert from_conv[trans_only] is not detach
    if detach:
        stem = {"conv1.weight", "bn1.weight", "bn1.bias"}
        # The CNN loss reaches exactly the CNN group; the transformer loss the
        # transformer group plus the shared stem (see Conformer.param_groups).
        assert {n for n, g in from_conv.items() if g} <= {n for n in ids if ids[n] in cnn_ids}
        assert {n for n, g in from_trans.items() if g} <= {n for n in ids if ids[n] in trans_ids} | stem


@pytest.mark.parametrize("drop_last_block,stride", [(False, 32), (True, 16)])
def test_odd_input_sizes(drop_last_block, stride):
    model = conformer_tiny(num_classes=2, drop_last_block=drop_last_block).eval()
    assert model.cnn_stride == stride
    with torch.no_grad():
        for h, w in [(100, 75), (33, 17), (64, 64)]:
            f = model.forward_features(torch.randn(1, 3, h, w))
            assert f.cnn.shape == (1, model.cnn_channels, -(-h // stride), -(-w // stride))
            ph, pw = -(-h // model.pad_multiple) * model.pad_multiple, -(-w // model.pad_multiple) * model.pad_multiple
            assert f.grid == (ph // 16, pw // 16)
            assert f.tokens.shape == (1, f.grid[0] * f.grid[1], model.embed_dim)


def test_tiny_forward_backward():
    torch.manual_seed(0)
    model = conformer_tiny(num_classes=20, drop_path_rate=0.1, drop_rate=0.1).train()
    x = torch.randn(2, 3, 128, 128)
    target = torch.randint(0, 2, (2, 20)).float()
    conv_logits, trans_logits = model(x)
    assert conv_logits.shape == trans_logits.shape == (2, 20)
    loss = (F.binary_cross_entropy_with_logits(conv_logits, target)
            + F.binary_cross_entropy_with_logits(trans_logits, target))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
