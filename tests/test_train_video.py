"""A video run end to end (`train_lib` on clips), and what uses its target.

SSKT on synthetic motion clips (the class is the direction a square moves in; no single frame tells
it) trains through the training command, logs its auxiliary loss, and scores its test videos well
above chance. Its target then evaluates, exports (a uint8 clip signature) and predicts on a video
file consistently with an independent computation, and serves as the video KD teacher; DML trains
its peers on the same clips.
"""

import fcntl
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import metrics
from sskt_tf import data as data_lib
from sskt_tf.data import video
from sskt_tf.errors import UserError
from sskt_tf.evaluation import evaluate
from sskt_tf.serving.predictor import predict
from sskt_tf.serving.saved_model import export_saved_model
from sskt_tf.serving.trained import load_trained
from conftest import run_training

CLIP_LENGTH = 8
DATASET = "synthetic_video:2"  # Up or down: chance is 1/2.

pytestmark = pytest.mark.slow


def _args(out, *extra):
    return [
        f"--dataset={DATASET}",
        "--model=resnet10_3d",
        f"--clip_length={CLIP_LENGTH}",
        "--batch_size=16",
        "--eval_batch_size=64",
        "--lr=0.01",
        "--weight_decay=5e-4",
        "--lr_schedule=cosine",
        f"--output_dir={out}",
        "--noresume",
        "--verbose=0",
        *extra,
    ]


