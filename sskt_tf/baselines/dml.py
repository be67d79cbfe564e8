"""Deep mutual learning (Zhang et al., CVPR 2018): K peers trained together, each also matching the others.

For a batch x with labels y and peers k = 1..K:

    z_k = peer_k(x),   p_k = softmax(z_k)
    L_k = CE(z_k, y) + KL(mean_{l != k} p_l || p_k)      (the others' mean is a constant for peer k)

All peers step at once on the same batch, each with the gradient of its own L_k (the paper updates
them one after the other, the second peer seeing the first's updated prediction; on a batch the
difference is one step of lag). Every peer is a complete target: it is evaluated and exported alone.
"""

import keras
import tensorflow as tf

from sskt_tf import losses
from sskt_tf.baselines import common
from sskt_tf.sskt import _step_logs


def peer_prefix(index):
    """Metric-name prefix of peer `index`: none for peer 0 (the run's target), `peer<k>_` for the others."""
    return "" if index == 0 else f"peer{index}_"


@keras.saving.register_keras_serializable(package="sskt_tf")
class DMLModel(keras.Model):
    """K >= 2 peer targets trained by deep mutual learning.

    Each peer is an `SSKTModel` without sources (a target: backbone, pooling,
    classifier). `call()` and `target_model()` are peer 0's; `peer_target_models()`
    are all of them. Every peer's variables receive the gradient of its own loss
    only, plus the coupled L2.

    Metrics, for peer 0 unprefixed and for peer k >= 1 prefixed `peer<k>_`:
    `loss` (CE + KL of that peer), `target_loss` (CE), `kl_loss` (training only),
    `accuracy` (and `top5_accuracy` for more than 10 classes). Evaluation scores
    every peer on its own; its `loss` is the peer's target loss.

    Args:
        peers: list of K >= 2 `SSKTModel`s without sources, from different initialisations.
        weight_decay: coupled L2 on every peer variable's gradient.

    Example:
    >>> peers = [SSKTModel(CifarResNet(20), 10, name=f"peer{k}") for k in range(2)]
    >>> model = DMLModel(peers, weight_decay=5e-4)
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))

    Reference: Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual Learning", CVPR 2018.
    """

    def __init__(self, peers, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        peers = list(peers)
        if len(peers) < 2:
            raise ValueError(f"DMLModel needs at least 2 peers. Received: {len(peers)}.")
        if any(peer.sources for peer in peers):
            raise ValueError("DML peers are plain targets: build them without sources.")
        # === Layers ===
        self.peers = peers
        # === Config ===
        self.weight_decay = float(weight_decay)
        num_classes = peers[0].num_classes
        # === Metrics ===
        self.peer_trackers = []
        for k in range(len(peers)):
            p = peer_prefix(k)
            trackers = {
                "loss": keras.metrics.Mean(name=f"{p}loss"),
                "target_loss": keras.metrics.Mean(name=f"{p}target_loss"),
                "kl_loss": keras.metrics.Mean(name=f"{p}kl_loss"),
                "accuracy": keras.metrics.SparseCategoricalAccuracy(name=f"{p}accuracy"),
            }
            if num_classes > 10:
                trackers["top5_accuracy"] = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"{p}top5_accuracy")
            self.peer_trackers.append(trackers)

    @property
    def sources(self):
        """No sources (train.py lists a model's sources in results.json)."""
        return []

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
        """Peer 0 alone, the run's target: raw images -> logits."""
        return self.peers[0].target_model(name=name)

    def peer_target_models(self, name=None):
        """Every peer alone (peer 0 first), named `<name>_peer<k>`."""
        base = name or f"{self.peers[0].backbone.name}_target"
        return [peer.target_model(name=f"{base}_peer{k}") for k, peer in enumerate(self.peers)]

    @property
    def metrics(self):
        return [tracker for trackers in self.peer_trackers for tracker in trackers.values()]

    def _update_peer_metrics(self, labels, all_logits, totals, targets, kls=None):
        labels = losses.class_indices(labels, all_logits[0])
        for k, trackers in enumerate(self.peer_trackers):
            trackers["loss"].update_state(totals[k])
            trackers["target_loss"].update_state(targets[k])
            if kls is not None:
                trackers["kl_loss"].update_state(kls[k])
            trackers["accuracy"].update_state(labels, all_logits[k])
            if "top5_accuracy" in trackers:
                trackers["top5_accuracy"].update_state(labels, all_logits[k])

    def train_step(self, data):
        images, labels = data[0], data[1]
        variables = self.target_variables
        replicas = common.replicas()
        with tf.GradientTape() as tape:
            all_logits = [peer(images, training=True) for peer in self.peers]
            targets = [tf.reduce_mean(peer._target_loss_fn(labels, z)) for peer, z in zip(self.peers, all_logits)]
            kls = losses.mutual_learning_kl(all_logits)
            totals = [t + kl for t, kl in zip(targets, kls)]
            # The others' predictions are constants inside each KL, so the sum gives every peer exactly
            # the gradient of its own loss.
            objective = common.with_coupled_l2(tf.add_n(totals), variables, self.weight_decay)
            # The optimizer sums gradients over replicas: the one division by the replica count.
            scaled = self.optimizer.scale_loss(objective / replicas)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        self._update_peer_metrics(labels, all_logits, totals, targets, kls)
        return _step_logs({m.name: m.result() for m in self.metrics})

    def test_step(self, data):
        images, labels = data[0], data[1]
        all_logits = [peer(images, training=False) for peer in self.peers]
        # Per-example values: the Mean trackers then weigh a partial last batch by its size.
        targets = [peer._target_loss_fn(labels, z) for peer, z in zip(self.peers, all_logits)]
        self._update_peer_metrics(labels, all_logits, targets, targets)
        return _step_logs(
            {m.name: m.result() for trackers in self.peer_trackers for key, m in trackers.items() if key != "kl_loss"}
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # As SSKTModel's: built with its optimizer before fit, nothing is left for Keras' symbolic
        # build, which fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "peers": [keras.saving.serialize_keras_object(p) for p in self.peers],
                "weight_decay": self.weight_decay,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["peers"] = [keras.saving.deserialize_keras_object(p) for p in config["peers"]]
        return cls(**config)


def split_peer_results(results, num_peers):
    """Evaluation results of a `DMLModel` -> one dict per peer, with unprefixed metric names."""
    results = dict(results)
    per_peer = [{} for _ in range(num_peers)]
    for k in range(1, num_peers):
        p = peer_prefix(k)
        for name in [n for n in results if n.startswith(p)]:
            per_peer[k][name[len(p):]] = results.pop(name)
    per_peer[0] = results  # What no other peer claimed: peer 0's unprefixed names.
    return per_peer
