"""Tests of the training CLI: every flagfile runs two smoke steps; outputs; one-line errors."""

import contextlib
import csv
import dataclasses
import glob
import json
import os
import subprocess
import sys
import traceback

import keras
import numpy as np
import pytest
from absl import flags

from sskt_tf import config as config_lib
from sskt_tf import data as data_lib
from sskt_tf import sources as sources_lib
from sskt_tf.cli import expand_flagfiles
from sskt_tf.errors import UserError
from conftest import ROOT, run_training

FLAGFILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "flags", "*.cfg")) if not p.endswith("common.cfg")
)
config_lib.define_flags()
FLAGS = flags.FLAGS


# Stand-in class counts of sources whose weights are not here (pretrained or converted files).
_IMAGENET_CLASSES, _PLACES_CLASSES = 1000, 365
_DATASET_STAND_INS = {
    "cifar10": "synthetic:10",
    "cifar100": "synthetic:100",
    "stl10": "synthetic:10",
    "voc2007": "synthetic_multilabel:20",
}


def _spec_classes(spec, default):
    """Classes of the network a spec names: <app>:random:<N>, a places365 file, or `default`."""
    weights = spec.partition(":")[2]
    if weights.startswith("random:"):
        return int(weights.split(":")[1])
    if spec.endswith(".keras") and "places365" in spec:
        return _PLACES_CLASSES
    return default


# Video roots and the Kinetics checkpoint stand in for UCF101, HMDB51 and Hara's converted file: made once per
# process, when a run needs them (not while the flagfiles are grouped at collection), tiny (3 classes x 3
# videos of 6 frames of 24x32 px; a random-weight 3D ResNet of the flagfile's depth), removed at exit.
_VIDEO_STAND_INS = {}


def _video_stand_in(kind, *args):
    if (kind, *args) not in _VIDEO_STAND_INS:
        import atexit
        import shutil
        import tempfile

        import videos  # tests/videos.py

        from sskt_tf.models import resnet3d_classifier

        root = tempfile.mkdtemp(prefix=f"sskt_{kind}_")
        atexit.register(shutil.rmtree, root, True)
        if kind == "ucf101":
            path = videos.make_ucf101_root(root, ["Archery", "Bowling", "Drumming"], 3, num_frames=6)
        elif kind == "hmdb51":
            path = videos.make_hmdb51_root(root, ["climb", "jump", "wave"], 3, num_frames=6)
        else:  # The converted Kinetics checkpoint of `--model`, `--resnet_shortcut`.
            depth, shortcut = args
            path = os.path.join(root, f"resnet{depth}_3d_kinetics.keras")
            resnet3d_classifier(depth, 400, shortcut=shortcut).save(path)
        _VIDEO_STAND_INS[(kind, *args)] = path
    return _VIDEO_STAND_INS[(kind, *args)]


def _video_overrides(config, dry_run=False):
    """Offline stand-ins of a video flagfile: a tiny dataset root, short clips, the Kinetics checkpoint
    (with `dry_run`, their would-be paths, made by nothing)."""
    stand_in = (lambda kind, *args: f"/stand_in/{kind}") if dry_run else _video_stand_in
    if not config_lib.is_video_dataset(config.dataset):
        return []
    out = ["--clip_length=4"]
    # ResNet-18 and -34 (3D) share ResNet-10's code (tests/test_resnet3d.py builds each): the smallest trains here.
    if _ARCHITECTURES.get(config.model) == "resnet3d_basic_blocks":
        out.append("--model=resnet10_3d")
    if config.dataset in ("ucf101", "hmdb51"):
        out.append(f"--data_dir={stand_in(config.dataset)}")
    if config.init_checkpoint and not os.path.exists(config.init_checkpoint):
        depth = 10 if _ARCHITECTURES.get(config.model) == "resnet3d_basic_blocks" else int(config.model[6:-3])
        out.append(f"--init_checkpoint={stand_in('kinetics', depth, config.resnet_shortcut)}")
    return out


def _dataset_classes(dataset):
    if dataset.startswith(("synthetic:", "synthetic_multilabel:")):
        return int(dataset.split(":")[1])
    return 10  # synthetic


