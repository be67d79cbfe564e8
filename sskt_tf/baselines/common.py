"""Pieces every baseline's `train_step` shares with SSKTModel's."""

import tensorflow as tf


def replicas():
    """Replicas of the current strategy: each replica's loss is its local batch mean, and the optimizer sums."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def with_coupled_l2(loss, variables, weight_decay):
    """`loss + weight_decay / 2 * sum ||w||^2`: its gradient adds `weight_decay * w` to every variable's.

    PyTorch SGD's coupled L2 (the recipe's), as SSKTModel adds it: a term of the objective, so that
    loss scaling covers it; never part of the logged losses.
    """
    if not weight_decay:
        return loss
    squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
    return loss + 0.5 * weight_decay * tf.add_n(squares)


def add_coupled_l2(grads, variables, weight_decay):
    """`g + weight_decay * w` for gradients computed without `with_coupled_l2` (MAXL's)."""
    if not weight_decay:
        return list(grads)
    return [g + weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
