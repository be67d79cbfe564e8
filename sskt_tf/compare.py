"""Runs SSKT and its baselines with the same data, target, recipe and seeds, and writes the comparison.

    python -m sskt_tf.compare --flagfile=flags/compare_cifar10.cfg --seeds=3 --output_dir=runs/compare_cifar10 \\
        --teacher=runs/teacher/target.keras [--methods=sskt,scratch,kd,dml,maxl] [--flag=value ...]

Every training flag (from the flagfile or the command line) goes to every run, except the ones that
belong to one method: `--sources` goes to sskt only, `--teacher` and `--kd_*` to kd, `--dml_*` to dml,
`--maxl_*` to maxl. `--methods` and `--seeds` choose the runs: each method with seeds `--seed`,
`--seed`+1, ...; each run is `python -m sskt_tf.train ... --method=<m> --seed=<k>
--output_dir=<output_dir>/<m>/seed<k>` in a subprocess, its output in `train.log` there.
Without --output_dir, <output_dir> is runs/compare under the current directory (printed at the start).
A kd --teacher whose class count is not the dataset's is refused before the first run where both are
known without reading images (synthetic, CIFAR, folder class directories; `<app>:random:N` or a .keras file).

A finished run (results.json) is kept, not redone; an interrupted one resumes. A finished run with
other settings stops the runner (use another --output_dir, or delete that run). At the end it writes to
--output_dir: `comparison.md` (test accuracy, mean +- std over seeds per method, the paper's numbers
beside them where the dataset and target match), `comparison.json` (the same numbers), and
`comparison.png` (test accuracy per epoch, mean over seeds with a +-std band, one line per method;
needs matplotlib: `pip install ".[plots]"`).
"""

import csv
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from sskt_tf import config as config_lib  # noqa: E402
from sskt_tf import train  # noqa: E402
from sskt_tf.errors import UserError, run_cli, writable_dir  # noqa: E402
from sskt_tf.methods import METHODS  # noqa: E402

FLAGS = flags.FLAGS

# Where the runs go without --output_dir (relative to the current directory).
DEFAULT_OUTPUT_DIR = os.path.join("runs", "compare")

# Training flags the runner sets itself for every run.
_RUNNER_SET = ("method", "seed", "output_dir", "overwrite")

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


def define_flags():
    config_lib.define_flags()
    if "seeds" in FLAGS:
        return
    flags.DEFINE_integer("seeds", 3, "Seeds per method: --seed, --seed+1, ... (--seed is the first).")
    flags.DEFINE_list("methods", list(METHODS), f"Methods to compare, in table order: {', '.join(METHODS)}.")


def define_command_flags():
    """`define_flags`, with --output_dir described as the runner uses it (the flag is train's, shared)."""
    define_flags()
    FLAGS["output_dir"].help = "Where the runs (<output_dir>/<method>/seed<k>) and the comparison go (relative: to the current directory)."
    FLAGS.set_default("output_dir", DEFAULT_OUTPUT_DIR)  # Shown by --help; train's own default is another.


def _owner(name):
    """The one method a training flag belongs to, or None when every run takes it."""
    if name == "sources":
        return "sskt"
    if name == "teacher":
        return "kd"
    if name in config_lib.METHOD_FLAGS:
        return name.split("_")[0]
    return None


def training_args(fl, method, seed, run_dir):
    """The `python -m sskt_tf.train` arguments of one run, from the parsed flags `fl`."""
    args = []
    for flag in fl.get_flags_for_module(config_lib):
        if not flag.present or flag.name in _RUNNER_SET:
            continue
        owner = _owner(flag.name)
        if owner is None or owner == method:
            args.append(flag.serialize())
    args += [f"--method={method}", f"--seed={seed}", f"--output_dir={run_dir}", "--nooverwrite"]
    if not fl["verbose"].present:
        args.append("--verbose=2")  # One line per epoch in the log, no progress bars.
    return args


