"""Tests of sskt_tf.evaluation on a model whose every prediction is known by construction.

The model classifies an image by the nearest of six class colours (a linear function of the mean
colour, `colour_runs`), and the test images are plain colours, three of them deliberately of another
class's colour, so the confusion matrix, precision and recall below are worked out by hand.
"""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from colour_runs import EVALUATION_CLASSES as CLASSES
from colour_runs import EVALUATION_COLOURS as COLOURS
from colour_runs import SCALE, TEST_SET, image_colours
from colour_runs import evaluation_run as make_run_dir

from sskt_tf import evaluation
from sskt_tf.errors import UserError

CONFUSION = [  # rows: true class, columns: predicted class, in CLASSES order.
    [3, 0, 0, 0, 0, 0],
    [0, 4, 1, 0, 0, 0],
    [0, 0, 3, 0, 0, 0],
    [0, 0, 0, 3, 0, 0],
    [1, 0, 0, 0, 2, 0],
    [0, 1, 0, 0, 0, 2],
]
PRECISION = [3 / 4, 4 / 5, 3 / 4, 1, 1, 1]
RECALL = [1, 4 / 5, 1, 1, 2 / 3, 2 / 3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("evaluate"))


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_metrics_table_and_confusion_matrix_of_a_known_model(run_dir, capsys):
    results = evaluation.run_evaluation(str(run_dir))  # Dataset and image size from the run.
    out = run_dir / "evaluation" / evaluation._slug(json.loads((run_dir / "config.json").read_text())["dataset"])
    labels = np.array([CLASSES.index(label) for label, _ in TEST_SET])
    distances = ((image_colours()[:, None, :] - COLOURS[None]) ** 2).sum(-1)
    log_probs = -distances / (2 * SCALE)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    assert results["test"]["accuracy"] == pytest.approx(17 / 20)
    assert results["test"]["top5_accuracy"] == pytest.approx(19 / 20)
    assert results["test"]["loss"] == pytest.approx(-log_probs[np.arange(20), labels].mean(), rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["test"] == results["test"]

    assert read_csv(out / "confusion_matrix.csv") == [["true \\ predicted", *CLASSES]] + [
        [name, *map(str, row)] for name, row in zip(CLASSES, CONFUSION)
    ]
    rows = read_csv(out / "per_class.csv")
    assert rows[0] == ["class", "support", "predicted", "precision", "recall", "f1"]
    for row, name, p, r, column in zip(rows[1:], CLASSES, PRECISION, RECALL, np.array(CONFUSION).T):
        assert row[0] == name and int(row[1]) == sum(CONFUSION[CLASSES.index(name)]) and int(row[2]) == column.sum()
        np.testing.assert_allclose([float(v) for v in row[3:]], [p, r, 2 * p * r / (p + r)], atol=1e-6)

    png = tf.io.decode_png(tf.io.read_file(str(out / "confusion_matrix.png")))
    assert png.shape[0] >= 500 and png.shape[1] >= 500 and png.shape[2] in (3, 4)
    assert results["confusion_matrix_png"] == str(out / "confusion_matrix.png")
    printed = capsys.readouterr().out
    assert "accuracy=0.8500" in printed and "top5_accuracy=0.9500" in printed
    assert "truck" in printed and "0.6667" in printed  # The table: truck's recall.
    # Before it, the progress bar over the test images (Keras' Progbar: ends at 20/20, time per image).
    assert printed.index("20/20") < printed.index("accuracy=0.8500") and "s/image" in printed


def brute_force_average_precision(targets, scores):
    """Mean, over the positives, of the precision among the images scored at least as high (no ties)."""
    order = np.argsort(-scores)
    hits = np.asarray(targets)[order]
    ranks = np.nonzero(hits)[0] + 1
    return np.mean(np.arange(1, len(ranks) + 1) / ranks)


def test_multi_label_scores_mean_average_precision(run_dir, tmp_path):
    results = evaluation.run_evaluation(str(run_dir), output_dir=str(tmp_path), multi_label=True)
    distances = ((image_colours()[:, None, :] - COLOURS[None]) ** 2).sum(-1)
    scores = 1 / (1 + np.exp(-(-distances / (2 * SCALE) + (image_colours() ** 2).sum(1, keepdims=True) / (2 * SCALE))))
    targets = np.eye(6)[[CLASSES.index(label) for label, _ in TEST_SET]]
    expected = [brute_force_average_precision(targets[:, c], scores[:, c]) for c in range(6)]
    assert results["test"]["mAP"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert results["test"]["mAP"] < 1  # The three look-alikes cost precision.
    # The reference's per-image AP: one label per image, so each image's AP is 1 / (rank of its class).
    ranks = (scores > scores[targets == 1][:, None]).sum(axis=1) + 1
    assert results["test"]["map_per_image_reference"] == pytest.approx(np.mean(1.0 / ranks), rel=1e-6)
    rows = read_csv(tmp_path / "per_class.csv")
    assert rows[0] == ["class", "support", "average_precision"]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], expected, atol=1e-6)
    assert not (tmp_path / "confusion_matrix.png").exists()  # No confusion matrix for multi-label.


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("synthetic:3", "--dataset=synthetic:3 has 3 classes but the model has 6 outputs"),
        ("synthetic:6", "--dataset=synthetic:6 names its classes"),
    ],
)
def test_a_dataset_of_another_task_is_refused(run_dir, tmp_path, dataset, message):
    with pytest.raises(UserError, match=message):
        evaluation.run_evaluation(str(run_dir), dataset, output_dir=str(tmp_path))
    # The default output directory, <run dir>/evaluation/<dataset>, is not left behind empty.
    with pytest.raises(UserError, match=message):
        evaluation.run_evaluation(str(run_dir), dataset)
    assert not (run_dir / "evaluation" / evaluation._slug(dataset)).exists()


