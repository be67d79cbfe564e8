"""Tests of the evaluate command (`python -m sskt_tf.evaluate`): its output and its error lines.

The evaluation itself is tested in tests/test_evaluation.py, on the same colour-model run.
"""

import os
import subprocess
import sys

import pytest
from colour_runs import evaluation_run as make_run_dir
from conftest import assert_one_error_line, run_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(workdir, stand_ins):
    run, out = make_run_dir(workdir), workdir / "cli"
    command = [sys.executable, "-m", "sskt_tf.evaluate", f"--model={run / 'target.keras'}", f"--output_dir={out}"]
    return (out, subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300))


@pytest.mark.slow
def test_cli_prints_the_metrics_and_the_table(tmp_path, stand_ins):
    out, proc = _cli(tmp_path, stand_ins)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy=0.8500" in proc.stdout and "precision" in proc.stdout and "airplane" in proc.stdout
    assert sorted(os.listdir(out)) == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.json", "per_class.csv"]


def _cli_errors(workdir, stand_ins):
    run = make_run_dir(workdir)
    (workdir / "a_file").write_text("x")
    command = [sys.executable, "-m", "sskt_tf.evaluate"]
    commands = {
        # --skip_bad_images is one of evaluate's flags (it used to be "unknown flag").
        "output_dir is a file": [*command, f"--model={run}", "--skip_bad_images", f"--output_dir={workdir / 'a_file'}"],
        "no --model": [*command, f"--output_dir={workdir / 'out'}"],
    }
    return (workdir, dict(zip(commands, run_commands(list(commands.values())))))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, stand_ins):
    workdir, results = _cli_errors(tmp_path, stand_ins)
    assert_one_error_line(results["output_dir is a file"], f"--output_dir={workdir / 'a_file'} is a file")
    assert_one_error_line(results["no --model"], "--model is required")
    assert (workdir / "a_file").read_text() == "x" and not (workdir / "out").exists()
