"""Tests of SSKTModel: which weights move, golden losses, coupled weight decay, replicas, saving, export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from sskt_tf import diagnostics, losses
from sskt_tf.config import Config
from sskt_tf.methods import build_model
from sskt_tf.sskt import SSKTModel

RNG = np.random.RandomState(0)
X = RNG.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
Y = (np.arange(16) % 10).astype(np.int32)


def tiny_source_file(tmp_path, classes=5, name="tiny"):
    """A small trained-looking source with BatchNorm, saved as .keras (raw images in, logits out)."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes)(x), name=name)
    bn = model.layers[3]
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 8))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    return path


def make_config(tmp_path, **overrides):
    values = dict(
        dataset="synthetic",
        model="resnet20",
        sources=(tiny_source_file(tmp_path),),
        aux_head="transfer_module",
        epochs=1,
        batch_size=8,
        output_dir=str(tmp_path / "run"),
    )
    values.update(overrides)
    return Config(**values)


def compiled(config, optimizer=None, jit_compile=False, run_eagerly=True):
    """The built and compiled model of `config`.

    Eager by default: a step or two of the same `train_step` code costs far less than tracing it,
    and the numbers are the same. The traced (and XLA-compiled) steps are checked against eager ones
    in test_jit_compile_matches_eager_graph, under MirroredStrategy in
    test_two_replicas_equal_one_replica, and end to end by every training command in test_train.py.
    """
    model = build_model(config, (32, 32), 10)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    return model


def xla_compiled_functions(function, seen=None):
    """Names of the traced functions under a Keras `train_function` that XLA must compile.

    Keras falls back to no XLA with only a warning (under op determinism, for one), so a test of
    the XLA step checks the graph it ran: `tf.function(jit_compile=True)` marks its function
    `_XlaMustCompile`. The train function is a Python closure over the traced `tf.function`s.
    """
    seen = set() if seen is None else seen
    if id(function) in seen:
        return set()
    seen.add(id(function))
    found = set()
    if hasattr(function, "_list_all_concrete_functions"):  # a tf.function
        for concrete in function._list_all_concrete_functions():
            found |= {f.signature.name for f in concrete.graph.as_graph_def().library.function if f.attr["_XlaMustCompile"].b}
        function = function.python_function
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value):
            found |= xla_compiled_functions(value, seen)
    return found


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


def test_one_step_moves_the_target_and_never_the_sources(tmp_path):
    model = compiled(make_config(tmp_path, source_bn="batch"))
    source_before = snapshot(model.sources[0].weights)
    target_before = snapshot(model.target_variables)
    target_stats = [v for v in model.backbone.non_trainable_weights if "moving" in v.path]
    stats_before = snapshot(target_stats)
    history = model.fit(X, Y, batch_size=8, epochs=1, steps_per_epoch=1, verbose=0).history
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(source_before, model.sources[0].weights))
    assert any("moving" in v.path for v in model.sources[0].weights)
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(target_before, model.target_variables))
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(stats_before, target_stats))
    assert set(history) == {"loss", "target_loss", "aux_loss_tiny", "aux_agreement_tiny", "source_entropy_tiny", "accuracy"}
    assert all(np.isfinite(v[0]) for v in history.values())
    results = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "target_loss", "accuracy"} and results["loss"] == results["target_loss"] > 0
    # Only the target's variables are trainable at all.
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in model.target_variables}