def _flag_state():
    """What `_restore_flags` needs to put the global flags back as they are now (None: unparsed)."""
    if not FLAGS.is_parsed():
        return None
    return {name: (f.value, f.present, f.using_default_value) for name, f in FLAGS._flags().items()}


def _restore_flags(state):
    FLAGS.unparse_flags()
    if state is None:
        return
    for name, (value, present, using_default_value) in state.items():
        if name in FLAGS:
            flag = FLAGS[name]
            flag.value, flag.present, flag.using_default_value = value, present, using_default_value
    FLAGS.mark_as_parsed()


def resolve_config(args):
    """The `Config` a run with `args` will have.

    Parses `args` on the global flags, then puts them back as they were (the runner's own flags
    stay readable after this).
    """
    state = _flag_state()
    FLAGS.unparse_flags()
    try:
        FLAGS(["sskt_tf.train", *args])
        return config_lib.from_flags()
    except flags.Error as e:
        raise UserError(str(e)) from None
    finally:
        _restore_flags(state)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}); delete the run directory that holds it to redo that run."
        ) from None


def run_state(config):
    """'finished', 'new' (nothing or an unfinished run to resume); UserError for a finished run with other settings."""
    out = config.output_dir
    results_path = os.path.join(out, "results.json")
    if not os.path.exists(results_path) or _read_json(results_path).get("status", "finished") != "finished":
        return "new"
    previous = _read_json(os.path.join(out, "config.json")) if os.path.exists(os.path.join(out, "config.json")) else {}
    current = json.loads(config.to_json())
    # The settings train.py's own resumption check compares.
    changed = sorted(k for k in current if k not in train._RUN_ONLY_FIELDS and previous.get(k) != current[k])
    if changed:
        raise UserError(
            f"{out} holds a finished run with other settings ({', '.join(changed)}); choose another "
            "--output_dir, or delete that run to redo it."
        )
    return "finished"


def launch(args, log_path):
    """Runs `python -m sskt_tf.train args` in a subprocess, its output in `log_path`; returns the exit status."""
    writable_dir(os.path.dirname(log_path), None, what="run directory")
    with open(log_path, "a") as log:
        log.write(f"$ {sys.executable} -m sskt_tf.train {' '.join(args)}\n")
        log.flush()
        return subprocess.run(
            [sys.executable, "-m", "sskt_tf.train", *args], stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode


def _failure(method, seed, rc, log_path):
    with open(log_path, errors="replace") as f:
        lines = [line.rstrip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    detail = errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else "no output")
    detail = detail.strip()
    if len(detail) > 300:
        detail = detail[:300].rstrip() + "..."
    else:
        detail = detail.rstrip(" .;")
    return UserError(f"the {method} run with seed {seed} failed (exit status {rc}): {detail}. Its log: {log_path}")


def _dataset_classes(dataset):
    """The dataset's class count where it is known without reading images (None otherwise)."""
    fixed = {"cifar10": 10, "cifar100": 100, "synthetic": 10}
    if dataset in fixed:
        return fixed[dataset]
    kind, _, rest = dataset.partition(":")
    if kind in ("synthetic", "synthetic_multilabel"):
        return int(rest) if rest.isdigit() else None
    if kind == "folder" and rest:
        train_dir = os.path.join(os.path.expanduser(rest), "train")
        if not os.path.isdir(train_dir):
            return None
        with os.scandir(train_dir) as entries:  # The class folders, as data.load counts them.
            return sum(1 for e in entries if e.is_dir() and not e.name.startswith(".")) or None
    return None


def _teacher_classes(spec):
    """The class count of a --teacher where it is cheap to know: `<app>:random[:N]`, or a .keras file (None otherwise)."""
    app, _, weights = spec.partition(":")
    if weights == "random" or weights.startswith("random:"):
        count = weights.partition(":")[2]
        return int(count) if count.isdigit() else (1000 if not count else None)
    if weights == "imagenet":
        return 1000
    if spec.endswith(".keras") and os.path.isfile(os.path.expanduser(spec)):
        import keras

        try:
            model = keras.saving.load_model(os.path.expanduser(spec), compile=False)
            shape = model.output_shape
        except Exception:  # noqa: BLE001  (train names what is wrong with the file)
            return None
        if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[-1], int):
            return shape[-1]
    return None


