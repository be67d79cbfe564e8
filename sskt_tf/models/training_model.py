"""The base of every model that `fit` trains here: the end of each training step, written once.

Every method's `train_step` computes its losses and then hands them to `TrainingModel.minimize`
(or its gradients to `TrainingModel.apply_gradients`), which scales them across replicas, adds the
coupled L2 of the recipe, applies loss scaling under mixed precision and steps the optimizer. What
train_lib asks of a model (its sources, its targets to save, how its results split) are methods
here that each method answers for itself.
"""

import keras
import tensorflow as tf


def replicas():
    """The number of replicas in sync under the current `tf.distribute` strategy.

    Each replica's loss is the mean over its local batch and the optimizer sums the replicas'
    gradients, so a step divides by this count exactly once.

    Returns:
        An int, 1 without a strategy.
    """
    return tf.distribute.get_strategy().num_replicas_in_sync


def coupled_l2(variables, weight_decay):
    """`weight_decay / 2 * sum_w ||w||^2` over `variables`: a float32 scalar.

    Its gradient is `weight_decay * w`, what PyTorch's SGD adds to every gradient with its
    `weight_decay` (the recipe's coupled L2; not decoupled AdamW-style decay). Added to the
    objective, never to the logged losses.

    Args:
        variables: list of variables (any float dtype; squared in float32).
        weight_decay: the coefficient, e.g. 5e-4.

    Returns:
        A float32 scalar tensor.

    Reference: `torch.optim.SGD(weight_decay=...)`, the SSKT reference code's optimizer.
    """
    squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
    return 0.5 * weight_decay * tf.add_n(squares)


def add_coupled_l2(grads, variables, weight_decay):
    """`g + weight_decay * w` for each gradient and variable: `coupled_l2` for gradients computed without it.

    Args:
        grads: list of gradient tensors, one per variable.
        variables: the variables of `grads`, in the same order.
        weight_decay: the coefficient; 0 returns `grads` unchanged (as a list).

    Returns:
        A list of tensors of the gradients' dtypes and shapes.
    """
    if not weight_decay:
        return list(grads)
    return [g + weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]


class TrainingModel(keras.Model):
    """A `keras.Model` that `fit` trains with a method's own `train_step`.

    Subclasses write `train_step` (computing their losses) and `target_model`; this class owns
    the parts every step shares and that must exist once: the division by the replica count, the
    coupled L2, loss scaling (`keras.optimizers.LossScaleOptimizer` under `mixed_float16`), the
    optimizer step, and the logs fix for `MultiWorkerMirroredStrategy`. `TargetModel` (a
    target network and its classifier) is the base of SSKT, KD and MAXL; `DMLModel` holds several
    `TargetModel` peers.

    The model and its optimizer must be built before `fit` (see `_maybe_symbolic_build`).

    Args:
        weight_decay: coupled L2 coefficient (`coupled_l2`), e.g. 5e-4; 0 for none.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Reference: keras.io's "Customizing what happens in fit()" guide (a custom `train_step` with
    `optimizer.apply` and `Mean` trackers).
    """

    def __init__(self, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.weight_decay = float(weight_decay)

    # --- What every method answers ------------------------------------------------------------

    @property
    def sources(self):
        """The frozen source networks the step consults (`sskt_tf.sources.Source`); none by default."""
        return []

    def target_model(self, name=None):
        """The network to export: raw images -> logits, sharing this model's layers.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define target_model().")

    def extra_targets(self, name):
        """`(file name, network)` for each network the run saves besides `target.keras`; none by default.

        Args:
            name: the name of the run's target (`target_model(name)`), to derive the others' names.
        """
        return []

    def split_results(self, test):
        """The target's test metrics and the method's extra fields of results.json.

        Args:
            test: `evaluate(..., return_dict=True)` of this model, metric name -> float.

        Returns:
            `(metrics, extra)`: the target's metrics (a dict, name -> float) and a dict of
            method-specific results.json fields; here `(test, {})`.
        """
        return dict(test), {}

    # --- The end of every training step ---------------------------------------------------------

    def train_step(self, data):
        raise NotImplementedError(f"{type(self).__name__} does not define train_step().")

    def minimize(self, loss_fn, variables):
        """One optimizer step on `variables` against the first value `loss_fn` returns.

        `loss_fn()` runs under the gradient tape: it computes the forward pass and returns a tuple
        whose first element is this replica's loss, a float32 scalar (batch mean). The step
        differentiates `(loss + coupled L2) / replicas`, loss-scaled, with respect to `variables`
        and applies the result with the compiled optimizer.

        Args:
            loss_fn: a function of no arguments returning `(loss, ...)`.
            variables: the trainable variables to step (never a frozen network's).

        Returns:
            What `loss_fn` returned.
        """
        with tf.GradientTape() as tape:
            outputs = loss_fn()
            objective = outputs[0]
            if self.weight_decay:
                # Written as a loss term so that loss scaling covers it too.
                objective = objective + coupled_l2(variables, self.weight_decay)
            # The optimizer sums gradients over replicas; each replica's loss is its local batch
            # mean, so this is the one place where the replica count enters.
            scaled = self.optimizer.scale_loss(objective / replicas())
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return outputs

    def apply_gradients(self, grads, variables):
        """One optimizer step on `variables` with gradients computed outside `minimize` (MAXL's).

        Adds the coupled L2 (`add_coupled_l2`), divides by the replica count, multiplies by the
        loss scale (a `LossScaleOptimizer` divides what it applies by it), and applies.

        Args:
            grads: this replica's gradients of its batch-mean loss, one per variable, without L2.
            variables: the variables of `grads`.
        """
        grads = [g / replicas() for g in add_coupled_l2(grads, variables, self.weight_decay)]
        grads = [g * self.optimizer.scale_loss(tf.constant(1.0)) for g in grads]
        if not self.optimizer.built:
            # As every other path builds it (Keras under a strategy, resumption): on all trainable
            # variables, so that its saved state always has the same layout.
            self.optimizer.build(self.trainable_variables)
        self.optimizer.apply(grads, variables)

    def _step_logs(self, metrics):
        """`{metric name: result}` of `metrics`, as `train_step` and `test_step` return them."""
        logs = {m.name: m.result() for m in metrics}
        # Keras 3 reduces the logs of a MultiWorkerMirroredStrategy step with
        # strategy.reduce(MEAN, value, axis=0), which fails on scalars (keras-team/keras#20585):
        # give them a length-1 axis there, which that reduction removes again.
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 reduces a PerReplica input batch here to build the model symbolically, which
        # fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). These models and their
        # optimizers are built before fit (train_lib.py), so there is nothing left to build.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # --- Config ---------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update({"weight_decay": self.weight_decay})
        return config
