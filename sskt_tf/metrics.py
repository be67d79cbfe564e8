"""Multi-label metrics: average precision per class (VOC mAP) and the reference code's per-image AP.

Both are exact over a whole evaluation set, computed in numpy from all scores and labels at once.
A streaming Keras metric cannot give exact AP (it needs every score ranked against every other;
`keras.metrics.AUC(curve="PR")` bins the thresholds and interpolates, so it differs), and a metric
holding a growing buffer of scores does not compile under XLA. Training runs therefore compute
them after each evaluation by predicting the evaluation set (`sskt_tf.callbacks.MultiLabelEvaluation`).
"""

import numpy as np


def average_precision(targets, scores):
    """Average precision of one class: `AP = sum_n (R_n - R_{n-1}) * P_n` over the score thresholds.

    The non-interpolated AP of scikit-learn's `average_precision_score` (no 11-point or
    all-point interpolation of the precision curve, unlike the VOC devkit's): P_n and R_n are the
    precision and recall of predicting positive every example scoring >= the n-th highest score;
    tied scores count as one threshold. Argument order as scikit-learn's (y_true, y_score).

    Args:
        targets: [N] 0/1 labels.
        scores: [N] scores (logits or probabilities: only their order matters).

    Returns:
        float; NaN when there is no positive.
    """
    targets = np.asarray(targets, np.float64)
    scores = np.asarray(scores, np.float64)
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    true_positives = np.cumsum(targets)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall_steps = np.diff(np.r_[0.0, true_positives]) / positives
    return float(np.sum(recall_steps * precision))


def per_class_average_precision(targets, scores):
    """`[C]` AP of each class (column) over all N examples; NaN for a class without positives."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    return np.array([average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])


def mean_average_precision(targets, scores):
    """Standard (VOC-style) mAP: the mean over classes of each class's AP over the whole set.

    Classes without a positive example are left out; NaN if no class has one.

    Args:
        targets: [N, C] multi-hot labels.
        scores: [N, C] scores.
    """
    ap = per_class_average_precision(targets, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def per_image_average_precision(targets, scores):
    """The reference code's "mAP": the mean over images of each image's AP over its C classes.

    The reference (utils.py `get_ap_score`) ranks the classes of one image by score and averages
    scikit-learn's AP per image. It is not the VOC metric (which ranks the images of one class) and
    is reported beside it, as `map_per_image_reference`. Images without a positive label are left
    out (their AP is undefined); the reference averages per batch, which weighs a partial last
    batch differently: this is the plain mean over images.

    Args:
        targets: [N, C] multi-hot labels.
        scores: [N, C] scores.
    """
    targets, scores = np.asarray(targets), np.asarray(scores)
    ap = np.array([average_precision(t, s) for t, s in zip(targets, scores)])
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def multi_label_metrics(targets, scores):
    """`{"map": ..., "map_per_image_reference": ...}` of one evaluation set."""
    return {
        "map": mean_average_precision(targets, scores),
        "map_per_image_reference": per_image_average_precision(targets, scores),
    }
