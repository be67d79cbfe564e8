"""Tests of sskt_tf.serving.export: its checks, default outputs and overwriting.

The SavedModel, TFLite and loading themselves are tested in test_saved_model.py, test_tflite.py
and test_trained.py; the command's error lines in tests/test_export.py.
"""

import os

import pytest
from fake_run import fake_run as _fake_run
from fake_run import linear_model as _linear_model

from sskt_tf.errors import UserError
from sskt_tf.serving import export as export_lib


def test_default_outputs_are_beside_the_model(tmp_path):
    run_dir = _fake_run(tmp_path / "r", _linear_model(3)[0], ["a", "b", "c"])
    assert export_lib.export(str(run_dir)) == str(run_dir / "saved_model")
    assert export_lib.export(str(run_dir), fmt="tflite") == str(run_dir / "model.tflite")
    assert export_lib.export(str(run_dir), fmt="tflite", quantize="dynamic_int8") == str(run_dir / "model_int8.tflite")
    assert (run_dir / "model.labels.txt").exists() and (run_dir / "model_int8.labels.txt").exists()
    lone = tmp_path / "lone"
    lone.mkdir()
    _linear_model(3)[0].save(lone / "m.keras")
    assert export_lib.export(str(lone / "m.keras")) == str(lone / "saved_model")


def test_an_earlier_export_is_replaced_with_overwrite_only_and_other_directories_never(tmp_path):
    model, _, _ = _linear_model(3)
    run_dir = _fake_run(tmp_path / "r", model, ["a", "b", "c"])
    out = tmp_path / "sm"
    export_lib.export(str(run_dir), str(out))
    _fake_run(run_dir, _linear_model(2)[0], ["x", "y"])
    with pytest.raises(UserError, match=f"^--output={out} holds an earlier export \\(a SavedModel\\); pass --overwrite"):
        export_lib.export(str(run_dir), str(out))
    assert (out / "assets.extra" / "class_names.txt").read_text() == "a\nb\nc\n"  # Untouched.
    export_lib.export(str(run_dir), str(out), overwrite=True)
    assert (out / "assets.extra" / "class_names.txt").read_text() == "x\ny\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sm.")]  # No staging left behind.
    # TFLite: the file and its labels file are an export too.
    tflite = tmp_path / "m.tflite"
    export_lib.export(str(run_dir), str(tflite), fmt="tflite")
    before = tflite.read_bytes()
    with pytest.raises(UserError, match=f"^--output={tflite}: {tflite} and {tmp_path / 'm.labels.txt'} already exist; pass --overwrite"):
        export_lib.export(str(run_dir), str(tflite), fmt="tflite", quantize="dynamic_int8")
    assert tflite.read_bytes() == before
    export_lib.export(str(run_dir), str(tflite), fmt="tflite", quantize="dynamic_int8", overwrite=True)
    assert tflite.read_bytes() != before
    (tmp_path / "lone.labels.txt").write_text("mine\n")
    with pytest.raises(UserError, match="lone.labels.txt already exists; pass --overwrite to replace it"):
        export_lib.export(str(run_dir), str(tmp_path / "lone.tflite"), fmt="tflite")
    assert not (tmp_path / "lone.tflite").exists()
    # A .tflite name with the SavedModel format would be a directory named like a file.
    with pytest.raises(UserError, match=r"names a .tflite file, but --format=saved_model writes a directory; pass --format=tflite"):
        export_lib.export(str(run_dir), str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="non-empty directory that holds no SavedModel"):
            export_lib.export(str(run_dir), str(tmp_path / "notes"), overwrite=overwrite)
    assert os.listdir(tmp_path / "notes") == ["todo.txt"] and (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'} is a file; pass a directory"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file"), overwrite=True)
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'}/sm: cannot create the SavedModel directory there, {tmp_path / 'a_file'} is a file"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file" / "sm"))
    with pytest.raises(UserError, match=f"^--output={tmp_path / 'a_file'}/m.tflite: cannot write the TFLite export there"):
        export_lib.export(str(run_dir), str(tmp_path / "a_file" / "m.tflite"), fmt="tflite")
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "/nowhere/run"}, "--model=/nowhere/run: no such file or directory"),
        ({"model": "RUN", "fmt": "saved_model", "quantize": "dynamic_int8"}, "--quantize=dynamic_int8 applies to --format=tflite only"),
        ({"model": "RUN", "fmt": "tflite", "output": "x.bin"}, "must be a file ending in .tflite"),
        ({"model": "RUN", "top_k": 0}, "--top_k must be a positive integer"),
        ({"model": "SAVED"}, "is an exported SavedModel; this command needs the Keras model"),
    ],
)
def test_bad_input_raises_user_errors(kwargs, message, tmp_path):
    run_dir = _fake_run(tmp_path / "r", _linear_model(3)[0], ["a", "b", "c"])
    saved = tmp_path / "saved"
    if kwargs["model"] == "SAVED":
        export_lib.export(str(run_dir), str(saved))
    kwargs["model"] = {"RUN": str(run_dir), "SAVED": str(saved)}.get(kwargs["model"], kwargs["model"])
    with pytest.raises(UserError, match=message.replace(".", "\\.")):
        export_lib.export(**kwargs)
