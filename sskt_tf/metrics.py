"""Classification metrics over a whole evaluation set, in numpy.

Single-label: top-1 and top-5 accuracy and the mean cross-entropy (`single_label_metrics`), the
confusion matrix and the per-class table derived from it (`confusion_matrix`, `per_class_table`).
Multi-label: average precision per class (VOC mAP) and the reference code's per-image AP.

Each is exact over a whole evaluation set, computed from all its scores and labels at once.
A streaming Keras metric cannot give exact AP (it needs every score ranked against every other;
`keras.metrics.AUC(curve="PR")` bins the thresholds and interpolates, so it differs), and a metric
holding a growing buffer of scores does not compile under XLA. Training runs therefore compute
the multi-label metrics after each evaluation by predicting the evaluation set
(`sskt_tf.callbacks.MultiLabelEvaluation`); `sskt_tf.evaluation` computes them all once, for
`python -m sskt_tf.evaluate`.
"""

import numpy as np

# Top-5 accuracy is reported from this many classes on: with 5 or fewer it is always 1.
TOP5_MIN_CLASSES = 6


def single_label_metrics(labels, logits):
    """Top-1 accuracy, mean cross-entropy and (from `TOP5_MIN_CLASSES` classes on) top-5 accuracy.

    Computed in float64 from the logits: the log-softmax is shifted by each row's maximum, so large
    logits do not overflow. A class is in the top 5 when fewer than 5 classes score strictly
    higher (ties count in its favour).

    Args:
        labels: int `[N]` class indices.
        logits: float `[N, C]` unnormalised scores.

    Returns:
        `{"accuracy": float, "loss": float}` (fractions; `loss` in nats), plus `"top5_accuracy"`
        when `C >= TOP5_MIN_CLASSES`.
    """
    labels = np.asarray(labels)
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    metrics = {
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
    }
    if num_classes >= TOP5_MIN_CLASSES:
        # A class is in the top 5 when fewer than 5 classes score strictly higher.
        true_logit = logits[np.arange(len(labels)), labels][:, None]
        metrics["top5_accuracy"] = float(np.mean((logits > true_logit).sum(axis=1) < 5))
    return metrics


def video_scores(logits, video_ids, num_videos):
    """Each video's score: the mean over its clips of the softmax of their logits (see `video_metrics`).

    Args:
        logits: float `[N, C]`, one row per clip.
        video_ids: int `[N]`, the video of each clip, in `[0, num_videos)`.
        num_videos: V.

    Returns:
        float64 `[V, C]`, rows summing to 1 (a video without a clip: a row of NaN).
    """
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    scores = np.zeros((num_videos, logits.shape[1]))
    np.add.at(scores, np.asarray(video_ids), probabilities)
    with np.errstate(invalid="ignore", divide="ignore"):
        return scores / np.bincount(video_ids, minlength=num_videos)[:, None]


def video_metrics(logits, video_ids, video_labels):
    """Clip-level and video-level top-1 (and top-5) accuracy of the clips of whole videos.

    A video's scores are the softmax of each of its clips' logits, averaged over its clips, as Hara
    et al.'s test (3D-ResNets-PyTorch) and the SSKT authors' 3D code score a video from its
    non-overlapping clips; the video accuracy is the paper's number for UCF101 and HMDB51.

    Args:
        logits: float `[N, C]`, one row per clip.
        video_ids: int `[N]`, the video of each clip, in `[0, V)`; every video has a clip.
        video_labels: int `[V]`, each video's class.

    Returns:
        `{"accuracy", "video_accuracy", "clip_accuracy", "loss"}` (fractions; `accuracy` is the
        video accuracy, `loss` the mean cross-entropy of the clips, in nats), plus
        `"top5_accuracy"` (videos) and `"clip_top5_accuracy"` from `TOP5_MIN_CLASSES` classes on.

    Raises:
        ValueError: a video without a clip, or ids and logits of different lengths.
    """
    logits = np.asarray(logits, np.float64)
    video_ids = np.asarray(video_ids)
    video_labels = np.asarray(video_labels)
    if len(video_ids) != len(logits):
        raise ValueError(f"one video id per clip: {len(video_ids)} ids for {len(logits)} clips")
    counts = np.bincount(video_ids, minlength=len(video_labels))
    if len(counts) != len(video_labels) or counts.min() == 0:
        raise ValueError("every video needs at least one clip, and every id a video")
    clips = single_label_metrics(video_labels[video_ids], logits)
    videos = single_label_metrics(video_labels, np.log(np.maximum(video_scores(logits, video_ids, len(video_labels)), 1e-300)))
    metrics = {
        "accuracy": videos["accuracy"],
        "video_accuracy": videos["accuracy"],
        "clip_accuracy": clips["accuracy"],
        "loss": clips["loss"],
    }
    if "top5_accuracy" in videos:
        metrics["top5_accuracy"] = videos["top5_accuracy"]
        metrics["clip_top5_accuracy"] = clips["top5_accuracy"]
    return metrics


def confusion_matrix(labels, predictions, num_classes):
    """Counts of (true class, predicted class) pairs.

    Args:
        labels: int `[N]` true class indices in `[0, num_classes)`.
        predictions: int `[N]` predicted class indices in `[0, num_classes)`.
        num_classes: `C`.

    Returns:
        int64 `[C, C]`: row = true class, column = predicted class.

    Raises:
        IndexError: an index outside `[0, num_classes)`.
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_table(matrix):
    """Per class: support, predicted, precision, recall and F1, from a confusion matrix.

    Args:
        matrix: int `[C, C]` counts, row = true class, column = predicted class (`confusion_matrix`).

    Returns:
        A dict of `[C]` arrays: `support` and `predicted` (int64: images of the class, images
        predicted as it), `precision`, `recall` and `f1` (float64; 0 where undefined, e.g. the
        precision of a class never predicted).
    """
    correct = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(correct), where=denominator > 0)
    return {"support": support, "predicted": predicted, "precision": precision, "recall": recall, "f1": f1}


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
