"""The target network every method trains: backbone, global pooling, classifier, and its metrics."""

import keras

from sskt_tf import losses
from sskt_tf.models.layers import Classifier
from sskt_tf.models.training_model import TrainingModel


class TargetMetrics:
    """The running metrics of one target in `fit` and `evaluate`, reset by Keras every epoch.

    In order: `<prefix>loss` (the method's total), `<prefix>target_loss` (the label term),
    the method's training-only terms (`add_term`), `<prefix>accuracy` and, for more than 10
    classes, `<prefix>top5_accuracy`. Multi-label targets have no accuracies: their mAP needs the
    whole evaluation set (`sskt_tf.metrics`). The losses are `keras.metrics.Mean` of float32
    scalars (batch means) in training and of per-example values `[B]` in evaluation, which weighs
    a partial last batch by its size.

    Args:
        num_classes: classes of the target.
        multi_label: multi-hot labels (no accuracies).
        prefix: prepended to every metric name (DML's `peer<k>_`).
    """

    def __init__(self, num_classes, multi_label=False, prefix=""):
        self.prefix = prefix
        self.loss = keras.metrics.Mean(name=f"{prefix}loss")
        self.target_loss = keras.metrics.Mean(name=f"{prefix}target_loss")
        self.terms = []
        self.accuracy = None if multi_label else keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}accuracy")
        self.top5 = (
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"{prefix}top5_accuracy")
            if num_classes > 10 and not multi_label
            else None
        )

    def add_term(self, name):
        """Adds a training-only term `<prefix><name>` (a `keras.metrics.Mean`: a loss term or a
        per-example diagnostic, `[B]`) and returns it."""
        tracker = keras.metrics.Mean(name=f"{self.prefix}{name}")
        self.terms.append(tracker)
        return tracker

    def training(self):
        """Every metric, in the order above: what a training step logs."""
        return [self.loss, self.target_loss, *self.terms, *self._accuracies()]

    def evaluation(self):
        """The metrics without the training-only terms: what an evaluation step logs."""
        return [self.loss, self.target_loss, *self._accuracies()]

    def _accuracies(self):
        return [m for m in (self.accuracy, self.top5) if m is not None]

    def update(self, labels, logits, total, target, terms=()):
        """Updates the metrics with one batch.

        Args:
            labels: int class indices `[B]`, or float soft or multi-hot labels `[B, C]`.
            logits: float32 `[B, C]`.
            total: the method's loss, a float32 scalar or per-example `[B]`.
            target: the label term, the same shape as `total`.
            terms: one value per term of `add_term`, in order (training steps only).
        """
        self.loss.update_state(total)
        self.target_loss.update_state(target)
        for tracker, value in zip(self.terms, terms):
            tracker.update_state(value)
        if self.accuracy is not None:
            # With MixUp/CutMix the training accuracy counts the dominant class of each mixed label.
            labels = losses.class_indices(labels, logits)
            self.accuracy.update_state(labels, logits)
        if self.top5 is not None:
            self.top5.update_state(labels, logits)


