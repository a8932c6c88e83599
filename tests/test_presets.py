"""The paper presets in configs/ (issue #14): each one's three sections chain, and its settings are
consistent with each other and with the dataset it names."""
import math
from pathlib import Path

import pytest

from wsss.config import load_config, read_yaml
from wsss.data.scenes import ADE20K_CLASSES, CITYSCAPES_CLASSES, PASCAL_CONTEXT59_CLASSES
from wsss.evaluate import EvalConfig
from wsss.seg.heads import ASPP
from wsss.seg.predict import PredictConfig
from wsss.seg.train import TrainSegConfig, build_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if "train_seg" in read_yaml(p) and not p.name.startswith("toy_"))
NUM_CLASSES = {"cityscapes": len(CITYSCAPES_CLASSES), "ade20k": len(ADE20K_CLASSES),
               "pascal_context": len(PASCAL_CONTEXT59_CLASSES), "voc": 21}


def test_the_paper_rows_have_presets():
    names = {p.stem for p in PRESETS}
    assert {"cityscapes_pcaa_r50", "cityscapes_pcaa_r101", "ade20k_pcaa_r101", "pascal_context_pcaa_r101",
            "ade20k_psanet_r101", "cityscapes_psanet_r101", "cityscapes_acfnet_r101", "cityscapes_fcn_r50",
            "voc_deeplabv2_r101", "voc_pcaa_r101"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_sections_chain_and_agree(path):
    train = load_config(TrainSegConfig, path, section="train_seg")
    sections = read_yaml(path)
    if "predict" in sections:
        pred = load_config(PredictConfig, path, section="predict")
        assert pred.seg_dir == train.out
        assert (pred.data.kind, pred.data.root) == (train.data.kind, train.data.root)
        assert pred.data.split == train.val_split
        if pred.mode == "slide":
            assert pred.crop == train.crop and 0 < pred.stride <= pred.crop
    if "eval" in sections:
        ev = load_config(EvalConfig, path, section="eval")
        assert ev.pred == pred.out and (ev.data.kind, ev.data.root, ev.data.split) == (
            pred.data.kind, pred.data.root, pred.data.split)
    if train.class_weights is not None:
        assert len(train.class_weights) == NUM_CLASSES[train.data.kind]
    if train.head == "psa":
        # the over-complete window of the training crop's map (stride 8, shrunk by 2): PSANet Sec. 3.4
        side = math.ceil(math.ceil(train.crop / 8) / 2)
        assert train.psa_mask_size == 2 * side - 1
    if train.keep_best:
        assert train.val_split and train.keep_best < train.iterations
    assert train.pretrained, "the papers start from ImageNet weights: the preset names the file"


def test_presets_choose_their_papers_reference_behaviour():
    def cfg(name):
        return load_config(TrainSegConfig, CONFIGS / f"{name}.yaml", section="train_seg")

    for name in ("cityscapes_pcaa_r101", "ade20k_pcaa_r101", "pascal_context_pcaa_r101"):
        c = cfg(name)
        assert (c.contract_dilation, c.patch_label_min_frac, c.keep_best) == (False, 0.01, 10000)
    assert cfg("ade20k_pcaa_r101").multi_grid == (1, 2, 4) and cfg("pascal_context_pcaa_r101").pool_sizes == (2,)
    for name in ("ade20k_psanet_r101", "cityscapes_psanet_r101"):
        c = cfg(name)
        assert (c.psa_outside, c.head_lr_mult, c.contract_dilation) == ("zero", 10.0, False)
    acf = cfg("cityscapes_acfnet_r101")
    assert (acf.acf_center_channels, acf.channels, acf.weight_decay, acf.acf_base) == (512, 512, 5e-4, "conv")
    aspp = cfg("cityscapes_acfnet_r101_aspp")  # Tab. 2's ASPP base with online bootstrapping
    assert (aspp.acf_base, aspp.ohem_thresh, aspp.ohem_min_kept, aspp.acf_center_channels) == ("aspp", 0.7, 100000, 512)
    dl = cfg("voc_deeplabv2_r101")
    assert (dl.head, dl.aux_weight, dl.backbone) == ("deeplabv2", 0.0, "resnet101")
    assert (dl.msc_scales, dl.freeze_bn) == ((0.5, 0.75), True)  # deeplab-pytorch's MSC and frozen BN


@pytest.mark.parametrize("name", ["cityscapes_acfnet_r101", "cityscapes_acfnet_r101_aspp", "voc_deeplabv2_r101",
                                  "ade20k_psanet_r101"])
def test_preset_networks_build(name):
    cfg = load_config(TrainSegConfig, CONFIGS / f"{name}.yaml", section="train_seg")
    model = build_from_config(cfg, NUM_CLASSES[cfg.data.kind])  # no weights file here: random init
    assert (model.aux_head is None) == (cfg.aux_weight == 0)
    if cfg.head == "acf":
        assert model.head.acf.reduce[0].out_channels == 512
        assert isinstance(model.head.reduce, ASPP) == (cfg.acf_base == "aspp")
