"""The comparison of finished runs: the markdown table, the JSON numbers and the accuracy plot.

`python -m sskt_tf.compare` trains the runs and then calls `write_comparison`, which writes to its
output directory:

- `comparison.md`: per method, the top-1 test accuracy (%) of the target after the last epoch,
  mean +- sample std (ddof 1) over seeds, each seed's value, what distinguishes the method's runs,
  the minutes per run, and the paper's number (Hong et al., WACV 2022) where the dataset and
  target match one of its tables;
- `comparison.json`: the same numbers (`summarize`);
- `comparison.png`: test accuracy per epoch, mean over seeds with a +-std band, one line per method
  (with matplotlib, a dependency of sskt_tf; where it is missing, the table says so).

It reads what a run of `python -m sskt_tf.train` writes: `config.json`, `results.json` and
`metrics.csv`. No TensorFlow is imported here.
"""

import csv
import json
import math
import os

from sskt_tf import run_dir as run_dir_lib
from sskt_tf.errors import UserError

METHOD_TITLES = {"sskt": "SSKT", "scratch": "scratch", "kd": "KD", "dml": "DML", "maxl": "MAXL"}

# Published top-1 (%), mean +- std (Hong et al., WACV 2022, tables of results; the README lists them), by
# (dataset, target) and method, with the paper's setting where it differs from ours.
PAPER = {
    ("cifar10", "resnet20"): {
        "kd": (91.75, 0.24, ""),
        "dml": (92.37, 0.15, ""),
        "maxl": (91.56, 0.16, "psi=10"),
        "sskt": (92.46, 0.15, "sources P+I"),
    },
    ("cifar10", "resnet32"): {"kd": (92.61, 0.31, ""), "dml": (93.26, 0.21, ""), "sskt": (93.38, 0.02, "sources P+I")},
    ("cifar100", "resnet20"): {"kd": (68.66, 0.24, ""), "dml": (69.48, 0.05, ""), "sskt": (68.63, 0.12, "source I")},
    ("cifar100", "resnet32"): {"kd": (70.5, 0.05, ""), "dml": (71.9, 0.03, ""), "sskt": (70.94, 0.36, "sources P+I")},
    ("cifar10", "vgg16_bn"): {
        "maxl": (93.49, 0.05, "psi=5"),
        "sskt": (94.22, 0.02, "source I, VGG-16 source network"),
    },
}
PAPER_EPOCHS = 200


def read_curve(run_dir, key="val_accuracy"):
    """Per-epoch `key` of a run's metrics.csv (`val_accuracy`: the test set, which the pipeline validates on).

    Returns:
        A list of floats (fractions, not %), in epoch order, from the epochs that logged `key`;
        [] without a metrics.csv.
    """
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = {int(row["epoch"]): float(row[key]) for row in csv.DictReader(f) if row.get(key) not in (None, "")}
    return [rows[e] for e in sorted(rows)]


def read_run(run_dir):
    """One finished run of `python -m sskt_tf.train`.

    Returns:
        `{"dir", "config", "results", "curve"}`: the run directory, its config.json and
        results.json as dicts, and its per-epoch test accuracy (`read_curve`).

    Raises:
        UserError: config.json or results.json is not valid JSON (`run_dir.read_json`).
    """
    return {
        "dir": run_dir,
        "config": run_dir_lib.read_json(os.path.join(run_dir, "config.json")),
        "results": run_dir_lib.read_json(os.path.join(run_dir, "results.json")),
        "curve": read_curve(run_dir),
    }


def mean_std(values):
    """`(mean, std)` of a non-empty list of numbers: the sample standard deviation (ddof 1), None for one value."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def plus_minus(mean, std, digits=2):
    """`"mean +- std"` with `digits` decimals, or the mean alone when `std` is None (one seed)."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _short_spec(spec):
    """A file spec as <folder>/<file> (a run's target.keras is named by its run), others as given."""
    if not spec.endswith(".keras"):
        return spec
    return os.path.join(os.path.basename(os.path.dirname(os.path.abspath(spec))), os.path.basename(spec))


