"""Loss functions of SSKT, as pure functions of logits and labels.

Target losses return one value per example (the caller averages, so that the
scaling across replicas happens in exactly one place). Auxiliary losses return
the batch value, already multiplied by T^2.
"""

import tensorflow as tf

from sskt_tf.errors import UserError
from sskt_tf.names import AUX_LOSSES, KD_REDUCTIONS, TARGET_LOSSES

# Target losses of multi-hot labels [B, C]; the others take class indices [B].
MULTI_LABEL_TARGET_LOSSES = ("bce",)


def _is_soft(labels, logits):
    # Soft (mixed) labels are rows [B, C] like the logits; hard ones are indices [B].
    return labels.shape.rank is not None and labels.shape.rank == logits.shape.rank


def total_loss(terms):
    """The sum of scalar loss terms, added in the given order: `terms[0] + terms[1] + ...`.

    Every method's total goes through here, so that its logged value is the same in every
    run. Written as `a + b`, the total feeds the `loss` tracker's `tracker + total`, which
    TensorFlow's graph optimizer folds into one AddN that adds its inputs in an order chosen
    at run time (by the input buffer it can reuse): identical runs then logged `loss`
    differently in the 7th digit. A reduction over the stacked terms is not folded.

    Args:
        terms: float32 scalars, already weighted.

    Returns:
        A float32 scalar; its gradient is 1 for every term, as for `a + b`.
    """
    return tf.reduce_sum(tf.stack(list(terms)))


def softmax_cross_entropy(labels, logits):
    """Softmax cross-entropy per example: `-log softmax(z)_y`, or `-sum_c q_c log softmax(z)_c` for soft labels.

    Soft labels are what MixUp and CutMix make of one-hot rows (`sskt_tf.augment`).

    Args:
        labels: int [B] class indices, or float [B, C] soft labels (rows summing to 1).
        logits: float [B, C].

    Returns:
        float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if _is_soft(labels, logits):
        return tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def focal_loss(labels, logits, gamma=2.0):
    """Focal loss per example: `-(1 - p_y)^gamma log p_y`, with `p = softmax(z)`.

    For soft labels q (MixUp/CutMix), `-sum_c q_c (1 - p_c)^gamma log p_c`, which
    equals the above for one-hot rows (see `soft_label_loss`). The paper's MAXL
    comparison trains some SSKT rows with it (gamma 2).

    Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss
    for Dense Object Detection", ICCV 2017.

    Args:
        labels: int [B] class indices, or float [B, C] soft labels.
        logits: float [B, C].
        gamma: focusing parameter; 0 gives cross-entropy.

    Returns:
        float32 [B].
    """
    labels = tf.convert_to_tensor(labels)
    if _is_soft(labels, tf.convert_to_tensor(logits)):
        return soft_label_loss(labels, logits, "focal", gamma)
    log_p = -softmax_cross_entropy(labels, logits)
    return -tf.pow(1.0 - tf.exp(log_p), gamma) * log_p


def class_indices(labels, logits):
    """Class indices for accuracy metrics: the labels themselves, or the argmax of soft label rows."""
    labels = tf.convert_to_tensor(labels)
    if _is_soft(labels, tf.convert_to_tensor(logits)):
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return labels


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
    K times smaller for a K-class source (docs/reference-code.md item 2).

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


def sigmoid_binary_cross_entropy(labels, logits):
    """Multi-label target loss per example: the mean over classes of the sigmoid BCE.

    `l_b = -(1/C) sum_c [y_bc log sigmoid(z_bc) + (1 - y_bc) log(1 - sigmoid(z_bc))]`, computed
    stably as `max(z, 0) - z y + log(1 + exp(-|z|))`. This is PyTorch's
    `nn.BCEWithLogitsLoss()` (mean over batch and classes), the reference code's VOC loss
    (function.py), once the caller averages over the batch.

    Args:
        labels: float [B, C] multi-hot labels (0/1; soft targets in [0, 1] also work).
        logits: float [B, C].

    Returns:
        float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)


def target_loss_fn(name):
    """The per-example target loss called `name` (the `--target_loss` flag)."""
    return {"ce": softmax_cross_entropy, "focal": focal_loss, "bce": sigmoid_binary_cross_entropy}[name]


