"""Golden-value tests of sskt_tf.losses against independent numpy computations and hand values."""

import math

import numpy as np
import pytest

from sskt_tf import losses
from sskt_tf.errors import UserError

S = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, -0.5, 2.0, 0.0], [3.0, 0.0, 0.0, 1.0]], np.float32)
A = np.array([[0.0, 1.0, -1.0, 2.0], [1.5, 0.5, 0.0, -2.0], [1.0, 1.0, 1.0, 1.0]], np.float32)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_total_loss_is_the_terms_sum_with_unit_gradients_and_is_not_folded_into_an_add():
    import tensorflow as tf

    terms = [tf.Variable(v) for v in (1.5, 0.25, -0.125)]
    with tf.GradientTape() as tape:
        total = losses.total_loss([terms[0], 2.0 * terms[1], terms[2]])
    assert float(total) == 1.5 + 0.5 - 0.125
    np.testing.assert_array_equal(tape.gradient(total, terms), [1.0, 2.0, 1.0])
    # The graph holds one Sum over the stacked terms, not an Add chain that Grappler may fold.
    graph = tf.function(lambda a, b: losses.total_loss([a, b])).get_concrete_function(
        tf.TensorSpec([]), tf.TensorSpec([])).graph
    ops = {op.type for op in graph.get_operations()}
    assert "Sum" in ops and not ops & {"Add", "AddV2", "AddN"}


def test_cross_entropy_matches_numpy():
    labels = np.array([2, 0, 3])
    expected = -np_log_softmax(A.astype(np.float64))[np.arange(3), labels]
    np.testing.assert_allclose(losses.softmax_cross_entropy(labels, A).numpy(), expected, rtol=1e-6)


def test_focal_loss_hand_value_and_gamma_zero():
    # p_y = 0.75 -> -(1 - 0.75)^2 * log(0.75) = 0.0625 * 0.2876821 = 0.017980128.
    logits = np.array([[0.0, math.log(3.0)]], np.float32)
    np.testing.assert_allclose(losses.focal_loss(np.array([1]), logits).numpy(), [0.017980128], rtol=1e-5)
    labels = np.array([2, 0, 3])
    np.testing.assert_allclose(
        losses.focal_loss(labels, A, gamma=0.0).numpy(), losses.softmax_cross_entropy(labels, A).numpy(), rtol=1e-6
    )


def test_soft_cross_entropy_hand_value_uniform():
    # Uniform source and auxiliary predictions over K = 4 classes: CE = log 4, times T^2 = 9.
    zeros = np.zeros((2, 4), np.float32)
    assert losses.soft_cross_entropy(zeros, zeros, 3.0).numpy() == pytest.approx(9 * math.log(4), rel=1e-6)


@pytest.mark.parametrize("t", [1.0, 3.0, 4.5])
def test_soft_cross_entropy_matches_numpy(t):
    s, a = S.astype(np.float64), A.astype(np.float64)
    p = np.exp(np_log_softmax(s / t))
    expected = t * t * np.mean(np.sum(-p * np_log_softmax(a / t), -1))
    assert losses.soft_cross_entropy(S, A, t).numpy() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_kl_matches_numpy_and_reductions(t):
    s, a = S.astype(np.float64), A.astype(np.float64)
    log_p, log_q = np_log_softmax(s / t), np_log_softmax(a / t)
    kl_rows = np.sum(np.exp(log_p) * (log_p - log_q), -1)
    batchmean = t * t * kl_rows.mean()
    assert losses.kl_divergence(S, A, t).numpy() == pytest.approx(batchmean, rel=1e-5)
    # PyTorch nn.KLDivLoss() default 'mean' divides by batch x classes (4 classes here).
    assert losses.kl_divergence(S, A, t, reduction="mean").numpy() == pytest.approx(batchmean / 4, rel=1e-5)
    # KL = CE - H(p): the two auxiliary losses differ by the source's entropy only.
    entropy = t * t * np.mean(-np.sum(np.exp(log_p) * log_p, -1))
    assert losses.soft_cross_entropy(S, A, t).numpy() - batchmean == pytest.approx(entropy, rel=1e-5)


def test_kl_is_zero_for_identical_logits():
    assert losses.kl_divergence(S, S, 3.0).numpy() == pytest.approx(0.0, abs=1e-6)


def test_aux_loss_dispatch_and_errors():
    assert losses.aux_loss("ce", S, A, 3.0).numpy() == pytest.approx(losses.soft_cross_entropy(S, A, 3.0).numpy())
    assert losses.aux_loss("kd", S, A, 3.0, "mean").numpy() == pytest.approx(
        losses.kl_divergence(S, A, 3.0, "mean").numpy()
    )
    with pytest.raises(ValueError, match="aux loss"):
        losses.aux_loss("mse", S, A, 3.0)
    with pytest.raises(ValueError, match="reduction"):
        losses.kl_divergence(S, A, 3.0, reduction="sum")


def test_sigmoid_binary_cross_entropy_golden_values():
    from sskt_tf import losses as losses_lib

    labels = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    logits = np.array([[0.0, 2.0], [-1.0, 3.0]], np.float32)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = [
        -(np.log(0.5) + np.log(1 - sig(2.0))) / 2,
        -(np.log(1 - sig(-1.0)) + np.log(1 - sig(3.0))) / 2,
    ]
    got = losses_lib.target_loss_fn("bce")(labels, logits).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.shape == (2,)


def test_soft_labels_cross_entropy_and_focal_match_numpy():
    """MixUp/CutMix labels: -sum_c q_c log p_c and -sum_c q_c (1 - p_c)^2 log p_c."""
    q = np.array([[0.3, 0.0, 0.7, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.25, 0.25, 0.5]], np.float32)
    log_p = np_log_softmax(A.astype(np.float64))
    np.testing.assert_allclose(losses.softmax_cross_entropy(q, A).numpy(), -(q * log_p).sum(-1), rtol=1e-6)
    focal = -(q * (1 - np.exp(log_p)) ** 2 * log_p).sum(-1)
    np.testing.assert_allclose(losses.focal_loss(q, A).numpy(), focal, rtol=1e-5)
    # One-hot rows give the hard-label values.
    hard = np.array([2, 0, 3])
    one_hot = np.eye(4, dtype=np.float32)[hard]
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(one_hot, A).numpy(), losses.softmax_cross_entropy(hard, A).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(losses.focal_loss(one_hot, A).numpy(), losses.focal_loss(hard, A).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(losses.class_indices(q, A).numpy(), [2, 0, 3])
    np.testing.assert_array_equal(losses.class_indices(hard, A).numpy(), hard)


def test_target_loss_must_fit_the_kind_of_labels():
    for loss in ("ce", "focal"):
        losses.check_target_loss("cifar10", False, loss)
    losses.check_target_loss("voc2007", True, "bce")
    with pytest.raises(UserError) as info:
        losses.check_target_loss("synthetic", False, "bce")
    assert str(info.value) == (
        "--target_loss=bce is for multi-label datasets but --dataset=synthetic has one class per image; "
        "pass --target_loss=ce or focal, or a multi-label dataset (voc2007)."
    )
    for loss in ("ce", "focal"):
        with pytest.raises(UserError) as info:
            losses.check_target_loss("voc2007", True, loss)
        assert str(info.value) == (
            f"--dataset=voc2007 is multi-label (multi-hot labels) but --target_loss={loss} needs one class per "
            "image; pass --target_loss=bce."
        )
