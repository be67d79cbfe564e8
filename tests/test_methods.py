"""Tests of the baselines (KD, DML, MAXL) and --method: golden losses, which weights move, CLI runs."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from sskt_tf import config as config_lib
from sskt_tf import losses, methods
from sskt_tf.baselines import DMLModel, KDModel, MAXLModel
from sskt_tf.config import Config
from sskt_tf.errors import UserError
from sskt_tf.models.layers import Classifier, class_names_of
from conftest import run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_lib.define_flags()
FLAGS = flags.FLAGS

RNG = np.random.RandomState(0)
X = RNG.uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int32)
SIZE = (16, 16)


# --- numpy references ----------------------------------------------------------------------------


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_kl(p_logits, q_logits, t=1.0):
    """Mean over the batch of KL(softmax(p/t) || softmax(q/t))."""
    lp, lq = np_log_softmax(np.asarray(p_logits) / t), np_log_softmax(np.asarray(q_logits) / t)
    return np.mean(np.sum(np.exp(lp) * (lp - lq), -1))


def np_ce(labels, logits):
    return -np_log_softmax(logits)[np.arange(len(labels)), labels]


Z1 = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, -0.5, 2.0, 0.0], [3.0, 0.0, 0.0, 1.0]], np.float32)
Z2 = np.array([[0.0, 1.0, -1.0, 2.0], [1.5, 0.5, 0.0, -2.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
Z3 = np.array([[2.0, -1.0, 0.0, 0.5], [0.0, 0.0, 3.0, 1.0], [-2.0, 1.0, 0.5, 0.0]], np.float32)
L3 = np.array([2, 0, 3])


# --- Golden values of the pure losses ------------------------------------------------------------


def test_distillation_loss_matches_numpy():
    total, ce, kl = losses.distillation_loss(L3, Z1, Z2, alpha=0.7, temperature=4.0)
    expected_ce = np_ce(L3, Z2).mean()
    expected_kl = 16.0 * np_kl(Z1, Z2, 4.0)
    assert ce.numpy() == pytest.approx(expected_ce, rel=1e-6)
    assert kl.numpy() == pytest.approx(expected_kl, rel=1e-5)
    assert total.numpy() == pytest.approx(0.3 * expected_ce + 0.7 * expected_kl, rel=1e-5)
    # A student equal to the teacher has no distillation term; a = 0 is plain cross-entropy.
    assert losses.distillation_loss(L3, Z1, Z1, 0.5, 3.0)[2].numpy() == pytest.approx(0.0, abs=1e-6)
    assert losses.distillation_loss(L3, Z1, Z2, 0.0, 3.0)[0].numpy() == pytest.approx(expected_ce, rel=1e-6)


def test_mutual_learning_kl_matches_numpy_and_stops_the_gradient_into_the_others():
    two = losses.mutual_learning_kl([Z1, Z2])
    assert two[0].numpy() == pytest.approx(np_kl(Z2, Z1), rel=1e-5)
    assert two[1].numpy() == pytest.approx(np_kl(Z1, Z2), rel=1e-5)
    # K = 3: each peer against the mean probability of the other two.
    three = losses.mutual_learning_kl([Z1, Z2, Z3])
    peers = [Z1, Z2, Z3]
    for k in range(3):
        mean = np.mean([np_softmax(z) for j, z in enumerate(peers) if j != k], axis=0)
        expected = np.mean(np.sum(mean * (np.log(mean) - np_log_softmax(peers[k])), -1))
        assert three[k].numpy() == pytest.approx(expected, rel=1e-5)
    z = [tf.Variable(Z1), tf.Variable(Z2)]
    with tf.GradientTape() as tape:
        first = losses.mutual_learning_kl(z)[0]
    grad_own, grad_other = tape.gradient(first, z)
    assert grad_other is None or not np.any(grad_other.numpy())
    assert np.any(grad_own.numpy())


def test_hierarchy_and_masked_softmax_match_numpy():
    psi = (2, 3, 1)
    labels = np.array([0, 1, 2, 1])
    logits = RNG.normal(size=(4, 6)).astype(np.float32)
    owner = np.repeat(np.arange(3), psi)
    mask = owner[None, :] == labels[:, None]
    np.testing.assert_array_equal(losses.hierarchy_mask(labels, psi).numpy(), mask)
    expected = np.where(mask, np.exp(logits), 0.0)
    expected /= expected.sum(-1, keepdims=True)
    q = losses.masked_softmax(logits, labels, psi).numpy()
    np.testing.assert_allclose(q, expected, rtol=1e-6, atol=1e-7)
    assert np.all(q[~mask] == 0.0)
    np.testing.assert_allclose(q[3], [0, 0, *expected[3, 2:5], 0], rtol=1e-6)
    assert q[2, 5] == pytest.approx(1.0)  # A class with one auxiliary class: a one-hot label.


def test_soft_label_losses_match_numpy_and_the_hard_label_losses():
    soft = np_softmax(Z3)
    log_p = np_log_softmax(Z2)
    ce = -(soft * log_p).sum(-1)
    focal = -(soft * (1 - np.exp(log_p)) ** 2 * log_p).sum(-1)
    np.testing.assert_allclose(losses.soft_label_loss(soft, Z2, "ce").numpy(), ce, rtol=1e-5)
    np.testing.assert_allclose(losses.soft_label_loss(soft, Z2, "focal").numpy(), focal, rtol=1e-5)
    one_hot = np.eye(4, dtype=np.float32)[L3]
    np.testing.assert_allclose(
        losses.soft_label_loss(one_hot, Z2, "focal").numpy(), losses.focal_loss(L3, Z2).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.soft_label_loss(one_hot, Z2, "ce").numpy(), losses.softmax_cross_entropy(L3, Z2).numpy(), rtol=1e-5
    )


def test_mean_label_negative_entropy_hand_values():
    # Uniform mean over 4 classes: -log 4. One class only: 0, with a finite gradient.
    uniform = np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], np.float32)
    assert losses.mean_label_negative_entropy(uniform).numpy() == pytest.approx(-math.log(4), rel=1e-6)
    collapsed = tf.Variable([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    with tf.GradientTape() as tape:
        value = losses.mean_label_negative_entropy(collapsed)
    assert value.numpy() == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.isfinite(tape.gradient(value, collapsed).numpy()))
    q = np_softmax(Z1)
    mean = q.mean(0)
    assert losses.mean_label_negative_entropy(q).numpy() == pytest.approx(np.sum(mean * np.log(mean)), rel=1e-5)


# --- Models ----------------------------------------------------------------------------------------


def teacher_file(tmp_path, classes=10):
    """A small teacher with BatchNorm, saved as .keras (raw images in, logits out)."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes)(x), name="teacher_net")
    model.layers[3].moving_mean.assign(np.linspace(-0.5, 0.5, 8))
    path = str(tmp_path / f"teacher{classes}.keras")
    model.save(path)
    return path


