"""Tests of the comparison runner: flags per method, resumption, the table and the picture, the real command."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
from absl import flags
from conftest import assert_one_error_line, run_commands

from sskt_tf import cli, compare
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
compare.define_flags()
FLAGS = flags.FLAGS
SMOKE = ["--flagfile=flags/compare_smoke.cfg", "--teacher=mobilenet_v2:random:10"]


@pytest.fixture
def parsed(monkeypatch):
    """Parses runner arguments on the global flags (from the repository root), and clears them after."""
    monkeypatch.chdir(ROOT)

    def parse(*args):
        FLAGS.unparse_flags()
        FLAGS(["sskt_tf.compare", *cli.expand_flagfiles(args, configs=True)])  # As the command reads them.

    yield parse
    FLAGS.unparse_flags()


def test_each_method_gets_the_shared_flags_and_only_its_own(parsed, tmp_path):
    parsed(*SMOKE, "--seeds=2", "--seed=5", "--maxl_entropy_weight=0.1", "--kd_alpha=0.5", f"--output_dir={tmp_path}")
    root, methods, runs = compare.plan(FLAGS)
    assert root == str(tmp_path) and methods == ["sskt", "scratch", "kd", "dml", "maxl"]
    assert [(m, s) for m, s, _, _ in runs] == [(m, s) for m in methods for s in (5, 6)]
    by_method = {m: args for m, s, _, args in runs if s == 5}
    for method, args in by_method.items():
        assert f"--method={method}" in args and "--seed=5" in args and "--nooverwrite" in args
        assert f"--output_dir={tmp_path / method / 'seed5'}" in args
        assert "--epochs=2" in args and "--source_scale=1" in args  # the flagfile's values
        assert ("--sources=mobilenet_v2:random" in args) == (method == "sskt")
        assert ("--teacher=mobilenet_v2:random:10" in args) == (method == "kd")
        assert ("--kd_alpha=0.5" in args) == (method == "kd")
        assert ("--maxl_entropy_weight=0.1" in args) == (method == "maxl")
    configs = {m: compare.resolve_config(args) for m, args in by_method.items()}
    assert configs["sskt"].sources == ("mobilenet_v2:random",) and configs["kd"].sources == ()
    assert configs["kd"].teacher == "mobilenet_v2:random:10" and configs["kd"].kd_alpha == 0.5
    assert configs["maxl"].maxl_entropy_weight == 0.1 and configs["dml"].maxl_entropy_weight == 0.2
    assert {c.epochs for c in configs.values()} == {2} and {c.seed for c in configs.values()} == {5}
    assert all(c.soft_label_cache_dir is None for c in configs.values())


def test_the_soft_label_cache_is_one_directory_for_every_method_and_seed(parsed, tmp_path):
    parsed(*SMOKE, "--seeds=2", "--soft_label_cache=replay", "--replay_views=2", f"--output_dir={tmp_path}")
    _, _, runs = compare.plan(FLAGS)
    configs = [compare.resolve_config(args) for _, _, _, args in runs]
    assert {c.soft_label_cache_dir for c in configs} == {str(tmp_path / "soft_label_cache")}
    assert {(c.soft_label_cache, c.replay_views) for c in configs} == {("replay", 2)}
    parsed(*SMOKE, "--soft_label_cache=clean", f"--soft_label_cache_dir={tmp_path / 'mine'}", f"--output_dir={tmp_path}")
    _, _, runs = compare.plan(FLAGS)
    assert {compare.resolve_config(args).soft_label_cache_dir for _, _, _, args in runs} == {str(tmp_path / "mine")}


def test_kd_without_a_teacher_stops_the_runner_before_any_run(parsed, tmp_path):
    parsed("--flagfile=flags/compare_smoke.cfg", f"--output_dir={tmp_path}")
    with pytest.raises(UserError, match=r"--methods includes kd: --method=kd needs --teacher=<spec>"):
        compare.main(["compare"], run_training=lambda args, log: pytest.fail("no run may start"))
    with pytest.raises(UserError, match=r"--methods=sskt,gan: give each method once"):
        parsed("--flagfile=flags/compare_smoke.cfg", "--methods=sskt,gan")
        compare.main(["compare"])


ACCURACY = {"sskt": 0.30, "scratch": 0.20, "kd": 0.25, "dml": 0.27, "maxl": 0.22}


def fake_training(calls, epochs=2):
    """Stands in for `python -m sskt_tf.train`: writes what a finished run writes, numbers from method and seed."""

    def run(args, log_path):
        config = compare.resolve_config(args)
        calls.append((config.method, config.seed))
        out = config.output_dir
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(config.to_json())
        final = ACCURACY[config.method] + 0.02 * config.seed
        with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "accuracy", "val_accuracy"])
            for e in range(1, epochs + 1):  # Epochs counted from 1, as train writes them.
                writer.writerow([e, 0.5, final * e / epochs])
        results = {"status": "finished", "test": {"accuracy": final, "loss": 1.0}, "epochs_completed": epochs, "wall_time_seconds": 90.0}
        if config.method == "dml":
            results["peers"] = [{"accuracy": final}, {"accuracy": final - 0.04}]
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f)
        return 0

    return run


def test_runner_writes_table_and_picture_and_resumes(parsed, tmp_path, capsys):
    parsed(*SMOKE, "--seeds=2", f"--output_dir={tmp_path}")
    calls = []
    summary = compare.main(["compare"], run_training=fake_training(calls), command="python -m sskt_tf.compare (test)")
    assert len(calls) == 10
    assert summary["sskt"]["test_accuracy"] == pytest.approx([30.0, 32.0])
    assert summary["sskt"]["mean"] == pytest.approx(31.0) and summary["sskt"]["std"] == pytest.approx(2**0.5)
    assert summary["dml"]["all_peers_mean"] == pytest.approx((27 + 23 + 29 + 25) / 4)
    table = (tmp_path / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0] for row in rows] == ["| SSKT", "| scratch", "| KD", "| DML", "| MAXL"]
    assert "| SSKT | sources: mobilenet_v2:random | 0,1 | 31.00 +- 1.41 | 30.00, 32.00 | - | 1.5 |" in table
    assert "teacher: mobilenet_v2:random:10, a=0.9, T=3" in table and "psi=10, second-order" in table
    assert "python -m sskt_tf.compare (test)" in table and "![test accuracy per epoch](comparison.png)" in table
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "comparison.json").read_text())["kd"]["mean"] == pytest.approx(26.0)
    # Again: every run is finished, nothing is trained, the same table comes out.
    parsed(*SMOKE, "--seeds=2", f"--output_dir={tmp_path}")
    compare.main(["compare"], run_training=lambda args, log: pytest.fail("a finished run was redone"), command="python -m sskt_tf.compare (test)")
    assert (tmp_path / "comparison.md").read_text() == table
    assert capsys.readouterr().out.count("finished before, kept") == 10
    # A finished run with other settings is never mixed into the table.
    parsed(*SMOKE, "--seeds=2", "--lr=0.05", f"--output_dir={tmp_path}")
    with pytest.raises(UserError, match=r"sskt/seed0 holds a finished run with other settings \(lr\)"):
        compare.main(["compare"], run_training=lambda args, log: pytest.fail("no run may start"))


def test_a_failed_run_stops_the_runner_with_its_error_line(parsed, tmp_path):
    def failing(args, log_path):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as f:
            f.write("loading...\nerror: --dataset='nowhere' is not a known dataset; pass e.g. --dataset=cifar10.\n")
        return 2

    parsed(*SMOKE, "--seeds=1", "--methods=scratch", f"--output_dir={tmp_path}")
    with pytest.raises(UserError) as failed:
        compare.main(["compare"], run_training=failing)
    # The child's line without its own "error: " (the runner prints one) and without a doubled period.
    assert str(failed.value) == (
        "the scratch run with seed 0 failed (exit status 2): --dataset='nowhere' is not a known dataset; pass e.g. "
        f"--dataset=cifar10. Its log: {tmp_path / 'scratch' / 'seed0' / 'train.log'}"
    )


def test_a_teacher_of_another_class_count_stops_the_runner_before_any_run(parsed, tmp_path):
    import keras

    never = lambda args, log: pytest.fail("no run may start")  # noqa: E731
    parsed(*SMOKE[:1], "--teacher=mobilenet_v2:random:5", "--methods=scratch,kd", f"--output_dir={tmp_path / 'a'}")
    with pytest.raises(UserError, match=r"^--methods includes kd: --teacher=mobilenet_v2:random:5 predicts 5 classes but --dataset=synthetic has 10; KD needs"):
        compare.main(["compare"], run_training=never)
    # A .keras teacher against a folder dataset's class folders (no image is read).
    for name in ("cat", "dog", ".hidden"):
        os.makedirs(tmp_path / "pets" / "train" / name)
    teacher = keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    teacher.save(tmp_path / "teacher3.keras")
    parsed(*SMOKE[:1], f"--teacher={tmp_path / 'teacher3.keras'}", f"--dataset=folder:{tmp_path / 'pets'}", "--methods=kd", f"--output_dir={tmp_path / 'b'}")
    with pytest.raises(UserError, match=r"teacher3.keras predicts 3 classes but --dataset=folder:.*pets has 2;"):
        compare.main(["compare"], run_training=never)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert compare._teacher_classes("resnet50:/w.h5") is None and compare._dataset_classes("tfds:oxford_flowers102") is None


def test_the_default_output_dir_is_said_in_the_help_and_at_start(parsed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FLAGS["output_dir"], "help", FLAGS["output_dir"].help)  # Put back after the test.
    train_default = FLAGS["output_dir"].default
    compare.define_command_flags()
    try:
        assert "the comparison go" in FLAGS["output_dir"].help and FLAGS["output_dir"].default_as_str == "'runs/compare'"
    finally:
        FLAGS.set_default("output_dir", train_default)
    parsed("--dataset=synthetic", "--methods=scratch", "--seeds=1")
    monkeypatch.chdir(tmp_path)
    compare.main(["compare"], run_training=fake_training([]))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "runs under runs/compare (the default --output_dir; pass --output_dir=<dir> to choose)"
    assert any(line.startswith("scratch: ") and line.endswith("% (1 seed)") for line in printed), printed
    assert (tmp_path / "runs" / "compare" / "comparison.md").exists()


def test_progress_says_what_is_kept_and_the_time_left_and_verbose_0_silences_it(parsed, tmp_path, capsys):
    parsed(*SMOKE, "--methods=scratch,dml", "--seeds=2", f"--output_dir={tmp_path}")
    compare.main(["compare"], run_training=fake_training([]))
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "4 runs: 0 finished before (kept), 4 to train"
    done = [line for line in printed if ": done in " in line]
    assert [line.split(":")[0] for line in done] == ["[1/4] scratch seed 0", "[2/4] scratch seed 1", "[3/4] dml seed 0", "[4/4] dml seed 1"]
    assert [line.split("; ")[-1].split(",")[0] for line in done[:3]] == ["3 runs left", "2 runs left", "1 run left"]
    assert done[3].endswith("%")  # The last run: nothing left.
    # --verbose=0 (passed on to the runs): no progress lines, the comparison only.
    calls = []
    parsed(*SMOKE, "--methods=scratch,dml", "--seeds=2", "--verbose=0", f"--output_dir={tmp_path / 'quiet'}")
    compare.main(["compare"], run_training=fake_training(calls))
    printed = capsys.readouterr().out.splitlines()
    assert len(calls) == 4 and [line.split(":")[0] for line in printed] == ["runs under " + str(tmp_path / "quiet"), "scratch", "DML", "comparison"]


def test_the_time_left_follows_each_methods_runs_so_far():
    assert [compare.format_duration(s) for s in (45, 725, 12000)] == ["45 s", "12 min 05 s", "3 h 20 min"]
    noon = time.mktime((2024, 1, 1, 12, 0, 0, 0, 0, -1))
    # sskt: its mean (90 s); dml: its own (300 s); kd, not trained yet: the mean of every run (160 s).
    left = compare.time_left(["sskt", "dml", "kd"], {"sskt": [60.0, 120.0], "dml": [300.0]}, now=noon)
    assert left == "; 3 runs left, about 9 min 10 s (until about 12:09)"
    assert compare.time_left([], {"sskt": [60.0]}) == ""


def _real_command(workdir, stand_ins):
    out = workdir / "compare"
    # A tiny teacher of the 10 classes: the application teachers are built in test_sources.py.
    teacher = stand_ins("teacher_net", 10)
    command = [
        sys.executable, "-m", "sskt_tf.compare", SMOKE[0], f"--teacher={teacher}", "--methods=kd", "--seeds=1",
        "--steps_per_epoch=1", f"--output_dir={out}",
    ]
    return (out, teacher, subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600))


@pytest.mark.slow
def test_the_command_trains_for_real_on_smoke_settings(tmp_path, stand_ins):
    out, teacher, proc = _real_command(tmp_path, stand_ins)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    # KD: the routed --teacher reached the subprocess (the other methods run from the command in test_methods).
    results = json.loads((out / "kd" / "seed0" / "results.json").read_text())
    assert results["method"] == "kd" and results["epochs_completed"] == 2
    assert results["teacher"]["spec"] == teacher
    assert (out / "kd" / "seed0" / "train.log").exists() and (out / "kd" / "seed0" / "target.keras").exists()
    table = (out / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0] for row in rows] == ["| KD"]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison: " in proc.stdout and "Traceback" not in proc.stderr


def test_resolving_a_run_leaves_the_runner_flags_as_they_were(parsed, tmp_path):
    parsed(*SMOKE, "--seeds=2", f"--output_dir={tmp_path}")
    _, _, runs = compare.plan(FLAGS)
    compare.resolve_config(runs[0][3])
    assert FLAGS.is_parsed() and FLAGS.seeds == 2 and FLAGS.output_dir == str(tmp_path) and FLAGS["teacher"].present
    FLAGS.unparse_flags()
    compare.resolve_config(runs[0][3])
    assert not FLAGS.is_parsed()


def _cli_errors(workdir, stand_ins):
    """The runner's error paths from the command line, all at once."""
    (workdir / "a_file").write_text("x")
    command = [sys.executable, "-m", "sskt_tf.compare"]
    commands = {
        # It printed the line, then about 40 lines of tracebacks (UnparsedFlagAccessError), exit status 1.
        "no teacher": [*command, "--flagfile=flags/compare_smoke.cfg", f"--output_dir={workdir / 'out'}"],
        "output_dir is a file": [*command, *SMOKE, "--methods=scratch", f"--output_dir={workdir / 'a_file'}"],
        "unknown flag": [*command, *SMOKE, "--seedz=2"],
    }
    return (workdir, dict(zip(commands, run_commands(list(commands.values())))))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, stand_ins):
    workdir, results = _cli_errors(tmp_path, stand_ins)
    assert_one_error_line(results["no teacher"], "--methods includes kd: --method=kd needs --teacher=<spec>")
    assert_one_error_line(results["output_dir is a file"], str(workdir / "a_file"), "is a file")
    assert_one_error_line(results["unknown flag"], "unknown flag --seedz", "did you mean --seed or --seeds?")
    assert not (workdir / "out").exists() and (workdir / "a_file").read_text() == "x"
