"""Tests of sskt_tf.run_dir: the checks of --output_dir, its first write, the settings check that
compare shares, reading and atomically writing a run's files, and finding a target's run.

Refusals met through the training command (and that they leave nothing behind) are tested in
test_train.py; a crash between the writes of an epoch end in test_resilience.py."""

import dataclasses
import json
import os

import keras
import pytest

from sskt_tf import run_dir
from sskt_tf.config import Config
from sskt_tf.errors import UserError


def _config(out, **fields):
    return Config(dataset="synthetic", output_dir=str(out), **fields)


def _write_run(out, config, results=None):
    """A run directory as the training command leaves it: config.json, target.keras, results.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    (out / "target.keras").write_text("")
    if results is not None:
        (out / "results.json").write_text(json.dumps(results))


def test_read_json_raises_one_line_or_gives_the_default(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"test": ')
    with pytest.raises(UserError, match=r"results.json is not valid JSON .*delete the run directory that holds it"):
        run_dir.read_json(str(path))
    assert run_dir.read_json(str(path), default=None) is None
    with pytest.raises(FileNotFoundError):
        run_dir.read_json(str(tmp_path / "missing.json"))
    assert run_dir.read_json(str(tmp_path / "missing.json"), default={}) == {}
    assert run_dir.read_json(str(tmp_path), default="unread") == "unread"  # A directory: unreadable.
    path.write_text('{"test": {"accuracy": 0.5}}')
    assert run_dir.read_json(str(path)) == {"test": {"accuracy": 0.5}}


def test_write_json_is_sorted_indented_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    run_dir.write_json(str(path), {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    run_dir.atomic_write_text(str(path), "replaced")
    assert path.read_text() == "replaced" and os.listdir(tmp_path) == ["results.json"]
    inputs = keras.Input((3,))
    run_dir.atomic_save(keras.Model(inputs, keras.layers.Dense(2)(inputs)), str(tmp_path / "target.keras"))
    assert sorted(os.listdir(tmp_path)) == ["results.json", "target.keras"]
    assert keras.saving.load_model(str(tmp_path / "target.keras")).output_shape == (None, 2)


def test_check_output_dir_refuses_a_file_and_a_path_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^--output_dir=\S*a_file exists and is not a directory"):
        run_dir.check_output_dir(str(tmp_path / "a_file"))
    with pytest.raises(UserError, match=r"^--output_dir=\S*a_file/run cannot be created: \S*a_file is a file"):
        run_dir.check_output_dir(str(tmp_path / "a_file" / "run"))
    run_dir.check_output_dir(str(tmp_path / "new" / "run"))  # Created later, by prepare_output_dir.
    assert not (tmp_path / "new").exists()


def test_changed_settings_names_each_flag_and_ignores_run_only_ones(tmp_path):
    config = json.loads(_config(tmp_path).to_json())
    run_only = {**config, "output_dir": "/elsewhere", "verbose": 0, "resume": False, "export": True, "cache": "disk"}
    assert run_dir.changed_settings(run_only, config) == []
    assert run_dir.changed_settings({**config, "lr": 0.5, "epochs": 7}, config) == [
        ("epochs", 7, config["epochs"]),
        ("lr", 0.5, config["lr"]),
    ]
    # A setting an older config.json lacks counts as its default.
    older = {k: v for k, v in config.items() if k != "eval_every"}
    assert run_dir.changed_settings(older, json.loads(_config(tmp_path, eval_every=3).to_json())) == [("eval_every", 1, 3)]


def test_inspect_output_dir_tells_new_resume_and_finished_runs_apart(tmp_path):
    out = tmp_path / "run"
    config = _config(out, lr=0.1)
    assert run_dir.inspect_output_dir(config) == "new"  # No directory.
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"lr": 0.5}))
    (out / "metrics.csv").write_text("epoch\n0\n")
    assert run_dir.inspect_output_dir(config) == "new"  # Leftovers of a failed start: nothing saved.

    _write_run(out, config, results={"status": "finished", "test": {}})
    assert run_dir.inspect_output_dir(config) == "finished"
    with pytest.raises(UserError, match=r"holds a finished run with other settings \(--lr: 0.1 -> 0.05\); pass the same settings to see it"):
        run_dir.inspect_output_dir(dataclasses.replace(config, lr=0.05))
    assert run_dir.inspect_output_dir(dataclasses.replace(config, lr=0.05, overwrite=True)) == "new"

    (out / "results.json").write_text(json.dumps({"status": "stopped"}))  # Not finished: resumable.
    (out / "backup").mkdir()
    (out / "backup" / "latest.json").write_text(json.dumps({"epoch": 2, "weights": "epoch_2.weights.h5"}))
    assert run_dir.inspect_output_dir(config) == "resume"
    with pytest.raises(UserError, match=r"holds a run with other settings \(--lr: 0.1 -> 0.05\); pass the same settings to resume it"):
        run_dir.inspect_output_dir(dataclasses.replace(config, lr=0.05))
    with pytest.raises(UserError, match=r"^--noresume, but --output_dir=\S+ holds this run's resumable state \(after epoch 2\)"):
        run_dir.inspect_output_dir(dataclasses.replace(config, resume=False))

    (out / "config.json").write_text("{")
    with pytest.raises(UserError, match=r"holds backup/, target.keras of a run without a readable config.json"):
        run_dir.inspect_output_dir(config)


def test_prepare_output_dir_removes_an_old_run_but_keeps_the_caches(tmp_path):
    out = tmp_path / "run"
    config = _config(out)
    for name in ("checkpoints/last.keras", "backup/latest.json", "evaluation/metrics.json", "data_cache/x", "soft_label_cache/y"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("")
    for name in ("metrics.csv", "results.json", "target.keras", "peer_1.keras", "model.tflite", "notes.txt"):
        (out / name).write_text("")
    run_dir.prepare_output_dir(config, fresh=False)  # A resumed run keeps everything.
    assert (out / "backup" / "latest.json").exists() and (out / "peer_1.keras").exists()
    run_dir.prepare_output_dir(config, fresh=True)
    assert sorted(os.listdir(out)) == ["config.json", "data_cache", "notes.txt", "soft_label_cache"]
    assert json.loads((out / "config.json").read_text()) == json.loads(config.to_json())
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^--output_dir=\S*a_file is a file"):
        run_dir.prepare_output_dir(_config(tmp_path / "a_file"), fresh=True)


def test_a_trained_target_finds_its_run(tmp_path):
    out = tmp_path / "run"
    _write_run(out, _config(out), results={"class_names": ["a", "b"]})
    (out / "checkpoints").mkdir()
    assert run_dir.run_dir_of(str(out / "target.keras")) == str(out)
    assert run_dir.run_dir_of(str(out / "checkpoints" / "best.keras")) == str(out)
    assert run_dir.run_dir_of(str(tmp_path / "lone.keras")) is None
    assert run_dir.run_json(str(out), "results.json") == {"class_names": ["a", "b"]}
    assert run_dir.run_json(str(tmp_path), "results.json") == {}
    (out / "results.json").write_text("[")
    with pytest.raises(UserError, match="results.json is not valid JSON"):
        run_dir.run_json(str(out), "results.json")


def test_skipped_images_are_listed_one_a_line(tmp_path):
    path = run_dir.write_skipped_images(str(tmp_path), ["/data/a.jpg", "/data/b c.png"])
    assert path == str(tmp_path / "skipped_images.txt")
    assert (tmp_path / "skipped_images.txt").read_text() == "/data/a.jpg\n/data/b c.png\n"
