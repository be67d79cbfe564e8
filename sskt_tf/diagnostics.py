"""What each source teaches on the target's data: the metrics SSKT logs per source, and the warning of a flat one.

Per source k, over the training examples of an epoch (`sskt_tf.sskt.SSKTModel` logs both):

- `aux_agreement_<name>`: the fraction of examples where the auxiliary head's top-1 is the
  source's, `argmax(a_k) == argmax(s_k)` (`agreement`). It rises as the head learns the source's
  task on the target's images: a head that cannot follow its source gains nothing from it.
- `source_entropy_<name>`: the mean entropy of the soft labels `softmax(s_k / T_k)` relative to
  `log K_k` (`relative_entropy`), in [0, 1]: 1 is uniform. Uniform soft labels are the same for
  every image; the auxiliary task then teaches nothing about the images.

With `--soft_label_cache=clean` the source logits are the cached ones, and the metrics describe
those. `SourceDiagnostics` prints one warning line after epoch 1 for each source whose soft labels
are near-uniform (`NEAR_UNIFORM`), and keeps the last epoch's values for results.json.
"""

import keras
import tensorflow as tf

AGREEMENT = "aux_agreement_{}"
ENTROPY = "source_entropy_{}"

# The relative entropy r above which a source's soft labels are called near-uniform.
# (1 - r) log K is KL(soft label || uniform): above 0.99, the soft labels are within 0.01 log K
# nats (0.07 for 1000 classes) of uniform. Two causes land above it (`flat_source_warning`):
# - Outputs that are probabilities p, read as logits: softmax(p / T) has logits within [0, 1/T]
#   and is sharpest for a one-hot p, where r is 0.99999 for K = 1000 and 0.99997 for K = 365 at
#   T = 3 (0.9999 and 0.9995 at T = 1), and above 0.99 for every K >= 10 at T >= 3, K >= 40 at T >= 1.
# - Random weights: random Keras applications (mobilenet_v2, efficientnet_b0) give logits within
#   1e-6 of each other: r = 1.0. (Not every random network: random ResNet-50 logits are spread.)
# Logits with a standard deviation sigma over the classes (Gaussian) give r = 1 - sigma^2 /
# (2 T^2 log K) about: at T = 3 and K = 1000, 0.99 for sigma = 1.1, 0.97 for sigma = 2, 0.93 for
# sigma = 3. So 0.99 flags logits that vary by about one unit or less; 0.95 would already flag
# sigma = 2, a source that may merely be unsure on the target's images.
NEAR_UNIFORM = 0.99


def agreement(aux_logits, source_logits):
    """Whether the auxiliary head's top-1 class is the source's, per example.

    `1[argmax_c a_c == argmax_c s_c]` for each row (ties: the lowest index, TensorFlow's argmax
    on CPU); the mean over examples is the agreement.

    Args:
        aux_logits: float `[B, K]`, the auxiliary head's logits a_k.
        source_logits: float `[B, K]`, the source's logits s_k (the same K classes).

    Returns:
        float32 `[B]` of 0.0 and 1.0, without gradient.
    """
    aux_top = tf.argmax(tf.stop_gradient(aux_logits), axis=-1)
    source_top = tf.argmax(tf.stop_gradient(source_logits), axis=-1)
    return tf.cast(tf.equal(aux_top, source_top), tf.float32)


def relative_entropy(source_logits, temperature):
    """The entropy of the soft labels `q = softmax(s / T)` relative to `log K`, per example.

    `r = -sum_c q_c log q_c / log K`, in [0, 1] (clipped there against float32 rounding): 1 for
    uniform q (all logits equal, or T much larger than their spread), near 0 for one-hot q.
    `(1 - r) log K` is KL(q || uniform) in nats.

    Args:
        source_logits: float `[B, K]`, the source's logits s_k, K >= 2.
        temperature: the softmax temperature T > 0 of the auxiliary loss.

    Returns:
        float32 `[B]`, without gradient.
    """
    logits = tf.cast(tf.stop_gradient(source_logits), tf.float32) / temperature
    log_q = tf.nn.log_softmax(logits, axis=-1)
    entropy = -tf.reduce_sum(tf.exp(log_q) * log_q, axis=-1)
    log_k = tf.math.log(tf.cast(tf.shape(logits)[-1], tf.float32))
    return tf.clip_by_value(entropy / log_k, 0.0, 1.0)


def metric_names(source):
    """`(agreement, relative entropy)` metric names of a `sskt_tf.sources.Source` layer (`source_x` -> `x`)."""
    name = source.name.removeprefix("source_")
    return AGREEMENT.format(name), ENTROPY.format(name)


def flat_source_warning(source, value, temperature, threshold=NEAR_UNIFORM):
    """The one warning line of a `sskt_tf.sources.Source` whose soft labels are near-uniform (`NEAR_UNIFORM`).

    Args:
        source: the source (its spec, name and class count are named).
        value: its mean relative entropy in epoch 1 (`relative_entropy`).
        temperature: its softmax temperature.
        threshold: the threshold `value` exceeds.

    Returns:
        One line (str), without a newline.
    """
    return (
        f"--sources={source.spec}: warning: its soft labels softmax(s/T) at --temperature={temperature:g} are "
        f"near-uniform on the training images ({metric_names(source)[1]}={value:.4f} in epoch 1: their entropy "
        f"relative to log {source.num_classes}, 1 = uniform; above {threshold:g}), so its auxiliary task teaches "
        "almost nothing. Likely its weights are random, or it ends in a softmax whose probabilities are read as "
        "logits (pass --source_outputs=probabilities where --source_outputs=auto missed it); a lower --temperature "
        "sharpens logits that are merely close."
    )


class SourceDiagnostics(keras.callbacks.Callback):
    """The per-source metrics after each epoch: a warning after epoch 1, the last values for results.json.

    After the first epoch (0-based `epoch` 0), each source whose `source_entropy_<name>` exceeds
    `threshold` gets one line (`flat_source_warning`), printed when the next epoch begins or, after a
    one-epoch run, when training ends: the epoch's own progress line is then complete. A resumed run
    starts after epoch 1 and prints nothing.

    `last` is `{source layer name: {"agreement": float, "relative_entropy": float}}` of the last
    finished epoch; put this callback before the one that saves the resumption state, which carries
    `last` (a run resumed after its last epoch trains nothing and writes results.json from it).

    Args:
        sources: the model's `sskt_tf.sources.Source` layers.
        temperatures: one softmax temperature per source.
        last: `last` of the run this one resumes, or None.
        threshold: the relative entropy above which soft labels are near-uniform.
    """

    def __init__(self, sources, temperatures, last=None, threshold=NEAR_UNIFORM):
        super().__init__()
        self.sources = list(sources)
        self.temperatures = list(temperatures)
        self.threshold = threshold
        self.last = dict(last or {})
        self._pending = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for source, temperature in zip(self.sources, self.temperatures):
            agreement_key, entropy_key = metric_names(source)
            if agreement_key not in logs or entropy_key not in logs:
                continue
            entropy = float(logs[entropy_key])
            self.last[source.name] = {"agreement": float(logs[agreement_key]), "relative_entropy": entropy}
            if epoch == 0 and entropy > self.threshold:
                self._pending.append(flat_source_warning(source, entropy, temperature, self.threshold))

    def _flush(self):
        for line in self._pending:
            print(line, flush=True)
        self._pending = []

    def on_epoch_begin(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()
