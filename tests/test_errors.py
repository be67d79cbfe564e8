"""Tests of sskt_tf.errors: every bad input of a command ends in one `error:` line and exit status 2.

`run_cli` is run in small absl-only commands (a subprocess each: absl's app.run runs once per
process), loading errors.py by its path so that TensorFlow is not imported: each takes a fraction
of a second. The real commands are tested in test_compare.py, test_export.py, test_evaluate.py,
test_predict.py and test_convert_torch.py.
"""

import errno
import os
import sys
import tempfile

import pytest
from conftest import assert_one_error_line, run_commands

from sskt_tf import errors
from sskt_tf.errors import UserError

ERRORS_PY = os.path.abspath(errors.__file__)

COMMAND = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("sskt_errors", sys.argv.pop(1))
errors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(errors)
assert "tensorflow" not in sys.modules
from absl import flags
FLAGS = flags.FLAGS

def define():
    flags.DEFINE_string("model", None, "Run directory or .keras file.", required=True)
    flags.DEFINE_enum("mode", "ok", ["ok", "user", "user_unparsed", "bug_unparsed", "multiline"], "What main does.")
    flags.DEFINE_integer("steps", 1, "Steps per epoch.")

    def at_most_100(value):
        if value > 100:
            raise errors.UserError(f"--steps={value} is more than 100; pass --steps=100 or less.")
        return True

    flags.register_validator("steps", at_most_100)

def main(argv):
    mode = FLAGS.mode
    if mode.endswith("_unparsed"):
        FLAGS.unparse_flags()  # As sskt_tf.compare did: absl then failed reading --pdb_post_mortem.
    if mode.startswith("user"):
        raise errors.UserError("--model=x: no such file or directory; pass a run directory.")
    if mode == "bug_unparsed":
        raise ZeroDivisionError("a bug")
    if mode == "multiline":
        raise errors.UserError("first line\\n  second line")
    print("ran", FLAGS.model)

errors.run_cli(main, define)
'''


def test_run_cli_turns_every_kind_of_bad_input_into_one_line(tmp_path):
    script = tmp_path / "command.py"
    script.write_text(COMMAND)
    nested = tmp_path / "outer.cfg"
    nested.write_text(f"--flagfile={tmp_path / 'inner.cfg'}\n")
    cases = {
        "ok": (["--model=m"], None),
        "user error in main": (["--model=m", "--mode=user"], ["error: --model=x: no such file or directory; pass a run directory."]),
        "user error after main cleared the flags": (["--model=m", "--mode=user_unparsed"], ["--model=x: no such file"]),
        "message of several lines": (["--model=m", "--mode=multiline"], ["error: first line; second line"]),
        "missing required flag": ([], ["--model is required", "Run directory or .keras file", "pass --model=<value>"]),
        "unknown flag": (["--model=m", "--nope=3"], ["unknown flag --nope", "--helpfull"]),
        "misspelt flag": (["--model=m", "--step=3"], ["unknown flag --step ", "did you mean --steps?"]),
        "validator raising a UserError": (["--model=m", "--steps=500"], ["error: --steps=500 is more than 100"]),
        "value of the wrong type": (["--model=m", "--steps=abc"], ["--steps=abc", "--steps takes an integer"]),
        "value outside an enum": (["--model=m", "--mode=zzz"], ["--mode=zzz", "one of <ok|user"]),
        "missing flagfile": ([f"--flagfile={tmp_path / 'none.cfg'}"], [f"--flagfile={tmp_path / 'none.cfg'}: no such file"]),
        "missing flagfile inside a flagfile": ([f"--flagfile={nested}"], [f"--flagfile={tmp_path / 'inner.cfg'}: no such file"]),
        # A relative path is read from the current directory: the line says so (run from the repository root).
        "relative flagfile": (["--flagfile=flags/none.cfg"], ["--flagfile=flags/none.cfg: no such file", "read from the current directory", "repository root"]),
        "bug after main cleared the flags": (["--model=m", "--mode=bug_unparsed"], None),
    }
    results = run_commands([[sys.executable, str(script), ERRORS_PY, *args] for args, _ in cases.values()], timeout=120)
    outcomes = dict(zip(cases, results))
    for name, (_, needles) in cases.items():
        if needles is not None:
            line = assert_one_error_line(outcomes[name], *needles)
            assert "Traceback" not in line and outcomes[name][1] == "", name
    rc, stdout, stderr = outcomes["ok"]
    assert rc == 0 and stdout == "ran m\n" and stderr == []
    # A bug stays a traceback of the bug (exit status 1), with nothing of absl's flag state over it.
    rc, _, stderr = outcomes["bug after main cleared the flags"]
    assert rc == 1 and stderr[0] == "Traceback (most recent call last):" and stderr[-1] == "ZeroDivisionError: a bug"
    assert not any("UnparsedFlagAccessError" in line or line.startswith("error:") for line in stderr)


def test_one_line():
    assert errors.one_line("a\n\n  b   c\n") == "a; b c"
    assert errors.one_line(UserError("x")) == "x"


def test_output_directory_errors_name_the_flag_and_the_cause(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert errors.writable_dir(tmp_path / "new" / "dir", "--output_dir") == str(tmp_path / "new" / "dir")
    assert os.path.isdir(tmp_path / "new" / "dir") and os.listdir(tmp_path / "new" / "dir") == []  # No probe left.
    with pytest.raises(UserError, match=f"^--output_dir={a_file} is a file, not a directory; pass the path of a directory for the directory"):
        errors.writable_dir(a_file, "--output_dir")
    with pytest.raises(UserError, match=f"^--output_dir={a_file}/sub: cannot create the directory there, {a_file} is a file; pass another path"):
        errors.writable_dir(a_file / "sub", "--output_dir")
    with pytest.raises(UserError, match=f"^--output={tmp_path} is a directory, not a file; pass a file path for the file"):
        errors.writable_file(tmp_path, "--output")
    with pytest.raises(UserError, match=f"^--output={a_file}/model.tflite: cannot write the file there, {a_file} is a file"):
        errors.writable_file(a_file / "model.tflite", "--output")

    # Unwritable directories (tests run as root here, for whom permissions do not stop a write).
    def refuse(errno_value, text):
        def mkstemp(prefix, dir):
            raise OSError(errno_value, text, os.path.join(dir, prefix))

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    refuse(errno.EACCES, "Permission denied")
    with pytest.raises(UserError, match=f"^--output_dir={tmp_path}: cannot write the directory there \\(permission denied on {tmp_path}/"):
        errors.writable_dir(tmp_path, "--output_dir")
    refuse(errno.EROFS, "Read-only file system")
    with pytest.raises(UserError, match="read-only file system\\); pass a directory you can write to"):
        errors.writable_dir(tmp_path, "--output_dir")
    refuse(errno.ENOSPC, "No space left on device")
    with pytest.raises(UserError, match="no space left on device"):
        errors.writable_file(tmp_path / "x.keras", None)
