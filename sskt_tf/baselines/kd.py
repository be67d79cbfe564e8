"""Knowledge distillation (Hinton et al., 2015): a target trained against a frozen teacher's softened outputs.

For a batch x with labels y, a frozen teacher t of the same label space:

    z = target(x),   z_t = t(x)                      (no gradient, inference mode)
    L = (1 - a) * CE(z, y) + a * T^2 * KL(softmax(z_t / T) || softmax(z / T))

Why not `keras.distillation.Distiller` (Keras 3.15): see docs/baselines.md. In short: its default
`LogitsDistillation()` resolves "kl_divergence" to the plain function,
so the KL is taken of clipped logits instead of softmax probabilities and without T^2; it scales the
two loss terms differently across replicas; and its `train_step` has no place for the recipe's coupled
L2. This model is a `TargetModel` with a teacher and one training-only term.
"""

import keras

from sskt_tf import losses
from sskt_tf.models.target_model import TargetModel


@keras.saving.register_keras_serializable(package="sskt_tf")
class KDModel(TargetModel):
    """A target network distilled from a frozen teacher (Hinton et al., 2015).

    `call()` returns the target's logits; `target_model()` is the target alone
    (no teacher). Only the target's variables receive gradients; the teacher is
    a frozen `sskt_tf.sources.Source` (resize, inference mode, stop-gradient).

    Metrics: `loss` (the weighted total), `target_loss` (the label term,
    unweighted), `kd_loss` (T^2 * KL, unweighted; training only), `accuracy`
    (and `top5_accuracy` for more than 10 classes). Evaluation scores the target
    alone.

    Args:
        backbone: a `sskt_tf.models.Backbone` (raw images -> dict of stage outputs).
        num_classes: classes of the target task; the teacher must predict as many.
        teacher: a frozen `sskt_tf.sources.Source`, raw images -> float32 logits `[B, num_classes]`.
        kd_alpha: weight a of the distillation term, in [0, 1].
        kd_temperature: temperature T > 0.
        **kwargs: `TargetModel` arguments (target_loss, weight_decay, feature_key, class_names, name, ...).

    Raises:
        ValueError: no teacher, a teacher of another class count, or `kd_alpha` outside [0, 1].

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
        self.kd_loss_tracker = self.target_metrics.add_term("kd_loss")

    def build(self, input_shape):
        super().build(input_shape)
        self.teacher(keras.ops.zeros((1, *input_shape[1:])))

    def split_results(self, test):
        """The target's test metrics, and results.json's `teacher`: its spec, classes and input size (pixels)."""
        t = self.teacher
        return dict(test), {"teacher": {"spec": t.spec, "classes": t.num_classes, "input_size": list(t.image_size)}}

    def train_step(self, data):
        inputs, labels = data[0], data[1]
        if isinstance(inputs, dict):
            # --soft_label_cache: the pipeline brings each example's stored teacher logits.
            images, teacher_logits = inputs["images"], inputs["extras"][0]
        else:
            images = inputs
            # The teacher is a constant of the step: outside the tape, inference mode, no gradient.
            teacher_logits = self.teacher(images)

        def loss_fn():
            logits = self(images, training=True)
            total, target, kd = losses.distillation_loss(
                labels, teacher_logits, logits, self.kd_alpha, self.kd_temperature, self.target_losses
            )
            return total, target, kd, logits

        total, target, kd, logits = self.minimize(loss_fn, self.target_variables)
        self.target_metrics.update(labels, logits, total, target, [kd])
        return self._step_logs(self.metrics)

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