def check_target_loss(dataset, multi_label, target_loss):
    """Checks that the target loss fits the dataset's kind of labels.

    Multi-hot labels `[B, C]` need a loss of `MULTI_LABEL_TARGET_LOSSES`; class indices `[B]` need
    one of the others.

    Args:
        dataset: the `--dataset` value, for the message.
        multi_label: whether the dataset's labels are multi-hot (`sskt_tf.data.Datasets.multi_label`).
        target_loss: the `--target_loss` name, one of `TARGET_LOSSES`.

    Raises:
        UserError: a single-label loss for multi-label data, or a multi-label loss for
            single-label data; the message names the losses that fit.
    """
    if multi_label and target_loss not in MULTI_LABEL_TARGET_LOSSES:
        raise UserError(
            f"--dataset={dataset} is multi-label (multi-hot labels) but --target_loss={target_loss} needs one "
            f"class per image; pass --target_loss=bce."
        )
    if not multi_label and target_loss in MULTI_LABEL_TARGET_LOSSES:
        single = [t for t in TARGET_LOSSES if t not in MULTI_LABEL_TARGET_LOSSES]
        raise UserError(
            f"--target_loss={target_loss} is for multi-label datasets but --dataset={dataset} has one class "
            f"per image; pass --target_loss={' or '.join(single)}, or a multi-label dataset (voc2007)."
        )


def aux_loss(kind, source_logits, aux_logits, temperature, kd_reduction="batchmean"):
    """The auxiliary loss `kind` (the `--aux_loss` flag): "ce" or "kd"."""
    if kind == "ce":
        return soft_cross_entropy(source_logits, aux_logits, temperature)
    if kind == "kd":
        return kl_divergence(source_logits, aux_logits, temperature, kd_reduction)
    raise ValueError(f"aux loss must be one of {AUX_LOSSES}. Received: {kind!r}")


# --- Baselines: KD, DML, MAXL (see sskt_tf.baselines) -------------------------------------------


def distillation_loss(labels, teacher_logits, student_logits, alpha, temperature, target_loss=softmax_cross_entropy):
    """Knowledge distillation: `(1 - a) * L(y, z_s) + a * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`.

    The KL term is `kl_divergence(..., reduction="batchmean")`: summed over
    classes, averaged over the batch. T^2 keeps its gradient on the scale of the
    label term as T changes.

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a
    Neural Network", NeurIPS Deep Learning Workshop 2014 (arXiv:1503.02531).

    Args:
        labels: int [B] class indices.
        teacher_logits: float [B, C], the frozen teacher's logits z_t.
        student_logits: float [B, C], the student's logits z_s.
        alpha: weight a of the distillation term, in [0, 1].
        temperature: T > 0.
        target_loss: per-example label loss (`softmax_cross_entropy` or `focal_loss`).

    Returns:
        `(total, label_term, kl_term)`: float32 scalars, the terms unweighted.
    """
    label_term = tf.reduce_mean(target_loss(labels, student_logits))
    kl_term = kl_divergence(teacher_logits, student_logits, temperature)
    return total_loss([(1.0 - alpha) * label_term, alpha * kl_term]), label_term, kl_term


def mutual_learning_kl(peer_logits):
    """Deep mutual learning: for each peer k, `KL(mean_{l != k} softmax(z_l) || softmax(z_k))`.

    Each peer is pulled towards the mean prediction of the other peers, which is
    a constant for it (stop-gradient): the sum of all peers' losses then gives
    every peer exactly the gradient of its own loss. With two peers this is the
    paper's `D_KL(p_2 || p_1)` and `D_KL(p_1 || p_2)`; with K > 2 it is the
    variant that distils the other peers' mean prediction (the paper's main
    K > 2 form averages the K - 1 pairwise KLs instead).

    Reference: Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual
    Learning", CVPR 2018.

    Args:
        peer_logits: list of K >= 2 float [B, C] logits.

    Returns:
        list of K float32 scalars (batch means).
    """
    if len(peer_logits) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers. Received: {len(peer_logits)}.")
    log_p = [tf.nn.log_softmax(tf.cast(z, tf.float32), axis=-1) for z in peer_logits]
    k = len(log_p)
    terms = []
    for i, log_pi in enumerate(log_p):
        others = tf.stop_gradient(tf.stack([lp for j, lp in enumerate(log_p) if j != i]))
        # log of the mean probability, computed in the log domain.
        log_mean = tf.reduce_logsumexp(others, axis=0) - tf.math.log(float(k - 1))
        terms.append(tf.reduce_mean(tf.reduce_sum(tf.exp(log_mean) * (log_mean - log_pi), axis=-1)))
    return terms