def make_config(tmp_path, **overrides):
    values = dict(dataset="synthetic", model="resnet20", epochs=1, batch_size=8, output_dir=str(tmp_path / "run"))
    values.update(overrides)
    return Config(**values)


def compiled(config, lr=0.1, momentum=0.0):
    model = methods.build_model(config, SIZE, 10)
    # Eager single steps: much cheaper than tracing here; the CLI tests below run the traced steps.
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum), run_eagerly=True)
    return model


def values(variables):
    return [v.numpy().copy() for v in variables]


def moved(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


def cosine(a, b):
    a, b = np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_kd_step_moves_the_student_never_the_teacher_and_logs_the_golden_loss(tmp_path):
    config = make_config(tmp_path, method="kd", teacher=teacher_file(tmp_path), kd_alpha=0.6, temperature=(2.0,))
    model = compiled(config, momentum=0.9)
    assert isinstance(model, KDModel) and model.teacher.trainable is False
    teacher_before = values(model.teacher.weights)
    student_before = values(model.target_variables)
    # The first step's loss (training-mode BatchNorm: batch statistics) from the weights before it.
    logits = model.classifier(model.pool(model.backbone(X, training=True)["stage3"])).numpy()
    teacher_logits = model.teacher.network(X, training=False).numpy()
    ce, kd = np_ce(Y, logits).mean(), 4.0 * np_kl(teacher_logits, logits, 2.0)
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "target_loss", "kd_loss", "accuracy"}
    assert history["target_loss"][0] == pytest.approx(ce, rel=1e-4)
    assert history["kd_loss"][0] == pytest.approx(kd, rel=1e-4)
    assert history["loss"][0] == pytest.approx(0.4 * ce + 0.6 * kd, rel=1e-4)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(teacher_before, model.teacher.weights))
    assert any("moving" in v.path for v in model.teacher.weights)
    assert all(moved(student_before, model.target_variables))
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in model.target_variables}
    assert set(model.evaluate(X, Y, verbose=0, return_dict=True)) == {"loss", "target_loss", "accuracy"}


