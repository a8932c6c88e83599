import numpy as np
import pytest

from wsss.metrics import ConfusionMatrix, SegMetrics, ThresholdSweep, cam_to_mask


def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    # rows = GT, columns = prediction; the 255 pixel is skipped.
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm.mat, expected)
    m = cm.compute(["bg", "a", "b"])
    # class 0: TP 1, G 2, P 2, U 3; class 1: TP 2, G 3, P 3, U 4; class 2: TP 1, G 2, P 2, U 3
    np.testing.assert_allclose(m.iou, [1 / 3, 2 / 4, 1 / 3])
    np.testing.assert_allclose(m.fp, [1 / 3, 1 / 4, 1 / 3])
    np.testing.assert_allclose(m.fn, [1 / 3, 1 / 4, 1 / 3])
    assert m.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert m.pixel_acc == pytest.approx(4 / 7)


def test_iou_fp_fn_sum_to_one_and_absent_class_left_out():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(50, 60))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, size=gt.shape))
    pred[pred == 255] = 0
    cm = ConfusionMatrix(6)  # classes 4 and 5 appear nowhere
    cm.update(gt, pred)
    m = cm.compute()
    present = ~np.isnan(m.iou)
    assert present.tolist() == [True] * 4 + [False] * 2
    np.testing.assert_allclose((m.iou + m.fp + m.fn)[present], 1.0)
    assert m.miou == pytest.approx(np.mean(m.iou[:4]))


def test_asymmetric_errors_split_into_fp_and_fn():
    # Class 1 over-predicted onto background: class 1 gets FP, background gets FN.
    gt = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1])
    m = ConfusionMatrix(2)
    m.update(gt, pred)
    r = m.compute()
    np.testing.assert_allclose(r.fp, [0.0, 2 / 4])
    np.testing.assert_allclose(r.fn, [2 / 4, 0.0])


def test_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 3, size=(8, 8)) for _ in range(4)]
    preds = [rng.integers(0, 3, size=(8, 8)) for _ in range(4)]
    whole = ConfusionMatrix(3)
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    for i, (g, p) in enumerate(zip(gts, preds)):
        whole.update(g, p)
        (a if i % 2 else b).update(g, p)
    np.testing.assert_array_equal(a.merge(b).mat, whole.mat)


def test_bad_prediction_ids_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.zeros(3), np.zeros(4))


def test_cam_to_mask_ties_go_to_background():
    cams = np.array([[[0.2, 0.5, 0.9]], [[0.1, 0.5, 0.95]]])
    mask = cam_to_mask(cams, np.array([3, 7]), threshold=0.5)
    np.testing.assert_array_equal(mask, [[0, 0, 7]])


def test_threshold_sweep_matches_direct_thresholding():
    rng = np.random.default_rng(2)
    items = []
    for _ in range(5):
        gt = rng.integers(0, 4, size=(12, 10)).astype(np.uint8)
        keys = np.sort(rng.choice(np.arange(1, 4), size=2, replace=False))
        cams = rng.random((2, 12, 10)).astype(np.float32)
        items.append((gt, cams, keys))
    thresholds = [0.1, 0.35, 0.6, 0.9]
    sweep = ThresholdSweep(4, thresholds)
    for gt, cams, keys in items:
        sweep.update(gt, cams, keys)
    res = sweep.results()
    for t, m in zip(thresholds, res.metrics):
        direct = ConfusionMatrix(4)
        for gt, cams, keys in items:
            direct.update(gt, cam_to_mask(cams, keys, t))
        np.testing.assert_array_equal(m.confusion, direct.mat)
    assert res.best_threshold == thresholds[int(np.nanargmax([m.miou for m in res.metrics]))]
    d = res.to_dict()
    assert len(d["curve"]) == 4 and d["best_threshold"] == res.best_threshold


def test_to_dict_percent_and_null_for_absent():
    m = SegMetrics.from_confusion(np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]]), ["bg", "a", "b"])
    d = m.to_dict()
    assert d["per_class"]["b"]["IoU"] is None
    assert d["per_class"]["bg"]["IoU"] == pytest.approx(75.0)
    assert "mean" in m.table()


def test_threshold_sweep_equals_thresholding_at_each_value_with_ties_ignore_and_empty_keys():
    """The histogram sweep against thresholding at each t, one confusion matrix per t: values
    exactly on a threshold (background there), ignored pixels, an image without classes, and
    thresholds given out of order (each keeps its own matrix)."""
    rng = np.random.default_rng(7)
    thresholds = [0.5, 0.1, 0.3, 0.0, 0.95]
    items = []
    for i in range(6):
        gt = rng.integers(0, 6, size=(9, 11)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        n = 0 if i == 2 else int(rng.integers(1, 4))
        keys = np.sort(rng.choice(np.arange(1, 6), size=n, replace=False))
        cams = rng.choice(np.array([0.0, 0.1, 0.3, 0.31, 0.5, 0.7, 0.95, 1.0], np.float32), size=(n, 9, 11))
        items.append((gt, cams, keys))
    sweep = ThresholdSweep(6, thresholds)
    for gt, cams, keys in items:
        sweep.update(gt, cams, keys)
    for t, cm in zip(thresholds, sweep.matrices):
        direct = ConfusionMatrix(6)
        for gt, cams, keys in items:
            pred = np.zeros(gt.shape, np.int64)
            for y in range(gt.shape[0]):
                for x in range(gt.shape[1]):
                    if len(keys) and cams[:, y, x].max() > np.float32(t):  # in float32, as cam_to_mask
                        pred[y, x] = keys[int(np.argmax(cams[:, y, x]))]
            direct.update(gt, pred)
        np.testing.assert_array_equal(cm.mat, direct.mat)
    with pytest.raises(ValueError, match="outside 0..5"):
        sweep.update(np.full((9, 11), 7, np.uint8), items[0][1], items[0][2])
