"""Evaluation, in one package: the figures papers report.

* :mod:`wsss.eval.metrics`: the confusion matrix, mIoU / FP / FN (AD-CAM Table 1's columns), the
  seed threshold sweep, CAM -> mask thresholding, the collapse warning;
* :mod:`wsss.eval.masks`: ``wsss eval``, a folder of masks scored against ground truth;
* :mod:`wsss.eval.cams`: ``wsss eval-cam``, CAM seeds scored over background thresholds;
* :mod:`wsss.eval.multilabel`: the classifier's mAP and F1.

The old module paths (``wsss.metrics``, ``wsss.evaluate``, ``wsss.cam.evaluate``,
``wsss.cls.metrics``) are the same modules under their former names.
"""
