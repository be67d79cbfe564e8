"""Tests of sskt_tf.predict: same answers from a run directory, a .keras file and a SavedModel; clear errors."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_one_error_line, run_commands, tf_native_log_line

from sskt_tf import export as export_lib
from sskt_tf import predict
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog", "frog", "horse", "ship", "truck", "zebra"]
COLOURS = np.array(
    [[200, 60, 20], [40, 200, 30], [10, 40, 230], [120, 80, 40], [20, 20, 60], [240, 240, 10], [128, 128, 128]], np.float64
)
SCALE = 20000.0


def expected_probabilities(colour):
    """Softmax of -(squared distance to each class colour) / (2 * SCALE): what the colour model computes."""
    logits = -((np.asarray(colour, np.float64) - COLOURS) ** 2).sum(-1) / (2 * SCALE)
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run directory with the colour model, its SavedModel, and three images of other sizes."""
    root = tmp_path_factory.mktemp("predict")
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(len(CLASSES))
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([(COLOURS.T / SCALE).astype(np.float32), (-(COLOURS**2).sum(1) / (2 * SCALE)).astype(np.float32)])
    run = root / "run"
    run.mkdir()
    model.save(run / "target.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "folder:/x", "target_loss": "ce"}))
    (run / "results.json").write_text(json.dumps({"class_names": CLASSES, "image_size": [8, 8]}))
    saved = export_lib.export(str(run), str(root / "saved_model"))
    images = {
        "red.png": tf.io.encode_png(np.full((20, 30, 3), (205, 55, 25), np.uint8)),
        "grey.png": tf.io.encode_png(np.full((5, 7, 3), (125, 130, 128), np.uint8)),
        "blue.jpg": tf.io.encode_jpeg(np.full((16, 16, 3), (10, 40, 230), np.uint8), quality=100),
    }
    for name, data in images.items():
        tf.io.write_file(str(root / name), data)
    return {"run": str(run), "keras": str(run / "target.keras"), "saved_model": saved, "root": root}


@pytest.mark.parametrize("which", ["run", "keras", "saved_model"])
def test_the_three_kinds_of_model_give_the_expected_top5(files, which):
    root = files["root"]
    paths = [str(root / "red.png"), str(root / "grey.png"), str(root / "blue.jpg")]
    results = predict.predict(files[which], paths, k=5)
    assert [path for path, _ in results] == paths
    for (_, best), colour in zip(results[:2], [(205, 55, 25), (125, 130, 128)]):  # PNG: exact colours.
        probs = expected_probabilities(colour)
        order = np.argsort(-probs)[:5]
        assert [name for name, _ in best] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([score for _, score in best], probs[order], rtol=1e-5)
    assert results[0][1][0][0] == "cat" and results[1][1][0][0] == "zebra" and results[2][1][0][0] == "frog"
    decoded = tf.io.decode_jpeg(tf.io.read_file(paths[2])).numpy().reshape(-1, 3).mean(0)  # JPEG shifts colours a little.
    np.testing.assert_allclose(results[2][1][0][1], expected_probabilities(decoded).max(), rtol=1e-3)


def test_output_format(files):
    text = predict.format_predictions(predict.predict(files["run"], [str(files["root"] / "red.png")], k=2))
    lines = text.splitlines()
    assert lines[0] == str(files["root"] / "red.png")
    assert lines[1].split()[:2] == ["1.", "cat"] and lines[2].split()[:2] == ["2.", "horse"] and len(lines) == 3
    assert float(lines[1].split()[2]) == pytest.approx(expected_probabilities((205, 55, 25))[0], abs=1e-4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.jpg", "missing.jpg: no such file"),
        (lambda d: d, ": is a directory"),
        (lambda d: _write(d / "empty.png", b""), "empty.png: not a readable image (empty file)"),
        (lambda d: _write(d / "notes.jpg", b"not an image at all"), "notes.jpg: not a readable image (Unknown image file format"),
        (lambda d: _write(d / "cut.png", tf.io.encode_png(np.zeros((9, 9, 3), np.uint8)).numpy()[:20]), "cut.png: not a readable image"),
    ],
)
def test_unreadable_files_name_the_path(files, tmp_path, make, message):
    bad = make(tmp_path)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path))}.*{re.escape(message)}"):
        predict.predict(files["run"], [str(files["root"] / "red.png"), str(bad)])


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.slow
def test_cli_prints_the_top5_and_fails_in_one_line(files, tmp_path):
    red = str(files["root"] / "red.png")
    # Both commands at once: each is mostly TensorFlow's import, on one core.
    good, bad = (
        subprocess.Popen(
            [sys.executable, "-m", "sskt_tf.predict", f"--model={files['saved_model']}", *paths],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for paths in ([red], [red, f"{tmp_path}/nope.jpg"])
    )
    stdout, stderr = good.communicate(timeout=300)
    assert good.returncode == 0, stderr[-3000:]
    assert stdout.splitlines()[0] == red and stdout.splitlines()[1].split()[1] == "cat"
    assert len(stdout.splitlines()) == 6
    stdout, stderr = bad.communicate(timeout=300)
    assert bad.returncode == 2 and stdout == ""
    assert_one_error_line((bad.returncode, stdout, [l for l in stderr.splitlines() if not tf_native_log_line(l)]), f"error: {tmp_path}/nope.jpg: no such file")


@pytest.mark.slow
def test_cli_flag_errors_are_one_line(files):
    command = [sys.executable, "-m", "sskt_tf.predict"]
    no_model, unknown = run_commands([[*command, str(files["root"] / "red.png")], [*command, f"--model={files['run']}", "--topk=3", "x.png"]])
    assert_one_error_line(no_model, "--model is required")
    assert_one_error_line(unknown, "unknown flag --topk", "did you mean --top_k?")