def method_setting(method, config):
    """What distinguishes a method's runs (sources, teacher, peers, psi), from a run's config.json, as text."""
    if method == "sskt":
        specs = config.get("sources") or []
        return f"sources: {', '.join(_short_spec(s) for s in specs)}" if specs else "no sources (= scratch)"
    if method == "kd":
        return f"teacher: {_short_spec(config['teacher'])}, a={config['kd_alpha']:g}, T={config['temperature'][0]:g}"
    if method == "dml":
        return f"{config['dml_peers']} peers; the row is peer 0"
    if method == "maxl":
        psi = config["maxl_psi"]
        order = "first-order (finite differences)" if config["maxl_first_order"] else "second-order"
        return f"psi={','.join(map(str, psi))}, {order} meta-gradient"
    return "the target alone"


def summarize(runs_by_method):
    """The numbers of the comparison (written to comparison.json).

    Args:
        runs_by_method: `{method: [read_run(...), ...]}`, in table order; methods without runs
            are left out.

    Returns:
        `{method: {...}}`: `seeds`, `test_accuracy` (% per seed), `mean`, `std` (None for one
        seed), `setting` (`method_setting`), `epochs`, `wall_time_seconds`, `curves` (% per epoch
        per seed); for DML also `all_peers_mean` and `all_peers_std` over every peer of every seed.
    """
    summary = {}
    for method, runs in runs_by_method.items():
        if not runs:
            continue
        accuracies = [100 * r["results"]["test"]["accuracy"] for r in runs]
        mean, std = mean_std(accuracies)
        entry = {
            "seeds": [r["config"]["seed"] for r in runs],
            "test_accuracy": accuracies,
            "mean": mean,
            "std": std,
            "setting": method_setting(method, runs[0]["config"]),
            "epochs": [r["results"].get("epochs_completed") for r in runs],
            "wall_time_seconds": [r["results"].get("wall_time_seconds") for r in runs],
            "curves": [[100 * v for v in r["curve"]] for r in runs],
        }
        if method == "dml":
            peers = [100 * p["accuracy"] for r in runs for p in r["results"].get("peers", [])]
            entry["all_peers_mean"], entry["all_peers_std"] = mean_std(peers) if peers else (None, None)
        summary[method] = entry
    return summary


def paper_numbers(config):
    """The paper's numbers for a run's dataset and target (its config.json), or {}.

    Returns:
        `{method: (mean %, std %, the paper's setting where it differs from ours)}` (`PAPER`).
    """
    return PAPER.get((config.get("dataset"), config.get("model")), {})


