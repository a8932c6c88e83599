"""Conformer backbone (Peng et al., "Conformer: Local Features Coupling Global
Representations for Visual Recognition", ICCV 2021), as used by AD-CAM.

A CNN branch (ResNet-like bottlenecks) and a ViT branch run side by side and
exchange features in every ``ConvTransBlock`` through two coupling units:
FCUDown (CNN map -> tokens) and FCUUp (tokens -> CNN map).

The module and parameter names follow the official release, so its flat state
dict ``Conformer_small_patch16.pth`` (718 entries) loads unchanged into
:func:`conformer_s16`. The transformer blocks reuse timm's layer naming
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``)
and timm's ``Mlp`` and ``DropPath``.

Behaviour of the official forward that changes outputs with the same weights,
and that this module keeps on purpose:

* FCUDown copies the previous cls token into its output and the block adds the
  previous tokens to it, so the cls token entering each ``trans_block`` is
  doubled.
* LayerNorm/BatchNorm use eps 1e-6, except the stem ``bn1`` and ``trans_norm``
  (PyTorch default 1e-5).
* FCUUp upsamples with nearest interpolation; FCUDown downsamples with an
  average pool of kernel = stride = ``dw_stride``.
* No positional embedding.

Additions for weakly-supervised segmentation (AD-CAM, Sec. 4.1, 4.2, 5.1):

* ``detach_branches`` cuts the gradient between the branches (AD-CAM Sec. 4.1,
  "we detach the interaction between two branches"; Table 3).
* ``drop_last_block`` removes ``conv_trans_{depth}`` so that the CNN map and the
  token grid are both at stride 16 (AD-CAM Sec. 5.1).
* ``forward_features(..., return_attn=True)`` returns the head-averaged
  attention matrix of every transformer block (AD-CAM Sec. 4.2, "AM").
* Inputs of any size: zero padding bottom/right, outputs cropped back.

Deviations from the official code (none affects the released configurations):

* ``conv_cls_head`` takes ``4 * base_channel * channel_ratio`` inputs (the width
  of the last CNN stage); the official code writes ``256 * channel_ratio``,
  which is the same number for ``base_channel=64`` but breaks for any other
  ``base_channel`` (e.g. the tiny test configuration).
* ``num_med_block`` (always 0 in the released models) is not supported.
* The official model takes only sizes that are multiples of 32; here other
  sizes are zero-padded and ``conv_cls_head`` pools the cropped CNN map (the
  map CAMs are computed from), so padding-only cells do not dilute the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

__all__ = [
    "CONFORMER_CONFIGS",
    "Conformer",
    "ConformerFeatures",
    "conformer_b16",
    "conformer_s16",
    "conformer_ti16",
    "conformer_tiny",
]

# Official eps of every LayerNorm/BatchNorm inside the blocks; the stem ``bn1``
# and ``trans_norm`` keep PyTorch's default 1e-5.
_EPS = 1e-6
# Output width / bottleneck width of a ConvBlock (ResNet bottleneck expansion).
_EXPANSION = 4
# Width of the stem; fixed in the official release whatever ``base_channel``.
_STEM_CHANNELS = 64


@dataclass
class ConformerFeatures:
    """Outputs of :meth:`Conformer.forward_features` for a (B, 3, H, W) input.

    Attributes:
        cnn: (B, C, ceil(H/s), ceil(W/s)) last CNN map before pooling, s =
            ``cnn_stride``; the cells that only saw padding are cropped away.
        cls: (B, D) cls token after ``trans_norm``.
        tokens: (B, h16 * w16, D) patch tokens after ``trans_norm``, row-major
            over ``grid``.
        grid: (h16, w16) token grid of the padded input (H and W padded to a
            multiple of ``Conformer.pad_multiple``).
        attn: None unless asked for; else one (B, 1 + N, 1 + N) tensor per
            transformer block (``trans_1`` then each ``conv_trans_*``), the
            softmaxed attention averaged over heads, index 0 = cls token,
            in float32 (float64 when the model runs in float64); with
            ``return_attn="mean"`` a single tensor, their mean over blocks.
    """

    cnn: torch.Tensor
    cls: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]
    attn: list[torch.Tensor] | None = None


class ConvBlock(nn.Module):
    """Bottleneck 1x1 -> 3x3 (stride) -> 1x1 with BN (eps 1e-6) and ReLU.

    ``x_t`` (the upsampled tokens from FCUUp) is added to the bottleneck
    activation before the 3x3 conv, as in the official fusion block. Returns
    the block output and the activation after the 3x3 conv (the input of
    FCUDown).
    """

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        med_planes = outplanes // _EXPANSION
        self.conv1 = nn.Conv2d(inplanes, med_planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(med_planes, eps=_EPS)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(med_planes, med_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(med_planes, eps=_EPS)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(med_planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes, eps=_EPS)
        self.act3 = nn.ReLU()
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
            self.residual_bn = nn.BatchNorm2d(outplanes, eps=_EPS)
        else:
            self.residual_conv = None
            self.residual_bn = None

    def forward(self, x: torch.Tensor, x_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        if x_t is not None:
            x = x + x_t
        x2 = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x2))
        if self.residual_conv is not None:
            shortcut = self.residual_bn(self.residual_conv(shortcut))
        return self.act3(x + shortcut), x2


class FCUDown(nn.Module):
    """Coupling unit CNN map -> tokens: 1x1 conv, avg-pool by ``dw_stride``,
    LayerNorm (eps 1e-6), GELU; the cls token of the previous tokens is
    prepended unchanged (official behaviour: it is later added to itself)."""

    def __init__(self, inplanes: int, outplanes: int, dw_stride: int) -> None:
        super().__init__()
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.sample_pooling = nn.AvgPool2d(kernel_size=dw_stride, stride=dw_stride)
        self.ln = nn.LayerNorm(outplanes, eps=_EPS)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w); cls: (B, 1, D) -> (B, 1 + h*w/dw^2, D)."""
        x = self.sample_pooling(self.conv_project(x)).flatten(2).transpose(1, 2)
        return torch.cat([cls, self.act(self.ln(x))], dim=1)


