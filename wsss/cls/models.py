"""Multi-label classifiers whose class maps are the CAMs of AD-CAM Eq. 2.

Both classifiers share one contract, so the CAM driver never asks which one it
holds:

* ``forward(x) -> dict`` with ``logits`` (B, K) (and ``logits_trans`` for the
  Conformer's transformer head);
* ``class_maps(x) -> (B, K, h, w)``: ``w_k . f`` at every position of the
  stride-16 feature map, before ReLU (the CAM before normalisation);
* ``loss(out, labels, masks=None)``: multi-label BCE, summed over the heads,
  plus with partial pooling (``partial_pool`` = S > 0) PCAA's focal loss on
  ``sigmoid(AdaptiveAvgPool_S(class maps))`` against region labels from
  ``masks`` (PCAA Eq. 3-4);
* ``param_groups(cfg)``: optimiser groups with their own lr and schedule.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.engine.optim import GroupSpec
from wsss.partial import patch_labels, sigmoid_focal_loss


class ResNetCAMNet(nn.Module):
    """IRN's CAM network: ResNet (output stride 16, layer4 undilated) + global
    average pooling + 1x1 classifier without bias.

    With ImageNet weights, as in IRN, BatchNorm always normalises with the
    pretrained statistics (``FixedBatchNorm``) and the stem, layer1 and layer2
    are frozen: with batches of 16 crops, batch statistics would be noisier than
    the pretrained ones, and it makes data-parallel training identical to one
    process. Without weights (the synthetic demo) nothing is frozen: frozen
    random features and initial BN statistics would leave nothing to learn with.
    """

    def __init__(self, backbone: str, num_classes: int, *, pretrained: str | None = None, strict_load: bool = True,
                 partial_pool: int = 0):
        super().__init__()
        self.partial_pool = partial_pool
        from wsss.models import build_backbone, load_weights

        irn_freeze = dict(frozen_bn=True, frozen_stages=2) if pretrained else {}
        self.backbone = build_backbone(backbone, strides=(1, 2, 2, 1), **irn_freeze)
        if pretrained:
            load_weights(self.backbone, pretrained, strict=strict_load)
        channels = self.backbone.out_channels["layer4"]
        # PyTorch's default initialisation, as IRN's CAM net leaves it (kaiming-uniform with a = sqrt(5):
        # std 1 / sqrt(3 fan_in), 2.45x smaller than kaiming-normal's sqrt(2 / fan_in)).
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)
        self.num_classes = num_classes
        self.stride = self.backbone.output_stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/16), ceil(W/16))."""
        return self.backbone(x)["layer4"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        logits = self.classifier(f.mean(dim=(2, 3), keepdim=True)).flatten(1)
        out = {"logits": logits}
        if self.partial_pool:
            out["patch_logits"] = F.adaptive_avg_pool2d(self.classifier(f), self.partial_pool)
        return out

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.features(x), self.classifier.weight)

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out["logits"], labels) + partial_loss(out, masks)

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float = 10.0, **_) -> list[GroupSpec]:
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            GroupSpec("backbone", backbone, lr, "poly", weight_decay),
            GroupSpec("classifier", list(self.classifier.parameters()), lr * head_lr_mult, "poly", weight_decay),
        ]