@contextlib.contextmanager
def _in_root():
    cwd = os.getcwd()
    os.chdir(ROOT)  # Flagfiles and checkpoints/ paths are relative to the repository root.
    try:
        yield
    finally:
        os.chdir(cwd)


def resolved_config(args):
    """The `Config` the training command builds from `args` (raises what it raises)."""
    with _in_root():
        FLAGS.unparse_flags()
        try:
            FLAGS(["sskt_tf.train", *expand_flagfiles(args, configs=True)])
            return config_lib.from_flags()
        finally:
            FLAGS.unparse_flags()


def smoke_overrides(flagfile, output_dir, stand_ins, dry_run=False):
    """Offline stand-ins: synthetic data with the right class count, tiny random sources, 2 steps."""
    config = resolved_config([f"--flagfile={flagfile}"])
    dataset = _DATASET_STAND_INS.get(config.dataset, config.dataset)

    # Every source becomes a tiny network of the same class count and name: pretrained weights and
    # converted files are not here, and a real application (even with random weights) would cost
    # most of each run in building and tracing. Existing .keras files are used as they are.
    def stand_in(spec, default_classes, index):
        if spec.endswith(".keras") and os.path.exists(os.path.join(ROOT, spec)):
            return spec
        return stand_ins(sources_lib.source_name(spec), _spec_classes(spec, default_classes), index)

    specs = [stand_in(s, _IMAGENET_CLASSES, i) for i, s in enumerate(config.sources)]
    teacher = [f"--teacher={stand_in(config.teacher, _dataset_classes(dataset), 'teacher')}"] if config.teacher else []
    # 224-px rows (VOC) train at 32 px here: the network and loss paths are the same, the step is fast.
    size = [f"--image_size={min(config.image_size[0], 32)}"] if config.image_size else []
    return [
        f"--flagfile={flagfile}",
        f"--dataset={dataset}",
        f"--sources={','.join(specs)}",
        *teacher,
        *size,
        *_video_overrides(config, dry_run),
        "--epochs=1",
        "--steps_per_epoch=2",
        "--batch_size=4",
        "--eval_batch_size=64",
        f"--output_dir={output_dir}",
        "--overwrite",
        "--verbose=0",
    ]


def test_flagfiles_open_with_command_runtime_and_expectation():
    for flagfile in FLAGFILES:
        with open(os.path.join(ROOT, flagfile)) as f:
            header = "".join(line for line in f if line.startswith("#"))
        assert "python -m sskt_tf.train --config=" + os.path.basename(flagfile).removesuffix(".cfg") in header, flagfile
        assert "Runtime" in header and "xpected" in header, flagfile


def _smoke_cli(workdir, stand_ins):
    out = workdir / "smoke"
    command = [sys.executable, "-m", "sskt_tf.train", "--flagfile=flags/smoke.cfg", f"--output_dir={out}", "--verbose=2"]
    return (out, subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300))


@pytest.mark.slow
def test_smoke_cli_writes_every_output(tmp_path, stand_ins):
    out, proc = _smoke_cli(tmp_path, stand_ins)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "synthetic" and config["sources"] == ["mobilenet_v2:random"]
    assert config["output_dir"] == str(out)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",") == [
        "epoch", "accuracy", "aux_agreement_mobilenet_v2_random", "aux_loss_mobilenet_v2_random", "images_per_second",
        "loss", "lr", "source_entropy_mobilenet_v2_random", "target_loss", "val_accuracy", "val_loss", "val_target_loss",
    ]
    assert len(rows) == 3  # header + 2 epochs
    assert glob.glob(str(out / "tensorboard" / "train" / "events.out.tfevents.*"))
    # The summary block, before the first epoch: the source sees 32 px images upscaled by 7/3 (floor).
    printed = proc.stdout.splitlines()
    assert printed.index("run summary") < printed.index("Epoch 1/2"), proc.stdout[:3000]
    assert "  dataset     synthetic: 512 training images, 128 test images, 10 classes, 32x32 px" in printed
    assert "  steps       2 epochs x 3 steps x 16 images (global batch; 1 replica); a full pass is 32 steps" in printed
    assert f"  output_dir  {out}" in printed and "  method      sskt" in printed
    assert any(line.split()[0] == "mobilenet_v2_random" and line.split()[2:3] == ["74x74"] and line.endswith(" mobilenet_v2:random") for line in printed), printed
    assert "frozen (BatchNorm: inference); each with a transfer_module head on the target" in proc.stdout
    assert (out / "summary.txt").read_text().splitlines() == printed[printed.index("run summary") : printed.index(f"  output_dir  {out}") + 1]
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_completed"] == 2 and results["num_classes"] == 10
    assert results["train_images_per_second"] > 0 and results["wall_time_seconds"] > 0
    assert not (out / "backup").exists()  # The resumption state goes once results.json is written.
    # Without --validation_split, best.keras is chosen on the test set (the paper's code), and says so.
    assert results["best"]["split"] == "test" and results["best"]["monitor"] == "val_accuracy"
    assert results["validation_from"] is None and results["num_validation"] == 0
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


