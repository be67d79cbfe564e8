"""Tests of the soft-label cache: stored logits equal the sources' own, reuse, invalidation, training."""

import glob
import os

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
    # replay, with another seed: its own file next to clean's; the summary says what the step reads.
    replay = [a.replace("=clean", "=replay") for a in args] + ["--replay_views=2", "--seed=3"]
    run_training([*replay, f"--output_dir={tmp_path / 'c'}"])
    out = capsys.readouterr().out
    assert "soft-label cache (replay): computing tiny logits on 2 views of each of 512 training images" in out
    assert "  soft labels stored logits of 2 stored crops + flips per image" in out
    assert len(glob.glob(str(tmp_path / "cache" / "*_replay.npz"))) == 1


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
        # The same file names with other contents (sizes, modification times): `Datasets.content_key`.
        soft_labels.data_key(config, types.SimpleNamespace(**{**vars(data), "content_key": "other files"})),
    ]
    assert len({key, *others}) == 6
    # Without a hold-out or subset the seed does not choose the images: one key for every seed.
    plain = dataclasses.replace(config, validation_split=0.0)
    data = types.SimpleNamespace(**{**vars(data), "validation_from": None})
    assert soft_labels.data_key(plain, data) == soft_labels.data_key(dataclasses.replace(plain, seed=5), data)


# --- replay -------------------------------------------------------------------------------------


def _replay_setup(tmp_path, **overrides):
    keras.utils.set_random_seed(0)
    settings = dict(soft_label_cache="replay", replay_top_k=0, replay_views=3)
    config = Config(dataset="synthetic", sources=(_tiny_source(tmp_path),), batch_size=32,
                    output_dir=str(tmp_path / "run"), **{**settings, **overrides})
    data = data_lib.load("synthetic", batch_size=32, seed=0, augment="standard")
    return config, data, build_model(config, data.image_size, data.num_classes)


def test_views_are_distinct_crops_and_flips_of_the_padded_image_drawn_apart_from_the_seed():
    from sskt_tf.config import AugmentationConfig

    views = soft_labels.draw_views(300, 5, AugmentationConfig())
    assert views.offsets.shape == (300, 5, 2) and views.flips.shape == (300, 5) and views.padding == 4
    assert views.offsets.min() == 0 and views.offsets.max() == 8 and 0.3 < views.flips.mean() < 0.7
    codes = (views.offsets[..., 0].astype(int) * 9 + views.offsets[..., 1]) * 2 + views.flips
    assert all(len(set(row)) == 5 for row in codes)  # Distinct views of each image.
    assert len({tuple(row) for row in codes}) > 290  # Images get their own views.
    # The same draw in every run (REPLAY_SEED, not --seed); more views than exist: all 162 of them.
    again = soft_labels.draw_views(300, 5, AugmentationConfig())
    assert np.array_equal(again.offsets, views.offsets) and np.array_equal(again.flips, views.flips)
    assert soft_labels.draw_views(2, 500, AugmentationConfig()).count == 162
    plain = soft_labels.draw_views(4, 5, AugmentationConfig(kind="none"))
    assert plain.count == 1 and plain.padding == 0 and not plain.flips.any()


def test_top_k_storage_keeps_the_largest_logits_and_gives_the_rest_their_mean():
    logits = np.array([[[1.0, 5.0, -2.0, 3.0, 0.5]]], np.float32)  # [N=1, V=1, C=5]
    stored = soft_labels.compress(logits, 2)
    assert stored["values"].dtype == np.float16 and stored["indices"].dtype == np.int16
    assert sorted(zip(stored["indices"][0, 0], stored["values"][0, 0])) == [(1, 5.0), (3, 3.0)]
    assert stored["tail"][0, 0] == np.float16((1.0 - 2.0 + 0.5) / 3)
    tail = np.float32(np.float16(-0.5 / 3))
    expanded = soft_labels.expand([stored[k][0] for k in ("values", "indices", "tail")], 5).numpy()
    np.testing.assert_array_equal(expanded, [[tail, 5.0, tail, 3.0, tail]])
    full = soft_labels.compress(logits, 0)
    np.testing.assert_array_equal(soft_labels.expand([full["logits"][0]], 5).numpy(), logits[0])
    # k >= C: every logit in float32, exact and smaller than C float16 values with their indices.
    assert set(soft_labels.compress(logits, 5)) == {"logits"} and set(soft_labels.compress(logits, 9)) == {"logits"}


