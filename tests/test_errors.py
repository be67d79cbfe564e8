"""Tests of sskt_tf.errors: one-line messages and the output-path checks that name the flag and the cause.

How the commands turn a UserError into `error: ...` and exit status 2 is tested in test_cli.py.
"""

import errno
import os
import tempfile

import pytest

from sskt_tf import errors
from sskt_tf.errors import UserError


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