def test_logged_losses_equal_an_independent_computation(tmp_path):
    config = make_config(
        tmp_path,
        sources=(tiny_source_file(tmp_path, 5, "s1"), tiny_source_file(tmp_path, 7, "s2")),
        alpha=(0.1, 0.3),
        temperature=(3.0, 2.0),
    )
    model = compiled(config)
    # Same forward pass the step takes (training mode), before the update.
    features = model.backbone(X[:8], training=True)
    logits = model.classifier(model.pool(features["stage3"])).numpy()
    aux = [h(features, training=True).numpy() for h in model.aux_heads]
    src = [s.network(tf.image.resize(X[:8], s.image_size), training=False).numpy() for s in model.sources]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    target = -log_softmax(logits)[np.arange(8), Y[:8]].mean()
    terms = [
        t * t * np.mean(np.sum(-np.exp(log_softmax(s / t)) * log_softmax(a / t), -1))
        for s, a, t in zip(src, aux, (3.0, 2.0))
    ]
    # What each source teaches (sskt_tf.diagnostics): top-1 agreement, soft-label entropy over log K.
    agreements = [np.mean(np.argmax(a, -1) == np.argmax(s, -1)) for s, a in zip(src, aux)]
    entropies = [
        np.mean(np.sum(-np.exp(log_softmax(s / t)) * log_softmax(s / t), -1)) / np.log(s.shape[-1])
        for s, t in zip(src, (3.0, 2.0))
    ]
    # Reset the BN statistics the manual forward pass moved, so the step sees the same state.
    history = compiled_same_weights_history(model, config)
    assert history["target_loss"][0] == pytest.approx(target, rel=1e-4)
    assert history["aux_loss_s1"][0] == pytest.approx(terms[0], rel=1e-4)
    assert history["aux_loss_s2"][0] == pytest.approx(terms[1], rel=1e-4)
    assert history["loss"][0] == pytest.approx(target + 0.1 * terms[0] + 0.3 * terms[1], rel=1e-4)
    for name, agreement, entropy in zip(("s1", "s2"), agreements, entropies):
        assert history[f"aux_agreement_{name}"][0] == pytest.approx(agreement, abs=1e-6)
        assert history[f"source_entropy_{name}"][0] == pytest.approx(entropy, rel=1e-5)


def compiled_same_weights_history(model, config):
    # Batch statistics in training mode do not depend on the moving statistics, so the loss of the
    # first step is a function of the trainable weights only: train a fresh copy from them.
    fresh = compiled(config)
    fresh.set_weights(model.get_weights())
    return fresh.fit(X[:8], Y[:8], batch_size=8, epochs=1, verbose=0, shuffle=False).history


