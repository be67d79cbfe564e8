"""Resumption after SIGKILL (bit-identical with --deterministic), non-finite losses, atomic checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import sskt_tf  # noqa: F401  (registers the custom layers for loading)
from sskt_tf import callbacks as callbacks_lib
from sskt_tf.errors import UserError
from test_train import run_in_process  # the one in-process runner of the training command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _weights(path):
    return keras.saving.load_model(path).get_weights()


def _sigkill_and_resume(workdir, stand_ins, items):
    """Runs the same command straight through, and killed after epoch 2 then started again."""
    args = [*ARGS, f"--sources={stand_ins('mobilenet_v2_random', 1000)}"]
    straight, killed = workdir / "straight", workdir / "killed"

    def run():
        seen = {}
        # The uninterrupted run goes on beside the one to be killed: each mostly starts TensorFlow
        # and traces its steps, on one core.
        with open(workdir / "straight.log", "w") as log:
            uninterrupted = subprocess.Popen(_command(args, straight), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc = subprocess.Popen(_command(args, killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pointer = killed / "backup" / "latest.json"
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 2:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            seen["killed_returncode"] = proc.wait()
            seen["results_after_kill"] = (killed / "results.json").exists()
            seen["saved"] = json.loads(pointer.read_text())["epoch"] if pointer.exists() else None
            seen["resumed"] = subprocess.run(_command(args, killed), cwd=ROOT, capture_output=True, text=True, timeout=300)
            seen["straight_returncode"] = uninterrupted.wait(timeout=300)
        finally:
            if uninterrupted.poll() is None:
                uninterrupted.kill()
                uninterrupted.wait()
        seen["straight_log"] = (workdir / "straight.log").read_text()
        return straight, killed, seen

    return run


@pytest.mark.background(job=_sigkill_and_resume)
def test_sigkill_then_same_command_ends_bit_identical(background):
    straight, killed, seen = background.result()
    assert seen["killed_returncode"] == -signal.SIGKILL, "the run finished before it could be killed"
    assert not seen["results_after_kill"]
    saved = seen["saved"]
    assert saved is not None and 2 <= saved < 4

    resumed = seen["resumed"]
    assert seen["straight_returncode"] == 0, seen["straight_log"][-2000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {saved}" in resumed.stdout
    assert json.loads((killed / "results.json").read_text())["epochs_completed"] == 4
    for a, b in zip(_weights(straight / "target.keras"), _weights(killed / "target.keras")):
        np.testing.assert_array_equal(a, b)
    assert not (killed / "backup").exists()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch, args):
    out = tmp_path / "nan"
    # Epoch 1 at lr 0.1, then lr 1e11: the loss diverges during epoch 2. (The linear head: less to trace.)
    args = [*args, "--aux_head=linear", "--epochs=3", "--lr_milestones=1", "--lr_gamma=1e12", "--nodeterministic", f"--output_dir={out}"]
    with pytest.raises(UserError, match=r"became NaN or infinite at epoch 2, step \d+ \(global step \d+\).*last good state"):
        run_in_process(args, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "stopped" and results["epoch"] == 2
    assert json.loads((out / "backup" / "latest.json").read_text())["epoch"] == 1
    assert all(np.isfinite(w).all() for w in _weights(out / "checkpoints" / "last.keras"))
    # The same command resumes from the last good epoch instead of refusing the directory.
    with pytest.raises(UserError, match="at epoch 2"):
        run_in_process(args, monkeypatch)


def test_resume_checkpoint_keeps_one_complete_state(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = callbacks_lib.ResumeCheckpoint(str(tmp_path / "backup"))
    backup.set_model(model)
    for epoch in range(3):
        backup.on_epoch_end(epoch)
    assert sorted(os.listdir(tmp_path / "backup")) == ["epoch_3.weights.h5", "latest.json"]
    saved = model.get_weights()
    model.set_weights([w + 1 for w in saved])
    assert backup.restore(model) == 3
    for a, b in zip(saved, model.get_weights()):
        np.testing.assert_array_equal(a, b)