def test_kd_refuses_a_teacher_of_another_label_space(tmp_path):
    config = make_config(tmp_path, method="kd", teacher=teacher_file(tmp_path, classes=7))
    with pytest.raises(UserError, match=r"--teacher=.*predicts 7 classes but the dataset has 10"):
        methods.build_model(config, SIZE, 10)


# --- Class names in saved targets; what a teacher carries -------------------------------------------

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def saved_target(tmp_path, class_names, method="scratch", file="target.keras"):
    """`(model, path)`: a model of `method` on 10 classes, its target saved as train_lib saves target.keras."""
    model = methods.build_model(make_config(tmp_path, method=method), SIZE, 10, class_names=class_names)
    path = str(tmp_path / file)
    model.target_model(name="resnet20_target").save(path)
    return model, path


def test_a_saved_target_carries_its_class_names_and_returns_the_same_logits(tmp_path):
    model, path = saved_target(tmp_path, NAMES)
    loaded = keras.saving.load_model(path)
    assert class_names_of(loaded) == NAMES and isinstance(loaded.get_layer("classifier"), Classifier)
    # The names ride in the classifier's config: the same layers, the target's logits bit for bit.
    assert {l.name for l in loaded.layers} == {"images", "resnet20", "pool", "classifier"}
    np.testing.assert_array_equal(loaded(X, training=False).numpy(), model(X, training=False).numpy())
    assert loaded.output.dtype == "float32"
    assert type(model).from_config(model.get_config()).class_names == NAMES
    # Without names (a model built by hand), the target carries none.
    plain = methods.build_model(make_config(tmp_path, method="scratch"), SIZE, 10)
    assert class_names_of(plain.target_model()) is None
    with pytest.raises(ValueError, match="class_names must name each of the 10 outputs. Received: 3 names"):
        methods.build_model(make_config(tmp_path, method="scratch"), SIZE, 10, class_names=NAMES[:3])


def test_every_peer_of_dml_carries_the_class_names(tmp_path):
    model = methods.build_model(make_config(tmp_path, method="dml"), SIZE, 10, class_names=NAMES)
    for _, network in [("target.keras", model.target_model()), *model.extra_targets("t")]:
        network.save(str(tmp_path / "peer.keras"))
        assert class_names_of(keras.saving.load_model(str(tmp_path / "peer.keras"))) == NAMES


def test_load_trained_reads_the_stored_names_and_refuses_a_contradicting_run(tmp_path):
    from sskt_tf.serving.trained import load_trained

    _, path = saved_target(tmp_path, NAMES)  # No config.json or results.json beside it.
    trained = load_trained(path)
    assert trained.class_names == NAMES and trained.image_size == SIZE
    run = tmp_path / "run"
    run.mkdir()
    os.replace(path, run / "target.keras")
    (run / "config.json").write_text("{}")
    (run / "results.json").write_text(json.dumps({"class_names": list(reversed(NAMES)), "image_size": list(SIZE)}))
    with pytest.raises(UserError, match=r"target.keras stores the class names \['airplane'.*results.json names \['truck'.*pass the model of that run"):
        load_trained(str(run))
    (run / "results.json").write_text(json.dumps({"class_names": list(NAMES), "image_size": list(SIZE)}))
    assert load_trained(str(run)).class_names == NAMES


@pytest.mark.parametrize(
    "dataset_names, message",
    [
        (NAMES, None),
        (tuple(f"class_{i}" for i in range(10)), None),  # Placeholders say nothing: no check.
        (None, None),
        (tuple(reversed(NAMES)), r"--teacher=.*target.keras was trained on the same classes in another order: its output 0 is 'airplane' where the dataset's class 0 is 'truck'.*pass the target.keras of a run on this dataset"),
        (NAMES[:9] + ("lorry",), r"was trained on other classes: its output 9 is 'truck' where the dataset's class 9 is 'lorry'"),
    ],
)
def test_a_teacher_with_other_class_names_is_refused(dataset_names, message, tmp_path):
    teacher, path = saved_target(tmp_path, NAMES)
    config = make_config(tmp_path, method="kd", teacher=path)
    if message is None:
        model = methods.build_model(config, SIZE, 10, class_names=dataset_names)
        assert model.teacher.class_names == NAMES
        np.testing.assert_allclose(model.teacher(X).numpy(), teacher(X, training=False).numpy(), rtol=1e-5, atol=1e-5)
        return
    with pytest.raises(UserError, match=message) as error:
        methods.build_model(config, SIZE, 10, class_names=dataset_names)
    assert "\n" not in str(error.value)


