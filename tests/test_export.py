"""Tests of the export command (`python -m sskt_tf.export`): its error lines.

What it exports (checks, default outputs, overwriting) is tested in tests/serving/test_export.py.
"""

import sys

import pytest
from conftest import assert_one_error_line, run_commands
from fake_run import fake_run as _fake_run
from fake_run import linear_model as _linear_model

from sskt_tf.serving import export as export_lib


def _cli_errors(workdir, stand_ins):
    """The export command's error paths, all at once."""
    run_dir = _fake_run(workdir / "r", _linear_model(3)[0], ["a", "b", "c"])
    saved = workdir / "saved"
    export_lib.export(str(run_dir), str(saved))
    (workdir / "a_file").write_text("x")
    command = [sys.executable, "-m", "sskt_tf.export"]
    commands = {
        "no --model": [*command, f"--output={workdir / 'x'}"],
        "earlier export": [*command, f"--model={run_dir}", f"--output={saved}"],
        "output is a file": [*command, f"--model={run_dir}", f"--output={workdir / 'a_file'}", "--overwrite"],
        "unknown flag": [*command, f"--model={run_dir}", "--outptu=x"],
    }
    return (workdir, dict(zip(commands, run_commands(list(commands.values())))))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, stand_ins):
    workdir, results = _cli_errors(tmp_path, stand_ins)
    assert_one_error_line(results["no --model"], "--model is required")
    assert_one_error_line(results["earlier export"], f"--output={workdir / 'saved'} holds an earlier export", "--overwrite")
    assert_one_error_line(results["output is a file"], f"--output={workdir / 'a_file'} is a file")
    assert_one_error_line(results["unknown flag"], "unknown flag --outptu", "did you mean --output?")
    assert (workdir / "a_file").read_text() == "x" and not (workdir / "x").exists()