class ConformerClassifier(nn.Module):
    """Conformer with both heads (AD-CAM Sec. 4.1): BCE on the CNN head (pooled
    CNN map) and on the transformer head (normalised cls token).

    ``detach_branches`` cuts the gradient between the branches at the coupling
    units (AD-CAM's default; Table 3 ablates it). ``drop_last_block`` removes
    ``conv_trans_12`` so the CNN map is at stride 16, like the token grid
    (Sec. 5.1); it must be the same at training and extraction time, since the
    CNN head sees that map's channels.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        pretrained: str | None = None,
        strict_load: bool = True,
        detach_branches: bool = True,
        drop_last_block: bool = True,
        partial_pool: int = 0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        from wsss.models import build_backbone

        self.partial_pool = partial_pool
        self.net = build_backbone(
            backbone, num_classes=num_classes, detach_branches=detach_branches, drop_last_block=drop_last_block,
            drop_path_rate=drop_path,
        )
        if pretrained:
            from wsss.models import load_weights

            # The official checkpoints hold the full network; the block this model drops is
            # expected to be unused, not a mismatch (any other difference still is one).
            dropped = f"conv_trans_{self.net.num_transformer_blocks + 1}." if drop_last_block else None

            def key_map(key: str) -> str | None:
                return None if dropped and key.startswith(dropped) else key

            load_weights(self.net, pretrained, strict=strict_load, key_map=key_map if dropped else None,
                         left_out_reason=f"those of {dropped[:-1]}, the last block, which AD-CAM drops so that "
                                         "the CNN map is at stride 16 like the tokens" if dropped else None)
        self.num_classes = num_classes
        self.stride = self.net.cnn_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.partial_pool:
            conv_logits, trans_logits = self.net(x)
            return {"logits": conv_logits, "logits_trans": trans_logits}
        feats = self.net.forward_features(x)
        head = self.net.conv_cls_head
        maps = F.conv2d(feats.cnn, head.weight[:, :, None, None], head.bias)
        return {"logits": head(self.net.pooling(feats.cnn).flatten(1)), "logits_trans": self.net.trans_cls_head(feats.cls),
                "patch_logits": F.adaptive_avg_pool2d(maps, self.partial_pool)}

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(x).cnn
        return F.conv2d(f, self.net.conv_cls_head.weight[:, :, None, None])

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return (F.binary_cross_entropy_with_logits(out["logits"], labels)
                + F.binary_cross_entropy_with_logits(out["logits_trans"], labels) + partial_loss(out, masks))

    def param_groups(
        self, lr: float, weight_decay: float, lr_transformer: float | None = None, **_
    ) -> list[GroupSpec]:
        """AD-CAM's recipe: the transformer branch at a constant ``lr_transformer``,
        the CNN branch with poly decay from ``lr``. As the official Conformer code (timm's optimizer
        factory with ``no_weight_decay() = {'cls_token'}``), ``cls_token``, biases and other 1-D
        parameters (norms) get no weight decay."""
        groups = self.net.param_groups()
        no_decay = {id(p) for n, p in self.net.named_parameters()
                    if p.ndim <= 1 or n.endswith(".bias") or n == "cls_token"}
        specs = []
        for name, params, group_lr, schedule in (("cnn", groups["cnn"], lr, "poly"),
                                                 ("transformer", groups["transformer"], lr_transformer or lr, "constant")):
            specs.append(GroupSpec(name, [p for p in params if id(p) not in no_decay], group_lr, schedule, weight_decay))
            specs.append(GroupSpec(f"{name}_no_decay", [p for p in params if id(p) in no_decay], group_lr, schedule, 0.0))
        return specs


def partial_loss(out: dict[str, torch.Tensor], masks: torch.Tensor | None) -> torch.Tensor | float:
    """PCAA's partial-CAM loss (Eq. 3-4): focal loss (gamma 2) of ``sigmoid(patch_logits)``
    (B, K, S, S) against region labels from ``masks`` (B, H, W) (a foreground class is
    positive in a patch holding any of its pixels; 255 = unlabelled). 0 without partial pooling."""
    if "patch_logits" not in out:
        return 0.0
    if masks is None:
        raise ValueError("partial pooling needs region masks for its loss")
    k, s = out["patch_logits"].shape[1], out["patch_logits"].shape[-1]
    labels = patch_labels(masks, k + 1, s)[:, 1:]
    return sigmoid_focal_loss(out["patch_logits"].float(), labels)


def build_classifier(
    backbone: str,
    num_classes: int,
    *,
    pretrained: str | None = None,
    strict_load: bool = True,
    detach_branches: bool = True,
    drop_last_block: bool = True,
    partial_pool: int = 0,
    drop_path: float = 0.0,
) -> nn.Module:
    if backbone.startswith("conformer"):
        return ConformerClassifier(
            backbone, num_classes, pretrained=pretrained, strict_load=strict_load,
            detach_branches=detach_branches, drop_last_block=drop_last_block, partial_pool=partial_pool,
            drop_path=drop_path,
        )
    if drop_path:
        raise ValueError("drop_path is a Conformer setting; the ResNet CAM net has no stochastic depth")
    return ResNetCAMNet(backbone, num_classes, pretrained=pretrained, strict_load=strict_load,
                        partial_pool=partial_pool)


def load_trained_classifier(cls_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the classifier a ``train-cls`` run wrote to ``cls_dir`` and load its
    weights strictly. Returns the model in eval mode and the run's config dict."""
    from wsss.engine.checkpoint import WEIGHTS_NAME
    from wsss.engine.loop import load_run

    def build(cfg: dict, state: dict) -> tuple[nn.Module, str]:
        head = state.get("net.conv_cls_head.weight", state.get("classifier.weight"))
        if head is None:
            raise ValueError(f"{Path(cls_dir) / WEIGHTS_NAME} holds neither a Conformer nor a ResNet CAM classifier head")
        model = build_classifier(
            cfg["model"], head.shape[0], detach_branches=cfg.get("detach_branches", True),
            drop_last_block=cfg.get("drop_last_block", True), partial_pool=cfg.get("partial_pool", 0),
        )
        return model, f"a '{cfg['model']}' classifier"

    return load_run(cls_dir, "train-cls", build, device=device)
