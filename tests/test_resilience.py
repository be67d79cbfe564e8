"""Resumption after SIGKILL at several points of an epoch end (bit-identical with --deterministic),
Ctrl-C, best.keras across a resume, non-finite losses, resumption onto changed inputs.

The messages of a stopped or interrupted run, built from given facts, are tested in test_train_lib.py."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import sskt_tf  # noqa: F401  (registers the custom layers for loading)
from sskt_tf import callbacks as callbacks_lib
from sskt_tf import run_dir as run_dir_lib
from sskt_tf.errors import UserError
from conftest import ROOT, run_training

ARGS = [
    "--flagfile=flags/smoke.cfg",
    "--epochs=4",
    "--steps_per_epoch=6",
    "--batch_size=8",
    "--eval_batch_size=128",
    "--deterministic",
    "--nooverwrite",
    "--verbose=0",
]


@pytest.fixture
def args(stand_ins):
    """ARGS with smoke.cfg's MobileNetV2 source replaced by a tiny one of the same class count."""
    return [*ARGS, f"--sources={stand_ins('mobilenet_v2_random', 1000)}"]


def _command(args, out):
    return [sys.executable, "-m", "sskt_tf.train", *args, f"--output_dir={out}"]


# `python -c _SIGNAL_AT SIGNAL OP NAME N <training flags>`: the training command, which sends itself
# SIGNAL (KILL, INT) right after its N-th `os.OP` (replace, remove) of a file called NAME: between
# two given writes of an epoch end, where a timed kill could not aim.
_SIGNAL_AT = """
import os, signal, sys
sig, op, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real, seen = getattr(os, op), []
def hooked(*args, **kwargs):
    result = real(*args, **kwargs)
    if os.path.basename(str(args[1] if op == "replace" else args[0])) == name:
        seen.append(1)
        if len(seen) == n:
            os.kill(os.getpid(), getattr(signal, "SIG" + sig))
    return result
setattr(os, op, hooked)
sys.argv = ["sskt_tf.train", *sys.argv[5:]]
from sskt_tf import train
train.run()
"""

# The interrupted run's segments: each stops at its point, the next (the same command) resumes.
# Epoch-end writes, in order: metrics.csv, TensorBoard, backup/epoch_<n>.weights.h5, backup/latest.json
# (the commit), checkpoints/last.keras, checkpoints/best.keras (when best), older backup files removed.
# A resumed run first rewrites last.keras (and best.keras when the saved epoch is the best) from its state.
SEGMENTS = [
    # Ctrl-C in epoch 2 after its weights, before its commit: resumes after epoch 1.
    ("INT", "replace", "epoch_2.weights.h5", 1),
    # SIGKILL right after epoch 2's commit, before its last.keras.
    ("KILL", "replace", "latest.json", 1),
    # SIGKILL after epoch 4's (the last's) last.keras (the 3rd of this process), before best.keras,
    # the removal of older states, and results.json.
    ("KILL", "replace", "last.keras", 3),
    None,  # Resumes after epoch 4, trains nothing, writes the results.
]


def _metrics(run):
    """metrics.csv of `run` as rows of cells (text, as written), the header first."""
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def _weights(path):
    return keras.saving.load_model(path).get_weights()


