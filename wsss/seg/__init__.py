"""Fully supervised segmentation for ``wsss train-seg``: heads (:mod:`wsss.seg.heads`),
the segmenter, its losses and builders (:mod:`wsss.seg.model`), inference
(:mod:`wsss.seg.inference`), the stage settings (:mod:`wsss.seg.config`), PSANet's
attention scatter (:mod:`wsss.seg.psamask`)."""
from wsss.seg.heads import HEADS, register_head
from wsss.seg.model import Segmenter, build_segmenter, patch_labels

__all__ = ["HEADS", "Segmenter", "build_segmenter", "patch_labels", "register_head"]