def softmax_teacher_file(tmp_path):
    """`(logits twin, path)`: a teacher ending in Dense(softmax), and the same network without the softmax."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(keras.layers.Rescaling(1 / 255.0)(inputs)))
    twin = keras.Model(inputs, keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(stddev=30.0))(x))
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(keras.layers.Rescaling(1 / 255.0)(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x), name="softmax_teacher")
    model.set_weights(twin.get_weights())
    path = str(tmp_path / "softmax_teacher.keras")
    model.save(path)
    return twin, path


def test_a_softmax_ended_teacher_distils_from_its_logits(tmp_path, capsys):
    twin, path = softmax_teacher_file(tmp_path)
    model = methods.build_model(make_config(tmp_path, method="kd", teacher=path), SIZE, 10, class_names=NAMES)
    assert capsys.readouterr().out.startswith(f"--teacher={path}: using the pre-softmax logits of 'softmax_teacher'")
    z = twin(X, training=False).numpy()
    assert np.ptp(z, axis=1).min() > 1.0
    np.testing.assert_allclose(model.teacher(X).numpy(), z, rtol=1e-5, atol=1e-5)
    student = RNG.normal(0, 1, (8, 10)).astype(np.float32)
    _, _, kd = losses.distillation_loss(Y, model.teacher(X), student, 0.5, 4.0)
    assert float(kd) == pytest.approx(16.0 * np_kl(z, student, 4.0), rel=1e-4)
    with pytest.raises(UserError, match=rf"^--teacher={path}: --source_outputs=logits, but the network ends in a softmax"):
        methods.build_model(make_config(tmp_path, method="kd", teacher=path, source_outputs="logits"), SIZE, 10)


def test_dml_each_peer_steps_on_its_own_loss_and_peers_stay_different(tmp_path):
    model = compiled(make_config(tmp_path, method="dml", weight_decay=0.0), lr=0.05)
    assert isinstance(model, DMLModel) and len(model.peers) == 2
    kernels = [p.classifier.kernel for p in model.peers]
    assert not np.allclose(kernels[0].numpy(), kernels[1].numpy())  # Different initialisations.
    # Independent computation of the first step: losses, and peer 0's update from its own loss only.
    peer_vars = model.peers[0].target_variables
    with tf.GradientTape() as tape:
        logits = [p(X, training=True) for p in model.peers]
        ce0 = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(Y, logits[0]))
        p1 = tf.stop_gradient(tf.nn.softmax(logits[1]))
        kl0 = tf.reduce_mean(tf.reduce_sum(p1 * (tf.math.log(p1) - tf.nn.log_softmax(logits[0])), -1))
        own = ce0 + kl0
    grads = tape.gradient(own, peer_vars)
    z = [l.numpy() for l in logits]
    before = values(peer_vars)
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert history["target_loss"][0] == pytest.approx(np_ce(Y, z[0]).mean(), rel=1e-4)
    assert history["peer1_target_loss"][0] == pytest.approx(np_ce(Y, z[1]).mean(), rel=1e-4)
    assert history["kl_loss"][0] == pytest.approx(np_kl(z[1], z[0]), rel=1e-3)
    assert history["peer1_kl_loss"][0] == pytest.approx(np_kl(z[0], z[1]), rel=1e-3)
    assert history["loss"][0] == pytest.approx(history["target_loss"][0] + history["kl_loss"][0], rel=1e-5)
    for b, g, v in zip(before, grads, peer_vars):
        np.testing.assert_allclose(v.numpy(), b - 0.05 * g.numpy(), rtol=1e-4, atol=1e-6)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(kernels[0].numpy(), kernels[1].numpy())
    results = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "target_loss", "accuracy", "peer1_loss", "peer1_target_loss", "peer1_accuracy"}
    test, extra = model.split_results(results)
    assert test == extra["peers"][0] and set(extra["peers"][1]) == {"loss", "target_loss", "accuracy"}
    assert extra["peers"][1]["loss"] == results["peer1_loss"]
    # Every peer alone reproduces its own evaluation.
    for k, target in enumerate(model.peer_target_models()):
        np.testing.assert_allclose(target.predict(X, verbose=0), model.peers[k].predict(X, verbose=0), rtol=1e-6)


def maxl_config(tmp_path, **overrides):
    values = dict(method="maxl", maxl_psi=(2,), lr=0.1, weight_decay=0.0)
    values.update(overrides)
    return make_config(tmp_path, **values)


def test_maxl_target_moves_by_the_ordinary_multitask_gradient(tmp_path):
    model = compiled(maxl_config(tmp_path, weight_decay=1e-3), lr=0.1)
    assert isinstance(model, MAXLModel) and model.psi == (2,) * 10
    theta = model.target_variables
    before = values(theta)
    # Independent: generated labels and the multi-task loss from the networks' public calls.
    mask = np.repeat(np.arange(10), 2)[None, :] == Y[:, None]
    g = model.generator(X, training=True).numpy()
    q = np.where(mask, np.exp(g - g.max(-1, keepdims=True)), 0)
    q = tf.constant(q / q.sum(-1, keepdims=True), tf.float32)
    with tf.GradientTape() as tape:
        pooled = model.pool(model.backbone(X, training=True)["stage3"])
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(Y, model.classifier(pooled)))
        aux = tf.reduce_mean(-tf.reduce_sum(q * tf.nn.log_softmax(model.aux_classifier(pooled)), -1))
        total = ce + aux
    grads = tape.gradient(total, theta)
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "target_loss", "aux_loss", "meta_loss", "label_entropy", "accuracy"}
    assert history["loss"][0] == pytest.approx(float(total), rel=1e-4)
    assert history["aux_loss"][0] == pytest.approx(float(aux), rel=1e-4)
    assert 0 < history["label_entropy"][0] <= math.log(20) + 1e-5
    for b, gr, v in zip(before, grads, theta):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * (gr.numpy() + 1e-3 * b), rtol=1e-4, atol=1e-6)


def _meta_objective(model, phi_values, lookahead_lr):
    """Primary loss after the look-ahead step, as a function of the generator's weights (no second derivatives)."""
    phi = model.generator.trainable_variables
    saved_phi, theta = values(phi), model.target_variables
    saved_theta = values(theta)
    try:
        for v, value in zip(phi, phi_values):
            v.assign(value)
        q = tf.stop_gradient(model.generated_labels(X, Y))
        with tf.GradientTape() as tape:
            pooled = model.pool(model.backbone(X, training=True)["stage3"])
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(Y, model.classifier(pooled)))
            aux = tf.reduce_mean(-tf.reduce_sum(q * tf.nn.log_softmax(model.aux_classifier(pooled)), -1))
            total = ce + aux
        grads = tape.gradient(total, theta)
        for v, b, g in zip(theta, saved_theta, grads):
            v.assign(b - lookahead_lr * g.numpy())
        logits = model(X, training=True)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(Y, logits)))
    finally:
        for v, value in zip(theta, saved_theta):
            v.assign(value)
        for v, value in zip(phi, saved_phi):
            v.assign(value)