def hierarchy_mask(labels, psi):
    """MAXL's hierarchy: bool [B, sum(psi)], True on the psi[y_b] auxiliary classes of example b's class.

    The auxiliary classes are laid out class by class: class 0 owns the first
    psi[0] of them, class 1 the next psi[1], and so on.

    Args:
        labels: int [B] primary class indices.
        psi: sequence of positive ints, auxiliary classes per primary class.
    """
    owner = tf.repeat(tf.range(len(psi), dtype=tf.int32), [int(p) for p in psi])
    return tf.equal(owner[tf.newaxis, :], tf.cast(labels, tf.int32)[:, tf.newaxis])


def masked_softmax(logits, labels, psi):
    """MAXL's generated auxiliary labels: a softmax over the psi[y] auxiliary classes of class y only.

    `q_bj = exp(g_bj) [j in psi(y_b)] / sum_{i in psi(y_b)} exp(g_bi)`, exactly
    zero outside the example's own classes (the reference adds 1e-8 there).

    Reference: S. Liu, A. J. Davison, E. Johns, "Self-Supervised Generalisation
    with Meta Auxiliary Learning", NeurIPS 2019, sec. 3.2.

    Args:
        logits: float [B, sum(psi)], the label-generation network's outputs g.
        labels: int [B] primary class indices.
        psi: auxiliary classes per primary class.

    Returns:
        float32 [B, sum(psi)], rows summing to 1.
    """
    logits = tf.cast(logits, tf.float32)
    # A large finite negative instead of -inf: no 0 * inf anywhere in the gradients.
    masked = tf.where(hierarchy_mask(labels, psi), logits, tf.fill(tf.shape(logits), -1e9))
    return tf.nn.softmax(masked, axis=-1)


def soft_label_loss(soft_labels, logits, kind="ce", gamma=2.0):
    """Loss of a prediction against soft labels, per example.

    `ce`: `-sum_c q_c log p_c`; `focal`: `-sum_c q_c (1 - p_c)^gamma log p_c`
    with `p = softmax(z)`. The focal form is MAXL's loss for both its tasks
    (Liu et al., NeurIPS 2019; focal loss: Lin et al., ICCV 2017); with one-hot
    labels the two equal `softmax_cross_entropy` and `focal_loss`.

    Args:
        soft_labels: float [B, K], rows summing to 1.
        logits: float [B, K].
        kind: "ce" or "focal".
        gamma: focusing parameter of "focal".

    Returns:
        float32 [B].
    """
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    weights = tf.cast(soft_labels, tf.float32)
    if kind == "focal":
        weights = weights * tf.pow(1.0 - tf.exp(log_p), gamma)
    elif kind != "ce":
        raise ValueError(f"kind must be one of {TARGET_LOSSES}. Received: kind={kind!r}")
    return -tf.reduce_sum(weights * log_p, axis=-1)


def mean_label_negative_entropy(probabilities):
    """MAXL's entropy regulariser: `sum_c qbar_c log qbar_c`, with `qbar` the batch mean of the generated labels.

    Minimising it (it is minus the entropy of the mean label distribution)
    spreads the examples of a class over all its auxiliary classes instead of
    collapsing them into one (Liu et al., NeurIPS 2019, sec. 3.4).

    Args:
        probabilities: float [B, K], rows summing to 1.

    Returns:
        float32 scalar, in [-log K, 0].
    """
    mean = tf.reduce_mean(tf.cast(probabilities, tf.float32), axis=0)
    # x log x -> 0 at x = 0; the where keeps the gradient finite there.
    safe = tf.where(mean > 0, mean, tf.ones_like(mean))
    return tf.reduce_sum(tf.where(mean > 0, mean * tf.math.log(safe), tf.zeros_like(mean)))
