"""Meta auxiliary learning, MAXL (Liu, Davison, Johns, NeurIPS 2019).

A label-generation network g_phi assigns every training example an auxiliary label: a distribution
over the psi[y] auxiliary sub-classes of its class y (masked softmax over sum(psi) outputs). The
target is a multi-task network: its backbone feeds the primary classifier and an auxiliary classifier
over the sum(psi) sub-classes. For a batch x with labels y, one step updates both:

    q = masked_softmax(g_phi(x), y, psi)
    L_mt(theta, phi) = L(f_theta(x), y) + w_aux * L_soft(q, f^aux_theta(x))
    theta  <-  theta - lr * (grad_theta L_mt + wd * theta)                 (q a constant: ordinary gradient)
    theta+ =   theta - lr * grad_theta L_mt(theta, phi)                    (one-step look-ahead, plain SGD)
    phi    <-  phi - lr_g * (grad_phi [L(f_theta+(x), y) + w_ent * sum_c qbar_c log qbar_c] + wd * phi)

The generator's gradient flows only through the look-ahead: how its labels, used for one step,
change the target's primary loss (a second-order gradient through grad_theta L_mt). The entropy
term (qbar = batch mean of q) keeps the generator from collapsing every class into one sub-class.
`first_order=True` replaces the second-order product by the finite-difference approximation of
DARTS (Liu, Simonyan, Yang, ICLR 2019), as the MAXL code's model_vgg_maxl_firstorder.py does:

    grad_phi L(theta+) ~ -lr * (grad_phi L_mt(theta + eps d, phi) - grad_phi L_mt(theta - eps d, phi)) / (2 eps),
    d = grad_theta+ L(f_theta+(x), y),   eps = 0.01 / ||d||

which needs first derivatives only. (Dropping the second-order term outright, as first-order MAML
does, would leave the generator no gradient at all: its only path to the primary loss is that term.)

Differences from the reference code (lorenmt/maxl), on purpose: both networks step on every batch
(the reference alternates a whole epoch of target steps with a whole epoch of generator steps); the
look-ahead uses the batch the target steps on; the target's losses follow `--target_loss` (the
reference uses focal loss, gamma 2, for both tasks: `--target_loss=focal`); the networks are the
recipe's target and a second copy of it as generator, with linear heads (the reference: VGG-16 with
two-layer heads for both); the generator's learning rate follows the target's schedule.
"""

import keras
import tensorflow as tf

from sskt_tf import losses
from sskt_tf.models.target_model import TargetModel
from sskt_tf.models.training_model import add_coupled_l2, replicas