def _scalars(directory, tag):
    """`{step: value}` of the scalar `tag` in the TensorBoard event files of `directory`."""
    import tensorflow as tf

    found = {}
    for path in sorted(glob.glob(str(directory / "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return found


BAD_INPUT = [
    (["--dataset=imagenet21k"], 2, "error: --dataset='imagenet21k' is not a known dataset"),
    (["--dataset=synthetic", "--sources=/nowhere/teacher.keras"], 2, "error: --sources: model file '/nowhere/teacher.keras' does not exist"),
    (["--model=resnet19"], 2, "error: flag --model=resnet19: value should be one of <resnet20|"),
]


def _bad_input(workdir, stand_ins):
    # The commands run at the same time: each is mostly TensorFlow's import, on one core.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sskt_tf.train", *args, f"--output_dir={workdir / str(i)}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (args, _, _) in enumerate(BAD_INPUT)
    ]
    outcomes = [(proc.communicate(timeout=300)[1], proc.returncode) for proc in procs]
    return [(stderr, rc, (workdir / str(i)).exists()) for i, (stderr, rc) in enumerate(outcomes)]


@pytest.mark.slow
def test_bad_input_is_one_line_not_a_traceback(tmp_path, stand_ins):
    for (args, rc, message), (stderr, returncode, wrote) in zip(BAD_INPUT, _bad_input(tmp_path, stand_ins)):
        assert returncode == rc, (args, stderr[-2000:])
        assert not wrote, f"{args}: a refused start created its --output_dir"
        assert "Traceback" not in stderr, args
        assert message in stderr, (args, stderr[-2000:])


def test_refused_starts_leave_nothing_behind_and_a_finished_run_is_kept(tmp_path, monkeypatch, capsys, stand_ins):
    """One small run with --validation_split and --eval_every, and every refusal around it."""
    out = tmp_path / "run"
    # Without a source: the refusals are about the directory and the inputs, not the run's contents.
    args = [*smoke_overrides("flags/smoke.cfg", out, stand_ins), "--sources=", "--epochs=3", "--eval_every=2", "--validation_split=0.25"]
    args[args.index("--overwrite")] = "--nooverwrite"  # smoke_overrides allows overwriting
    # An --output_dir that cannot be a directory: one line, before anything else.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^--output_dir=\S*a_file exists and is not a directory"):
        run_training([*args, f"--output_dir={tmp_path / 'a_file'}"])
    with pytest.raises(UserError, match=r"^--output_dir=\S*a_file/run cannot be created: \S*a_file is a file"):
        run_training([*args, f"--output_dir={tmp_path / 'a_file' / 'run'}"])
    with pytest.raises(UserError, match=r"^--soft_label_cache_dir=\S*a_file is a file, not a directory"):
        run_training([*args, "--soft_label_cache=replay", f"--soft_label_cache_dir={tmp_path / 'a_file'}"])
    # A start refused for its sources (checked after the data) writes nothing...
    with pytest.raises(UserError, match="does not exist"):
        run_training([*args, "--sources=/nowhere/source.keras"])
    assert not out.exists()
    # ...and the leftovers of a failed start with other settings (no finished or resumable state) do not block.
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dataset": "cifar10", "lr": 0.5}))
    (out / "metrics.csv").write_text("epoch,accuracy\n0,0.5\n")
    capsys.readouterr()
    results = run_training(args)
    assert json.loads((out / "config.json").read_text())["lr"] == 0.1
    # The summary block (printed and in summary.txt): --method=sskt without sources is scratch, there too.
    summary = (out / "summary.txt").read_text()
    assert summary in capsys.readouterr().out
    assert summary.splitlines()[1:] == [
        f"  dataset     synthetic: {results['num_train']} training images, {results['num_test']} test images, 10 classes, 32x32 px",
        f"  validation  {results['num_validation']} images held out of the training set (--validation_split=0.25); picks "
        "best.keras, evaluated every 2 epochs and after the last",
        "  method      scratch (--method=sskt without --sources: the target alone)",
        f"  target      resnet20: {results['target_parameters']:,} parameters",
        f"  steps       3 epochs x 2 steps x 4 images (global batch; 1 replica); a full pass is {results['num_train'] // 4} steps",
        "  schedule    SGD lr 0.1, momentum 0.9, coupled L2 0.0005; x0.2 after epochs 1",
        f"  output_dir  {out}",
    ]
    assert results["method"] == "scratch"

    # Validation: a held-out share of the training set, evaluated after epochs 2 and 3 (the last).
    assert results["validation_from"] == "validation_split"
    assert results["num_validation"] > 0 and results["num_train"] + results["num_validation"] == 512
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # Counted from 1, as the console; the leftover row is gone.
    # The learning rate of each epoch's last step (milestone 1: epoch 1 at --lr, then times --lr_gamma).
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.02, 0.02], rel=1e-6)
    assert all(float(r["images_per_second"]) > 0 for r in rows)
    # TensorBoard: the same epoch numbers (validation: the evaluated epochs 2 and 3) and values.
    assert _scalars(out / "tensorboard" / "train", "epoch_loss") == pytest.approx({i + 1: float(r["loss"]) for i, r in enumerate(rows)})
    assert _scalars(out / "tensorboard" / "train", "epoch_lr") == pytest.approx({1: 0.1, 2: 0.02, 3: 0.02}, rel=1e-6)
    assert _scalars(out / "tensorboard" / "validation", "epoch_accuracy") == pytest.approx(
        {int(r["epoch"]): float(r["val_accuracy"]) for r in rows if r["val_accuracy"]}
    )
    assert rows[0]["val_accuracy"] == "" and rows[1]["val_accuracy"] and rows[2]["val_accuracy"]
    best = results["best"]
    assert best["split"] == "validation" and best["monitor"] == "val_accuracy" and best["epoch"] in (2, 3)
    evaluated = {int(r["epoch"]): float(r["val_accuracy"]) for r in rows if r["val_accuracy"]}
    # The earliest epoch with the highest value (a tie keeps the earlier checkpoint).
    assert best["epoch"] == min(e for e, v in evaluated.items() if v == max(evaluated.values()))
    assert best["value"] == pytest.approx(evaluated[best["epoch"]])
    # The test set scores both checkpoints once, at the end; the headline `test` is the last epoch's.
    assert set(results["test"]) == set(results["test_best"]) == {"accuracy", "loss", "target_loss"}
    test_data = data_lib.load("synthetic", batch_size=4, eval_batch_size=64).test
    for key, path in (("test", out / "checkpoints" / "last.keras"), ("test_best", out / "checkpoints" / "best.keras")):
        images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in test_data])
        logits = keras.saving.load_model(path).predict(np.concatenate(images), verbose=0)
        assert results[key]["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == np.concatenate(labels))), key

    # The same command again: where the results are, exit status 0, nothing trained.
    capsys.readouterr()
    assert run_training(args) == results
    assert f"this run is finished: results in {out / 'results.json'} (test: " in capsys.readouterr().out
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Other settings: refused with the old and new value of each, nothing written.
    with pytest.raises(UserError, match=r"holds a finished run with other settings \(--epochs: 3 -> 4; --lr: 0.1 -> 0.05\)"):
        run_training([*args, "--lr=0.05", "--epochs=4"])
    # --overwrite replaces the run, but only once every check has passed.
    with pytest.raises(UserError, match="does not exist"):
        run_training([*args, "--overwrite", "--sources=/nowhere/source.keras"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_multi_label_run_reports_exact_map_and_the_reference_variant(tmp_path, stand_ins, capsys):
    out = tmp_path / "run"
    args = smoke_overrides("flags/smoke.cfg", out, stand_ins)
    capsys.readouterr()
    results = run_training(
        [*args, "--dataset=synthetic_multilabel:6", "--target_loss=bce", "--epochs=2", "--aux_head=linear"]
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
    assert (out / "checkpoints" / "best.keras").exists() and results["best"]["monitor"] == "val_map"
    # The summary's source row: the stand-in (mean colour -> Dense(1000): 3 * 1000 + 1000 parameters) sees
    # the 32 px images at 74 px (7/3, floor); its linear head is Dense(1000) on resnet20's 64 channels.
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[1].endswith(f"{results['num_test']} test images, 6 labels (multi-label), 32x32 px"), summary
    (row,) = [line.split() for line in summary if line.strip().startswith("mobilenet_v2_random")]
    assert row[1:4] == ["4,000", "74x74", "65,000"] and row[4].endswith("mobilenet_v2_random.keras"), summary
    # What the source teaches (sskt_tf.diagnostics): the last epoch's values in results.json and TensorBoard;
    # the stand-in's 1000 logits are nearly equal (a Dense of 3 mean colours), so one warning after epoch 1.
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    (source,) = results["sources"]
    assert source["agreement"] == float(last["aux_agreement_mobilenet_v2_random"])
    assert source["relative_entropy"] == float(last["source_entropy_mobilenet_v2_random"]) > 0.99
    assert 0.0 <= source["agreement"] <= 1.0 and json.loads((out / "results.json").read_text()) == results
    import tensorflow as tf

    tags = set()
    for path in glob.glob(str(out / "tensorboard" / "train" / "events.out.tfevents.*")):
        tags |= {v.tag for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert {"epoch_aux_agreement_mobilenet_v2_random", "epoch_source_entropy_mobilenet_v2_random"} <= tags
    assert capsys.readouterr().out.count(": warning: its soft labels softmax(s/T) at --temperature=3 are near-uniform") == 1


def test_target_loss_must_fit_the_labels(tmp_path, stand_ins):
    args = smoke_overrides("flags/smoke.cfg", tmp_path / "run", stand_ins)
    with pytest.raises(UserError, match=r"--target_loss=bce is for multi-label datasets"):
        run_training([*args, "--target_loss=bce"])
    with pytest.raises(UserError, match=r"is multi-label .* pass --target_loss=bce"):
        run_training([*args, "--dataset=synthetic_multilabel:6"])


def test_bce_is_refused_for_the_baselines(tmp_path, stand_ins):
    args = smoke_overrides("flags/smoke.cfg", tmp_path / "run", stand_ins)
    with pytest.raises(UserError, match=r"--target_loss=bce \(multi-label\) only applies to --method=sskt or scratch"):
        run_training([*args, "--sources=", "--method=dml", "--target_loss=bce"])


# --- Every flagfile -----------------------------------------------------------------------------------
#
# Each flagfile runs two smoke steps through the training command (train.main), with offline stand-ins
# for its data and sources (smoke_overrides). Flagfiles whose `Config`s differ only in values that
# select no other code (learning-rate numbers, seeds, sizes, class counts, the weights of the
# auxiliary losses: `_VALUES`; the depth of one architecture, `_ARCHITECTURES`) run the same steps: each
# such group trains once (in this process), and
# every flagfile of it checks that it resolves, that it differs from the trained one in those values
# only, and the run's outputs. The flagfiles of one code path share an xdist group (one worker holds
# their run); the code paths are split over two groups.

# Config fields whose values, not presence, differ between flagfiles of the same code path.
_VALUES = (
    "lr", "momentum", "weight_decay", "lr_milestones", "lr_gamma", "seed", "source_scale", "image_size", "epochs",
    "batch_size", "eval_every", "kd_alpha", "maxl_psi", "output_dir", "data_dir", "video_split",
)


_ARCHITECTURES = {
    **{f"resnet{n}": "cifar_resnet" for n in (20, 32, 44, 56, 110)},
    "resnet18": "resnet_basic_blocks",
    "resnet34": "resnet_basic_blocks",
    **{f"resnet{n}_3d": "resnet3d_basic_blocks" for n in (10, 18, 34)},
}
# UCF101 and HMDB51 differ only in how their split lists are read (tests/data/test_video_index.py).
_SAME_CODE_DATASETS = {"ucf101": "video_split_lists", "hmdb51": "video_split_lists"}


def _code_path(config):
    """The config as a dict without `_VALUES`; the dataset by kind and the sources by number."""
    d = json.loads(config.to_json())
    for name in _VALUES:
        d.pop(name)
    d["dataset"] = _SAME_CODE_DATASETS.get(config.dataset, config.dataset.partition(":")[0])
    d["init_checkpoint"] = bool(config.init_checkpoint)
    # Depths of one architecture share their code (tests/test_models.py, test_resnet.py build each).
    d["model"] = _ARCHITECTURES.get(config.model, config.model)
    d["sources"], d["alpha"], d["temperature"] = len(config.sources), len(config.alpha), len(config.temperature)
    d["teacher"] = bool(config.teacher)
    return json.dumps(d, sort_keys=True)


def _flagfile_args(flagfile, output_dir, stand_ins, dry_run=False):
    # One epoch: no resumption state to write (test_resilience.py tests resumption).
    return [*smoke_overrides(flagfile, output_dir, stand_ins, dry_run), "--noresume"]


_FLAGFILE_RUNS = {}  # The code path -> (the trained Config, its output directory, its outcome).


def _flagfile_run(flagfile, stand_ins, root):
    """The run of the flagfile's code path: its Config, output directory and outcome (`{"results": ...}`
    or `{"error": ...}`), trained here by the first flagfile of that path."""
    args = _flagfile_args(flagfile, "OUTPUT_DIR", stand_ins)
    args.remove("--output_dir=OUTPUT_DIR")
    key = _code_path(resolved_config(args))
    if key not in _FLAGFILE_RUNS:
        out = root / f"run_{len(_FLAGFILE_RUNS):02d}"
        config = resolved_config([*args, f"--output_dir={out}"])
        try:
            outcome = {"results": run_training([*args, f"--output_dir={out}"])}
        except Exception:  # noqa: BLE001  (every flagfile of the run reports it)
            outcome = {"error": traceback.format_exc()}
        _FLAGFILE_RUNS[key] = config, out, outcome
    return _FLAGFILE_RUNS[key]


@pytest.fixture(scope="module")
def flagfile_runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("flagfile_runs")


def _flagfile_params():
    """One param per flagfile, in two xdist groups that split the code paths: two workers share the runs."""
    index = {}  # code path -> its order of appearance
    group = {}
    for flagfile in FLAGFILES:
        args = _flagfile_args(flagfile, "OUTPUT_DIR", lambda name, classes, index=0: f"mobilenet_v2:random:{classes}", dry_run=True)
        args.remove("--output_dir=OUTPUT_DIR")
        path = _code_path(resolved_config(args))
        group[flagfile] = index.setdefault(path, len(index)) % 2
    FLAGS.unparse_flags()
    return [pytest.param(f, marks=pytest.mark.xdist_group(f"flagfile_runs_{group[f]}")) for f in FLAGFILES]


@pytest.mark.slow
@pytest.mark.parametrize("flagfile", _flagfile_params())
def test_every_flagfile_runs_two_smoke_steps(flagfile, stand_ins, flagfile_runs_dir):
    trained, out, outcome = _flagfile_run(flagfile, stand_ins, flagfile_runs_dir)
    config = resolved_config(_flagfile_args(flagfile, out, stand_ins))
    assert "error" not in outcome, f"{flagfile}:\n{outcome.get('error')}"
    results = outcome["results"]
    assert results["epochs_completed"] == 1
    assert np.isfinite(results["test"]["loss"])
    assert (out / "target.keras").exists()
    # This flagfile's Config differs from the trained one in values only (identical for the flagfile that trained it).
    assert _code_path(config) == _code_path(trained)
    differ = {k for k, v in json.loads(config.to_json()).items() if json.loads(trained.to_json())[k] != v}
    assert differ <= {*_VALUES, "dataset", "model", "sources", "alpha", "temperature", "teacher", "init_checkpoint"}, differ
    # The run is the trained Config's: the configuration it wrote.
    assert json.loads((out / "config.json").read_text()) == json.loads(trained.to_json())