def test_a_run_trained_with_skip_bad_images_is_evaluated_without_them(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    config = json.loads((run / "config.json").read_text())
    data = config["dataset"][len("folder:"):]
    bad_test, bad_train = os.path.join(data, "test", "cat", "zz_bad.png"), os.path.join(data, "train", "dog", "zz_bad.png")
    for path in (bad_test, bad_train):
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    out = run / "evaluation" / evaluation._slug(config["dataset"])
    # A run trained without --skip_bad_images: refused, with this command's own flag as the fix, nothing written.
    with pytest.raises(UserError, match=r"2 of 42 image files cannot be decoded") as refused:
        evaluation.run_evaluation(str(run))
    message = str(refused.value)
    assert "pass --skip_bad_images to go on without them" in message and "metrics.json of an evaluation" in message
    assert not (run / "evaluation").exists()
    # The run's own --skip_bad_images (config.json) is the default: the bad test image is left out and listed.
    (run / "config.json").write_text(json.dumps({**config, "skip_bad_images": True}))
    results = evaluation.run_evaluation(str(run))
    assert results["skipped_images"] == [bad_test] and results["num_test"] == 20
    assert results["test"]["accuracy"] == pytest.approx(17 / 20)  # The 20 good images, as without the bad ones.
    assert json.loads((out / "metrics.json").read_text())["skipped_images"] == [bad_test]
    printed = capsys.readouterr().out
    assert "leaving out 2 image files that cannot be decoded" in printed and "20 test images, 1 left out" in printed
    # --skip_bad_images=false overrides the run's setting; a .keras file outside a run does not skip.
    with pytest.raises(UserError, match="cannot be decoded"):
        evaluation.run_evaluation(str(run), output_dir=str(tmp_path / "no"), skip_bad_images=False)
    bare = tmp_path / "bare.keras"
    (run / "target.keras").rename(bare)
    with pytest.raises(UserError, match="cannot be decoded"):
        evaluation.run_evaluation(str(bare), config["dataset"], output_dir=str(tmp_path / "no"), multi_label=False)
    assert not (tmp_path / "no").exists()


def test_an_unusable_output_dir_is_refused_before_the_test_set_is_read(run_dir, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=f"^--output_dir={tmp_path / 'a_file'} is a file, not a directory"):
        evaluation.run_evaluation(str(run_dir), "folder:/no/such/dir", output_dir=str(tmp_path / "a_file"))
    with pytest.raises(UserError, match=f"^--output_dir={tmp_path / 'a_file'}/eval: cannot create the directory there"):
        evaluation.run_evaluation(str(run_dir), output_dir=str(tmp_path / "a_file" / "eval"))