def build_label_generator(backbone, num_outputs, feature_key, name="label_generator"):
    """The label-generation network: backbone -> global average pooling -> Dense(sum(psi)) logits.

    Args:
        backbone: a `sskt_tf.models.Backbone` of its own (not the target's).
        num_outputs: sum(psi), the auxiliary classes of all primary classes.
        feature_key: the stage output to pool.
        name: the model's name.

    Returns:
        A functional model, float raw RGB `[B, H, W, 3]` -> float32 logits `[B, num_outputs]`.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="images")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs)[feature_key])
    logits = keras.layers.Dense(num_outputs, dtype="float32", name="logits")(pooled)
    return keras.Model(inputs, logits, name=name)


def _zeros_for_none(grads, variables):
    return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


@keras.saving.register_keras_serializable(package="sskt_tf")
class MAXLModel(TargetModel):
    """A multi-task target and a label-generation network, trained by meta auxiliary learning (MAXL).

    `call()` returns the target's primary logits; `target_model()` is the target
    alone (no auxiliary classifier, no generator). The target's variables
    (backbone, classifier, auxiliary classifier) receive the ordinary gradient of
    the multi-task loss through the compiled optimizer; the generator's receive
    the meta-gradient through a plain SGD optimizer of its own.

    Metrics: `loss` (the multi-task loss), `target_loss` (the primary loss),
    `aux_loss` (the auxiliary loss, unweighted), `meta_loss` (the primary loss
    after the look-ahead step), `label_entropy` (entropy of the batch-mean
    generated label, at most log sum(psi)), `accuracy` (and `top5_accuracy` for
    more than 10 classes); the last four training-only ones aside, evaluation
    scores the target alone.

    Args:
        backbone: a `sskt_tf.models.Backbone` (raw images -> dict of stage outputs).
        num_classes: classes of the primary task.
        generator: the label-generation network, raw images -> float32 `[B, sum(psi)]` logits
            (`build_label_generator`).
        psi: auxiliary classes per primary class: one value for all, or one per class.
        aux_weight: weight of the auxiliary loss in the multi-task loss.
        entropy_weight: weight of the entropy regulariser in the generator's objective.
        generator_lr: the generator's learning rate at the target's peak learning rate.
        base_lr: the target's peak learning rate (the generator's follows the same schedule).
        first_order: finite-difference meta-gradient instead of the exact second-order one.
        fd_epsilon: step of the finite difference, relative to the norm of the look-ahead gradient.
        **kwargs: `TargetModel` arguments (target_loss, weight_decay, feature_key, class_names, name, ...).

    Raises:
        ValueError: `psi` with a non-positive value or neither one value nor one per class, no
            generator, or a generator whose output width is not sum(psi).

    Example:
    >>> generator = build_label_generator(CifarResNet(20), 50, "stage3")
    >>> model = MAXLModel(CifarResNet(20), 10, generator, psi=(5,), base_lr=0.1)
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))

    Reference: S. Liu, A. J. Davison, E. Johns, "Self-Supervised Generalisation with Meta
    Auxiliary Learning", NeurIPS 2019.
    """

    def __init__(
        self,
        backbone,
        num_classes,
        generator=None,
        psi=(10,),
        aux_weight=1.0,
        entropy_weight=0.2,
        generator_lr=1e-3,
        base_lr=0.1,
        first_order=False,
        fd_epsilon=0.01,
        **kwargs,
    ):
        super().__init__(backbone, num_classes, **kwargs)
        psi = tuple(int(p) for p in psi)
        if len(psi) == 1:
            psi = psi * int(num_classes)
        if len(psi) != num_classes or min(psi) < 1:
            raise ValueError(
                f"psi needs one positive value, or one per class ({num_classes}). Received: psi={psi}"
            )
        if generator is None:
            raise ValueError("MAXLModel needs a label-generation network (see build_label_generator).")
        if generator.output_shape[-1] != sum(psi):
            raise ValueError(
                f"The label generator must output sum(psi) = {sum(psi)} logits. Received: {generator.output_shape}."
            )
        # === Layers ===
        self.aux_classifier = keras.layers.Dense(sum(psi), dtype="float32", name="aux_classifier")
        self.generator = generator
        # Plain SGD, as the reference's generator optimizer; the step scales its gradients by the
        # target's schedule (without momentum, the same as scaling the learning rate).
        self.generator_optimizer = keras.optimizers.SGD(learning_rate=generator_lr, name="generator_sgd")

        # === Config ===
        self.psi = psi
        self.aux_weight = float(aux_weight)
        self.entropy_weight = float(entropy_weight)
        self.generator_lr = float(generator_lr)
        self.base_lr = float(base_lr)
        self.first_order = bool(first_order)
        self.fd_epsilon = float(fd_epsilon)

        # === Metrics ===
        # Training-only terms, left out of evaluation.
        self.aux_loss_tracker = self.target_metrics.add_term("aux_loss")
        self.meta_loss_tracker = self.target_metrics.add_term("meta_loss")
        self.label_entropy_tracker = self.target_metrics.add_term("label_entropy")

    # --- Forward -----------------------------------------------------------------------------

    def _multitask_forward(self, images, training):
        features = self.backbone(images, training=training)
        aux_logits = self.aux_classifier(self.pool(features[self.feature_key]))
        return self._target_logits(features), aux_logits

    def build(self, input_shape):
        super().build(input_shape)
        images = keras.ops.zeros((1, *input_shape[1:]))
        self._multitask_forward(images, training=False)
        self.generator(images)
        self.generator_optimizer.build(self.generator.trainable_variables)

    @property
    def target_variables(self):
        """The multi-task target: backbone, classifier and auxiliary classifier; never the generator."""
        return super().target_variables + self.aux_classifier.trainable_variables

    # --- Losses ------------------------------------------------------------------------------

    def generated_labels(self, images, labels, training=True):
        """The generator's auxiliary labels: float32 [B, sum(psi)], zero outside each example's class."""
        return losses.masked_softmax(self.generator(images, training=training), labels, self.psi)

    def _multitask_loss(self, images, labels, aux_labels):
        logits, aux_logits = self._multitask_forward(images, training=True)
        target = tf.reduce_mean(self.target_losses(labels, logits))
        aux = tf.reduce_mean(losses.soft_label_loss(aux_labels, aux_logits, self.target_loss))
        return losses.total_loss([target, self.aux_weight * aux]), target, aux, logits

    def _loss_at(self, theta, values, fn):
        """`fn()` with the variables `theta` replaced by `values` (BatchNorm statistics left unchanged)."""
        with keras.StatelessScope(state_mapping=list(zip(theta, values))):
            return fn()

    def _lookahead_loss(self, images, labels, theta, fast):
        # The reference evaluates the look-ahead network in training mode (batch statistics).
        logits = self._loss_at(theta, fast, lambda: self(images, training=True))
        return tf.reduce_mean(self.target_losses(labels, logits))

    # --- Steps -------------------------------------------------------------------------------

    def _second_order(self, images, labels, theta, phi, lr):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                aux_labels = self.generated_labels(images, labels)
                total, target, aux, logits = self._multitask_loss(images, labels, aux_labels)
            grads = _zeros_for_none(inner.gradient(total, theta), theta)
            # Recorded by the outer tape: theta+ is a function of phi through grads.
            fast = [w - lr * g for w, g in zip(theta, grads)]
            meta = self._lookahead_loss(images, labels, theta, fast)
            neg_entropy = losses.mean_label_negative_entropy(aux_labels)
            objective = meta + self.entropy_weight * neg_entropy
        gen_grads = _zeros_for_none(outer.gradient(objective, phi), phi)
        return grads, gen_grads, (total, target, aux, meta, -neg_entropy, logits)

    def _finite_difference(self, images, labels, theta, phi, lr):
        with tf.GradientTape() as gen_tape:
            aux_labels = self.generated_labels(images, labels)
            neg_entropy = losses.mean_label_negative_entropy(aux_labels)
        constant_labels = tf.stop_gradient(aux_labels)
        with tf.GradientTape() as tape:
            total, target, aux, logits = self._multitask_loss(images, labels, constant_labels)
        grads = _zeros_for_none(tape.gradient(total, theta), theta)
        fast = [w - lr * g for w, g in zip(theta, grads)]
        with tf.GradientTape() as fast_tape:
            fast_tape.watch(fast)
            meta = self._lookahead_loss(images, labels, theta, fast)
        direction = _zeros_for_none(fast_tape.gradient(meta, fast), theta)
        eps = tf.math.divide_no_nan(self.fd_epsilon, tf.linalg.global_norm(direction))

        def label_gradient(sign):
            # d(w_aux * L_aux)/dq at theta + sign * eps * d: what L_mt's phi-gradient needs besides dq/dphi.
            shifted = [w + sign * eps * d for w, d in zip(theta, direction)]
            _, aux_logits = self._loss_at(theta, shifted, lambda: self._multitask_forward(images, training=True))
            with tf.GradientTape() as label_tape:
                label_tape.watch(constant_labels)
                weighted = self.aux_weight * tf.reduce_mean(losses.soft_label_loss(constant_labels, aux_logits, self.target_loss))
            return label_tape.gradient(weighted, constant_labels)

        mixed = tf.math.divide_no_nan(label_gradient(1.0) - label_gradient(-1.0), 2.0 * eps)
        gen_grads = gen_tape.gradient(
            [aux_labels, neg_entropy], phi, output_gradients=[-lr * mixed, tf.constant(self.entropy_weight)]
        )
        gen_grads = _zeros_for_none(gen_grads, phi)
        return grads, gen_grads, (total, target, aux, meta, -neg_entropy, logits)

    def train_step(self, data):
        images, labels = data[0], data[1]
        theta = self.target_variables
        phi = self.generator.trainable_variables
        # The learning rate of this step (the optimizer's schedule at its current iteration).
        lr = tf.cast(self.optimizer.learning_rate, tf.float32)
        step = self._finite_difference if self.first_order else self._second_order
        grads, gen_grads, (total, target, aux, meta, entropy, logits) = step(images, labels, theta, phi, lr)
        # Both gradients are of this replica's batch-mean losses and the optimizers sum over replicas.
        # (With several replicas, each look-ahead uses its local batch's gradient.) The coupled L2 is
        # added to the gradients, not the losses, because the look-ahead step, as the paper's,
        # leaves it out. The generator's learning rate follows the target's schedule; its plain SGD
        # is not loss-scaled.
        gen_grads = add_coupled_l2(gen_grads, phi, self.weight_decay)
        gen_grads = [g * (lr / (self.base_lr * replicas())) for g in gen_grads]
        # The target's optimizer is built, if it is not yet, on all trainable variables: the
        # generator's slots stay unused; the generator has its own optimizer.
        self.apply_gradients(grads, theta)
        self.generator_optimizer.apply(gen_grads, phi)
        self.target_metrics.update(labels, logits, total, target, [aux, meta, entropy])
        return self._step_logs(self.metrics)

    # --- Config ------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "generator": keras.saving.serialize_keras_object(self.generator),
                "psi": list(self.psi),
                "aux_weight": self.aux_weight,
                "entropy_weight": self.entropy_weight,
                "generator_lr": self.generator_lr,
                "base_lr": self.base_lr,
                "first_order": self.first_order,
                "fd_epsilon": self.fd_epsilon,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return super().from_config(config)
