"""Tests of the training CLI: every flagfile runs two smoke steps; outputs; one-line errors."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from sskt_tf import config as config_lib
from sskt_tf import train
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "flags", "*.cfg")) if not p.endswith("common.cfg")
)
config_lib.define_flags()
FLAGS = flags.FLAGS


def run_in_process(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    FLAGS.unparse_flags()
    try:
        FLAGS(["sskt_tf.train", *args])
        return train.main(["sskt_tf.train"])
    finally:
        FLAGS.unparse_flags()


def smoke_overrides(flagfile, output_dir, monkeypatch):
    """Offline stand-ins: synthetic data with the right class count, random-weight sources, 2 steps."""
    monkeypatch.chdir(ROOT)
    FLAGS.unparse_flags()
    FLAGS(["sskt_tf.train", f"--flagfile={flagfile}"])
    config = config_lib.from_flags()
    FLAGS.unparse_flags()
    stand_ins = {
        "cifar10": "synthetic:10",
        "cifar100": "synthetic:100",
        "stl10": "synthetic:10",
        "voc2007": "synthetic_multilabel:20",
    }
    dataset = stand_ins.get(config.dataset, config.dataset)
    # Pretrained weights and converted files are not here: a small random-weight network of the same
    # class count stands in (the class count is what shapes the auxiliary head; a small network keeps
    # the ~20 flagfiles' runs to a few minutes; sources themselves are tested in test_sources.py).
    def stand_in(spec):
        if spec.endswith(":imagenet"):
            return "mobilenet_v3_small:random:1000"
        if spec.endswith(".keras") and not os.path.exists(spec):
            return f"mobilenet_v3_small:random:{365 if 'places365' in spec else 1000}"
        return spec

    specs = [stand_in(s) for s in config.sources]
    # 224-px rows (VOC) train at 32 px here: the network and loss paths are the same, the step is fast.
    size = [f"--image_size={min(config.image_size[0], 32)}"] if config.image_size else []
    return [
        f"--flagfile={flagfile}",
        f"--dataset={dataset}",
        f"--sources={','.join(specs)}",
        *size,
        "--epochs=1",
        "--steps_per_epoch=2",
        "--batch_size=4",
        "--eval_batch_size=64",
        f"--output_dir={output_dir}",
        "--overwrite",
        "--verbose=0",
    ]


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_every_flagfile_runs_two_smoke_steps(flagfile, tmp_path, monkeypatch):
    results = run_in_process(smoke_overrides(flagfile, tmp_path / "run", monkeypatch), monkeypatch)
    assert results["epochs_completed"] == 1
    assert np.isfinite(results["test"]["loss"])
    assert os.path.exists(tmp_path / "run" / "target.keras")


def test_flagfiles_open_with_command_runtime_and_expectation():
    for flagfile in FLAGFILES:
        with open(os.path.join(ROOT, flagfile)) as f:
            header = "".join(line for line in f if line.startswith("#"))
        assert "python -m sskt_tf.train --flagfile=" + flagfile in header, flagfile
        assert "Runtime" in header and "xpected" in header, flagfile


def test_smoke_cli_writes_every_output(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "sskt_tf.train", "--flagfile=flags/smoke.cfg", f"--output_dir={out}", "--verbose=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "synthetic" and config["sources"] == ["mobilenet_v2:random"]
    assert config["output_dir"] == str(out)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",") == [
        "epoch", "accuracy", "aux_loss_mobilenet_v2_random", "loss", "target_loss",
        "val_accuracy", "val_loss", "val_target_loss",
    ]
    assert len(rows) == 3  # header + 2 epochs
    assert glob.glob(str(out / "tensorboard" / "train" / "events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_completed"] == 2 and results["num_classes"] == 10
    assert results["train_images_per_second"] > 0 and results["wall_time_seconds"] > 0
    assert not (out / "backup").exists()  # BackupAndRestore cleans up after a finished run.
    # The exported target equals the last checkpoint and reproduces the reported test accuracy.
    import sskt_tf  # noqa: F401  (registers the custom layers)
    from sskt_tf import data as data_lib

    target = keras.saving.load_model(out / "target.keras")
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    test = data_lib.load("synthetic", batch_size=16, eval_batch_size=128).test
    images, labels = next(iter(test))
    logits = target.predict(images, verbose=0)
    np.testing.assert_allclose(logits, last.predict(images, verbose=0), rtol=1e-6)
    assert np.mean(np.argmax(logits, -1) == labels.numpy()) == pytest.approx(results["test"]["accuracy"])
    assert {l.name for l in target.layers} == {"images", "resnet20", "pool", "classifier"}


def _cli(args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "sskt_tf.train", *args, f"--output_dir={tmp_path / 'out'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, rc, message",
    [
        (["--dataset=imagenet21k"], 2, "error: --dataset='imagenet21k' is not a known dataset"),
        (["--dataset=synthetic", "--sources=/nowhere/teacher.keras"], 2, "error: --sources: model file '/nowhere/teacher.keras' does not exist"),
        (["--model=resnet19"], 1, "--model"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(args, rc, message, tmp_path):
    proc = _cli(args, tmp_path)
    assert proc.returncode == rc
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_a_finished_run_is_never_overwritten_silently(tmp_path, monkeypatch):
    args = smoke_overrides("flags/smoke.cfg", tmp_path / "run", monkeypatch)
    args[args.index("--overwrite")] = "--nooverwrite"  # smoke.cfg itself allows overwriting
    run_in_process(args, monkeypatch)
    before = (tmp_path / "run" / "results.json").read_text()
    with pytest.raises(UserError, match="holds a finished run"):
        run_in_process(args, monkeypatch)
    with pytest.raises(UserError, match=r"holds a run with other settings \(lr\)"):
        os.remove(tmp_path / "run" / "results.json")
        run_in_process([*args, "--lr=0.05"], monkeypatch)
    assert json.loads(before)["epochs_completed"] == 1


def test_multi_label_run_reports_exact_map_and_the_reference_variant(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = smoke_overrides("flags/smoke.cfg", out, monkeypatch)
    results = run_in_process(
        [*args, "--dataset=synthetic_multilabel:6", "--target_loss=bce", "--epochs=2"], monkeypatch
    )
    test = results["test"]
    assert set(test) == {"loss", "target_loss", "map", "map_per_image_reference"}
    # Recompute both from the saved target's predictions of the test set.
    import keras

    from sskt_tf import data as data_lib
    from sskt_tf import metrics

    data = data_lib.load("synthetic_multilabel:6", batch_size=4, eval_batch_size=64)
    target = keras.saving.load_model(str(out / "target.keras"))
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in data.test])
    scores = target.predict(np.concatenate(images), verbose=0)
    expected = metrics.multi_label_metrics(np.concatenate(labels), scores)
    assert test["map"] == pytest.approx(expected["map"], abs=1e-6)
    assert test["map_per_image_reference"] == pytest.approx(expected["map_per_image_reference"], abs=1e-6)
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_map" in header and "val_map_per_image_reference" in header and "accuracy" not in header
    assert (out / "checkpoints" / "best.keras").exists()  # Picked by val_map.


def test_target_loss_must_fit_the_labels(tmp_path, monkeypatch):
    args = smoke_overrides("flags/smoke.cfg", tmp_path / "run", monkeypatch)
    with pytest.raises(UserError, match=r"--target_loss=bce is for multi-label datasets"):
        run_in_process([*args, "--target_loss=bce"], monkeypatch)
    with pytest.raises(UserError, match=r"is multi-label .* pass --target_loss=bce"):
        run_in_process([*args, "--dataset=synthetic_multilabel:6"], monkeypatch)


def test_bce_is_refused_for_the_baselines(tmp_path, monkeypatch):
    args = smoke_overrides("flags/smoke.cfg", tmp_path / "run", monkeypatch)
    with pytest.raises(UserError, match=r"--target_loss=bce \(multi-label\) only applies to --method=sskt or scratch"):
        run_in_process([*args, "--sources=", "--method=dml", "--target_loss=bce"], monkeypatch)