def _interrupted_and_resumed(workdir, stand_ins):
    """The same command straight through, and stopped by SEGMENTS then started again each time."""
    args = [*ARGS, f"--sources={stand_ins('mobilenet_v2_random', 1000)}"]
    straight, stopped = workdir / "straight", workdir / "stopped"

    seen = []
    # The uninterrupted run goes on beside the other: each mostly starts TensorFlow and traces its steps, on one core.
    with open(workdir / "straight.log", "w") as log:
        uninterrupted = subprocess.Popen(_command(args, straight), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        for segment in SEGMENTS:
            prefix = [sys.executable, "-u", "-c", _SIGNAL_AT, *map(str, segment)] if segment else [sys.executable, "-u", "-m", "sskt_tf.train"]
            proc = subprocess.run([*prefix, *args, f"--output_dir={stopped}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            pointer = stopped / "backup" / "latest.json"
            seen.append(
                {
                    "returncode": proc.returncode,
                    "stdout": proc.stdout,
                    "stderr": proc.stderr,
                    "saved": json.loads(pointer.read_text())["epoch"] if pointer.exists() else None,
                    "results": (stopped / "results.json").exists(),
                    "metrics_rows": len((stopped / "metrics.csv").read_text().splitlines()) - 1,
                }
            )
        straight_returncode = uninterrupted.wait(timeout=300)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    return straight, stopped, seen, straight_returncode, (workdir / "straight.log").read_text()


@pytest.mark.slow
def test_ctrl_c_and_sigkill_at_epoch_end_writes_then_the_same_command_ends_bit_identical(tmp_path, stand_ins):
    straight, stopped, seen, straight_returncode, straight_log = _interrupted_and_resumed(tmp_path, stand_ins)
    assert straight_returncode == 0, straight_log[-2000:]
    interrupted, after_commit, after_last, final = seen
    # Ctrl-C: one line, exit status 130, the epoch it stopped in and where the same command goes on.
    assert interrupted["returncode"] == 130, interrupted["stderr"][-2000:]
    assert interrupted["stderr"].strip().splitlines()[-1] == "interrupted in epoch 2; the same command resumes after epoch 1"
    assert "Traceback" not in interrupted["stderr"]
    assert interrupted["saved"] == 1 and interrupted["metrics_rows"] == 2  # Epoch 2's row, not committed.
    for killed, resumed_after, saved in ((after_commit, 1, 2), (after_last, 2, 4)):
        assert killed["returncode"] == -signal.SIGKILL, killed["stderr"][-2000:]
        assert f"resuming after epoch {resumed_after}" in killed["stdout"]
        assert killed["saved"] == saved and not killed["results"]
    assert final["returncode"] == 0, final["stderr"][-2000:]
    assert "resuming after epoch 4" in final["stdout"]

    # Everything equals the uninterrupted run's: the targets, both checkpoints, metrics.csv, the results.
    for name in ("target.keras", "checkpoints/last.keras", "checkpoints/best.keras"):
        for a, b in zip(_weights(straight / name), _weights(stopped / name), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # metrics.csv: every cell the same, but images_per_second, a wall-clock figure that no two runs share.
    stopped_rows, straight_rows = _metrics(stopped), _metrics(straight)
    assert stopped_rows[0] == straight_rows[0] and "images_per_second" in straight_rows[0]
    timing = straight_rows[0].index("images_per_second")
    drop = lambda rows: [row[:timing] + row[timing + 1 :] for row in rows]  # noqa: E731
    assert drop(stopped_rows) == drop(straight_rows) and len(stopped_rows) == 5
    assert all(float(row[timing]) > 0 for row in stopped_rows[1:])
    results, expected = (json.loads((d / "results.json").read_text()) for d in (stopped, straight))
    assert results["epochs_completed"] == 4
    for key in ("test", "test_best", "best"):
        assert results[key] == expected[key], key
    assert not (stopped / "backup").exists()


def _tiny_model(seed):
    """A compiled Dense model whose `target_model()` is itself (as TargetCheckpoint needs)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.target_model = lambda name=None: model
    return model


class _Crash(Exception):
    pass


def test_best_keras_survives_a_resume_and_a_crash_between_the_commit_and_its_write(tmp_path, monkeypatch):
    checkpoints, backup = str(tmp_path / "checkpoints"), str(tmp_path / "backup")
    weights = lambda model, epoch: model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
    saved = lambda name: _weights(os.path.join(checkpoints, name))[0][0, 0]

    def start(model):
        """A (re)started run: the state restored into `model`, the checkpoint callback as train_lib builds it."""
        resume = callbacks_lib.ResumeCheckpoint(backup)
        restored = resume.state()
        assert resume.restore(model) == (restored["epoch"] if restored else 0)
        callback = callbacks_lib.TargetCheckpoint(checkpoints, resume=resume, restored=restored)
        callback.set_model(model)
        callback.on_train_begin()
        return callback

    model = _tiny_model(0)
    callback = start(model)
    for epoch, accuracy in enumerate([0.5, 0.8]):
        weights(model, epoch)
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert sorted(os.listdir(backup)) == ["epoch_2.weights.h5", "latest.json"]
    # A crash, then the same command: the restored weights are epoch 2's (index 1), and its first epoch
    # (worse than the best before the crash) and one without evaluation (--eval_every) keep best.keras.
    model = _tiny_model(1)
    callback = start(model)
    assert model.get_weights()[0][0, 0] == 1 and (callback.best, callback.best_epoch) == (0.8, 2)
    for epoch, logs in ((2, {"val_accuracy": 0.6}), (3, {})):
        weights(model, epoch)
        callback.on_epoch_end(epoch, logs)
    assert saved("best.keras") == 1 and saved("last.keras") == 3
    assert json.loads((tmp_path / "backup" / "latest.json").read_text())["best_epoch"] == 2

    # A better epoch 5, and a crash after its commit, before its best.keras: best.keras stays a valid
    # (older) file, and the resumed run writes epoch 5's from the state.
    def crash_at_best(target, path):
        if path.endswith("best.keras"):
            raise _Crash
        real_save(target, path)

    real_save = run_dir_lib.atomic_save
    monkeypatch.setattr(run_dir_lib, "atomic_save", crash_at_best)
    weights(model, 4)
    with pytest.raises(_Crash):
        callback.on_epoch_end(4, {"val_accuracy": 0.9})
    monkeypatch.setattr(run_dir_lib, "atomic_save", real_save)
    assert saved("best.keras") == 1 and saved("last.keras") == 4
    callback = start(_tiny_model(2))
    assert saved("best.keras") == 4 and saved("last.keras") == 4 and callback.best_epoch == 5


def test_non_finite_loss_stops_with_the_cause_and_a_resume_onto_other_inputs_is_refused(tmp_path, monkeypatch, stand_ins):
    out = tmp_path / "nan"
    source = tmp_path / "mobilenet_v2_random.keras"  # A copy of the stand-in: replaced below.
    shutil.copy(stand_ins("mobilenet_v2_random", 1000), source)
    # Epoch 1 at lr 0.1, then lr 1e11: the loss diverges during epoch 2. (The linear head: less to trace.)
    args = [
        *ARGS, f"--sources={source}", "--aux_head=linear", "--epochs=3", "--lr_milestones=1", "--lr_gamma=1e12",
        "--nodeterministic", f"--output_dir={out}",
    ]
    cause = (
        r"became NaN or infinite at epoch 2, step \d+ \(global step \d+\): non-finite .*loss=nan.*; learning rate at "
        r"that step 1e\+11\. Nothing of epoch 2 was saved; \S+ keeps backup/ \(the state after epoch 1: the same "
        r"command resumes there\), checkpoints/last.keras, checkpoints/best.keras; results.json records where it "
        r"stopped\. The learning rate had grown from --lr=0.1 to 1e\+11"
    )
    with pytest.raises(UserError, match=cause) as stop:
        run_training(args)
    assert "--lr" not in str(stop.value).split("had grown")[0]  # No guess before the evidence.
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "stopped" and results["epoch"] == 2 and results["learning_rate"] == pytest.approx(1e11)
    assert json.loads((out / "backup" / "latest.json").read_text())["epoch"] == 1
    assert all(np.isfinite(w).all() for w in _weights(out / "checkpoints" / "last.keras"))
    # The same command resumes from the last good epoch instead of refusing the directory; --noresume
    # would throw that state away, so it is refused.
    with pytest.raises(UserError, match="at epoch 2"):
        run_training(args)
    with pytest.raises(UserError, match=r"--noresume, but --output_dir=\S+ holds this run's resumable state \(after epoch 1\)"):
        run_training([*args, "--noresume"])

    # The source file behind the same spec now predicts 7 classes: one line saying so, nothing loaded.
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(7)(pooled), name="mobilenet_v2_random").save(source)
    with pytest.raises(UserError, match=r"trained on other inputs than this command finds now \(sources: source \S+ \(1000 classes, .*\) -> source \S+ \(7 classes"):
        run_training(args)
    # The same class count and sizes, other weights behind the same file: another source, refused too.
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    keras.Model(inputs, keras.layers.Dense(1000, bias_initializer="ones")(pooled), name="mobilenet_v2_random").save(source)
    with pytest.raises(UserError, match=r"trained on other inputs .*\(1000 classes, \[\d+, \d+\] px, weights (\w+)\) -> source \S+ \(1000 classes, \[\d+, \d+\] px, weights (?!\1)\w+\)"):
        run_training(args)
    # A state file the model cannot load (here: damaged) is one line too, not the loader's traceback.
    shutil.copy(stand_ins("mobilenet_v2_random", 1000), source)
    (out / "backup" / "epoch_1.weights.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(UserError, match=r"the saved state \S+epoch_1.weights.h5 cannot be loaded into this run's model \(\w+"):
        run_training(args)