def test_maxl_generator_moves_only_through_the_meta_gradient(tmp_path):
    # Without the entropy term and weight decay, the generator's step is -lr_g * meta-gradient.
    keras.utils.set_random_seed(0)
    lr, lr_g = 0.5, 0.1
    cfg = dict(lr=lr, maxl_entropy_weight=0.0, maxl_generator_lr=lr_g)
    exact = compiled(maxl_config(tmp_path, **cfg), lr=lr)
    approx = compiled(maxl_config(tmp_path, maxl_first_order=True, **cfg), lr=lr)
    initial = exact.get_weights()
    approx.set_weights(initial)
    phi0 = values(exact.generator.trainable_variables)
    # The ordinary gradient of the multi-task loss, which MAXL must not use for the generator.
    with tf.GradientTape() as tape:
        q = exact.generated_labels(X, Y)
        pooled = exact.pool(exact.backbone(X, training=True)["stage3"])
        aux = tf.reduce_mean(-tf.reduce_sum(q * tf.nn.log_softmax(exact.aux_classifier(pooled)), -1))
    ordinary = [g.numpy() for g in tape.gradient(aux, exact.generator.trainable_variables)]

    steps = []
    for model in (exact, approx):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        steps.append([(p - v.numpy()) / lr_g for p, v in zip(phi0, model.generator.trainable_variables)])
    meta_exact, meta_approx = steps
    # The finite-difference option approximates the second-order step: 0.990-0.999 seen on 2 cores.
    assert cosine(meta_exact, meta_approx) > 0.98
    assert abs(cosine(meta_exact, ordinary)) < 0.5  # about 0.1: not the multi-task loss's own gradient

    # Independently, central differences of the look-ahead primary loss along the step's direction
    # equal the meta-gradient's norm there. (The loss is piecewise smooth and float32: the median of
    # three step sizes, within 10%; a lost factor or a missing second-order path is far outside.)
    exact.set_weights(initial)
    norm = math.sqrt(sum(float((m**2).sum()) for m in meta_exact))
    numeric = []
    for h in (0.003 / norm, 0.01 / norm, 0.03 / norm):
        plus = _meta_objective(exact, [p + h * m / norm for p, m in zip(phi0, meta_exact)], lr)
        minus = _meta_objective(exact, [p - h * m / norm for p, m in zip(phi0, meta_exact)], lr)
        numeric.append((plus - minus) / (2 * h))
    assert float(np.median(numeric)) == pytest.approx(norm, rel=0.1)

    # No auxiliary loss: the look-ahead does not depend on the generator, which then stays put.
    frozen = compiled(maxl_config(tmp_path, maxl_aux_weight=0.0, **cfg), lr=lr)
    primary = frozen.backbone.trainable_variables + frozen.classifier.trainable_variables
    before, target_before = values(frozen.generator.trainable_variables), values(primary)
    frozen.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert not any(moved(before, frozen.generator.trainable_variables))
    assert all(moved(target_before, primary))


