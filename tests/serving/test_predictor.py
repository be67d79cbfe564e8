"""Tests of sskt_tf.serving.predictor: same answers from a run directory, a .keras file and a SavedModel; clear errors."""

import re

import numpy as np
import pytest
import tensorflow as tf
from colour_runs import PREDICTION_CLASSES as CLASSES
from colour_runs import PREDICTION_COLOURS as COLOURS
from colour_runs import SCALE, prediction_files

from sskt_tf.errors import UserError
from sskt_tf.serving import predictor


def expected_probabilities(colour):
    """Softmax of -(squared distance to each class colour) / (2 * SCALE): what the colour model computes."""
    logits = -((np.asarray(colour, np.float64) - COLOURS) ** 2).sum(-1) / (2 * SCALE)
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run directory with the colour model, its SavedModel, and three images of other sizes."""
    return prediction_files(tmp_path_factory.mktemp("predict"))


@pytest.mark.parametrize("which", ["run", "keras", "saved_model"])
def test_the_three_kinds_of_model_give_the_expected_top5(files, which):
    root = files["root"]
    paths = [str(root / "red.png"), str(root / "grey.png"), str(root / "blue.jpg")]
    results = predictor.predict(files[which], paths, k=5)
    assert [path for path, _ in results] == paths
    for (_, best), colour in zip(results[:2], [(205, 55, 25), (125, 130, 128)]):  # PNG: exact colours.
        probs = expected_probabilities(colour)
        order = np.argsort(-probs)[:5]
        assert [name for name, _ in best] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([score for _, score in best], probs[order], rtol=1e-5)
    assert results[0][1][0][0] == "cat" and results[1][1][0][0] == "zebra" and results[2][1][0][0] == "frog"
    decoded = tf.io.decode_jpeg(tf.io.read_file(paths[2])).numpy().reshape(-1, 3).mean(0)  # JPEG shifts colours a little.
    np.testing.assert_allclose(results[2][1][0][1], expected_probabilities(decoded).max(), rtol=1e-3)


def test_files_are_scored_in_batches_with_a_progress_bar(files, capsys):
    root = files["root"]
    paths = [str(root / "red.png"), str(root / "grey.png"), str(root / "blue.jpg")]
    assert predictor.predict(files["run"], paths, k=3, batch_size=2, verbose=1) == predictor.predict(files["run"], paths, k=3)
    printed = capsys.readouterr().out
    assert printed.count("3/3") == 1 and "s/image" in printed  # The second call shows none: 3 files are one batch.


def test_output_format(files):
    text = predictor.format_predictions(predictor.predict(files["run"], [str(files["root"] / "red.png")], k=2))
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
        predictor.predict(files["run"], [str(files["root"] / "red.png"), str(bad)])


def _write(path, data):
    path.write_bytes(data)
    return path


def test_a_tflite_model_is_refused_naming_the_three_kinds_predict_reads(files, tmp_path):
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"TFL3")
    allowed = "pass a run directory (with target.keras), a .keras file or a SavedModel written by sskt_tf.export."
    with pytest.raises(UserError, match=f"is a TFLite model, which this command does not read.*{re.escape(allowed)}$"):
        predictor.predict(str(tflite), [str(files["root"] / "red.png")])
