"""Tests of sskt_tf.train_lib's pieces, called directly: the notes and messages a run prints, the
epochs it evaluates, the order of its callbacks.

The whole run (`train_lib.run`, through the training command) is tested in test_train.py; its
resumption after SIGKILL and Ctrl-C, and a non-finite loss met in training, in test_resilience.py."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from sskt_tf import callbacks as callbacks_lib
from sskt_tf import train_lib
from sskt_tf.config import Config


def test_milestones_that_do_nothing_are_said(capsys):
    train_lib._note_unreached_milestones(Config(epochs=100, lr=0.1, lr_gamma=0.2, lr_milestones=(60, 120, 160)))
    line = capsys.readouterr().out.strip()
    assert line.startswith("--lr_milestones=60,120,160: 120, 160 are at or after --epochs=100")
    assert "ends at 0.02 (not 0.0008)" in line
    train_lib._note_unreached_milestones(Config(epochs=200))  # The paper's recipe: every milestone is reached.
    train_lib._note_unreached_milestones(Config(epochs=2, lr_schedule="cosine"))  # The recipe's, from a flagfile.
    assert capsys.readouterr().out == ""
    train_lib._note_unreached_milestones(Config(epochs=2, lr_schedule="cosine", lr_milestones=(1, 2)))
    assert capsys.readouterr().out.strip() == "--lr_milestones=1,2 do not apply to --lr_schedule=cosine; only multistep uses them."


def test_validation_epochs_are_every_nth_and_the_last():
    assert train_lib.validation_epochs(5, 2) == [2, 4, 5]
    assert train_lib.validation_epochs(3, 1) == [1, 2, 3]
    assert train_lib.validation_epochs(4, 10) == [4]


def test_callbacks_come_in_the_order_their_epoch_end_writes_need(tmp_path):
    config = Config(dataset="synthetic", output_dir=str(tmp_path))
    throughput, tracker = callbacks_lib.Throughput(8), callbacks_lib.EpochTracker()
    checkpoint = callbacks_lib.TargetCheckpoint(str(tmp_path / "checkpoints"))
    kinds = lambda callbacks: [type(c) for c in callbacks]
    single = train_lib.build_callbacks(config, throughput, checkpoint, 10, 0, tracker)
    assert single[0] is throughput and single[1] is tracker and single[-1] is checkpoint
    # The learning rate is in the logs before the callbacks that write them.
    assert kinds(single[2:-1]) == [
        callbacks_lib.LearningRateLog, callbacks_lib.StopOnNonFiniteLoss, callbacks_lib.MetricsLog, callbacks_lib.EpochSummaries,
    ]
    # Multi-label: the exact mAP is in the logs before anything logs them or picks the best epoch.
    multi = train_lib.build_callbacks(config, throughput, checkpoint, 10, 0, tracker, multi_label_validation=[])
    assert kinds(multi[3:-1]) == [
        callbacks_lib.MultiLabelEvaluation, callbacks_lib.StopOnNonFiniteLoss, callbacks_lib.MetricsLog, callbacks_lib.EpochSummaries,
    ]


def test_stop_and_interrupt_messages_say_only_what_the_facts_show(tmp_path, capsys):
    config = Config(dataset="synthetic", lr=1e20, output_dir=str(tmp_path), lr_schedule="constant")
    checkpoint = callbacks_lib.TargetCheckpoint(str(tmp_path / "checkpoints"))
    # float32 gives back 1e20 as 1.00000002e20: that is no growth, and no --lr_gamma is to blame.
    stop = callbacks_lib.NonFiniteLoss(0, 5, 5, {"loss": float("nan")}, learning_rate=float(np.float32(1e20)))
    message = str(train_lib._stopped(config, stop, None, checkpoint))
    assert "had grown" not in message and "--lr_gamma" not in message
    assert "finite for 5 steps before, at learning rates up to 1e+20: either training diverged" in message
    assert "No epoch had finished, so nothing was saved" in message
    # Ctrl-C between two epochs: the epoch that ended is named as done, not as interrupted.
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "latest.json").write_text(json.dumps({"epoch": 3, "weights": "epoch_3.weights.h5"}))
    tracker = callbacks_lib.EpochTracker()
    tracker.on_epoch_begin(2)
    tracker.on_epoch_end(2)
    with pytest.raises(SystemExit) as exit_info:
        train_lib._exit_interrupted(config, tracker)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted after epoch 3; the same command resumes after epoch 3"
    assert capsys.readouterr().out == ""  # No progress bar was drawn in that epoch: no line to end.
    tracker.on_epoch_begin(3)
    tracker.on_train_batch_end(0)
    with pytest.raises(SystemExit):
        train_lib._exit_interrupted(config, tracker)
    printed = capsys.readouterr()
    assert printed.err.strip() == "interrupted in epoch 4; the same command resumes after epoch 3"
    # The progress bar's line (stdout, redrawn in place) is ended first: the message starts its own line.
    assert printed.out == "\n"
    with pytest.raises(SystemExit):
        train_lib._exit_interrupted(dataclasses.replace(config, verbose=2), tracker)  # No bar with --verbose=2.
    assert capsys.readouterr().out == ""


def test_the_logs_carry_each_steps_learning_rate_and_the_images_per_second(capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    # Steps 0, 1, 2 at 0.1, step 3 at 0.01: epoch 2's first step still runs at 0.1.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    steps = []
    # A clock of 0.5 s per reading, so the figures are exact: step k of an epoch is read k + 1 readings
    # after the epoch's start, so k * 4 images / (0.5 k s) = 8 images/s.
    ticks = iter(np.arange(1000) * 0.5)
    throughput = callbacks_lib.Throughput(4, clock=lambda: float(next(ticks)))
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(dict(logs)))
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    history = model.fit(
        x, y, batch_size=4, epochs=2, callbacks=[throughput, callbacks_lib.LearningRateLog(), recorder], verbose=1
    )
    assert [s["lr"] for s in steps] == [0.1, 0.1, 0.1, 0.01]  # Shortest decimals of the float32 rates.
    assert history.history["lr"] == [0.1, 0.01]  # Each epoch's last step.
    assert [s["images_per_second"] for s in steps] == [8.0, 8.0, 8.0, 8.0]
    assert throughput.history() == {"seconds": [1.5, 1.5], "steps": [2, 2]}  # 2 steps, then the epoch's end.
    assert history.history["images_per_second"] == pytest.approx([8 / 1.5, 8 / 1.5])  # 8 images in 1.5 s.
    assert throughput.images_per_second() == pytest.approx(16 / 3.0)
    # The progress bar shows both (Keras' ProgbarLogger reads the same logs, after the callbacks above).
    bar = capsys.readouterr().out
    assert " - images_per_second: " in bar and " - lr: 0.0100" in bar