def test_maxl_entropy_term_alone_moves_the_generator_by_its_gradient(tmp_path):
    lr_g, w = 0.2, 0.5
    model = compiled(maxl_config(tmp_path, maxl_aux_weight=0.0, maxl_entropy_weight=w, maxl_generator_lr=lr_g))
    dense = model.generator.get_layer("logits").kernel
    before = dense.numpy().copy()
    mask = np.repeat(np.arange(10), 2)[None, :] == Y[:, None]
    with tf.GradientTape() as tape:
        g = model.generator(X, training=True)
        q = tf.nn.softmax(tf.where(mask, g, -1e9))
        # Labels 0..7 only: the auxiliary classes of classes 8 and 9 are empty (0 log 0 = 0).
        mean = tf.reduce_mean(q, 0)[:16]
        neg_entropy = tf.reduce_sum(mean * tf.math.log(mean))
    grad = tape.gradient(neg_entropy, dense).numpy()
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_allclose(dense.numpy(), before - lr_g * w * grad, rtol=1e-4, atol=1e-7)


# KD is a TargetModel plus a Source, both round-trip tested on their own (test_sskt.py).
@pytest.mark.parametrize("method", ["dml", "maxl"])
def test_save_load_round_trip_and_the_exported_target_alone(method, tmp_path):
    extra = {"maxl": dict(maxl_psi=(2,))}.get(method, {})
    model = compiled(make_config(tmp_path, method=method, **extra), momentum=0.9)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    expected = model.predict(X, verbose=0)
    # After one epoch at lr 0.1 the logits reach |50|; float32 sums in another graph order differ by
    # ~1e-5 there, so the tolerance scales with the logits (a wrong weight moves them by O(1)).
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(loaded.predict(X, verbose=0), expected, rtol=1e-5, atol=atol)
    settings = {"dml": ("weight_decay",), "maxl": ("psi", "first_order", "base_lr")}
    assert all(getattr(loaded, a) == getattr(model, a) for a in settings[method])
    assert len(loaded.weights) == len(model.weights)
    # The full training state (as train_lib's resumption saves it), optimizers included.
    model.save_weights(str(tmp_path / "state.weights.h5"))
    fresh = compiled(make_config(tmp_path, method=method, **extra), momentum=0.9)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(tmp_path / "state.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fresh.optimizer.variables, model.optimizer.variables))
    target = model.target_model(name="exported")
    names = {w.path.split("/")[0] for w in target.weights}
    assert not names & {"teacher", "label_generator", "aux_classifier", "peer1"}
    np.testing.assert_allclose(target.predict(X, verbose=0), expected, rtol=1e-5, atol=atol)


def state_groups(model, path):
    """The top groups of `model`'s saved training state, as train_lib's resumption writes it."""
    import h5py

    model.save_weights(path)
    groups = []
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group) else None)

    def kept(group):
        top = group.split("/")[0]
        # The networks' own layouts are their layers', tested with the networks.
        if top in ("backbone", "generator", "optimizer"):
            return group == top
        return group.count("/") <= 1 and not group.endswith("/vars")

    return {g for g in groups if kept(g)}


TARGET_GROUPS = {"backbone", "classifier", "layers", "layers/global_average_pooling2d", "optimizer", "vars"}


