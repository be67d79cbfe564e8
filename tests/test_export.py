"""Tests of the export: SavedModel round trip per signature against the Keras model, TFLite parity, errors."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import assert_one_error_line, run_commands

from sskt_tf import config as config_lib
from sskt_tf import data as data_lib
from sskt_tf import export as export_lib
from sskt_tf import train
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_lib.define_flags()
FLAGS = flags.FLAGS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short training run on synthetic data with --export (no source: export sees the target only)."""
    out = tmp_path_factory.mktemp("export") / "run"
    args = [
        "--flagfile=flags/smoke.cfg", "--sources=", "--epochs=1", "--steps_per_epoch=3", "--lr=0.01",
        "--export", f"--output_dir={out}", "--verbose=0",
    ]
    cwd = os.getcwd()
    os.chdir(ROOT)
    FLAGS.unparse_flags()
    try:
        FLAGS(["sskt_tf.train", *args])
        train.main(["sskt_tf.train"])
    finally:
        FLAGS.unparse_flags()
        os.chdir(cwd)
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
        os.makedirs(tmp_path / split / "a")
        tf.io.write_file(str(tmp_path / split / "a" / "x.png"), tf.io.encode_png(image))
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


def _tflite_outputs(path, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter warns that LiteRT's ai_edge_litert replaces it.
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    return runner(images=images)


def test_tflite_float_and_dynamic_int8_match_keras(run, keras_model, tmp_path):
    trained = export_lib.load_trained(run)
    images = random_images((3, 32, 32, 3), seed=4)
    logits = keras_model(images.astype(np.float32), training=False).numpy()
    float_path = export_lib.export_tflite(trained, tmp_path / "m.tflite")
    out = _tflite_outputs(float_path, images)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(logits).numpy(), atol=1e-5)
    assert (tmp_path / "m.labels.txt").read_text().split() == list(trained.class_names)
    int8_path = export_lib.export_tflite(trained, tmp_path / "q.tflite", quantize="dynamic_int8")
    assert os.path.getsize(int8_path) < 0.5 * os.path.getsize(float_path)  # int8 weights, not float32.
    q = _tflite_outputs(int8_path, images)["logits"]
    np.testing.assert_allclose(q, logits, atol=0.05 * np.abs(logits).max())
    assert not np.allclose(q, logits, rtol=1e-6, atol=1e-6)  # It is quantized.


def _linear_model(num_classes, size=(8, 8)):
    """Images -> mean colour -> Dense: logits are a known linear function of the mean colour."""
    inputs = keras.Input((*size, 3))
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    kernel = np.linspace(-0.02, 0.02, 3 * num_classes).reshape(3, num_classes).astype(np.float32)
    dense.set_weights([kernel, np.linspace(-1, 1, num_classes).astype(np.float32)])
    return model, kernel, np.linspace(-1, 1, num_classes)


def _fake_run(directory, model, class_names, target_loss="ce"):
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "target.keras"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"dataset": "synthetic", "target_loss": target_loss}, f)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"class_names": list(class_names), "image_size": list(model.input_shape[1:3])}, f)
    return directory


def test_multi_label_model_exports_per_label_sigmoids(tmp_path):
    model, kernel, bias = _linear_model(4)
    run_dir = _fake_run(tmp_path / "ml", model, ["cat", "dog", "grass", "sky"], target_loss="bce")
    assert export_lib.load_trained(run_dir).multi_label  # From config.json's target_loss.
    path = export_lib.export(str(run_dir), top_k=2)
    assert path == str(run_dir / "saved_model")
    images = random_images((3, 16, 16, 3), seed=5)  # Any size: the mean colour survives the resize closely.
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    resized = tf.clip_by_value(tf.round(tf.image.resize(tf.cast(images, tf.float32), (8, 8))), 0, 255).numpy()
    logits = resized.mean(axis=(1, 2)) @ kernel + bias  # Independent of Keras.
    expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected.sum(axis=1), 1.0)  # Per-label sigmoids, not one softmax.
    np.testing.assert_array_equal(out["top_k_classes"].numpy(), np.argsort(-expected, axis=1)[:, :2])  # top_k=2
    # A single-label export of the same model is a softmax.
    path = export_lib.export(str(run_dir), str(tmp_path / "single"), multi_label=False)
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-5, atol=1e-6)


