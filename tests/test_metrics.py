"""Golden tests of the metrics: single-label top-5 by hand, multi-label AP against AP computed by hand."""

import numpy as np
import pytest

from sskt_tf import metrics


def test_average_precision_golden_values():
    # Ranked: 1 (P=1/1), 0, 1 (P=2/3), 0 -> AP = (1 + 2/3) / 2.
    assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # Positives ranked last: 0, 0, 1 (P=1/3) -> 1/3.
    assert metrics.average_precision([0, 0, 1], [3.0, 2.0, 1.0]) == pytest.approx(1 / 3)
    # A tie counts as one threshold: {1, 0} at 0.5 (P=1/2, R=1/2), then 1 (P=2/3, R=1).
    assert metrics.average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert np.isnan(metrics.average_precision([0, 0], [0.3, 0.1]))


# Three images, three classes.
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
SCORES = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.5], [0.6, 0.4, 0.7]])


def test_mean_average_precision_is_per_class_over_the_whole_set():
    # Class 0: ranked images 0 (+), 2 (-), 1 (+): (1 + 2/3) / 2 = 5/6.
    # Class 1: ranked images 1 (+), 2 (+), 0 (-): 1.
    # Class 2: no positive, left out.
    per_class = metrics.per_class_average_precision(TARGETS, SCORES)
    np.testing.assert_allclose(per_class[:2], [5 / 6, 1.0])
    assert np.isnan(per_class[2])
    assert metrics.mean_average_precision(TARGETS, SCORES) == pytest.approx((5 / 6 + 1) / 2)


def test_reference_per_image_average_precision():
    # Image 0: classes ranked 0 (+) first: 1.
    # Image 1: ranked 1 (+), 2 (-), 0 (+): (1 + 2/3) / 2 = 5/6.
    # Image 2: ranked 2 (-), 0 (-), 1 (+): 1/3.
    expected = (1 + 5 / 6 + 1 / 3) / 3
    assert metrics.per_image_average_precision(TARGETS, SCORES) == pytest.approx(expected)
    both = metrics.multi_label_metrics(TARGETS, SCORES)
    assert both == pytest.approx({"map": (5 / 6 + 1) / 2, "map_per_image_reference": expected})
    # The two definitions differ: this is why both are reported.
    assert both["map"] != pytest.approx(both["map_per_image_reference"])


def test_per_image_average_precision_leaves_out_images_without_labels():
    targets = np.vstack([TARGETS, [0, 0, 0]])
    scores = np.vstack([SCORES, [0.1, 0.2, 0.3]])
    assert metrics.per_image_average_precision(targets, scores) == pytest.approx((1 + 5 / 6 + 1 / 3) / 3)


def test_average_precision_matches_a_brute_force_definition_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        targets = rng.integers(0, 2, n)
        if not targets.any():
            targets[0] = 1
        scores = rng.integers(0, 6, n) / 5.0  # Many ties.
        # Brute force: precision at each distinct threshold, weighted by the recall it adds.
        ap, previous_recall = 0.0, 0.0
        for threshold in sorted(set(scores), reverse=True):
            predicted = scores >= threshold
            tp = (predicted & (targets == 1)).sum()
            recall = tp / targets.sum()
            ap += (recall - previous_recall) * tp / predicted.sum()
            previous_recall = recall
        assert metrics.average_precision(targets, scores) == pytest.approx(ap)


def test_top5_is_reported_only_above_five_classes():
    logits = np.array([[3.0, 2, 1, 0, -1], [0, 1, 2, 3, 4]])
    assert "top5_accuracy" not in metrics.single_label_metrics([0, 0], logits)
    # Class 5 scores lowest of 6 (rank 6: a miss); class 1 has 4 classes above it (rank 5: a hit).
    scores = metrics.single_label_metrics([5, 1], np.array([[6.0, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5]]))
    assert scores["top5_accuracy"] == 0.5 and scores["accuracy"] == 0.0


def test_video_metrics_average_the_clips_softmax_per_video():
    """Three videos of 2, 1 and 3 clips, scored by hand: the mean of the clips' softmax decides the video."""
    log = np.log
    # Video 0 (class 0): clip A says class 1 mildly, clip B says class 0 strongly -> the mean says 0.
    # Video 1 (class 2): one clip, class 2. Video 2 (class 1): its clips say 1 strongly, then 0 mildly twice:
    # a vote of the clips says 0, the mean of their softmax (0.4, 0.5, 0.1) says 1.
    probabilities = np.array(
        [
            [0.4, 0.6, 0.0],
            [0.9, 0.1, 0.0],
            [0.1, 0.1, 0.8],
            [0.2, 0.7, 0.1],
            [0.5, 0.4, 0.1],
            [0.5, 0.4, 0.1],
        ]
    )
    logits = log(np.maximum(probabilities, 1e-12)) + 3.0  # Logits up to a per-row shift.
    video_ids = np.array([0, 0, 1, 2, 2, 2])
    video_labels = np.array([0, 2, 1])
    out = metrics.video_metrics(logits, video_ids, video_labels)
    # Clips: right are B (0), the video-1 clip (2) and the first clip of video 2 (1): 3 of 6.
    assert out["clip_accuracy"] == pytest.approx(3 / 6)
    assert np.argmax(probabilities[3:].mean(axis=0)) == 1
    assert out["video_accuracy"] == out["accuracy"] == pytest.approx(3 / 3)
    expected_loss = -np.mean(log(np.maximum(probabilities[np.arange(6), video_labels[video_ids]], 1e-12)))
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-9)
    assert "top5_accuracy" not in out  # 3 classes.
    with pytest.raises(ValueError, match="every video needs at least one clip"):
        metrics.video_metrics(logits, np.array([0, 0, 0, 2, 2, 2]), video_labels)