@pytest.fixture(scope="session")
def video_run(tmp_path_factory, stand_ins):
    """The run, trained once per test session: its tests may land on several xdist workers, which share
    the session's base temporary directory; the first trains it (under a lock), the others read it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-<n>/: this session's.
    out = root / "video_run" / "sskt"
    with open(root / "video_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "results.json").exists():
            source = stand_ins("motion_source", 10)
            # The centre crop only (--augment=none): the motion is learnt in a few dozen steps (5 epochs measured).
            run_training(_args(out, f"--sources={source}", "--alpha=0.1", "--epochs=8", "--augment=none", "--overwrite"))
    return out, json.loads((out / "results.json").read_text())


def test_sskt_on_clips_learns_the_motion_and_scores_clips_and_videos(video_run):
    out, results = video_run
    test = results["test"]
    # 32 test videos of two classes: chance is 0.5 (measured: 1.0 video, 0.93 clip accuracy).
    assert test["video_accuracy"] == test["accuracy"] >= 0.75 and test["clip_accuracy"] >= 0.65
    data = data_lib.load(DATASET, batch_size=16, eval_batch_size=64, clip_length=CLIP_LENGTH)
    lengths = [len(video.test_starts(n, CLIP_LENGTH)) for n in _test_lengths()]
    assert results["num_test"] == 32 and results["num_test_clips"] == sum(lengths) == data.test_videos.num_clips
    assert results["clip_length"] == CLIP_LENGTH and results["image_size"] == [32, 32]
    # The auxiliary loss of the source is logged every epoch, finite.
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("aux_loss_motion_source")
    assert len(rows) == 9 and all(math.isfinite(float(r.split(",")[column])) for r in rows[1:])
    # results.json's numbers are those of the saved target on every test clip, grouped by video.
    target = keras.saving.load_model(out / "target.keras")
    logits = target.predict(data.test_videos.clips, verbose=0)
    again = metrics.video_metrics(logits, data.test_videos.video_ids, data.test_videos.labels)
    for name in ("video_accuracy", "clip_accuracy", "loss"):
        assert again[name] == pytest.approx(test[name], rel=1e-5)


def _test_lengths():
    """Frames of each synthetic test video, regenerated as the dataset does (its seed)."""
    _, test, _ = video._synthetic(DATASET, 0)
    return test.num_frames


def test_the_export_takes_uint8_clips_and_scores_them_as_the_test_set(video_run, tmp_path):
    out, _ = video_run
    trained = load_trained(out)
    assert trained.clip_length == CLIP_LENGTH and trained.image_size == (32, 32)
    export_saved_model(trained, tmp_path / "saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["clips"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, CLIP_LENGTH, None, None, 3]
    # Clips of 48x64 frames: the export crops the centre 48x48 square and resizes it to 32 inside.
    clips = np.random.RandomState(0).randint(0, 256, (3, CLIP_LENGTH, 48, 64, 3)).astype(np.uint8)
    exported = serve(clips=tf.constant(clips))["probabilities"].numpy()
    square = clips[:, :, :, 8:56].astype(np.float32)
    resized = tf.image.resize(square.reshape(-1, 48, 48, 3), (32, 32), antialias=True).numpy()
    expected = tf.nn.softmax(trained.model(np.round(resized).reshape(3, CLIP_LENGTH, 32, 32, 3))).numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-5)


def test_predict_scores_a_video_file_by_the_mean_of_its_clips(video_run, tmp_path, capsys):
    import videos  # tests/videos.py

    from sskt_tf import video_io

    out, _ = video_run
    frames = np.random.RandomState(1).randint(0, 256, (17, 40, 40, 3)).astype(np.uint8)
    path = videos.write_video(str(tmp_path / "clip.avi"), frames)
    [(name, best)] = predict(str(out), [path], k=2)
    assert name == path and [c for c, _ in best] != [] and sum(s for _, s in best) == pytest.approx(1.0, abs=1e-5)
    # Independently: the decoded frames at the stored short side, windows 0 and 8 (frames 0-7, 8-15;
    # Hara's test leaves out a window of the last frame alone, 16), each the centre square resized,
    # softmax averaged.
    decoded = video_io.read_video(path, short_side=video_io.DEFAULT_SHORT_SIDE)
    assert len(decoded) == 17
    model = load_trained(out)
    windows = np.stack([decoded[0:8], decoded[8:16]])
    probs = tf.nn.softmax(model.model(video.centre_clips(windows, (32, 32)))).numpy().mean(axis=0)
    ranked = np.argsort(-probs)
    assert [c for c, _ in best] == [model.class_names[i] for i in ranked[:2]]
    np.testing.assert_allclose([s for _, s in best], probs[ranked[:2]], atol=1e-5)
    # A video shorter than a clip is scored, with a note on stderr (as training notes such videos).
    short = videos.write_video(str(tmp_path / "short.avi"), frames[:5])
    capsys.readouterr()
    [(_, scored)] = predict(str(out), [short], k=1)
    assert len(scored) == 1
    assert "has 5 frames, fewer than the model's clips of 8: its one clip repeats its frames" in capsys.readouterr().err


def test_evaluate_scores_every_clip_of_the_test_videos(video_run, tmp_path):
    out, results = video_run
    written = evaluate(load_trained(out), DATASET, output_dir=str(tmp_path / "evaluation"), verbose=False)
    assert written["num_test"] == 32
    for name in ("video_accuracy", "clip_accuracy"):
        assert written["test"][name] == pytest.approx(results["test"][name], rel=1e-6)
    matrix = np.loadtxt(tmp_path / "evaluation" / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    assert matrix.sum() == 32 and np.trace(matrix) / 32 == pytest.approx(results["test"]["video_accuracy"])


def test_kd_and_dml_train_on_clips(video_run, tmp_path):
    out, _ = video_run
    kd = run_training(_args(tmp_path / "kd", "--method=kd", f"--teacher={out / 'target.keras'}", "--epochs=1", "--steps_per_epoch=2"))
    assert kd["method"] == "kd" and kd["teacher"]["input_size"] == [32, 32] and math.isfinite(kd["test"]["video_accuracy"])
    header = (tmp_path / "kd" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "kd_loss" in header
    dml = run_training(_args(tmp_path / "dml", "--method=dml", "--sources=", "--epochs=1", "--steps_per_epoch=2"))
    assert len(dml["peers"]) == 2 and dml["test"] == dml["peers"][0]
    assert all({"video_accuracy", "clip_accuracy"} <= set(p) for p in dml["peers"])
    # An image network cannot be a video run's teacher: one line saying what is needed.
    with pytest.raises(UserError, match="on video data the teacher is a network of clips"):
        run_training(_args(tmp_path / "kd2", "--method=kd", "--teacher=mobilenet_v2:random:2", "--epochs=1"))