def check_teacher(config):
    """Refuses, before any run starts, a kd teacher whose class count is not the dataset's, where both are cheap to know.

    Other teacher problems (and the cases this cannot tell) are found by the kd run itself.
    """
    if config.method != "kd" or not config.teacher:
        return
    classes = _dataset_classes(config.dataset)
    if classes is None:
        return
    teacher = _teacher_classes(config.teacher)
    if teacher is not None and teacher != classes:
        raise UserError(
            f"--teacher={config.teacher} predicts {teacher} classes but --dataset={config.dataset} has {classes}; "
            "KD needs a teacher of the same label space, e.g. the target.keras of a run on the same data."
        )


# --- Reading the runs ------------------------------------------------------------------------


def read_curve(run_dir, key="val_accuracy"):
    """Per-epoch `key` of a run's metrics.csv (the test set: the pipeline validates on it)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = {int(row["epoch"]): float(row[key]) for row in csv.DictReader(f) if row.get(key) not in (None, "")}
    return [rows[e] for e in sorted(rows)]


def read_run(run_dir):
    """One finished run: its config, results and accuracy curve."""
    return {
        "dir": run_dir,
        "config": _read_json(os.path.join(run_dir, "config.json")),
        "results": _read_json(os.path.join(run_dir, "results.json")),
        "curve": read_curve(run_dir),
    }


def mean_std(values):
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def _pm(mean, std, digits=2):
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _short_spec(spec):
    """A file spec as <folder>/<file> (a run's target.keras is named by its run), others as given."""
    if not spec.endswith(".keras"):
        return spec
    return os.path.join(os.path.basename(os.path.dirname(os.path.abspath(spec))), os.path.basename(spec))


def method_setting(method, config):
    """What distinguishes a method's runs, from a run's config.json."""
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
    """Per method: test accuracy (%) per seed, mean, std; DML also over all peers; the mean curve."""
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
    """The paper's numbers for this run's dataset and target, or {}."""
    return PAPER.get((config.get("dataset"), config.get("model")), {})


def shared_settings(config):
    keys = ("dataset", "train_subset", "model", "epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "target_loss")
    return ", ".join(f"{k}={config.get(k)}" for k in keys if config.get(k) is not None)


def write_markdown(path, summary, first_config, command, picture_note):
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
        paper_text = "-" if not published else f"{_pm(published[0], published[1])}" + (f" ({published[2]})" if published[2] else "")
        setting = s["setting"]
        if method == "dml" and s.get("all_peers_mean") is not None:
            setting += f" (all peers: {_pm(s['all_peers_mean'], s['all_peers_std'])})"
        minutes = [t / 60 for t in s["wall_time_seconds"] if t]
        minutes_text = f"{sum(minutes) / len(minutes):.1f}" if minutes else "-"
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {setting} | {','.join(map(str, s['seeds']))} | "
            f"{_pm(s['mean'], s['std'])} | {', '.join(f'{a:.2f}' for a in s['test_accuracy'])} | {paper_text} | "
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


def write_plot(path, summary, title):
    """comparison.png: test accuracy per epoch, mean over seeds with a +-std band. Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, s in summary.items():
        curves = [c for c in s["curves"] if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        epochs = list(range(1, length + 1))
        stats = [mean_std([c[e] for c in curves]) for e in range(length)]
        mean = [m for m, _ in stats]
        ax.plot(epochs, mean, marker="o" if length < 20 else None, label=f"{METHOD_TITLES.get(method, method)} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(epochs, [m - sd for m, sd in stats], [m + sd for m, sd in stats], alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_comparison(output_dir, methods, runs_by_method, command):
    """comparison.md, comparison.json and (with matplotlib) comparison.png in `output_dir`."""
    summary = summarize({m: runs_by_method.get(m, []) for m in methods})
    if not summary:
        raise UserError(f"no finished runs under {output_dir} to compare.")
    first_config = next(iter(runs_by_method[m] for m in summary))[0]["config"]
    title = f"{first_config['dataset']}, {first_config['model']}"
    picture = os.path.join(output_dir, "comparison.png")
    if write_plot(picture, summary, title):
        note = "![test accuracy per epoch](comparison.png)"
    else:
        note = 'comparison.png (test accuracy per epoch) needs matplotlib: pip install ".[plots]"'
    write_markdown(os.path.join(output_dir, "comparison.md"), summary, first_config, command, note)
    with open(os.path.join(output_dir, "comparison.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


# --- Command ---------------------------------------------------------------------------------


def plan(fl):
    """[(method, seed, run_dir, args)] of every run, from the parsed flags."""
    methods = [m.strip() for m in fl.methods if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise UserError(
            f"--methods={','.join(fl.methods)}: give each method once, from {', '.join(METHODS)}."
        )
    if fl.seeds < 1:
        raise UserError(f"--seeds must be >= 1. Received: {fl.seeds}; pass e.g. --seeds=3.")
    root = fl.output_dir if fl["output_dir"].present else DEFAULT_OUTPUT_DIR
    runs = []
    for method in methods:
        for seed in range(fl.seed, fl.seed + fl.seeds):
            run_dir = os.path.join(root, method, f"seed{seed}")
            runs.append((method, seed, run_dir, training_args(fl, method, seed, run_dir)))
    return root, methods, runs


def main(argv, run_training=launch, command=None):
    """Runs what is missing, then writes the comparison. `run_training(args, log_path)` -> exit status."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    command = command or " ".join(["python -m sskt_tf.compare", *sys.argv[1:]])
    root, methods, runs = plan(FLAGS)
    # Resolve and check every run before the first one starts: a bad flag stops the runner at once.
    configs = []
    for method, seed, _, args in runs:
        try:
            configs.append(resolve_config(args))
            check_teacher(configs[-1])
        except UserError as e:
            raise UserError(f"--methods includes {method}: {e}") from None
    writable_dir(root, "--output_dir")
    for _, _, run_dir, _ in runs:  # Before the first run: a file in the way of a later one stops the runner now.
        writable_dir(run_dir, None, what=f"run directory under --output_dir={root}")
    states = [run_state(c) for c in configs]
    default = "" if FLAGS["output_dir"].present else " (the default --output_dir; pass --output_dir=<dir> to choose)"
    print(f"runs under {root}{default}", flush=True)
    runs_by_method = {m: [] for m in methods}
    for i, ((method, seed, run_dir, args), state) in enumerate(zip(runs, states), 1):
        label = f"[{i}/{len(runs)}] {method} seed {seed}"
        if state == "finished":
            print(f"{label}: finished before, kept ({run_dir})", flush=True)
        else:
            print(f"{label}: training ({run_dir}/train.log)", flush=True)
            start = time.perf_counter()
            log_path = os.path.join(run_dir, "train.log")
            rc = run_training(args, log_path)
            results_path = os.path.join(run_dir, "results.json")
            if rc != 0 or not os.path.exists(results_path):
                raise _failure(method, seed, rc, log_path)
            accuracy = _read_json(results_path)["test"]["accuracy"]
            print(f"{label}: done in {time.perf_counter() - start:.0f} s, test accuracy {100 * accuracy:.2f}%", flush=True)
        runs_by_method[method].append(read_run(run_dir))
    summary = write_comparison(root, methods, runs_by_method, command)
    for method, s in summary.items():
        seeds = len(s["seeds"])
        print(f"{METHOD_TITLES.get(method, method)}: {_pm(s['mean'], s['std'])}% ({seeds} seed{'' if seeds == 1 else 's'})")
    print(f"comparison: {os.path.join(root, 'comparison.md')}")
    return summary


def run():
    run_cli(main, define_command_flags)


if __name__ == "__main__":
    run()
