"""Tests of sskt_tf.serving.trained: what `load_trained` reads from a run or a `.keras` file, and what it refuses."""

import os
import zipfile

import keras
import numpy as np
import pytest
from fake_run import fake_run, linear_model

from sskt_tf.errors import UserError
from sskt_tf.serving.saved_model import export_saved_model
from sskt_tf.serving.trained import load_trained


def test_a_run_directory_and_its_checkpoints_read_the_run(tmp_path):
    model, _, _ = linear_model(3)
    run = fake_run(tmp_path / "run", model, ["a", "b", "c"], target_loss="bce")
    os.makedirs(run / "checkpoints")
    model.save(run / "checkpoints" / "best.keras")
    for path in (run, run / "target.keras", run / "checkpoints" / "best.keras"):
        trained = load_trained(str(path))
        assert trained.class_names == ("a", "b", "c") and trained.image_size == (8, 8) and trained.num_classes == 3
        assert trained.multi_label and trained.run_dir == str(run) and trained.config["target_loss"] == "bce"
    assert not load_trained(str(run), multi_label=False).multi_label
    # A lone file: class_0, ... and its fixed input size.
    model.save(tmp_path / "lone.keras")
    lone = load_trained(str(tmp_path / "lone.keras"))
    assert lone.class_names == ("class_0", "class_1", "class_2") and lone.run_dir is None and lone.config == {}


def test_refusals_name_the_flag_and_the_fix(tmp_path):
    model, _, _ = linear_model(3)
    run = fake_run(tmp_path / "run", model, ["a", "b", "c"])
    saved = export_saved_model(load_trained(str(run)), tmp_path / "saved")
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    model.save(tmp_path / "unfinished" / "checkpoints" / "last.keras")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.keras").write_text("not a zip")
    (tmp_path / "model.tflite").write_bytes(b"TFL3")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, but not written by Keras")
    any_size = keras.Model(inputs := keras.Input((None, None, 3)), keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    any_size.save(tmp_path / "any_size.keras")
    wrong = fake_run(tmp_path / "wrong", model, ["a", "b"])
    cases = {
        str(tmp_path / "nowhere"): "--model=.*nowhere: no such file or directory",
        saved: "is an exported SavedModel; this command needs the Keras model",
        str(tmp_path / "unfinished"): r"has no target.keras \(the run has not finished: checkpoints/last.keras",
        str(tmp_path / "notes.txt"): "notes.txt is not a .keras file",
        # Keras' own words for a file that is no zip are "File not found".
        str(tmp_path / "broken.keras"): r"broken.keras is not a .keras file \(a .keras file is a zip archive",
        str(tmp_path / "other.keras"): "could not load .*other.keras .*saved by Keras 3",
        str(tmp_path / "model.tflite"): r"model.tflite is a TFLite model, which this command does not read",
        str(tmp_path / "any_size.keras"): "accepts any image size and has no results.json beside it",
        str(wrong): "has 3 outputs but .*results.json names 2 classes",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_trained(path)
    with pytest.raises(UserError, match="^--source=.*nowhere"):
        load_trained(str(tmp_path / "nowhere"), flag="--source")


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
    trained = load_trained(path)
    served = trained.probabilities(trained.model(images)).numpy()
    np.testing.assert_allclose(served, model(images).numpy(), rtol=1e-5, atol=1e-6)
    assert "using the pre-softmax logits" in capsys.readouterr().out and not trained.multi_label
    # A sigmoid-ended classifier: its logits, scored per label.
    sig = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(x))
    sig.save(tmp_path / "sigmoid.keras")
    trained = load_trained(str(tmp_path / "sigmoid.keras"))
    assert trained.multi_label
    np.testing.assert_allclose(trained.probabilities(trained.model(images)).numpy(), sig(images).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_directory_named_sskt_tf_in_the_working_directory_does_not_hide_the_saved_classes(tmp_path):
    """From the parent of a clone (a directory `sskt_tf` without `__init__.py`), `import sskt_tf` is a
    namespace package whose `__init__` never runs; a target's classes must load all the same."""
    import subprocess
    import sys

    from sskt_tf import methods
    from sskt_tf.config import Config

    model = methods.build_model(Config(method="scratch", epochs=1), (32, 32), 10)
    model.target_model().save(tmp_path / "target.keras")
    (tmp_path / "sskt_tf").mkdir()
    script = "import sys; from sskt_tf.serving.trained import load_trained; print(len(load_trained(sys.argv[1]).class_names))"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "target.keras")], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "10", proc.stderr[-2000:]