def test_an_earlier_export_is_replaced_with_overwrite_only_and_other_directories_never(tmp_path):
    model, _, _ = _linear_model(3)
    run_dir = _fake_run(tmp_path / "r", model, ["a", "b", "c"])
    out = tmp_path / "sm"
    export_lib.export(str(run_dir), str(out))
    _fake_run(run_dir, _linear_model(2)[0], ["x", "y"])
    with pytest.raises(UserError, match=f"^--output={out} holds an earlier export \\(a SavedModel\\); pass --overwrite"):
        export_lib.export(str(run_dir), str(out))
    assert (out / "assets.extra" / "class_names.txt").read_text() == "a\nb\nc\n"  # Untouched.
    export_lib.export(str(run_dir), str(out), overwrite=True)
    assert (out / "assets.extra" / "class_names.txt").read_text() == "x\ny\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sm.")]  # No staging left behind.
    # TFLite: the file and its labels file are an export too.
    tflite = tmp_path / "m.tflite"
    export_lib.export(str(run_dir), str(tflite), fmt="tflite")
    before = tflite.read_bytes()
    with pytest.raises(UserError, match=f"^--output={tflite}: {tflite} and {tmp_path / 'm.labels.txt'} already exist; pass --overwrite"):
        export_lib.export(str(run_dir), str(tflite), fmt="tflite", quantize="dynamic_int8")
    assert tflite.read_bytes() == before
    export_lib.export(str(run_dir), str(tflite), fmt="tflite", quantize="dynamic_int8", overwrite=True)
    assert tflite.read_bytes() != before
    (tmp_path / "lone.labels.txt").write_text("mine\n")
    with pytest.raises(UserError, match="lone.labels.txt already exists; pass --overwrite to replace it"):
        export_lib.export(str(run_dir), str(tmp_path / "lone.tflite"), fmt="tflite")
    assert not (tmp_path / "lone.tflite").exists()
    # A .tflite name with the SavedModel format would be a directory named like a file.
    with pytest.raises(UserError, match=r"names a .tflite file, but --format=saved_model writes a directory; pass --format=tflite"):
        export_lib.export(str(run_dir), str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="non-empty directory that holds no SavedModel"):
            export_lib.export(str(run_dir), str(tmp_path / "notes"), overwrite=overwrite)
    assert os.listdir(tmp_path / "notes") == ["todo.txt"] and (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'} is a file; pass a directory"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file"), overwrite=True)
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'}/sm: cannot create the SavedModel directory there, {tmp_path / 'a_file'} is a file"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file" / "sm"))
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'}/m.tflite: cannot write the TFLite export there"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file" / "m.tflite"), fmt="tflite")
    assert (tmp_path / "a_file").read_text() == "x"


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
    os.chdir(ROOT)  # Put back by conftest.
    FLAGS.unparse_flags()
    FLAGS(["sskt_tf.train", *args])
    train.main(["sskt_tf.train"])
    assert os.path.getmtime(run / "saved_model" / "saved_model.pb") > before
    assert not any((run / name).exists() for name in ("model.tflite", "model.labels.txt", "evaluation"))
    # The export is the new target: equal outputs on the same images.
    images = random_images((2, 32, 32, 3), seed=7)
    served = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"](images=tf.constant(images))
    target = keras.saving.load_model(run / "target.keras")
    np.testing.assert_allclose(served["probabilities"].numpy(), keras_probabilities(target, images), rtol=1e-5, atol=1e-6)


def _cli_errors(workdir, stand_ins, items):
    """The export command's error paths, all at once in the background lane."""
    run_dir = _fake_run(workdir / "r", _linear_model(3)[0], ["a", "b", "c"])
    saved = workdir / "saved"
    export_lib.export(str(run_dir), str(saved))
    (workdir / "a_file").write_text("x")
    command = [sys.executable, "-m", "sskt_tf.export"]
    commands = {
        "no --model": [*command, f"--output={workdir / 'x'}"],
        "earlier export": [*command, f"--model={run_dir}", f"--output={saved}"],
        "output is a file": [*command, f"--model={run_dir}", f"--output={workdir / 'a_file'}", "--overwrite"],
        "unknown flag": [*command, f"--model={run_dir}", "--outptu=x"],
        "missing flagfile": [*command, f"--flagfile={workdir / 'none.cfg'}"],
    }
    return lambda: (workdir, dict(zip(commands, run_commands(list(commands.values())))))


@pytest.mark.background(job=_cli_errors)
def test_cli_errors_are_one_line_with_exit_status_2(background):
    workdir, results = background.result()
    assert_one_error_line(results["no --model"], "--model is required")
    assert_one_error_line(results["earlier export"], f"--output={workdir / 'saved'} holds an earlier export", "--overwrite")
    assert_one_error_line(results["output is a file"], f"--output={workdir / 'a_file'} is a file")
    assert_one_error_line(results["unknown flag"], "unknown flag --outptu", "did you mean --output?")
    assert_one_error_line(results["missing flagfile"], f"--flagfile={workdir / 'none.cfg'}: no such file or directory")
    assert (workdir / "a_file").read_text() == "x" and not (workdir / "x").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "/nowhere/run"}, "--model=/nowhere/run: no such file or directory"),
        ({"model": "RUN", "fmt": "saved_model", "quantize": "dynamic_int8"}, "--quantize=dynamic_int8 applies to --format=tflite only"),
        ({"model": "RUN", "fmt": "tflite", "output": "x.bin"}, "must be a file ending in .tflite"),
        ({"model": "RUN", "top_k": 0}, "--top_k must be a positive integer"),
        ({"model": "SAVED"}, "is an exported SavedModel; this command needs the Keras model"),
    ],
)
def test_bad_input_raises_user_errors(kwargs, message, tmp_path):
    run_dir = _fake_run(tmp_path / "r", _linear_model(3)[0], ["a", "b", "c"])
    saved = tmp_path / "saved"
    if kwargs["model"] == "SAVED":
        export_lib.export(str(run_dir), str(saved))
    kwargs["model"] = {"RUN": str(run_dir), "SAVED": str(saved)}.get(kwargs["model"], kwargs["model"])
    with pytest.raises(UserError, match=message.replace(".", "\\.")):
        export_lib.export(**kwargs)


def test_a_classifier_that_ends_in_a_softmax_is_scored_by_its_own_probabilities(tmp_path, capsys):
    # evaluate, predict and export apply their own softmax: a model's final softmax must not be applied twice.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.bias.assign(np.array([2.0, 0.0, -1.0], np.float32))
    path = str(tmp_path / "softmax_classifier.keras")
    model.save(path)
    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    trained = export_lib.load_trained(path)
    served = export_lib.probabilities(trained.model(images), trained.multi_label).numpy()
    np.testing.assert_allclose(served, model(images).numpy(), rtol=1e-5, atol=1e-6)
    assert "using the pre-softmax logits" in capsys.readouterr().out and not trained.multi_label
    # A sigmoid-ended classifier: its logits, scored per label.
    sig = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(x))
    sig.save(tmp_path / "sigmoid.keras")
    trained = export_lib.load_trained(str(tmp_path / "sigmoid.keras"))
    assert trained.multi_label
    np.testing.assert_allclose(
        export_lib.probabilities(trained.model(images), True).numpy(), sig(images).numpy(), rtol=1e-5, atol=1e-6
    )
