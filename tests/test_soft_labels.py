"""Tests of the soft-label cache: stored logits equal the sources' own, reuse, invalidation, training."""

import keras
import numpy as np
import pytest

from sskt_tf import data as data_lib
from sskt_tf import soft_labels
from sskt_tf.config import Config
from sskt_tf.methods import build_model
from conftest import run_training


def _tiny_source(tmp_path):
    """A small source whose logits are far from zero (random applications give ~1e-11)."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = str(tmp_path / "tiny.keras")
    keras.Model(inputs, keras.layers.Dense(7)(x)).save(path)
    return path


def _setup(tmp_path, **overrides):
    keras.utils.set_random_seed(0)
    config = Config(
        dataset="synthetic",
        sources=(_tiny_source(tmp_path),),
        batch_size=32,
        soft_label_cache="clean",
        output_dir=str(tmp_path / "run"),
        **overrides,
    )
    data = data_lib.load("synthetic", batch_size=32, seed=0, augment="none")
    model = build_model(config, data.image_size, data.num_classes)
    return config, data, model


def test_cached_logits_are_the_sources_logits_and_are_reused(tmp_path, capsys):
    config, data, model = _setup(tmp_path)
    messages = []
    directory = str(tmp_path / "cache")
    (logits,) = soft_labels.load_or_compute(model.sources, data, config, directory, log=messages.append)
    assert "512/512" in capsys.readouterr().out  # The progress bar over the training images (verbose=1).
    images = np.concatenate([x.numpy() for x, _ in data.train_ordered(100)])
    np.testing.assert_allclose(logits, model.sources[0](images).numpy(), rtol=1e-5, atol=1e-5)
    assert logits.shape == (512, 7) and "computing" in messages[-1] and np.abs(logits).mean() > 0.05
    (again,) = soft_labels.load_or_compute(model.sources, data, config, directory, log=messages.append, verbose=0)
    np.testing.assert_array_equal(again, logits)
    assert "logits from" in messages[-1]
    # Other source weights: another file, never the stale logits.
    weight = model.sources[0].network.weights[0]
    weight.assign(weight.numpy() + 0.1)
    (changed,) = soft_labels.load_or_compute(model.sources, data, config, directory, log=messages.append, verbose=0)
    assert "computing" in messages[-1] and np.abs(changed - logits).max() > 1e-3
    assert capsys.readouterr().out == ""  # verbose=0: no progress bar.


def test_training_on_cached_logits_equals_training_on_the_sources_without_augmentation(tmp_path):
    config, data, model = _setup(tmp_path)
    (logits,) = soft_labels.load_or_compute(model.sources, data, config, str(tmp_path / "cache"))
    twin = build_model(config, data.image_size, data.num_classes)
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        # Eager steps: the same train_step code as traced, without tracing it twice; the training
        # command below runs the traced step on cached logits.
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
    cached = model.fit(data.train_from(0, extras=(logits,)), epochs=1, steps_per_epoch=3, verbose=0).history
    direct = twin.fit(data.train_from(0), epochs=1, steps_per_epoch=3, verbose=0).history
    assert set(cached) == set(direct)
    for key in direct:
        assert cached[key][0] == pytest.approx(direct[key][0], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_training_command_fills_and_reuses_the_cache(tmp_path, capsys):
    import os

    # smoke.cfg with the small source above and a linear head: filling the cache runs the source over
    # all 512 training images, which smoke.cfg's MobileNetV2 at 74 px would make most of the test.
    args = [
        "--flagfile=flags/smoke.cfg", f"--sources={_tiny_source(tmp_path)}", "--aux_head=linear",
        "--soft_label_cache=clean", "--epochs=1", "--steps_per_epoch=2", "--eval_batch_size=128",
        "--verbose=0", f"--soft_label_cache_dir={tmp_path / 'cache'}",
    ]
    for run in ("a", "b"):
        run_training([*args, f"--output_dir={tmp_path / run}"])
    out = capsys.readouterr().out
    assert out.count("soft-label cache: computing") == 1 and out.count("logits from") == 1
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_the_data_key_follows_the_hold_out_its_seed_and_skipped_files():
    # The same number of training images can be other images: another hold-out, another seed of it,
    # other skipped files. Each must read other stored logits, never those of the first.
    import dataclasses
    import types

    config = Config(dataset="folder:/data", validation_split=0.1)
    data = types.SimpleNamespace(validation_from="validation_split", bad_files=(), image_size=(32, 32), num_train=900)
    key = soft_labels.data_key(config, data)
    assert key == soft_labels.data_key(config, data)
    others = [
        soft_labels.data_key(dataclasses.replace(config, seed=1), data),
        soft_labels.data_key(dataclasses.replace(config, validation_split=0.2), data),
        soft_labels.data_key(config, types.SimpleNamespace(**{**vars(data), "bad_files": ("/data/train/a/x.jpg",)})),
        soft_labels.data_key(config, types.SimpleNamespace(**{**vars(data), "validation_from": "val/"})),
    ]
    assert len({key, *others}) == 5
    # Without a hold-out or subset the seed does not choose the images: one key for every seed.
    plain = dataclasses.replace(config, validation_split=0.0)
    data = types.SimpleNamespace(**{**vars(data), "validation_from": None})
    assert soft_labels.data_key(plain, data) == soft_labels.data_key(dataclasses.replace(plain, seed=5), data)