@pytest.mark.parametrize(
    "method, groups",
    [
        ("sskt", TARGET_GROUPS | {"aux_heads", "aux_heads/transfer_module", "layers/source"}),
        ("scratch", TARGET_GROUPS),
        ("kd", TARGET_GROUPS | {"layers/source"}),
        # The peers' groups are named after their class, SSKTModel.
        ("dml", {"layers", "layers/sskt_model", "layers/sskt_model_1", "optimizer", "vars"}),
        ("maxl", TARGET_GROUPS | {"aux_classifier", "generator", "generator_optimizer"}),
    ],
)
def test_the_saved_training_state_keeps_its_layout(method, groups, tmp_path):
    # Keras loads a state by these paths (attribute names; class names inside lists): a run
    # interrupted before a change of them must still resume after it.
    extra = {
        "sskt": dict(sources=(teacher_file(tmp_path),), aux_head="transfer_module"),
        "kd": dict(teacher=teacher_file(tmp_path)),
        "maxl": dict(maxl_psi=(2,)),
    }.get(method, {})
    model = compiled(make_config(tmp_path, method=method, **extra))
    model.optimizer.build(model.trainable_variables)
    assert state_groups(model, str(tmp_path / "state.weights.h5")) == groups


# --- Flags --------------------------------------------------------------------------------------------


def parse(*args):
    FLAGS.unparse_flags()
    try:
        FLAGS(["sskt_tf.train", *args])
        return config_lib.from_flags()
    finally:
        FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher=/m/t.keras"], "--teacher=/m/t.keras only applies to --method=kd; received --method=sskt"),
        (["--method=kd"], "--method=kd needs --teacher=<spec>"),
        (["--method=dml", "--sources=resnet50:random"], "--sources=resnet50:random only applies to --method=sskt; received --method=dml"),
        (["--method=kd", "--teacher=t.keras", "--sources=a.keras"], "KD's teacher is --teacher=<spec>"),
        (["--method=kd", "--dml_peers=3", "--teacher=t.keras"], "--dml_peers=3 only applies to --method=dml; received --method=kd"),
        (["--method=dml", "--dml_peers=1"], "--dml_peers must be >= 2. Received: 1"),
        (["--method=kd", "--teacher=t.keras", "--kd_alpha=1.5"], "--kd_alpha must be in [0, 1]"),
        (["--method=maxl", "--maxl_psi=0"], "--maxl_psi must be positive integers"),
        (["--maxl_first_order"], "--maxl_first_order=True only applies to --method=maxl"),
    ],
)
def test_contradicting_method_flags_name_the_flag_and_the_fix(args, message):
    with pytest.raises(UserError) as e:
        parse(*args)
    assert message in str(e.value)


def test_method_flags_reach_the_config():
    c = parse("--method=maxl", "--maxl_psi=3", "--maxl_first_order", "--maxl_entropy_weight=0.1")
    assert (c.method, c.maxl_psi, c.maxl_first_order, c.maxl_entropy_weight) == ("maxl", (3,), True, 0.1)
    c = parse("--method=kd", "--teacher=a.keras", "--kd_alpha=0.5")
    assert (c.teacher, c.kd_alpha, c.sources) == (os.path.abspath("a.keras"), 0.5, ())  # Paths are stored absolute.
    assert parse("--method=dml", "--dml_peers=4").dml_peers == 4


def test_maxl_psi_per_class_must_match_the_classes(tmp_path):
    with pytest.raises(UserError, match=r"--maxl_psi=2,3: give one value or one per class; the dataset has 10"):
        methods.build_model(maxl_config(tmp_path, maxl_psi=(2, 3)), SIZE, 10)


# --- The training command, every method -------------------------------------------------------------


def _command_args(*args):
    return [
        "--flagfile=flags/smoke.cfg",
        "--sources=",
        *args,
        "--epochs=1",
        "--steps_per_epoch=2",
        "--batch_size=8",
        "--eval_batch_size=128",
        "--verbose=0",
    ]


METHOD_ARGS = {"scratch": [], "kd": ["--teacher=TEACHER", "--kd_alpha=0.5"], "dml": ["--dml_peers=3"], "maxl": []}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_every_method_trains_from_the_command(method, tmp_path, stand_ins):
    # KD's teacher: a tiny network of the 10 classes (the application networks are built in test_sources.py).
    teacher = stand_ins("teacher_net", 10)
    out = tmp_path / "run"
    written = run_training(
        [*_command_args(f"--method={method}", *(a.replace("TEACHER", teacher) for a in METHOD_ARGS[method])), f"--output_dir={out}"]
    )
    assert written == json.loads((out / "results.json").read_text())
    assert written["method"] == method and written["epochs_completed"] == 1
    assert np.isfinite(written["test"]["loss"]) and written["sources"] == []
    target = keras.saving.load_model(out / "target.keras")
    assert {layer.name for layer in target.layers} == {"images", "resnet20", "pool", "classifier"}
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_accuracy" in header
    if method == "kd":
        assert written["teacher"] == {"spec": teacher, "classes": 10, "input_size": [32, 32]}
        assert "kd_loss" in header and "val_kd_loss" not in header
    if method == "dml":
        assert len(written["peers"]) == 3 and written["test"] == written["peers"][0]
        images = np.random.RandomState(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
        outputs = [target.predict(images, verbose=0)]
        for k in (1, 2):
            peer = keras.saving.load_model(out / f"peer_{k}.keras")
            assert {layer.name for layer in peer.layers} == {"images", "resnet20", "pool", "classifier"}
            outputs.append(peer.predict(images, verbose=0))
        assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])
        assert {"peer2_accuracy", "val_peer2_accuracy", "kl_loss"} <= set(header)
    if method == "maxl":
        assert {"aux_loss", "meta_loss", "label_entropy"} <= set(header)