def shared_settings(config):
    """The settings every run of the comparison shares (dataset, model, recipe), as `k=v, ...` text."""
    keys = ("dataset", "train_subset", "model", "epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "target_loss")
    return ", ".join(f"{k}={config.get(k)}" for k in keys if config.get(k) is not None)


def write_markdown(path, summary, first_config, command, picture_note):
    """Writes comparison.md: the table of `summary`, the shared settings and the paper's numbers.

    Args:
        path: the markdown file.
        summary: what `summarize` returns.
        first_config: a run's config.json (the dataset, the target and the shared settings).
        command: the command line named as the table's author.
        picture_note: the line under the table (the picture, or how to get it).
    """
    paper = paper_numbers(first_config)
    lines = [
        f"# SSKT and baselines: {first_config['dataset']}, {first_config['model']}",
        "",
        "Top-1 test accuracy (%) of the target after the last epoch, mean +- std over seeds (sample std, ddof 1).",
        f"Written by `{command}`.",
        "",
        "| method | setting | seeds | test top-1 (%) | per seed | paper (top-1 %) | minutes per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        published = paper.get(method)
        paper_text = "-" if not published else f"{plus_minus(published[0], published[1])}" + (f" ({published[2]})" if published[2] else "")
        setting = s["setting"]
        if method == "dml" and s.get("all_peers_mean") is not None:
            setting += f" (all peers: {plus_minus(s['all_peers_mean'], s['all_peers_std'])})"
        minutes = [t / 60 for t in s["wall_time_seconds"] if t]
        minutes_text = f"{sum(minutes) / len(minutes):.1f}" if minutes else "-"
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {setting} | {','.join(map(str, s['seeds']))} | "
            f"{plus_minus(s['mean'], s['std'])} | {', '.join(f'{a:.2f}' for a in s['test_accuracy'])} | {paper_text} | "
            f"{minutes_text} |"
        )
    lines += ["", f"Shared settings: {shared_settings(first_config)}."]
    if paper:
        differs = first_config.get("epochs") != PAPER_EPOCHS or first_config.get("train_subset")
        lines.append(
            "The paper's numbers are for its full recipe (200 epochs, all training images)"
            + ("; these runs are shorter, so only the order of the methods can be compared." if differs else ".")
        )
    else:
        lines.append(
            "No paper numbers: the paper reports --dataset=cifar10/cifar100 with --model=resnet20/resnet32 "
            "(and CIFAR-10 with vgg16_bn)."
        )
    lines += ["", picture_note, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# One line style and one hollow marker per method (in table order): methods with equal curves (e.g.
# SSKT without sources and scratch) stay visible, drawn over each other.
_LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_comparison(summary, title):
    """The figure of comparison.png: test accuracy (%) per epoch, mean over seeds with a +-std band, one line per method.

    Each method has its own colour, line style and hollow marker, so that curves that coincide
    stay distinguishable; markers are thinned to about 20 per curve. The legend sits outside the
    axes, on the right, so it hides no curve. Epochs are cut to the shortest curve of a method.

    Args:
        summary: what `summarize` returns (reads each method's `curves`).
        title: the axes' title.

    Returns:
        A `matplotlib.figure.Figure` on an Agg canvas (no display needed), one axes.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, (method, s) in enumerate(summary.items()):
        curves = [c for c in s["curves"] if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        epochs = list(range(1, length + 1))
        stats = [mean_std([c[e] for c in curves]) for e in range(length)]
        mean = [m for m, _ in stats]
        seeds = f"{len(curves)} seed{'' if len(curves) == 1 else 's'}"
        (line,) = ax.plot(
            epochs,
            mean,
            linestyle=_LINE_STYLES[index % len(_LINE_STYLES)],
            marker=_MARKERS[index % len(_MARKERS)],
            markevery=max(1, length // 20),
            markerfacecolor="none",
            markersize=7 + 1.5 * (index % 3),  # Equal points of several methods: rings of different sizes.
            linewidth=2.6 - 0.35 * (index % 5),  # Later (thinner) lines over earlier ones: both show.
            label=f"{METHOD_TITLES.get(method, method)} ({seeds})",
        )
        if len(curves) > 1:
            ax.fill_between(
                epochs, [m - sd for m, sd in stats], [m + sd for m, sd in stats], color=line.get_color(), alpha=0.15
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def write_plot(path, summary, title):
    """Writes comparison.png (`plot_comparison`), 120 dpi, cropped to the axes and the legend.

    Returns:
        True, or False (nothing written) when matplotlib is not installed.
    """
    try:
        fig = plot_comparison(summary, title)
    except ImportError:
        return False
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def write_comparison(output_dir, methods, runs_by_method, command):
    """Writes comparison.md, comparison.json and (with matplotlib) comparison.png in `output_dir`.

    Args:
        output_dir: an existing directory.
        methods: the methods in table order.
        runs_by_method: `{method: [read_run(...), ...]}`.
        command: the command line named in comparison.md.

    Returns:
        The summary written to comparison.json (`summarize`).

    Raises:
        UserError: no method has a finished run.
    """
    summary = summarize({m: runs_by_method.get(m, []) for m in methods})
    if not summary:
        raise UserError(f"no finished runs under {output_dir} to compare.")
    first_config = next(iter(runs_by_method[m] for m in summary))[0]["config"]
    title = f"{first_config['dataset']}, {first_config['model']}"
    picture = os.path.join(output_dir, "comparison.png")
    if write_plot(picture, summary, title):
        note = "![test accuracy per epoch](comparison.png)"
    else:
        note = "comparison.png (test accuracy per epoch) needs matplotlib, a dependency of sskt_tf missing here: pip install matplotlib"
    write_markdown(os.path.join(output_dir, "comparison.md"), summary, first_config, command, note)
    with open(os.path.join(output_dir, "comparison.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


def summary_lines(summary):
    """The lines `python -m sskt_tf.compare` prints at the end: per method, `mean +- std% (n seeds)`."""
    lines = []
    for method, s in summary.items():
        seeds = len(s["seeds"])
        lines.append(f"{METHOD_TITLES.get(method, method)}: {plus_minus(s['mean'], s['std'])}% ({seeds} seed{'' if seeds == 1 else 's'})")
    return lines
