"""Tests of sskt_tf.report: the numbers, the markdown table, the JSON and the picture of finished runs.

The runs are written here as `python -m sskt_tf.train` writes them (config.json, results.json,
metrics.csv); the runner that trains them is tested in test_compare.py.
"""

import csv
import json
import os
import sys

import pytest

from sskt_tf import report
from sskt_tf.errors import UserError

SETTINGS = {
    "dataset": "synthetic", "model": "resnet20", "epochs": 2, "batch_size": 16, "lr": 0.1, "sources": [],
    "teacher": None, "kd_alpha": 0.9, "temperature": [3.0], "dml_peers": 2, "maxl_psi": [10], "maxl_first_order": False,
}


def write_run(run_dir, method, seed, accuracy, curve=(0.1, 0.2), peers=(), **settings):
    """A finished run as the training command leaves it."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({**SETTINGS, "method": method, "seed": seed, **settings}, f)
    results = {"status": "finished", "test": {"accuracy": accuracy}, "epochs_completed": len(curve), "wall_time_seconds": 90.0}
    if peers:
        results["peers"] = [{"accuracy": a} for a in peers]
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "accuracy", "val_accuracy"])
        writer.writerows([e, 0.5, v] for e, v in enumerate(curve, 1))  # Epochs counted from 1, as train writes them.
    return report.read_run(run_dir)


def runs(tmp_path, **settings):
    return {
        "sskt": [
            write_run(tmp_path / "sskt" / f"seed{s}", "sskt", s, a, sources=["mobilenet_v2:random"], **settings)
            for s, a in ((0, 0.30), (1, 0.32))
        ],
        "kd": [write_run(tmp_path / "kd" / "seed0", "kd", 0, 0.25, teacher="/runs/teacher/target.keras", **settings)],
        "dml": [write_run(tmp_path / "dml" / "seed0", "dml", 0, 0.27, peers=(0.27, 0.23), **settings)],
    }


def test_mean_std_is_the_sample_std():
    assert report.mean_std([30.0, 32.0]) == (31.0, pytest.approx(2**0.5))
    assert report.mean_std([5.0]) == (5.0, None)
    assert report.plus_minus(31.0, 2**0.5) == "31.00 +- 1.41" and report.plus_minus(5.0, None) == "5.00"


def test_summary_per_method(tmp_path):
    summary = report.summarize({"sskt": runs(tmp_path)["sskt"], "scratch": []})
    assert list(summary) == ["sskt"]  # A method without runs is left out.
    sskt = summary["sskt"]
    assert sskt["seeds"] == [0, 1] and sskt["test_accuracy"] == pytest.approx([30.0, 32.0])
    assert sskt["mean"] == pytest.approx(31.0) and sskt["std"] == pytest.approx(2**0.5)
    assert sskt["setting"] == "sources: mobilenet_v2:random" and sskt["curves"] == [pytest.approx([10.0, 20.0])] * 2
    assert sskt["epochs"] == [2, 2] and sskt["wall_time_seconds"] == [90.0, 90.0]
    dml = report.summarize({"dml": runs(tmp_path)["dml"]})["dml"]
    assert dml["all_peers_mean"] == pytest.approx(25.0) and dml["all_peers_std"] == pytest.approx(8**0.5)


def test_comparison_files_and_printed_lines(tmp_path):
    summary = report.write_comparison(str(tmp_path), ["sskt", "kd", "dml"], runs(tmp_path), "python -m sskt_tf.compare (test)")
    table = (tmp_path / "comparison.md").read_text()
    assert "| SSKT | sources: mobilenet_v2:random | 0,1 | 31.00 +- 1.41 | 30.00, 32.00 | - | 1.5 |" in table
    assert "| KD | teacher: teacher/target.keras, a=0.9, T=3 | 0 | 25.00 |" in table
    assert "2 peers; the row is peer 0 (all peers: 25.00 +- 2.83)" in table
    assert "Written by `python -m sskt_tf.compare (test)`." in table and "Shared settings: dataset=synthetic, model=resnet20" in table
    assert "No paper numbers" in table and "![test accuracy per epoch](comparison.png)" in table
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "comparison.json").read_text()) == json.loads(json.dumps(summary))
    assert report.summary_lines(summary) == ["SSKT: 31.00 +- 1.41% (2 seeds)", "KD: 25.00% (1 seed)", "DML: 27.00% (1 seed)"]


def test_methods_with_equal_curves_stay_visible_and_the_legend_hides_no_curve(tmp_path):
    curve = [20.0 + e / 2 for e in range(60)]
    summary = {m: {"curves": [curve, curve]} for m in ("sskt", "scratch", "kd", "dml", "maxl")}
    fig = report.plot_comparison(summary, "equal curves")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["SSKT (2 seeds)", "scratch (2 seeds)", "KD (2 seeds)", "DML (2 seeds)", "MAXL (2 seeds)"]
    # Each method its own hollow marker (thinned to every third of 60 epochs) and line style (dash patterns).
    assert len({line.get_marker() for line in lines}) == len({str(line._dash_pattern) for line in lines}) == 5
    assert {line.get_markerfacecolor() for line in lines} == {"none"} and {line.get_markevery() for line in lines} == {3}
    assert all(list(line.get_ydata()) == curve for line in lines)
    # The legend lies right of the axes.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1


def test_paper_numbers_appear_where_dataset_and_target_match(tmp_path):
    report.write_comparison(str(tmp_path), ["kd", "dml"], runs(tmp_path, dataset="cifar10"), "compare")
    table = (tmp_path / "comparison.md").read_text()
    assert "| 91.75 +- 0.24 |" in table and "| 92.37 +- 0.15 |" in table
    assert "these runs are shorter, so only the order of the methods can be compared" in table
    assert report.paper_numbers({"dataset": "cifar100", "model": "resnet32"})["sskt"] == (70.94, 0.36, "sources P+I")
    assert report.paper_numbers({"dataset": "synthetic", "model": "resnet20"}) == {}


def test_without_matplotlib_the_table_says_how_to_get_the_picture(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report.write_comparison(str(tmp_path), ["kd"], runs(tmp_path), "compare")
    assert "needs matplotlib, a dependency of sskt_tf missing here: pip install matplotlib" in (tmp_path / "comparison.md").read_text()
    assert not (tmp_path / "comparison.png").exists()


def test_unreadable_runs_and_no_runs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=f"^no finished runs under {tmp_path} to compare"):
        report.write_comparison(str(tmp_path), ["sskt"], {"sskt": []}, "compare")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "results.json").write_text('{"test": ')
    with pytest.raises(UserError, match=r"results.json is not valid JSON .*delete the run directory that holds it"):
        report.read_run(str(tmp_path))
    assert report.read_curve(str(tmp_path / "nowhere")) == []