class FCUUp(nn.Module):
    """Coupling unit tokens -> CNN map: drop the cls token, 1x1 conv, BN
    (eps 1e-6), ReLU, nearest upsampling by ``up_stride``."""

    def __init__(self, inplanes: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.bn = nn.BatchNorm2d(outplanes, eps=_EPS)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, 1 + h*w, D), grid (h, w) -> (B, C, h * up, w * up)."""
        b, _, d = x.shape
        x = x[:, 1:].transpose(1, 2).reshape(b, d, *grid)
        x = self.act(self.bn(self.conv_project(x)))
        if self.up_stride == 1:
            return x
        return F.interpolate(x, scale_factor=self.up_stride, mode="nearest")


class Attention(nn.Module):
    """Multi-head self-attention with timm's parameter names.

    The output comes from ``F.scaled_dot_product_attention``, except when the
    head-averaged attention map is asked for in eval mode: then map and output come
    from the same explicit softmax, computed a block of query rows at a time
    (:meth:`_attention_in_chunks`), and equal the fused output to float round-off.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attn: bool | torch.Tensor = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, N, D) and, if asked, the (B, N, N) head-averaged map.

        ``return_attn`` may be a (B, N, N) running sum instead of ``True``: without autograd the
        map is then added into it chunk by chunk (no N x N map of this block's own) and the sum is
        returned; with autograd the block's own map is returned and the caller adds it."""
        acc = return_attn if torch.is_tensor(return_attn) else None
        return_attn = acc is not None or bool(return_attn)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if not return_attn or (self.training and self.attn_drop > 0):
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
            attn = None
            if return_attn:
                attn = self._attention(q, k, x.device.type).mean(dim=1)
        elif not torch.is_grad_enabled():
            # The maps are needed anyway: use them for the output too instead of a second,
            # fused attention pass (AD-CAM's extraction cost, benchmarks/bench_cam_methods.py).
            out, attn = self._attention_in_chunks(q, k, v, x.device.type, acc)
        else:  # the same, whole, where autograd needs it (the chunks write into preallocated tensors)
            heads = self._attention(q, k, x.device.type)
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = (heads @ v.to(heads.dtype)).to(v.dtype)
            attn = heads.mean(dim=1)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        return out, attn

    # Elements of one chunk of per-head scores: about 16 MB of float32 on a CPU (the chunk stays in
    # cache across the matmul, softmax, P @ V and head sum: 0.55x the time of the full (B, heads, N, N)
    # tensor at N = 2,961, benchmarks/bench_cam_methods.py), 256 MB on a GPU (fewer, larger kernels).
    CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}

    def _attention_in_chunks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device_type: str,
                             acc: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and head-averaged map of explicit attention, a block of query rows at a time, so
        the (B, heads, N, N) tensor of :meth:`_attention` is never held whole. Row by row it is the
        same arithmetic (softmax over keys, then P @ V and the mean over heads). ``acc``: add the
        map into this (B, N, N) tensor and return it, instead of a new one."""
        b, heads, n, _ = q.shape
        dtype = torch.promote_types(q.dtype, torch.float32)
        rows = max(16, self.CHUNK_ELEMENTS.get(device_type, 1 << 22) // max(1, b * heads * n))
        with torch.autocast(device_type=device_type, enabled=False):
            qs = q.to(dtype) * self.scale
            kt = k.to(dtype).transpose(-2, -1).contiguous()
            vv = v.to(dtype)
            out = torch.empty(q.shape, dtype=dtype, device=q.device)
            attn = torch.empty((b, n, n), dtype=dtype, device=q.device) if acc is None else acc
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                p = (qs[:, :, start:stop] @ kt).softmax(dim=-1)
                torch.matmul(p, vv, out=out[:, :, start:stop])
                if acc is None:
                    torch.sum(p, dim=1, out=attn[:, start:stop])
                else:
                    attn[:, start:stop].add_(p.sum(dim=1), alpha=1.0 / heads)
            if acc is None:
                attn.div_(heads)
        return out.to(v.dtype), attn

    def _attention(self, q: torch.Tensor, k: torch.Tensor, device_type: str) -> torch.Tensor:
        """Softmaxed attention per head, (B, heads, N, N), in at least float32: autocast would
        push the matmul back to half precision, and the maps are averaged and thresholded."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=device_type, enabled=False):
            return ((q.to(dtype) * self.scale) @ k.to(dtype).transpose(-2, -1)).softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6, GELU MLP, stochastic depth)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, return_attn: bool | torch.Tensor = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attn)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class ConvTransBlock(nn.Module):
    """One Conformer stage block: ``cnn_block`` -> FCUDown -> ``trans_block``
    -> FCUUp -> ``fusion_block``.

    ``last_fusion`` gives the fusion block stride 2 and a residual conv (the
    last block of the network, CNN map 1/16 -> 1/32).
    """

    def __init__(self, inplanes: int, outplanes: int, res_conv: bool, stride: int, dw_stride: int,
                 embed_dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_rate: float,
                 attn_drop_rate: float, drop_path_rate: float, last_fusion: bool = False) -> None:
        super().__init__()
        med_planes = outplanes // _EXPANSION
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        if last_fusion:
            self.fusion_block = ConvBlock(outplanes, outplanes, stride=2, res_conv=True)
        else:
            self.fusion_block = ConvBlock(outplanes, outplanes)
        self.squeeze_block = FCUDown(med_planes, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, med_planes, dw_stride)
        self.trans_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                 drop_path_rate)

    def forward(self, x: torch.Tensor, x_t: torch.Tensor, detach: bool = False,
                return_attn: bool | torch.Tensor = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (B, C_in, H, W), x_t: (B, 1 + N, D) -> x (B, C_out, H', W'),
        x_t (B, 1 + N, D), attention (B, 1 + N, 1 + N) or None.

        ``detach`` stops the gradient at the inputs coming from the other
        branch (the CNN map into FCUDown, the tokens into FCUUp).
        """
        x, x2 = self.cnn_block(x)
        grid = (x2.shape[-2] // self.dw_stride, x2.shape[-1] // self.dw_stride)
        x_st = self.squeeze_block(x2.detach() if detach else x2, x_t[:, :1])
        x_t, attn = self.trans_block(x_st + x_t, return_attn)
        x_t_r = self.expand_block(x_t.detach() if detach else x_t, grid)
        x, _ = self.fusion_block(x, x_t_r)
        return x, x_t, attn


class Conformer(nn.Module):
    """Conformer classifier with a CNN head and a transformer head.

    Stages (stride of the CNN map in brackets; tokens always at 1/patch_size,
    no positional embedding): stem ``conv1``/``bn1``/``maxpool`` (1/4) ->
    ``conv_1`` + ``trans_patch_conv`` + ``trans_1`` -> ``conv_trans_2`` ..
    ``conv_trans_{depth/3}`` (1/4) -> the next depth/3 blocks (1/8) -> the last
    depth/3 blocks (1/16; the very last one, ``conv_trans_{depth}``, fuses with
    stride 2 -> 1/32). CNN widths are c, 2c, 4c with c = base_channel *
    channel_ratio (256/512/1024 for S/16); the first block of the second and
    third stage has stride 2 and a residual conv. The stem is 64 channels wide
    whatever ``base_channel`` (as in the release).

    Args:
        num_classes: classes of both heads.
        patch_size: token stride; a multiple of 16 (16 or 32 in the release).
        base_channel, channel_ratio: CNN width c = base_channel * channel_ratio.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer branch;
            ``depth`` transformer blocks in all, a multiple of 3.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the attention
            projection and in the MLP, attention dropout, stochastic depth
            (linear from 0 over the ``depth`` transformer blocks).
        detach_branches: cut the gradient between the branches at the coupling
            units (AD-CAM Sec. 4.1, Table 3). Stored as an attribute and read at
            every forward, so it can be switched after construction.
        drop_last_block: build no ``conv_trans_{depth}`` (AD-CAM Sec. 5.1): the
            CNN map stays at stride 16 and there are ``depth - 1`` transformer
            blocks. The last CNN stage keeps its width (4c), so ``conv_cls_head``
            keeps its shape (1024 inputs for S/16) but now reads the pooled map
            of ``conv_trans_{depth-1}``; ``trans_cls_head`` reads the cls token
            of that block. The state-dict keys are a strict subset of the full
            model's; with full-model weights the heads run on features they
            were not trained on, so fine-tune before trusting the logits.
    """

    def __init__(self, *, num_classes: int = 1000, patch_size: int = 16, in_chans: int = 3,
                 base_channel: int = 64, channel_ratio: int = 4, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, detach_branches: bool = False,
                 drop_last_block: bool = False) -> None:
        super().__init__()
        if depth % 3:
            raise ValueError(f"depth must be a multiple of 3, got {depth}")
        if patch_size % 16:
            raise ValueError(f"patch_size must be a multiple of 16, got {patch_size}")
        per_stage = depth // 3
        if drop_last_block and per_stage < 2:
            raise ValueError("drop_last_block needs depth >= 6, else the last stage would be empty")

        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.depth = depth
        self.detach_branches = detach_branches
        self.drop_last_block = drop_last_block
        self.cnn_stride = 16 if drop_last_block else 32
        self.pad_multiple = math.lcm(patch_size, self.cnn_stride)

        c1 = int(base_channel * channel_ratio)
        c2, c3 = 2 * c1, 4 * c1
        self.cnn_channels = c3
        dw = patch_size // 4
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.trans_norm = nn.LayerNorm(embed_dim)
        self.trans_cls_head = nn.Linear(embed_dim, num_classes)
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head = nn.Linear(c3, num_classes)

        self.conv1 = nn.Conv2d(in_chans, _STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.act1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.conv_1 = ConvBlock(_STEM_CHANNELS, c1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(_STEM_CHANNELS, embed_dim, kernel_size=dw, stride=dw)
        self.trans_1 = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[0])

        # (index, in width, out width, stride, dw_stride) of every ConvTransBlock,
        # numbered like the official release (2 .. depth).
        specs = [(i, c1, c1, 1, dw) for i in range(2, per_stage + 1)]
        for first, cin, cout, sdw in ((per_stage + 1, c1, c2, dw // 2), (2 * per_stage + 1, c2, c3, dw // 4)):
            specs += [(i, cin if i == first else cout, cout, 2 if i == first else 1, sdw)
                      for i in range(first, first + per_stage)]
        if drop_last_block:
            specs = specs[:-1]
        self._block_names: list[str] = []
        for i, cin, cout, stride, sdw in specs:
            name = f"conv_trans_{i}"
            self.add_module(name, ConvTransBlock(
                cin, cout, res_conv=stride == 2, stride=stride, dw_stride=sdw, embed_dim=embed_dim,
                num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[i - 1], last_fusion=i == depth))
            self._block_names.append(name)

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official initialisation; it matters only when training from scratch.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_transformer_blocks(self) -> int:
        """``trans_1`` plus one per ConvTransBlock: depth, or depth - 1."""
        return 1 + len(self._block_names)

    def conv_trans_blocks(self) -> list[ConvTransBlock]:
        """The ConvTransBlocks in forward order."""
        return [getattr(self, name) for name in self._block_names]

    def forward_features(self, x: torch.Tensor, return_attn: bool | str = False) -> ConformerFeatures:
        """x: (B, in_chans, H, W), any H, W -> :class:`ConformerFeatures`.

        H and W are zero-padded (bottom/right) to a multiple of
        ``pad_multiple`` because the coupling units need the CNN map to be an
        exact multiple of the token grid; ``cnn`` is cropped back to
        ceil(H / cnn_stride) x ceil(W / cnn_stride), the tokens are not.

        ``return_attn``: ``True`` keeps every block's head-averaged attention map; ``"mean"``
        returns only their mean over blocks (``attn`` is then a one-element list), summed as the
        blocks run, which is all AD-CAM needs and keeps one N x N map in memory instead of L.
        """
        b, _, h, w = x.shape
        pad_h, pad_w = -h % self.pad_multiple, -w % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        detach = self.detach_branches

        x_base = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x, _ = self.conv_1(x_base)
        x_t = self.trans_patch_conv(x_base)
        grid = (x_t.shape[-2], x_t.shape[-1])
        x_t = torch.cat([self.cls_token.expand(b, -1, -1), x_t.flatten(2).transpose(1, 2)], dim=1)
        if return_attn not in (False, True, "mean"):
            raise ValueError(f"return_attn must be False, True or 'mean', got {return_attn!r}")
        want = bool(return_attn)
        x_t, attn = self.trans_1(x_t, want)
        attns = [attn]
        for block in self.conv_trans_blocks():
            # "mean": a running sum, one N x N map in memory, not one per block; without autograd
            # each block adds its map into it as it computes it
            into = attns[0] if return_attn == "mean" and not torch.is_grad_enabled() else want
            x, x_t, attn = block(x, x_t, detach=detach, return_attn=into)
            if return_attn != "mean":
                attns.append(attn)
            elif attn is not attns[0]:
                attns[0] += attn
        if return_attn == "mean":
            attns[0] /= self.num_transformer_blocks

        s = self.cnn_stride
        x = x[:, :, : -(-h // s), : -(-w // s)]
        x_t = self.trans_norm(x_t)
        return ConformerFeatures(cnn=x, cls=x_t[:, 0], tokens=x_t[:, 1:], grid=grid,
                                 attn=attns if want else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in_chans, H, W) -> (conv_logits, trans_logits), each (B, K).

        conv_logits: ``conv_cls_head`` on the average-pooled (cropped) CNN map
        (AD-CAM Eq. 4); trans_logits: ``trans_cls_head`` on the normalised cls
        token (AD-CAM Eq. 5).
        """
        f = self.forward_features(x)
        return self.conv_cls_head(self.pooling(f.cnn).flatten(1)), self.trans_cls_head(f.cls)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Split the parameters into the two branches of the AD-CAM recipe
        (Sec. 5.1: transformer branch AdamW lr 2e-4 constant, CNN branch poly
        decay from 5e-4). Every parameter is in exactly one group.

        * ``'transformer'``: ``cls_token``, ``trans_patch_conv``, ``trans_1``,
          every ``trans_block``, every ``squeeze_block`` (FCUDown),
          ``trans_norm``, ``trans_cls_head``.
        * ``'cnn'``: stem ``conv1``/``bn1``, ``conv_1``, every ``cnn_block`` and
          ``fusion_block``, every ``expand_block`` (FCUUp), ``conv_cls_head``.

        A coupling unit goes with the branch it feeds: FCUDown produces tokens
        and FCUUp a CNN map, and with ``detach_branches`` the gradient reaching
        FCUDown comes only from the transformer loss and the gradient reaching
        FCUUp only from the CNN loss. ``trans_patch_conv`` feeds only the
        transformer. The stem feeds both branches (and gets gradients from both
        losses even with ``detach_branches``); it goes with the CNN branch
        because it is a ResNet stem whose main consumer is ``conv_1``.
        """
        transformer_prefixes = ("cls_token", "trans_patch_conv.", "trans_1.", "trans_norm.", "trans_cls_head.")
        transformer_parts = (".trans_block.", ".squeeze_block.")
        groups: dict[str, list[nn.Parameter]] = {"cnn": [], "transformer": []}
        for name, p in self.named_parameters():
            is_trans = name.startswith(transformer_prefixes) or any(part in name for part in transformer_parts)
            groups["transformer" if is_trans else "cnn"].append(p)
        return groups


def conformer_tiny(**kw) -> Conformer:
    """Tiny test/demo configuration (about 0.4 M parameters): base_channel 16,
    channel_ratio 1 (CNN widths 16/32/64), embed_dim 64, depth 6, 2 heads.
    Depth 6 is the smallest that keeps all three stages with
    ``drop_last_block``."""
    cfg = dict(patch_size=16, base_channel=16, channel_ratio=1, embed_dim=64, depth=6, num_heads=2,
               mlp_ratio=4.0, qkv_bias=True)
    return Conformer(**{**cfg, **kw})


def conformer_ti16(**kw) -> Conformer:
    """Conformer-Ti/16 (official ``Conformer_tiny_patch16``)."""
    cfg = dict(patch_size=16, channel_ratio=1, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
    return Conformer(**{**cfg, **kw})


def conformer_s16(**kw) -> Conformer:
    """Conformer-S/16 (official ``Conformer_small_patch16``; 37,673,424
    parameters with 1000 classes), the AD-CAM backbone."""
    cfg = dict(patch_size=16, channel_ratio=4, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
    return Conformer(**{**cfg, **kw})


def conformer_b16(**kw) -> Conformer:
    """Conformer-B/16 (official ``Conformer_base_patch16``)."""
    cfg = dict(patch_size=16, channel_ratio=6, embed_dim=576, depth=12, num_heads=9, mlp_ratio=4.0, qkv_bias=True)
    return Conformer(**{**cfg, **kw})


CONFORMER_CONFIGS: dict[str, Callable[..., Conformer]] = {
    "conformer_tiny": conformer_tiny,
    "conformer_ti16": conformer_ti16,
    "conformer_s16": conformer_s16,
    "conformer_b16": conformer_b16,
}