class TargetModel(TrainingModel):
    """A target network: backbone -> global average pooling of one stage -> classifier (logits).

    The base of the methods that train one target (`SSKTModel`, `KDModel`, `MAXLModel`); each
    adds its own networks, loss terms and `train_step`, ending in `minimize` (or
    `apply_gradients`). `call()` returns the target's logits and `target_model()` is the target
    alone, for export. Evaluation (`test_step`) scores the target alone: its `loss` is the target
    loss.

    Args:
        backbone: a `sskt_tf.models.Backbone` (raw images -> dict of stage outputs).
        num_classes: classes of the target task.
        target_loss: "ce" or "focal" (labels: int class indices `[B]`, or float soft labels
            `[B, C]` from MixUp/CutMix), or "bce" (multi-label: float multi-hot labels `[B, C]`;
            no accuracy metrics). See `sskt_tf.losses.target_loss_fn`.
        weight_decay: coupled L2 coefficient on the trained variables' gradients (PyTorch SGD's
            `weight_decay`), never part of the logged losses.
        feature_key: the stage output the classifier pools.
        class_names: one name per class (str), or None. The classifier (a `Classifier`, a Dense
            layer) keeps them in its config, so every saved target (target.keras, checkpoints)
            carries them (`sskt_tf.models.class_names_of`).
        **kwargs: `keras.Model` arguments (`name`, ...).

    Raises:
        ValueError: `class_names` that do not name every class (from `Classifier`).
        UserError: an unknown `target_loss` (from `sskt_tf.losses.target_loss_fn`).
    """

    def __init__(
        self,
        backbone,
        num_classes,
        target_loss="ce",
        weight_decay=0.0,
        feature_key="stage3",
        class_names=None,
        **kwargs,
    ):
        super().__init__(weight_decay=weight_decay, **kwargs)
        # === Layers ===
        self.backbone = backbone
        # 3D backbones (video) end in [B, T, H, W, C] feature maps.
        video = len(backbone.output[feature_key].shape) == 5
        self.pool = (keras.layers.GlobalAveragePooling3D if video else keras.layers.GlobalAveragePooling2D)(name="pool")
        # Logits in float32 also under mixed precision, for stable softmax and losses.
        self.classifier = Classifier(num_classes, class_names=class_names, dtype="float32", name="classifier")

        # === Config ===
        self.num_classes = int(num_classes)
        self.target_loss = target_loss
        self.feature_key = feature_key
        self.class_names = self.classifier.class_names  # Checked there: one name per class.
        self._target_loss_fn = losses.target_loss_fn(target_loss)
        # Multi-hot float labels [B, C]: accuracies do not apply; mAP is computed over the whole
        # evaluation set outside the step (sskt_tf.metrics).
        self.multi_label = target_loss in losses.MULTI_LABEL_TARGET_LOSSES

        # === Metrics ===
        self.target_metrics = TargetMetrics(self.num_classes, self.multi_label)

    # --- Forward -------------------------------------------------------------------------------

    def _target_logits(self, features):
        return self.classifier(self.pool(features[self.feature_key]))

    def call(self, images, training=False):
        return self._target_logits(self.backbone(images, training=training))

    def build(self, input_shape):
        images = keras.ops.zeros((1, *input_shape[1:]))
        self._target_logits(self.backbone(images, training=False))
        self.built = True

    @property
    def target_variables(self):
        """What the step trains: the backbone's and the classifier's trainable variables, and a subclass's own."""
        return self.backbone.trainable_variables + self.classifier.trainable_variables

    def target_model(self, name=None):
        """The target alone: raw images -> logits, sharing this model's layers.

        Args:
            name: the model's name; default `<backbone name>_target`.

        Returns:
            A functional model, float raw RGB `[N, H, W, 3]` in 0..255 (clips `[N, T, H, W, 3]` for a
            3D backbone) -> float32 logits `[N, C]`.
            Its last layer, the classifier, stores `class_names` (`sskt_tf.models.class_names_of`
            reads them back, also from a reloaded file).
        """
        inputs = keras.Input(self.backbone.input_shape[1:], name="images")
        outputs = self._target_logits(self.backbone(inputs))
        return keras.Model(inputs, outputs, name=name or f"{self.backbone.name}_target")

    def target_losses(self, labels, logits):
        """The target loss of each example: float32 `[B]` (`target_loss`; labels as documented there)."""
        return self._target_loss_fn(labels, logits)

    # --- Steps ---------------------------------------------------------------------------------

    @property
    def metrics(self):
        """The running metrics Keras resets every epoch (`TargetMetrics.training`)."""
        return self.target_metrics.training()

    def score_batch(self, images, labels, metrics):
        """Scores the target alone on one evaluation batch (inference mode) into `metrics`.

        Args:
            images: float raw RGB `[B, H, W, 3]`.
            labels: as `target_loss` takes them.
            metrics: the `TargetMetrics` to update: `loss` and `target_loss` both get the
                per-example target loss.
        """
        logits = self(images, training=False)
        # Per-example values: the Mean trackers then weigh a partial last batch by its size.
        per_example = self.target_losses(labels, logits)
        metrics.update(labels, logits, total=per_example, target=per_example)

    def test_step(self, data):
        # Evaluation scores the target alone; the method's other networks would only add their
        # cost. Its total loss is the target loss.
        self.score_batch(data[0], data[1], self.target_metrics)
        return self._step_logs(self.target_metrics.evaluation())

    # --- Config --------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes,
                "target_loss": self.target_loss,
                "feature_key": self.feature_key,
                "class_names": None if self.class_names is None else list(self.class_names),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