def test_full_replay_gives_the_sources_own_logits_of_each_view_and_trains_bit_for_bit_as_live_sources(tmp_path):
    config, data, model = _replay_setup(tmp_path)
    replay = soft_labels.load_or_fill_replay(model.sources, data, config, str(tmp_path / "cache"), verbose=0)
    clean = np.concatenate([x.numpy() for x, _ in data.train_ordered(512)])
    stored = {v.tobytes() for v in replay.views.cut(clean, 0, 0, 512 * 3).numpy()}
    for inputs, _ in data.train_from(0, replay=replay).take(2):
        views = inputs["images"].numpy()
        np.testing.assert_array_equal(inputs["extras"][0].numpy(), model.sources[0](views).numpy())
        # Each image is one of the stored views of a training image; the clean image is only the
        # one view of 162 that neither shifts nor flips.
        assert all(v.tobytes() in stored for v in views)
        assert len({v.tobytes() for v in views} & {c.tobytes() for c in clean}) <= 3
    twin = build_model(config, data.image_size, data.num_classes)
    initial = model.get_weights()
    twin.set_weights(initial)
    for m in (model, twin):
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    # A new dataset for each: reading the same one twice would reshuffle it.
    model.fit(data.train_from(0, replay=replay), steps_per_epoch=3, verbose=0)
    live = data.train_from(0, replay=replay).map(lambda x, y: (x["images"], y))  # The sources run in the step.
    twin.fit(live, steps_per_epoch=3, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), twin.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), initial))


def test_a_killed_fill_continues_and_a_stale_or_broken_file_is_never_read(tmp_path, monkeypatch):
    config, data, model = _replay_setup(tmp_path, replay_top_k=4)
    directory = str(tmp_path / "cache")
    monkeypatch.setattr(soft_labels, "_FILL_CHUNK_BYTES", 100 * 32 * 32 * 3 * 4)  # Chunks of 100 images.
    source, calls = model.sources[0], []

    class Killed(Exception):
        pass

    def killed_after(n):
        def call(images):
            calls.append(len(images))
            if len(calls) > n:
                raise Killed
            return source(images)

        return call

    with pytest.raises(Killed):
        soft_labels._fill(killed_after(2), data, soft_labels.draw_views(512, 3, config.augmentation), 4,
                          str(tmp_path / "x.partial"), 300, keras.utils.Progbar(1536, verbose=0))
    assert sorted(os.listdir(tmp_path / "x.partial")) == ["0000000000.npz", "0000000100.npz"]
    with open(tmp_path / "x.partial" / "0000000000.npz", "r+b") as f:
        f.truncate(100)  # A chunk broken on disk is computed again, never a traceback.
    calls.clear()
    views = soft_labels.draw_views(512, 3, config.augmentation)
    resumed = soft_labels._fill(killed_after(99), data, views, 4, str(tmp_path / "x.partial"), 300,
                                keras.utils.Progbar(1536, verbose=0))
    assert sum(calls) == (512 - 100) * 3  # Only the chunks not written (or not readable) yet.
    messages = []
    replay = soft_labels.load_or_fill_replay(model.sources, data, config, directory, log=messages.append, verbose=0)
    (path,) = glob.glob(os.path.join(directory, "*_replay.npz"))
    assert not glob.glob(os.path.join(directory, "*.partial"))
    with np.load(path) as f:
        for k in ("values", "indices", "tail"):
            np.testing.assert_array_equal(f[k], resumed[k])
        assert f["values"].shape == (512, 3, 4) and np.array_equal(f["offsets"], views.offsets)
    assert replay.views.count == 3 and "computing" in messages[-1]
    soft_labels.load_or_fill_replay(model.sources, data, config, directory, log=messages.append, verbose=0)
    assert "views per image from" in messages[-1]
    # Other storage or other views: other files. A truncated file: filled again.
    import dataclasses

    for other in (dict(replay_top_k=0), dict(replay_views=2)):
        soft_labels.load_or_fill_replay(model.sources, data, dataclasses.replace(config, **other), directory, log=messages.append, verbose=0)
        assert "computing" in messages[-1]
    assert len(glob.glob(os.path.join(directory, "*_replay.npz"))) == 3
    with open(path, "r+b") as f:
        f.truncate(1000)
    soft_labels.load_or_fill_replay(model.sources, data, config, directory, log=messages.append, verbose=0)
    assert "computing" in messages[-1]
    # A file of the right shapes whose class indices do not fit the source (another source's): filled again.
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["indices"][0, 0, 0] = 7
    np.savez(path, **arrays)
    soft_labels.load_or_fill_replay(model.sources, data, config, directory, log=messages.append, verbose=0)
    assert "computing" in messages[-1]


def test_the_fill_calls_a_source_on_fewer_views_the_larger_its_input():
    import types

    sizes = [(74, 74), (224, 224), (1000, 1000), (16, 16)]
    assert [soft_labels.fill_batch_size(types.SimpleNamespace(image_size=s)) for s in sizes] == [512, 55, 8, 512]
