"""Knowledge distillation (Hinton et al., 2015): a target trained against a frozen teacher's softened outputs.

For a batch x with labels y, a frozen teacher t of the same label space:

    z = target(x),   z_t = t(x)                      (no gradient, inference mode)
    L = (1 - a) * CE(z, y) + a * T^2 * KL(softmax(z_t / T) || softmax(z / T))

Why not `keras.distillation.Distiller` (Keras 3.15): see the README, "Baselines and the comparison
runner". In short: its default `LogitsDistillation()` resolves "kl_divergence" to the plain function,
so the KL is taken of clipped logits instead of softmax probabilities and without T^2; it scales the
two loss terms differently across replicas; and its `train_step` has no place for the recipe's coupled
L2. This model is SSKTModel's target with one training-only term instead.
"""

import keras
import tensorflow as tf

from sskt_tf import losses
from sskt_tf.baselines import common
from sskt_tf.sskt import SSKTModel, _step_logs


@keras.saving.register_keras_serializable(package="sskt_tf")
class KDModel(SSKTModel):
    """A target network distilled from a frozen teacher.

    `call()` returns the target's logits; `target_model()` is the target alone
    (no teacher). Only the target's variables receive gradients; the teacher is
    a frozen `sskt_tf.sources.Source` (resize, inference mode, stop-gradient).

    Metrics: `loss` (the weighted total), `target_loss` (the label term,
    unweighted), `kd_loss` (T^2 * KL, unweighted; training only), `accuracy`
    (and `top5_accuracy` for more than 10 classes). Evaluation scores the target
    alone.

    Args:
        backbone: a model from raw images to a dict of stage outputs (see `sskt_tf.models`).
        num_classes: classes of the target task; the teacher must predict as many.
        teacher: a frozen `sskt_tf.sources.Source`.
        kd_alpha: weight a of the distillation term, in [0, 1].
        kd_temperature: temperature T.
        **kwargs: `SSKTModel` arguments (target_loss, weight_decay, feature_key, name, ...).

    Example:
    >>> teacher = sources.build_source("/runs/teacher/target.keras", (32, 32), 1.0)
    >>> model = KDModel(CifarResNet(20), 10, teacher, kd_alpha=0.9, kd_temperature=4.0)
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """

    def __init__(self, backbone, num_classes, teacher=None, kd_alpha=0.9, kd_temperature=4.0, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        if teacher is None:
            raise ValueError("KDModel needs a teacher (a frozen sskt_tf.sources.Source).")
        if teacher.num_classes != num_classes:
            raise ValueError(
                f"The teacher must predict the target's {num_classes} classes. Received: a teacher with "
                f"{teacher.num_classes} classes."
            )
        if not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must be in [0, 1]. Received: kd_alpha={kd_alpha}")
        # === Layers ===
        self.teacher = teacher
        # === Config ===
        self.kd_alpha = float(kd_alpha)
        self.kd_temperature = float(kd_temperature)
        # === Metrics ===
        # SSKTModel reports its training-only terms from aux_loss_trackers and leaves them out of evaluation.
        self.aux_loss_trackers = [keras.metrics.Mean(name="kd_loss")]

    def build(self, input_shape):
        super().build(input_shape)
        self.teacher(keras.ops.zeros((1, *input_shape[1:])))

    def train_step(self, data):
        images, labels = data[0], data[1]
        # The teacher is a constant of the step: outside the tape, inference mode, no gradient.
        teacher_logits = self.teacher(images)
        variables = self.target_variables
        replicas = common.replicas()
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            total, target, kd = losses.distillation_loss(
                labels, teacher_logits, logits, self.kd_alpha, self.kd_temperature, self._target_loss_fn
            )
            objective = common.with_coupled_l2(total, variables, self.weight_decay)
            # The optimizer sums gradients over replicas: the one division by the replica count.
            scaled = self.optimizer.scale_loss(objective / replicas)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        self._update_metrics(labels, logits, total, target, [kd])
        return _step_logs({m.name: m.result() for m in self.metrics})

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "kd_alpha": self.kd_alpha,
                "kd_temperature": self.kd_temperature,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return super().from_config(config)
