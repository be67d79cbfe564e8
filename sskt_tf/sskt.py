"""The SSKT model: a target network with auxiliary heads, trained against frozen sources.

For a batch x with labels y (Hong et al., WACV 2022, eq. 3):

    z = main(x),  a_k = aux_k(x),  s_k = S_k(resize(x))   (no gradient, inference mode)
    L = L_target(z, y) + sum_k alpha_k * L_aux(s_k, a_k; T_k)

With no sources it is the scratch baseline with the identical recipe.
"""

import keras
import tensorflow as tf

from sskt_tf import heads, losses, models, sources
from sskt_tf.models.layers import Classifier


@keras.saving.register_keras_serializable(package="sskt_tf")
class SSKTModel(keras.Model):
    """Target network + one auxiliary head per frozen source, with SSKT's `train_step`.

    `call()` returns the target's logits only; `target_model()` is the target
    alone (no heads, no sources), for export. Only the target's variables
    (backbone, classifier, auxiliary heads) receive gradients.

    Args:
        backbone: a model from raw images to a dict of stage outputs (see `sskt_tf.models`).
        num_classes: classes of the target task.
        sources: list of frozen `sskt_tf.sources.Source` layers.
        aux_heads: one auxiliary head per source (see `sskt_tf.heads`).
        alphas: one weight per source.
        temperatures: one temperature per source.
        target_loss: "ce" or "focal" (labels: int class indices [B], or float soft labels
            [B, C] from MixUp/CutMix), or "bce" (multi-label: float multi-hot labels [B, C];
            no accuracy metrics).
        aux_loss: "ce" (soft-label cross-entropy) or "kd" (KL).
        kd_reduction: "batchmean" or "mean" (PyTorch KLDivLoss default) for `aux_loss="kd"`.
        weight_decay: coupled L2: `weight_decay * w` is added to every target
            variable's gradient before the optimizer (PyTorch SGD's weight_decay);
            it is not part of the logged losses.
        feature_key: the stage output the classifier pools.
        class_names: one name per class (str), or None. The classifier (a `Classifier`, a Dense
            layer) keeps them in its config, so every saved target (target.keras, checkpoints)
            carries them (`sskt_tf.models.class_names_of`).

    Example:
    >>> model = SSKTModel(CifarResNet(20), 10, [source], [LinearHead(1000)], [0.1], [3.0])
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> model.fit(train_ds, epochs=1, steps_per_epoch=390)
    """

    def __init__(
        self,
        backbone,
        num_classes,
        sources=(),
        aux_heads=(),
        alphas=(),
        temperatures=(),
        target_loss="ce",
        aux_loss="ce",
        kd_reduction="batchmean",
        weight_decay=0.0,
        feature_key="stage3",
        class_names=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        sources, aux_heads = list(sources), list(aux_heads)
        alphas, temperatures = [float(a) for a in alphas], [float(t) for t in temperatures]
        if not len(sources) == len(aux_heads) == len(alphas) == len(temperatures):
            raise ValueError(
                "SSKTModel needs one aux head, alpha and temperature per source. Received: "
                f"{len(sources)} sources, {len(aux_heads)} heads, {len(alphas)} alphas, "
                f"{len(temperatures)} temperatures."
            )
        # === Layers ===
        self.backbone = backbone
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        # Logits in float32 also under mixed precision, for stable softmax and losses.
        self.classifier = Classifier(num_classes, class_names=class_names, dtype="float32", name="classifier")
        self.sources = sources
        self.aux_heads = aux_heads

        # === Config ===
        self.num_classes = int(num_classes)
        self.alphas = alphas
        self.temperatures = temperatures
        self.target_loss = target_loss
        self.aux_loss = aux_loss
        self.kd_reduction = kd_reduction
        self.weight_decay = float(weight_decay)
        self.feature_key = feature_key
        self.class_names = self.classifier.class_names  # Checked there: one name per class.
        self._target_loss_fn = losses.target_loss_fn(target_loss)
        # Multi-hot float labels [B, C]: accuracies do not apply; mAP is computed over the whole
        # evaluation set outside the step (sskt_tf.metrics).
        self.multi_label = target_loss in losses.MULTI_LABEL_TARGET_LOSSES

        # === Metrics ===
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.target_loss_tracker = keras.metrics.Mean(name="target_loss")
        self.aux_loss_trackers = [keras.metrics.Mean(name=f"aux_loss_{s.name.removeprefix('source_')}") for s in sources]
        self.accuracy_metric = None if self.multi_label else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.top5_metric = (
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy")
            if num_classes > 10 and not self.multi_label
            else None
        )

    # --- Forward -----------------------------------------------------------------------------

    def _target_logits(self, features):
        return self.classifier(self.pool(features[self.feature_key]))

    def call(self, images, training=False):
        return self._target_logits(self.backbone(images, training=training))

    def _forward_with_heads(self, images, training):
        features = self.backbone(images, training=training)
        return self._target_logits(features), [head(features, training=training) for head in self.aux_heads]

    def build(self, input_shape):
        images = keras.ops.zeros((1, *input_shape[1:]))
        self._forward_with_heads(images, training=False)
        for source in self.sources:
            source(images)
        self.built = True

    @property
    def target_variables(self):
        """Everything that trains: backbone, classifier and auxiliary heads; never the sources."""
        variables = self.backbone.trainable_variables + self.classifier.trainable_variables
        for head in self.aux_heads:
            variables += head.trainable_variables
        return variables

    def target_model(self, name=None):
        """The target alone: raw images -> logits, sharing this model's layers (no heads, no sources).

        Returns:
            A functional model, float raw RGB `[N, H, W, 3]` in 0..255 -> float32 logits `[N, C]`.
            Its last layer, the classifier, stores `class_names` (`sskt_tf.models.class_names_of`
            reads them back, also from a reloaded file).
        """
        inputs = keras.Input(self.backbone.input_shape[1:], name="images")
        outputs = self._target_logits(self.backbone(inputs))
        return keras.Model(inputs, outputs, name=name or f"{self.backbone.name}_target")

    # --- Steps -------------------------------------------------------------------------------

    @property
    def metrics(self):
        metrics = [self.loss_tracker, self.target_loss_tracker, *self.aux_loss_trackers]
        return metrics + [m for m in (self.accuracy_metric, self.top5_metric) if m is not None]

    def _sskt_losses(self, labels, logits, aux_logits, source_logits):
        target = tf.reduce_mean(self._target_loss_fn(labels, logits))
        aux = [
            losses.aux_loss(self.aux_loss, s, a, t, self.kd_reduction)
            for s, a, t in zip(source_logits, aux_logits, self.temperatures)
        ]
        total = target + sum((alpha * term for alpha, term in zip(self.alphas, aux)), 0.0)
        return total, target, aux

    def _update_metrics(self, labels, logits, total, target, aux=()):
        self.loss_tracker.update_state(total)
        self.target_loss_tracker.update_state(target)
        for tracker, value in zip(self.aux_loss_trackers, aux):
            tracker.update_state(value)
        if self.accuracy_metric is not None:
            # With MixUp/CutMix the training accuracy counts the dominant class of each mixed label.
            labels = losses.class_indices(labels, logits)
            self.accuracy_metric.update_state(labels, logits)
        if self.top5_metric is not None:
            self.top5_metric.update_state(labels, logits)

    def train_step(self, data):
        inputs, labels = data[0], data[1]
        if isinstance(inputs, dict):
            # --soft_label_cache=clean: the pipeline brings each example's stored source logits.
            images, source_logits = inputs["images"], list(inputs["extras"])
        else:
            images = inputs
            # Sources are constants of the step: outside the tape, inference mode, no gradient.
            source_logits = [source(images) for source in self.sources]
        variables = self.target_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits, aux_logits = self._forward_with_heads(images, training=True)
            total, target, aux = self._sskt_losses(labels, logits, aux_logits, source_logits)
            objective = total
            if self.weight_decay:
                # Coupled L2 as PyTorch's SGD: its gradient, weight_decay * w, joins the loss's
                # before momentum. Written as a loss term so that loss scaling covers it too.
                squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
                objective = objective + 0.5 * self.weight_decay * tf.add_n(squares)
            # The optimizer sums gradients over replicas; each replica's loss is its local
            # batch mean, so this is the one place where the replica count enters.
            scaled = self.optimizer.scale_loss(objective / replicas)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self._update_metrics(labels, logits, total, target, aux)
        return _step_logs({m.name: m.result() for m in self.metrics})

    def test_step(self, data):
        # Evaluation scores the target alone; the sources would only add their cost. Its total loss
        # is the target loss.
        images, labels = data[0], data[1]
        logits = self(images, training=False)
        # Per-example values: the Mean trackers then weigh a partial last batch by its size.
        per_example = self._target_loss_fn(labels, logits)
        self._update_metrics(labels, logits, total=per_example, target=per_example)
        return _step_logs({m.name: m.result() for m in self.metrics if m not in self.aux_loss_trackers})

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 reduces a PerReplica input batch here to build the model symbolically, which
        # fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). This model and its
        # optimizer are built before fit (train.py), so there is nothing left to build.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # --- Config ------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        ser = keras.saving.serialize_keras_object
        config.update(
            {
                "backbone": ser(self.backbone),
                "num_classes": self.num_classes,
                "sources": [ser(s) for s in self.sources],
                "aux_heads": [ser(h) for h in self.aux_heads],
                "alphas": self.alphas,
                "temperatures": self.temperatures,
                "target_loss": self.target_loss,
                "aux_loss": self.aux_loss,
                "kd_reduction": self.kd_reduction,
                "weight_decay": self.weight_decay,
                "feature_key": self.feature_key,
                "class_names": None if self.class_names is None else list(self.class_names),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        config["backbone"] = de(config["backbone"])
        config["sources"] = [de(s) for s in config["sources"]]
        config["aux_heads"] = [de(h) for h in config["aux_heads"]]
        return cls(**config)


def _step_logs(logs):
    # Keras 3 reduces the logs of a MultiWorkerMirroredStrategy step with
    # strategy.reduce(MEAN, value, axis=0), which fails on scalars (keras-team/keras#20585):
    # give them a length-1 axis there, which that reduction removes again.
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def build_model(config, image_size, num_classes, class_names=None):
    """The built `SSKTModel` of a `Config`: target `config.model`, one source and head per `config.sources`.

    Call it inside the strategy's scope. `class_names` (one per class, or None) are stored in the
    saved targets (see `SSKTModel`). Each source is checked and adapted by
    `sources.build_source` (`config.source_outputs`) before anything trains.

    Raises:
        UserError: a source that cannot serve (see `sources.build_source`).
    """
    backbone = models.get_backbone(config.model, (*image_size, 3), sync_bn=config.sync_bn)
    frozen, aux_heads, names = [], [], set()
    for spec in config.sources:
        name = base = sources.source_name(spec)
        # Two files may share a stem; metric and layer names must not.
        index = 2
        while name in names:
            name, index = f"{base}_{index}", index + 1
        names.add(name)
        source = sources.build_source(
            spec,
            image_size,
            config.source_scale,
            config.source_bn,
            name=f"source_{name}",
            dtype_policy=config.precision if config.source_precision == "same" else config.source_precision,
            outputs=config.source_outputs,
        )
        frozen.append(source)
        aux_heads.append(
            heads.build_head(
                config.aux_head,
                source.num_classes,
                backbone.stage_channels,
                name=f"aux_{name}",
                sync_bn=config.sync_bn,
                # The reference widens ImageNet-style targets' branches to 1000 (backbone attribute).
                width=getattr(backbone, "transfer_width", None),
            )
        )
    model = SSKTModel(
        backbone,
        num_classes,
        sources=frozen,
        aux_heads=aux_heads,
        alphas=config.source_alphas,
        temperatures=config.source_temperatures,
        target_loss=config.target_loss,
        aux_loss=config.aux_loss,
        kd_reduction=config.kd_reduction,
        weight_decay=config.weight_decay,
        feature_key=list(backbone.stage_channels)[-1],
        class_names=class_names,
        name="sskt",
    )
    model.build((None, *image_size, 3))
    return model
