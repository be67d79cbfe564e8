"""The SSKT model: a target network with auxiliary heads, trained against frozen sources.

For a batch x with labels y (Hong et al., WACV 2022, eq. 3):

    z = main(x),  a_k = aux_k(x),  s_k = S_k(resize(x))   (no gradient, inference mode)
    L = L_target(z, y) + sum_k alpha_k * L_aux(s_k, a_k; T_k)

With no sources it is the scratch baseline with the identical recipe.
"""

import keras
import tensorflow as tf

from sskt_tf import diagnostics, losses
from sskt_tf.models.target_model import TargetModel


@keras.saving.register_keras_serializable(package="sskt_tf")
class SSKTModel(TargetModel):
    """Target network + one auxiliary head per frozen source, with SSKT's `train_step`.

    Implements eq. 3 of Hong et al. (WACV 2022): the target loss plus, for each source k,
    `alpha_k` times the auxiliary loss between the source's softened prediction (the soft label)
    and the auxiliary head's (`sskt_tf.losses.aux_loss`: "ce" is the paper's eq. 2, "kd" a KL).
    The sources run outside the gradient tape in inference mode; only the target's variables
    (backbone, classifier, auxiliary heads) receive gradients. `call()` returns the target's
    logits only; `target_model()` is the target alone (no heads, no sources), for export.

    Metrics: `loss` (the weighted total), `target_loss`, `aux_loss_<source>` per source
    (unweighted, training only), `accuracy` (and `top5_accuracy` for more than 10 classes).
    Per source, also training only: `aux_agreement_<source>` (the fraction of examples where the
    auxiliary head's top-1 is the source's) and `source_entropy_<source>` (the mean entropy of the
    soft labels relative to log K, 1 = uniform); see `sskt_tf.diagnostics`. They are computed
    after the optimizer step from the step's own logits, outside the gradient tape.

    Args:
        backbone: a `sskt_tf.models.Backbone` (raw images -> dict of stage outputs).
        num_classes: classes of the target task.
        sources: list of frozen `sskt_tf.sources.Source` layers, each raw images -> float32
            logits `[B, K_k]`.
        aux_heads: one auxiliary head per source, stage outputs -> float32 logits `[B, K_k]`
            (see `sskt_tf.heads`).
        alphas: one weight per source.
        temperatures: one temperature T > 0 per source.
        target_loss: see `TargetModel`.
        aux_loss: "ce" (soft-label cross-entropy) or "kd" (KL).
        kd_reduction: "batchmean" or "mean" (PyTorch KLDivLoss default) for `aux_loss="kd"`.
        weight_decay: coupled L2 (see `TargetModel`).
        feature_key: the stage output the classifier pools.
        class_names: see `TargetModel`.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Raises:
        ValueError: not one head, alpha and temperature per source.

    Example:
    >>> model = SSKTModel(CifarResNet(20), 10, [source], [LinearHead(1000)], [0.1], [3.0])
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> model.fit(train_ds, epochs=1, steps_per_epoch=390)

    Reference: S. Hong, J. Yoon, J. Kim, M.-K. Choi, "Self-Supervised Knowledge Transfer via
    Loosely Supervised Auxiliary Tasks", WACV 2022.
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
        sources, aux_heads = list(sources), list(aux_heads)
        alphas, temperatures = [float(a) for a in alphas], [float(t) for t in temperatures]
        if not len(sources) == len(aux_heads) == len(alphas) == len(temperatures):
            raise ValueError(
                "SSKTModel needs one aux head, alpha and temperature per source. Received: "
                f"{len(sources)} sources, {len(aux_heads)} heads, {len(alphas)} alphas, "
                f"{len(temperatures)} temperatures."
            )
        super().__init__(
            backbone,
            num_classes,
            target_loss=target_loss,
            weight_decay=weight_decay,
            feature_key=feature_key,
            class_names=class_names,
            **kwargs,
        )
        # === Layers ===
        self._sources = sources
        self.aux_heads = aux_heads

        # === Config ===
        self.alphas = alphas
        self.temperatures = temperatures
        self.aux_loss = aux_loss
        self.kd_reduction = kd_reduction

        # === Metrics ===
        self.aux_loss_trackers = [
            self.target_metrics.add_term(f"aux_loss_{s.name.removeprefix('source_')}") for s in sources
        ]
        # What each source teaches (sskt_tf.diagnostics): after the loss terms, per source.
        self.diagnostic_trackers = [
            [self.target_metrics.add_term(name) for name in diagnostics.metric_names(s)] for s in sources
        ]

    @property
    def sources(self):
        """The frozen sources, in `--sources` order."""
        return self._sources

    # --- Forward -------------------------------------------------------------------------------

    def _forward_with_heads(self, images, training):
        features = self.backbone(images, training=training)
        return self._target_logits(features), [head(features, training=training) for head in self.aux_heads]

    def build(self, input_shape):
        super().build(input_shape)
        images = keras.ops.zeros((1, *input_shape[1:]))
        features = self.backbone(images, training=False)
        for head in self.aux_heads:
            head(features, training=False)
        for source in self.sources:
            source(images)

    @property
    def target_variables(self):
        """Everything that trains: backbone, classifier and auxiliary heads; never the sources."""
        variables = super().target_variables
        for head in self.aux_heads:
            variables += head.trainable_variables
        return variables

    # --- Steps ---------------------------------------------------------------------------------

    def _sskt_losses(self, labels, logits, aux_logits, source_logits):
        target = tf.reduce_mean(self.target_losses(labels, logits))
        aux = [
            losses.aux_loss(self.aux_loss, s, a, t, self.kd_reduction)
            for s, a, t in zip(source_logits, aux_logits, self.temperatures)
        ]
        total = losses.total_loss([target, *(alpha * term for alpha, term in zip(self.alphas, aux))])
        return total, target, aux

    def train_step(self, data):
        inputs, labels = data[0], data[1]
        if isinstance(inputs, dict):
            # --soft_label_cache=clean: the pipeline brings each example's stored source logits.
            images, source_logits = inputs["images"], list(inputs["extras"])
        else:
            images = inputs
            # Sources are constants of the step: outside the tape, inference mode, no gradient.
            source_logits = [source(images) for source in self.sources]

        def loss_fn():
            logits, aux_logits = self._forward_with_heads(images, training=True)
            total, target, aux = self._sskt_losses(labels, logits, aux_logits, source_logits)
            return total, target, aux, logits, aux_logits

        total, target, aux, logits, aux_logits = self.minimize(loss_fn, self.target_variables)
        # Outside the tape, per example (the Mean trackers weigh every example alike, across replicas too).
        per_source = [
            value
            for a, s, t in zip(aux_logits, source_logits, self.temperatures)
            for value in (diagnostics.agreement(a, s), diagnostics.relative_entropy(s, t))
        ]
        self.target_metrics.update(labels, logits, total, target, [*aux, *per_source])
        return self._step_logs(self.metrics)

    # --- Config --------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        ser = keras.saving.serialize_keras_object
        config.update(
            {
                "sources": [ser(s) for s in self.sources],
                "aux_heads": [ser(h) for h in self.aux_heads],
                "alphas": self.alphas,
                "temperatures": self.temperatures,
                "aux_loss": self.aux_loss,
                "kd_reduction": self.kd_reduction,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        config["sources"] = [de(s) for s in config["sources"]]
        config["aux_heads"] = [de(h) for h in config["aux_heads"]]
        return super().from_config(config)