def dense_source_file(tmp_path, name, classes, init):
    """A source of raw images -> mean colour -> Dense(classes) with kernel and bias from `init`, saved as .keras."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    dense = keras.layers.Dense(classes, kernel_initializer=init, bias_initializer=init)
    path = str(tmp_path / f"{name}.keras")
    keras.Model(inputs, dense(x), name=name).save(path)
    return path


def test_a_constant_source_is_flagged_once_after_epoch_one_and_a_sharp_one_is_not(tmp_path, capsys):
    # Constant logits (5.0 for every class and image): uniform soft labels, what random applications give.
    constant = dense_source_file(tmp_path, "constant", 100, keras.initializers.Constant(5.0))
    sharp = dense_source_file(tmp_path, "sharp", 100, keras.initializers.RandomNormal(stddev=20.0, seed=1))
    config = make_config(tmp_path, sources=(constant, sharp), aux_head="linear")
    model = compiled(config)
    capsys.readouterr()
    callback = diagnostics.SourceDiagnostics(model.sources, config.source_temperatures)
    history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[callback]).history
    np.testing.assert_allclose(history["source_entropy_constant"], [1.0, 1.0], atol=1e-6)
    assert max(history["source_entropy_sharp"]) < 0.5
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"--sources={constant}: warning: ")
    assert "source_entropy_constant=1.0000 in epoch 1" in lines[0]
    # The last epoch's values, for results.json.
    assert callback.last == {
        s.name: {"agreement": history[f"aux_agreement_{n}"][-1], "relative_entropy": history[f"source_entropy_{n}"][-1]}
        for s, n in zip(model.sources, ("constant", "sharp"))
    }


def test_coupled_weight_decay_is_added_to_the_gradient(tmp_path):
    config = make_config(tmp_path, sources=(), weight_decay=0.01)
    model = compiled(config, optimizer=keras.optimizers.SGD(0.5, momentum=0.0))
    w0 = model.classifier.kernel.numpy().copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.softmax_cross_entropy(Y[:8], model(X[:8], training=True)))
    grad = tape.gradient(loss, model.classifier.kernel).numpy()
    fresh = compiled(config, optimizer=keras.optimizers.SGD(0.5, momentum=0.0))
    fresh.set_weights(model.get_weights())
    fresh.fit(X[:8], Y[:8], batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(fresh.classifier.kernel.numpy(), w0 - 0.5 * (grad + 0.01 * w0), rtol=1e-4, atol=1e-6)


def test_scratch_model_has_no_aux_terms(tmp_path):
    model = compiled(make_config(tmp_path, sources=()))
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == {"loss", "target_loss", "accuracy"}
    assert history["loss"] == history["target_loss"]
    # Evaluation reports the target loss as the loss (Keras would otherwise log an unset tracker: 0).
    results = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert results["loss"] == results["target_loss"] > 0


def test_top5_for_more_than_ten_classes(tmp_path):
    model = build_model(make_config(tmp_path, sources=()), (32, 32), 100)
    model.compile(optimizer="sgd", run_eagerly=True)
    assert "top5_accuracy" in model.evaluate(X, Y, verbose=0, return_dict=True)


def test_jit_compile_matches_eager_graph(tmp_path):
    # The linear head: XLA's compile time grows with the graph, and the transfer module's layers are
    # the backbone's kinds (convolutions, BatchNorm), already in the compiled step.
    config = make_config(tmp_path, aux_head="linear")
    assert not tf_config.is_op_determinism_enabled()  # Under it, Keras quietly compiles without XLA.
    plain = compiled(config)  # eager
    jitted = compiled(config, jit_compile=True, run_eagerly=False)
    assert jitted.jit_compile is True
    jitted.set_weights(plain.get_weights())
    h1 = plain.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    h2 = jitted.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    # The step that ran is XLA's: its traced function is marked for XLA compilation.
    assert jitted.jit_compile is True and len(xla_compiled_functions(jitted.train_function)) == 1
    assert not plain.jit_compile and not xla_compiled_functions(plain.train_function)
    # XLA fuses and reorders the float32 sums: over the epoch's SGD steps at lr 0.1 the two runs drift
    # apart by up to about 1e-4 relative (1.1e-4 seen under load); a missing or doubled loss term moves
    # the epoch's losses by far more than 1e-3.
    for key in h1:
        assert h2[key][0] == pytest.approx(h1[key][0], rel=1e-3, abs=1e-5)


def test_save_load_round_trip_and_target_extraction(tmp_path):
    model = compiled(make_config(tmp_path, source_bn="batch"))
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "sskt.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SSKTModel) and loaded.sources[0].source_bn == "batch"
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.sources[0](X).numpy(), model.sources[0](X).numpy(), rtol=1e-5, atol=1e-5)
    # Optimizer state came back too: training continues from the same iteration.
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    loaded.fit(X, Y, batch_size=8, epochs=1, verbose=0)

    target = model.target_model()
    names = {w.path.split("/")[0] for w in target.weights}
    assert not any(n.startswith(("source_", "aux_")) for n in names)
    assert len(target.weights) == len(model.backbone.weights) + 2
    # Direct (eager) calls on both sides: the same computation, so equal to float32 rounding.
    expected = model(X, training=False).numpy()
    np.testing.assert_allclose(target(X, training=False).numpy(), expected, rtol=1e-6)
    target.save(str(tmp_path / "target.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "target.keras"))
    np.testing.assert_allclose(reloaded(X, training=False).numpy(), expected, rtol=1e-6)


def test_two_replicas_equal_one_replica(tmp_path, two_replicas):
    """MirroredStrategy over 2 logical CPUs == 1 replica on the same global batch (synchronised BN).

    A small learning rate: at 0.1 on random labels, float32 rounding (the synchronised variance is
    E[x^2] - E[x]^2) is amplified step after step; at 0.01 the runs agree to about 1e-4, while a
    replica-scaling mistake (gradients doubled or halved) moves the second epoch by more than 1e-2.
    """
    config = make_config(tmp_path, sync_bn=True, weight_decay=5e-4)
    results = []
    initial = None
    for strategy in (tf.distribute.get_strategy(), two_replicas):
        with strategy.scope():
            # Traced steps under MirroredStrategy; the one-replica reference runs eagerly.
            model = compiled(config, optimizer=keras.optimizers.SGD(0.01, momentum=0.9), run_eagerly=not results)
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        assert model.distribute_strategy.num_replicas_in_sync == (1 if not results else 2)
        assert len(tf.config.list_logical_devices("CPU")) == 2
        ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
        history = model.fit(ds, epochs=2, verbose=0).history
        results.append((history, snapshot(model.classifier.weights + model.aux_heads[0].dense.weights)))
    (h1, w1), (h2, w2) = results
    # The second epoch's losses agree to about 1e-4 (1.6e-4 seen under load: the cross-replica sums of
    # the synchronised statistics are reordered); a replica-scaling mistake moves them by more than 1e-2.
    for key in h1:
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-3, atol=1e-5)
    # The layers after the last BatchNorm agree as tightly. (Convolutions before a synchronised
    # BatchNorm agree to about 3e-4 only: Keras' gradient through the cross-replica statistics.)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name, size, last", [("resnet18", 64, "stage4"), ("vgg16_bn", 32, "stage5")])
def test_classifier_pools_the_last_stage_of_any_target(model_name, size, last, tmp_path):
    config = make_config(tmp_path, model=model_name, aux_head="transfer_module")
    model = build_model(config, (size, size), 10)
    assert model.feature_key == last
    assert model.classifier.kernel.shape[0] == model.backbone.stage_channels[last]
    assert model.aux_heads[0].stage_keys[-1] == last
    expected_width = getattr(model.backbone, "transfer_width", None) or model.backbone.stage_channels[last]
    assert model.aux_heads[0].out_channels == expected_width


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps_keep_float32_logits_and_losses(precision, tmp_path):
    keras.config.set_dtype_policy(precision)
    try:
        config = make_config(tmp_path, precision=precision, source_precision="bfloat16", aux_head="linear")
        model = compiled(config)
        assert keras.config.dtype_policy().name == precision
        assert model.backbone.get_layer("stem_conv").dtype_policy.name == precision
        assert model.backbone.get_layer("stem_conv").compute_dtype == precision.split("_")[1]
        assert {l.compute_dtype for l in model.sources[0].network.layers if l.weights} == {"bfloat16"}
        assert all(v.dtype == "float32" for v in model.target_variables)
        history = model.fit(X[:8], Y[:8], batch_size=8, epochs=1, verbose=0).history
        assert all(np.isfinite(v[0]) for v in history.values())
        assert model(X[:2]).dtype == "float32" and model.sources[0](X[:2]).dtype == "float32"
        if precision == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_test_that_leaks_process_wide_modes():
    # The next test checks that conftest undid all of this: without it, every later test would run
    # with op determinism (Keras then silently drops XLA) and a mixed policy.
    tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy("mixed_bfloat16")
    os.environ["SSKT_LEAK_PROBE"] = "1"
    assert tf_config.is_op_determinism_enabled() and keras.config.dtype_policy().name == "mixed_bfloat16"


def test_the_modes_leaked_by_the_previous_test_are_restored():
    assert not tf_config.is_op_determinism_enabled()
    assert keras.config.dtype_policy().name == "float32"
    assert "SSKT_LEAK_PROBE" not in os.environ
    # Logical devices cannot change once TensorFlow has started: conftest sets two CPUs for the whole
    # session, and the replica tests assert them.
    assert len(tf.config.list_logical_devices("CPU")) == 2


def test_evaluation_loss_is_the_mean_over_examples_with_a_partial_batch(tmp_path):
    model = compiled(make_config(tmp_path, sources=()))
    results = model.evaluate(X[:11], Y[:11], batch_size=8, verbose=0, return_dict=True)  # batches of 8 and 3
    expected = losses.softmax_cross_entropy(Y[:11], model.predict(X[:11], verbose=0)).numpy().mean()
    assert results["loss"] == pytest.approx(expected, rel=1e-5)


def test_multi_label_step_uses_bce_and_skips_accuracy(tmp_path):
    config = make_config(tmp_path, target_loss="bce")
    model = compiled(config)
    assert model.multi_label
    hot = np.zeros((16, 10), np.float32)
    hot[np.arange(16), Y] = 1.0
    hot[np.arange(16), (Y + 3) % 10] = 1.0
    logits = model(X[:16], training=False).numpy()
    z = logits.astype(np.float64)
    expected = np.mean(np.maximum(z, 0) - z * hot + np.log1p(np.exp(-np.abs(z))))
    results = model.evaluate(X, hot, batch_size=16, verbose=0, return_dict=True)
    assert set(results) == {"loss", "target_loss"}
    assert results["target_loss"] == pytest.approx(expected, rel=1e-5)
    history = model.fit(X, hot, batch_size=8, epochs=1, steps_per_epoch=1, verbose=0).history
    assert set(history) == {"loss", "target_loss", "aux_loss_tiny", "aux_agreement_tiny", "source_entropy_tiny"}
