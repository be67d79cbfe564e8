"""Tests of the predict command (`python -m sskt_tf.predict`): its output and its error lines.

The predictions themselves are tested in tests/serving/test_predictor.py, on the same colour-model run.
"""

import os
import subprocess
import sys

import pytest
from colour_runs import prediction_files
from conftest import assert_one_error_line, run_commands, tf_native_log_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run directory with the colour model, its SavedModel, and three images of other sizes."""
    return prediction_files(tmp_path_factory.mktemp("predict"))


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
