"""Loss functions of SSKT, as pure functions of logits and labels.

Target losses return one value per example (the caller averages, so that the
scaling across replicas happens in exactly one place). Auxiliary losses return
the batch value, already multiplied by T^2.
"""

import tensorflow as tf

TARGET_LOSSES = ("ce", "focal")
AUX_LOSSES = ("ce", "kd")
KD_REDUCTIONS = ("batchmean", "mean")


def softmax_cross_entropy(labels, logits):
    """Sparse softmax cross-entropy per example: `-log softmax(z)_y`.

    Args:
        labels: int [B] class indices.
        logits: float [B, C].

    Returns:
        float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def focal_loss(labels, logits, gamma=2.0):
    """Focal loss per example: `-(1 - p_y)^gamma log p_y`, with `p = softmax(z)`.

    The paper's MAXL comparison trains some SSKT rows with it (gamma 2).

    Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss
    for Dense Object Detection", ICCV 2017.

    Args:
        labels: int [B] class indices.
        logits: float [B, C].
        gamma: focusing parameter; 0 gives cross-entropy.

    Returns:
        float32 [B].
    """
    log_p = -softmax_cross_entropy(labels, logits)
    return -tf.pow(1.0 - tf.exp(log_p), gamma) * log_p


def soft_cross_entropy(source_logits, aux_logits, temperature):
    """SSKT's `ce` auxiliary loss: `T^2 * mean_b sum_c -softmax(s_b/T)_c * log_softmax(a_b/T)_c`.

    The source's softened prediction is the soft label of the auxiliary task
    (Hong et al., WACV 2022, eq. 2; the reference's function.py). It differs
    from KL only by the source's entropy, which has no gradient here.

    Args:
        source_logits: float [B, K], the frozen source's logits s.
        aux_logits: float [B, K], the auxiliary head's logits a.
        temperature: T > 0.

    Returns:
        float32 scalar.
    """
    t = float(temperature)
    soft_labels = tf.nn.softmax(tf.cast(source_logits, tf.float32) / t, axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(aux_logits, tf.float32) / t, axis=-1)
    per_example = -tf.reduce_sum(soft_labels * log_q, axis=-1)
    return (t * t) * tf.reduce_mean(per_example)


def kl_divergence(source_logits, aux_logits, temperature, reduction="batchmean"):
    """SSKT's `kd` auxiliary loss: `T^2 * KL(softmax(s/T) || softmax(a/T))`.

    Hinton et al. (2015) distillation term. `reduction="batchmean"` sums over
    classes and averages over the batch (the true KL per example).
    `reduction="mean"` divides the sum by batch x classes: PyTorch's
    `nn.KLDivLoss()` default, which the reference code uses, making the term
    K times smaller for a K-class source (see reference-notes, item 2).

    Args:
        source_logits: float [B, K], the frozen source's logits s.
        aux_logits: float [B, K], the auxiliary head's logits a.
        temperature: T > 0.
        reduction: "batchmean" or "mean".

    Returns:
        float32 scalar.
    """
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KD_REDUCTIONS}. Received: reduction={reduction!r}")
    t = float(temperature)
    log_p = tf.nn.log_softmax(tf.cast(source_logits, tf.float32) / t, axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(aux_logits, tf.float32) / t, axis=-1)
    per_example = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
    value = tf.reduce_mean(per_example)
    if reduction == "mean":
        value = value / tf.cast(tf.shape(log_p)[-1], tf.float32)
    return (t * t) * value


def target_loss_fn(name):
    """The per-example target loss called `name` (the `--target_loss` flag)."""
    return {"ce": softmax_cross_entropy, "focal": focal_loss}[name]


def aux_loss(kind, source_logits, aux_logits, temperature, kd_reduction="batchmean"):
    """The auxiliary loss `kind` (the `--aux_loss` flag): "ce" or "kd"."""
    if kind == "ce":
        return soft_cross_entropy(source_logits, aux_logits, temperature)
    if kind == "kd":
        return kl_divergence(source_logits, aux_logits, temperature, kd_reduction)
    raise ValueError(f"aux loss must be one of {AUX_LOSSES}. Received: {kind!r}")