def _contradiction(workdir):
    command = [sys.executable, "-m", "sskt_tf.train", "--flagfile=flags/smoke.cfg", "--method=dml", f"--output_dir={workdir}"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_contradiction_is_one_error_line_from_the_command(tmp_path):
    proc = _contradiction(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: --sources=mobilenet_v2:random only applies to --method=sskt; received --method=dml" in proc.stderr


# --- Starting from a checkpoint, fine-tuning the last stages (video rows) -----------------------------


def _kinetics_stand_in(tmp_path, shortcut="B", seed=5):
    """A converted-checkpoint stand-in: a whole 3D ResNet-10 classifier of 400 classes, its own weights."""
    from sskt_tf.models import resnet3d_classifier

    keras.utils.set_random_seed(seed)
    path = str(tmp_path / f"resnet10_3d_{shortcut}.keras")
    resnet3d_classifier(10, 400, shortcut=shortcut).save(path)
    return path, keras.saving.load_model(path)


def _video_config(**kwargs):
    return Config(dataset="synthetic_video", model="resnet10_3d", output_dir="/runs/x", **kwargs)


def test_init_checkpoint_sets_every_backbone_weight_by_layer_name(tmp_path, capsys):
    path, saved = _kinetics_stand_in(tmp_path)
    keras.utils.set_random_seed(0)
    model = methods.build_model(_video_config(init_checkpoint=path), (16, 16), 3, clip_length=2)
    captured = capsys.readouterr().out
    assert "not used: fc" in captured
    checked = 0
    for layer in model.backbone.layers:
        if layer.weights:
            for mine, theirs in zip(layer.get_weights(), saved.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
                checked += 1
    assert checked > 40  # Every conv and BatchNorm (moving statistics included), not a few.
    # The classifier starts new: 3 classes, not the checkpoint's 400.
    assert model.classifier.kernel.shape == (512, 3)
    # Another network: one line naming the layers, the fix.
    other, _ = _kinetics_stand_in(tmp_path, shortcut="A")
    with pytest.raises(UserError, match=r"--init_checkpoint=.* lacks 6 layers of --model's backbone \(first: layer2_0_downsample_0"):
        methods.build_model(_video_config(init_checkpoint=other), (16, 16), 3, clip_length=2)


def test_finetune_from_trains_only_the_later_stages(tmp_path):
    """--finetune_from=stage4: a training step moves stage 4, the classifier and the heads, and leaves the stem
    and stages 1-3 (weights and BatchNorm statistics) exactly as loaded."""
    path, _ = _kinetics_stand_in(tmp_path)
    keras.utils.set_random_seed(0)
    config = _video_config(init_checkpoint=path, finetune_from="stage4", sources=("mobilenet_v2:random:7",))
    model = methods.build_model(config, (16, 16), 3, clip_length=2)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    before = {v.path: v.numpy().copy() for v in model.backbone.weights}
    trainable = {v.path for v in model.target_variables}
    clips = np.random.RandomState(0).uniform(0, 255, (4, 2, 16, 16, 3)).astype(np.float32)
    model.train_on_batch(clips, np.array([0, 1, 2, 0]))
    moved = {p for p, w in before.items() if not np.array_equal(w, next(v for v in model.backbone.weights if v.path == p).numpy())}
    assert moved and all(p.startswith("layer4_") for p in moved), sorted(moved)[:5]
    assert any(p.startswith("layer4_0_bn1/moving") for p in moved)  # Its BatchNorm trains too.
    assert not any(p.startswith(("layer3_", "layer1_", "conv1/", "bn1/")) for p in trainable)
    assert any(p.startswith("sskt/aux_") for p in trainable)  # The head trains.
    with pytest.raises(UserError, match="--finetune_from=stage1: the first stage that trains must be one of stage2, stage3, stage4"):
        methods.build_model(_video_config(finetune_from="stage1"), (16, 16), 3, clip_length=2)
