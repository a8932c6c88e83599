"""Dense CRF (Krähenbühl & Koltun) on label maps, with IRN's settings.

IRN refines thresholded CAMs with a fully connected CRF whose unary comes from
a hard label map (``gt_prob`` 0.7): Gaussian kernel sxy 3 / compat 3, bilateral
kernel sxy 50 / srgb 5 / compat 10, 10 mean-field iterations. IR labels
(IRNet's training labels) are two such passes, at a confident-foreground and a
confident-background threshold.
"""
from __future__ import annotations

import numpy as np

from wsss.io import IGNORE_INDEX
from wsss.eval.metrics import cam_to_mask


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as e:
        raise ImportError(
            "dense CRF needs the pydensecrf module: pip install pydensecrf2 (builds from source: needs gcc and "
            "Python <= 3.12). Or use --refine none."
        ) from e
    return dcrf, unary_from_labels


def dense_crf(
    image: np.ndarray,
    unary: np.ndarray,
    *,
    sxy_gauss: float = 3,
    compat_gauss: float = 3,
    sxy_bilateral: float = 50,
    srgb: float = 5,
    compat_bilateral: float = 10,
    iterations: int = 10,
) -> np.ndarray:
    """Mean-field inference of a fully connected CRF: ``image`` (H, W, 3) uint8 RGB, ``unary``
    (K, H * W) negative log-probabilities (pydensecrf's ``unary_from_labels`` / ``unary_from_softmax``)
    -> (H, W) int64 labels in [0, K). The default kernels are IRN's (``imutils.crf_inference_label``): Gaussian sxy 3 / compat 3,
    bilateral sxy 50 / srgb 5 / compat 10, 10 iterations."""
    dcrf, _ = _densecrf()
    h, w = image.shape[:2]
    k = unary.shape[0]
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=sxy_gauss, compat=compat_gauss)
    # pydensecrf needs a writable C-contiguous buffer (Pillow arrays are read-only)
    d.addPairwiseBilateral(sxy=sxy_bilateral, srgb=srgb, rgbim=np.array(image, dtype=np.uint8, order="C"),
                           compat=compat_bilateral)
    q = d.inference(iterations)
    return np.argmax(np.array(q).reshape(k, h, w), axis=0)


def unary_from_probs(probs: np.ndarray) -> np.ndarray:
    """(K, H, W) class probabilities -> the (K, H * W) unary of :func:`dense_crf` (pydensecrf's
    ``unary_from_softmax``)."""
    _densecrf()  # the install hint if pydensecrf is missing
    from pydensecrf.utils import unary_from_softmax

    return unary_from_softmax(probs.astype(np.float32))


def crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    *,
    gt_prob: float = 0.7,
    iterations: int = 10,
    **pairwise: float,
) -> np.ndarray:
    """Refine a label map: ``image`` (H, W, 3) uint8 RGB, ``labels`` (H, W) in
    [0, n_labels) -> (H, W) int64 labels in [0, n_labels). ``pairwise``: :func:`dense_crf`'s kernels."""
    _, unary_from_labels = _densecrf()
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob, zero_unsure=False)
    return dense_crf(image, unary, iterations=iterations, **pairwise)


def crf_refine_cams(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Threshold CAMs (background plane at ``threshold``), CRF, map back to class ids.

    ``cams``: (n, H, W) in [0, 1]; ``keys``: (n,) mask class ids (foreground index + 1).
    Returns an (H, W) uint8 mask.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if not len(keys):  # an image without classes: all background (a one-label CRF, which pydensecrf refuses)
        return np.zeros(image.shape[:2], np.uint8)
    local = cam_to_mask(cams, np.arange(1, len(keys) + 1), threshold)  # 0..n, compact for the CRF
    refined = crf_labels(image, local, len(keys) + 1)
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[refined]


def ir_label(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, conf_fg: float = 0.30, conf_bg: float = 0.05) -> np.ndarray:
    """IRNet's training label from CAMs (IRN's cam_to_ir_label step).

    A pixel is class c where the CRF of the ``conf_fg`` seed says c, background
    where the CRFs of both the ``conf_fg`` and the ``conf_bg`` seeds say
    background, and 255 (unknown) elsewhere. ``cams`` are the full-resolution
    (``high_res``) maps, as IRN uses.
    """
    fg = crf_refine_cams(image, cams, keys, conf_fg)
    bg = crf_refine_cams(image, cams, keys, conf_bg)
    out = fg.copy()
    out[fg == 0] = IGNORE_INDEX
    out[(fg == 0) & (bg == 0)] = 0
    return out
