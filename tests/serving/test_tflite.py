"""Tests of sskt_tf.serving.tflite: float32 and dynamic-int8 TFLite files against Keras, the labels file, refusals."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_run import fake_run, linear_model

from sskt_tf.errors import UserError
from sskt_tf.serving.tflite import export_tflite, labels_path
from sskt_tf.serving.trained import load_trained

NAMES = [f"c{i}" for i in range(10)]


def _tflite_outputs(path, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter warns that LiteRT's ai_edge_litert replaces it.
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    return runner(images=images)


def _conv_run(directory):
    """A run of a small random CNN on 32x32 images: enough weights that int8 storage shows in the file size."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters, strides in ((32, 1), (64, 2), (64, 1)):
        x = keras.layers.Conv2D(filters, 3, strides=strides, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(len(NAMES))(keras.layers.GlobalAveragePooling2D()(x)))
    return fake_run(directory, model, NAMES)


def test_float_and_dynamic_int8_match_keras(tmp_path):
    trained = load_trained(_conv_run(tmp_path / "run"))
    images = np.random.default_rng(4).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    logits = trained.model(images.astype(np.float32), training=False).numpy()
    assert np.abs(logits).max() > 0
    float_path = export_tflite(trained, tmp_path / "m.tflite")
    assert float_path == str(tmp_path / "m.tflite")
    out = _tflite_outputs(float_path, images)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(logits).numpy(), atol=1e-5)
    assert (tmp_path / "m.labels.txt").read_text().split() == NAMES
    int8_path = export_tflite(trained, tmp_path / "q.tflite", quantize="dynamic_int8")
    assert os.path.getsize(int8_path) < 0.5 * os.path.getsize(float_path)  # int8 weights, not float32.
    q = _tflite_outputs(int8_path, images)["logits"]
    np.testing.assert_allclose(q, logits, atol=0.05 * np.abs(logits).max())
    assert not np.allclose(q, logits, rtol=1e-6, atol=1e-6)  # It is quantized.


def test_multi_label_probabilities_are_per_label_sigmoids(tmp_path):
    model, kernel, bias = linear_model(4)
    trained = load_trained(fake_run(tmp_path / "ml", model, ["cat", "dog", "grass", "sky"], target_loss="bce"))
    images = np.random.default_rng(5).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    out = _tflite_outputs(export_tflite(trained, tmp_path / "ml.tflite"), images)
    logits = images.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias  # Independent of Keras.
    np.testing.assert_allclose(out["probabilities"], 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)


def test_refusals_come_before_anything_is_written(tmp_path):
    trained = load_trained(fake_run(tmp_path / "r", linear_model(3)[0], ["a", "b", "c"]))
    assert labels_path("/x/model.tflite") == "/x/model.labels.txt"
    with pytest.raises(UserError, match="--quantize=int4 is not known; allowed: none, dynamic_int8"):
        export_tflite(trained, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(UserError, match="must be a file ending in .tflite"):
        export_tflite(trained, tmp_path / "m.bin")
    (tmp_path / "lone.labels.txt").write_text("mine\n")
    with pytest.raises(UserError, match="lone.labels.txt already exists; pass --overwrite to replace it"):
        export_tflite(trained, tmp_path / "lone.tflite")
    assert not (tmp_path / "lone.tflite").exists() and (tmp_path / "lone.labels.txt").read_text() == "mine\n"
    export_tflite(trained, tmp_path / "lone.tflite", overwrite=True)
    assert (tmp_path / "lone.labels.txt").read_text() == "a\nb\nc\n"
