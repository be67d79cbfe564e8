"""Tests of the per-source diagnostics: agreement and relative entropy against numpy, the epoch-1 warning."""

import types

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import diagnostics


def np_relative_entropy(logits, t):
    z = np.asarray(logits, np.float64) / t
    z = z - z.max(-1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(np.exp(log_q) * log_q).sum(-1) / np.log(z.shape[-1])


def test_relative_entropy_is_one_for_uniform_and_near_zero_for_one_hot_soft_labels():
    uniform = np.stack([np.zeros(10), np.full(10, 7.5)]).astype(np.float32)  # Equal logits, at any level.
    np.testing.assert_allclose(diagnostics.relative_entropy(uniform, 3.0).numpy(), [1.0, 1.0], atol=1e-6)
    one_hot = np.eye(10, dtype=np.float32)[[2, 7]] * 100.0
    assert diagnostics.relative_entropy(one_hot, 3.0).numpy().max() < 1e-3


def test_relative_entropy_equals_numpy_on_random_logits():
    logits = np.random.RandomState(0).normal(0, 3, (6, 37)).astype(np.float32)
    for t in (1.0, 3.0):
        got = diagnostics.relative_entropy(logits, t).numpy()
        np.testing.assert_allclose(got, np_relative_entropy(logits, t), rtol=1e-5)
        assert got.dtype == np.float32 and got.shape == (6,) and 0.1 < got.min() and got.max() < 0.99
    # Hand-computed: logits (log 3, 0) at T = 1 give q = (3/4, 1/4), H = log 4 - 3/4 log 3, over log 2.
    expected = (np.log(4) - 0.75 * np.log(3)) / np.log(2)
    assert float(diagnostics.relative_entropy([[np.log(3.0), 0.0]], 1.0)[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("classes, t", [(1000, 3.0), (365, 3.0), (1000, 1.0), (10, 3.0)])
def test_probabilities_read_as_logits_are_above_the_threshold(classes, t):
    # A softmax-ended source's probabilities taken as logits: sharpest when one-hot, and still near-uniform.
    rng = np.random.RandomState(1)
    one_hot = np.eye(classes, dtype=np.float32)[rng.randint(classes, size=4)]
    peaked = rng.dirichlet(np.full(classes, 0.01), size=4).astype(np.float32)
    for p in (one_hot, peaked):
        assert diagnostics.relative_entropy(p, t).numpy().min() > diagnostics.NEAR_UNIFORM
    # Their log (what --source_outputs=probabilities uses: the logits up to a constant per row) is not flagged.
    assert diagnostics.relative_entropy(np.log(np.maximum(peaked, 1e-30)), t).numpy().max() < 0.9


def test_agreement_on_crafted_logits_and_no_gradient():
    aux = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 1.0]], np.float32)
    src = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [9.0, 1.0, 0.0]], np.float32)
    got = diagnostics.agreement(aux, src).numpy()
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0, 0.0])
    assert got.dtype == np.float32
    variable = tf.Variable(aux)
    with tf.GradientTape(persistent=True) as tape:
        values = [diagnostics.agreement(variable * 2.0, src), diagnostics.relative_entropy(variable * 2.0, 3.0)]
    assert all(tape.gradient(v, variable) is None for v in values)


def test_metric_names_follow_the_source_layer_names():
    source = types.SimpleNamespace(name="source_resnet50_imagenet")
    assert diagnostics.metric_names(source) == ("aux_agreement_resnet50_imagenet", "source_entropy_resnet50_imagenet")


def _source(name, classes=1000):
    return types.SimpleNamespace(name=f"source_{name}", spec=f"{name}.keras", num_classes=classes)


def _logs(entropies, agreement=0.25):
    logs = {"loss": 1.0}
    for name, value in entropies.items():
        logs[f"aux_agreement_{name}"] = agreement
        logs[f"source_entropy_{name}"] = value
    return logs


def test_the_warning_comes_once_after_epoch_one_for_a_flat_source_only(capsys):
    callback = diagnostics.SourceDiagnostics([_source("flat"), _source("sharp", 10)], [3.0, 2.0])
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, _logs({"flat": 0.9995, "sharp": 0.62}))
    # Printed once epoch 1's own output is complete: when epoch 2 begins.
    assert capsys.readouterr().out == ""
    callback.on_epoch_begin(1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("--sources=flat.keras: warning: its soft labels softmax(s/T) at --temperature=3 are near-uniform")
    assert "source_entropy_flat=0.9995 in epoch 1" in lines[0] and "log 1000" in lines[0]
    assert "weights are random" in lines[0] and "--source_outputs=probabilities" in lines[0]
    # A later epoch, even a flat one, prints nothing; `last` follows the epochs.
    callback.on_epoch_end(1, _logs({"flat": 0.9999, "sharp": 0.995}, agreement=0.5))
    callback.on_epoch_begin(2)
    callback.on_train_end()
    assert capsys.readouterr().out == ""
    assert callback.last == {
        "source_flat": {"agreement": 0.5, "relative_entropy": 0.9999},
        "source_sharp": {"agreement": 0.5, "relative_entropy": 0.995},
    }


def test_a_one_epoch_run_warns_at_the_end_and_a_resumed_run_keeps_its_values(capsys):
    callback = diagnostics.SourceDiagnostics([_source("flat")], [3.0])
    callback.on_epoch_end(0, _logs({"flat": 1.0}))
    callback.on_train_end()
    assert capsys.readouterr().out.count("warning") == 1
    # Resumed after its last epoch: nothing trains, the restored values stay for results.json.
    restored = diagnostics.SourceDiagnostics([_source("flat")], [3.0], last=callback.last)
    restored.on_train_end()
    assert restored.last == {"source_flat": {"agreement": 0.25, "relative_entropy": 1.0}}
    # Resumed after epoch 3: its epochs update the values, and warn no more.
    restored.on_epoch_end(3, _logs({"flat": 0.999}, agreement=0.0))
    restored.on_train_end()
    assert capsys.readouterr().out == "" and restored.last["source_flat"]["relative_entropy"] == 0.999
    # Exactly at the threshold is not above it.
    edge = diagnostics.SourceDiagnostics([_source("flat")], [3.0])
    edge.on_epoch_end(0, _logs({"flat": diagnostics.NEAR_UNIFORM}))
    edge.on_train_end()
    assert capsys.readouterr().out == ""
