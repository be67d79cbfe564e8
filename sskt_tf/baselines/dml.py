"""Deep mutual learning (Zhang et al., CVPR 2018): K peers trained together, each also matching the others.

For a batch x with labels y and peers k = 1..K:

    z_k = peer_k(x),   p_k = softmax(z_k)
    L_k = CE(z_k, y) + KL(mean_{l != k} p_l || p_k)      (the others' mean is a constant for peer k)

All peers step at once on the same batch, each with the gradient of its own L_k (the paper updates
them one after the other, the second peer seeing the first's updated prediction; on a batch the
difference is one step of lag). Every peer is a complete target (a `TargetModel`): it is evaluated
and exported alone.
"""

import keras
import tensorflow as tf

from sskt_tf import losses
from sskt_tf.models.target_model import TargetMetrics, TargetModel
from sskt_tf.models.training_model import TrainingModel


def peer_prefix(index):
    """Metric-name prefix of peer `index`: none for peer 0 (the run's target), `peer<k>_` for the others."""
    return "" if index == 0 else f"peer{index}_"


@keras.saving.register_keras_serializable(package="sskt_tf")
class DMLModel(TrainingModel):
    """K >= 2 peer targets trained by deep mutual learning (Zhang et al., CVPR 2018).

    Each peer is a `TargetModel` without frozen networks (`sskt_tf.methods` builds
    `SSKTModel`s without sources, the scratch target). `call()` and `target_model()`
    are peer 0's; `peer_target_models()` are all of them. Every peer's variables
    receive the gradient of its own loss only, plus the coupled L2.

    Metrics, for peer 0 unprefixed and for peer k >= 1 prefixed `peer<k>_`:
    `loss` (CE + KL of that peer), `target_loss` (CE), `kl_loss` (training only),
    `accuracy` (and `top5_accuracy` for more than 10 classes). Evaluation scores
    every peer on its own; its `loss` is the peer's target loss.

    Args:
        peers: list of K >= 2 `TargetModel`s without sources, from different initialisations.
        weight_decay: coupled L2 on every peer variable's gradient.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Raises:
        ValueError: fewer than 2 peers, or a peer that is not a plain target (not a
            `TargetModel`, or one with sources).

    Example:
    >>> peers = [SSKTModel(CifarResNet(20), 10, name=f"peer{k}") for k in range(2)]
    >>> model = DMLModel(peers, weight_decay=5e-4)
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))

    Reference: Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual Learning", CVPR 2018.
    """

    def __init__(self, peers, weight_decay=0.0, **kwargs):
        super().__init__(weight_decay=weight_decay, **kwargs)
        peers = list(peers)
        if len(peers) < 2:
            raise ValueError(f"DMLModel needs at least 2 peers. Received: {len(peers)}.")
        if not all(isinstance(peer, TargetModel) and not peer.sources for peer in peers):
            received = [type(p).__name__ for p in peers]
            raise ValueError(f"DML peers are plain targets: TargetModels without sources. Received: {received}.")
        # === Layers ===
        self.peers = peers
        # === Metrics ===
        self.peer_metrics = [
            TargetMetrics(peers[0].num_classes, peer.multi_label, prefix=peer_prefix(k)) for k, peer in enumerate(peers)
        ]
        self.kl_loss_trackers = [metrics.add_term("kl_loss") for metrics in self.peer_metrics]

    def call(self, images, training=False):
        return self.peers[0](images, training=training)

    def build(self, input_shape):
        for peer in self.peers:
            peer.build(input_shape)
        self.built = True

    @property
    def target_variables(self):
        """Every peer's variables (all of them train)."""
        return [v for peer in self.peers for v in peer.target_variables]

    def target_model(self, name=None):
        """Peer 0 alone, the run's target: raw images -> logits (see `TargetModel.target_model`)."""
        return self.peers[0].target_model(name=name)

    def peer_target_models(self, name=None):
        """Every peer alone (peer 0 first), named `<name>_peer<k>`; `name` defaults to `<backbone>_target`."""
        base = name or f"{self.peers[0].backbone.name}_target"
        return [peer.target_model(name=f"{base}_peer{k}") for k, peer in enumerate(self.peers)]

    def extra_targets(self, name):
        """`peer_<k>.keras` for every peer k >= 1 (peer 0 is target.keras), named after `name`."""
        return [(f"peer_{k}.keras", m) for k, m in enumerate(self.peer_target_models(name)) if k > 0]

    def split_results(self, test):
        """Peer 0's test metrics, and results.json's `peers`: each peer's, unprefixed, peer 0 first.

        Args:
            test: `evaluate(..., return_dict=True)` of this model, metric name -> float.

        Returns:
            `(metrics, {"peers": [metrics of peer 0, metrics of peer 1, ...]})`.
        """
        test = dict(test)
        peers = [{} for _ in self.peers]
        for k in range(1, len(self.peers)):
            p = peer_prefix(k)
            for name in [n for n in test if n.startswith(p)]:
                peers[k][name[len(p):]] = test.pop(name)
        peers[0] = test  # What no other peer claimed: peer 0's unprefixed names.
        return peers[0], {"peers": peers}

    @property
    def metrics(self):
        """Every peer's running metrics, peer 0 first (`TargetMetrics.training`)."""
        return [m for metrics in self.peer_metrics for m in metrics.training()]

    def train_step(self, data):
        images, labels = data[0], data[1]

        def loss_fn():
            all_logits = [peer(images, training=True) for peer in self.peers]
            targets = [tf.reduce_mean(peer.target_losses(labels, z)) for peer, z in zip(self.peers, all_logits)]
            kls = losses.mutual_learning_kl(all_logits)
            totals = [losses.total_loss([t, kl]) for t, kl in zip(targets, kls)]
            # The others' predictions are constants inside each KL, so the sum gives every peer exactly
            # the gradient of its own loss.
            return tf.add_n(totals), all_logits, targets, kls, totals

        _, all_logits, targets, kls, totals = self.minimize(loss_fn, self.target_variables)
        for k, metrics in enumerate(self.peer_metrics):
            metrics.update(labels, all_logits[k], totals[k], targets[k], [kls[k]])
        return self._step_logs(self.metrics)

    def test_step(self, data):
        for peer, metrics in zip(self.peers, self.peer_metrics):
            peer.score_batch(data[0], data[1], metrics)
        return self._step_logs([m for metrics in self.peer_metrics for m in metrics.evaluation()])

    def get_config(self):
        config = super().get_config()
        config.update({"peers": [keras.saving.serialize_keras_object(p) for p in self.peers]})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["peers"] = [keras.saving.deserialize_keras_object(p) for p in config["peers"]]
        return cls(**config)
