"""Tests of sskt_tf.serving.saved_model: the SavedModel of a trained run per signature against Keras,
its resizing against the data pipeline's, multi-label scores, and the export of `train --export`."""

import json
import os
import shutil
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_training
from fake_run import fake_run, linear_model

from sskt_tf import data as data_lib
from sskt_tf.errors import UserError
from sskt_tf.serving.saved_model import check_top_k, export_saved_model
from sskt_tf.serving.trained import load_trained

# The tests that read the module's training run share one worker under pytest-xdist (one training).
pytestmark = pytest.mark.xdist_group("saved_model_run")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short training run on synthetic data with --export (no source: export sees the target only)."""
    out = tmp_path_factory.mktemp("export") / "run"
    run_training([
        "--flagfile=flags/smoke.cfg", "--sources=", "--epochs=1", "--steps_per_epoch=3", "--lr=0.01",
        "--export", f"--output_dir={out}", "--verbose=0",
    ])
    return out


@pytest.fixture(scope="module")
def keras_model(run):
    return keras.saving.load_model(run / "target.keras")


def keras_probabilities(model, images):
    return tf.nn.softmax(model(tf.cast(images, tf.float32), training=False)).numpy()


def random_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_training_with_export_writes_a_saved_model_equal_to_keras(run, keras_model):
    loaded = tf.saved_model.load(str(run / "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "serve_image_bytes"}
    names = json.loads((run / "results.json").read_text())["class_names"]
    assert [n.decode() for n in loaded.class_names[0].numpy()] == names
    assert (run / "saved_model" / "assets.extra" / "class_names.txt").read_text().split("\n")[:-1] == names
    # The synthetic test images are at the training size: the signature must equal the Keras model exactly.
    images, _ = next(iter(data_lib.load("synthetic", batch_size=16, eval_batch_size=8).test))
    images = tf.cast(images, tf.uint8)
    out = loaded.signatures["serving_default"](images=images)
    expected = keras_probabilities(keras_model, images)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (expected.max(axis=1) < 0.99).any()  # Not all saturated, so the comparison means something.
    order = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(out["top_k_classes"].numpy(), order)
    np.testing.assert_allclose(out["top_k_scores"].numpy(), np.take_along_axis(expected, order, 1), rtol=1e-5, atol=1e-6)
    assert out["top_k_names"].numpy()[0].tolist() == [names[i].encode() for i in order[0]]
    assert out["class_names"].shape == (8, 10) and out["class_names"].numpy()[3].tolist() == [n.encode() for n in names]


def test_any_size_is_resized_as_the_folder_pipeline_resizes(run, keras_model, tmp_path):
    """A 45x61 image through the signature == the same file through sskt_tf.data at 32x32, then Keras."""
    image = random_images((45, 61, 3), seed=1)
    for split in ("train", "test"):
        for name in ("a", "b"):  # A folder dataset needs two classes; "a" holds the image compared.
            os.makedirs(tmp_path / split / name)
            tf.io.write_file(str(tmp_path / split / name / "x.png"), tf.io.encode_png(image))
    pipeline_image, _ = next(iter(data_lib.load(f"folder:{tmp_path}", batch_size=1, image_size=(32, 32)).test))
    loaded = tf.saved_model.load(str(run / "saved_model"))
    out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    np.testing.assert_allclose(out["probabilities"].numpy(), keras_probabilities(keras_model, pipeline_image), rtol=1e-5, atol=1e-6)


def test_bytes_signature_decodes_png_and_jpeg_of_any_size(run, keras_model):
    loaded = tf.saved_model.load(str(run / "saved_model"))
    a, b = random_images((32, 32, 3), seed=2), random_images((20, 48, 3), seed=3)
    jpeg = tf.io.encode_jpeg(a).numpy()
    out = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([tf.io.encode_png(a).numpy(), tf.io.encode_png(b).numpy(), jpeg]))
    uint8 = loaded.signatures["serving_default"]
    np.testing.assert_allclose(out["probabilities"].numpy()[0], keras_probabilities(keras_model, a[None])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"].numpy()[1], uint8(images=tf.constant(b[None]))["probabilities"].numpy()[0], rtol=1e-5, atol=1e-6)
    decoded = tf.io.decode_jpeg(jpeg)[None]
    np.testing.assert_allclose(out["probabilities"].numpy()[2], keras_probabilities(keras_model, decoded)[0], rtol=1e-5, atol=1e-6)
    assert out["top_k_names"].shape == (3, 5)


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(run):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    show = subprocess.run([cli, "show", "--dir", str(run / "saved_model"), "--all"], capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-3000:]
    text = show.stdout
    for expected in (
        "signature_def['serving_default']", "inputs['images']", "DT_UINT8", "shape: (-1, -1, -1, 3)",
        "signature_def['serve_image_bytes']", "inputs['image_bytes']", "DT_STRING",
        "outputs['probabilities']", "outputs['top_k_classes']", "outputs['top_k_scores']", "outputs['top_k_names']",
        "outputs['class_names']", "shape: (-1, 5)", "shape: (-1, 10)",
    ):
        assert expected in text, expected


def test_multi_label_model_exports_per_label_sigmoids(tmp_path):
    model, kernel, bias = linear_model(4)
    run_dir = fake_run(tmp_path / "ml", model, ["cat", "dog", "grass", "sky"], target_loss="bce")
    trained = load_trained(run_dir)
    assert trained.multi_label  # From config.json's target_loss.
    umask = os.umask(0o022)
    try:
        path = export_saved_model(trained, run_dir / "saved_model", top_k=2)
    finally:
        os.umask(umask)
    assert path == str(run_dir / "saved_model")
    # Readable by a model server running as another user, as any new directory (not mkdtemp's 0700).
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    images = random_images((3, 16, 16, 3), seed=5)  # Any size: the mean colour survives the resize closely.
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    resized = tf.clip_by_value(tf.round(tf.image.resize(tf.cast(images, tf.float32), (8, 8))), 0, 255).numpy()
    logits = resized.mean(axis=(1, 2)) @ kernel + bias  # Independent of Keras.
    expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected.sum(axis=1), 1.0)  # Per-label sigmoids, not one softmax.
    np.testing.assert_array_equal(out["top_k_classes"].numpy(), np.argsort(-expected, axis=1)[:, :2])  # top_k=2
    # A single-label export of the same model is a softmax.
    path = export_saved_model(load_trained(run_dir, multi_label=False), tmp_path / "single")
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-5, atol=1e-6)


def test_output_refusals_leave_what_is_there(tmp_path):
    trained = load_trained(fake_run(tmp_path / "r", linear_model(3)[0], ["a", "b", "c"]))
    out = tmp_path / "sm"
    assert export_saved_model(trained, out) == str(out)
    with pytest.raises(UserError, match=f"^--output={out} holds an earlier export \\(a SavedModel\\); pass --overwrite"):
        export_saved_model(trained, out)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="non-empty directory that holds no SavedModel"):
        export_saved_model(trained, tmp_path / "notes", overwrite=True)
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UserError, match="--top_k must be a positive integer"):
            check_top_k(bad)
    assert check_top_k(np.int64(3)) == 3
    # top_k above the class count is cut to it.
    path = export_saved_model(trained, tmp_path / "top9", top_k=9)
    out = tf.saved_model.load(path).signatures["serving_default"](images=random_images((2, 8, 8, 3)))
    assert out["top_k_classes"].shape == (2, 3)


def test_training_with_overwrite_replaces_its_own_export(run, tmp_path):
    """`train --export --overwrite` on a finished run with an export: the new run's export replaces it."""
    finished, run = run, tmp_path / "run"
    shutil.copytree(finished, run)  # The module's run stays as it is for the other tests.
    # What the commands wrote about the old model goes with it: nothing of it stays beside the new one.
    for name in ("model.tflite", "model.labels.txt"):
        (run / name).write_text("old")
    (run / "evaluation" / "x").mkdir(parents=True)
    before = os.path.getmtime(run / "saved_model" / "saved_model.pb")
    args = [
        "--flagfile=flags/smoke.cfg", "--sources=", "--epochs=1", "--steps_per_epoch=1", "--lr=0.02",
        "--export", "--overwrite", f"--output_dir={run}", "--verbose=0",
    ]
    run_training(args)
    assert os.path.getmtime(run / "saved_model" / "saved_model.pb") > before
    assert not any((run / name).exists() for name in ("model.tflite", "model.labels.txt", "evaluation"))
    # The export is the new target: equal outputs on the same images.
    images = random_images((2, 32, 32, 3), seed=7)
    served = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"](images=tf.constant(images))
    target = keras.saving.load_model(run / "target.keras")
    np.testing.assert_allclose(served["probabilities"].numpy(), keras_probabilities(target, images), rtol=1e-5, atol=1e-6)
