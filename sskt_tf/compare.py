"""Runs SSKT and its baselines with the same data, target, recipe and seeds, and writes the comparison.

    python -m sskt_tf.compare --config=compare_cifar10 --seeds=3 --output_dir=runs/compare_cifar10 \\
        --teacher=runs/teacher/target.keras [--methods=sskt,scratch,kd,dml,maxl] [--flag=value ...]

`--config=<name>` is a flagfile shipped with sskt_tf (flags/<name>.cfg), `--flagfile=<path>` any
flagfile, as for `python -m sskt_tf.train`; `sskt-compare` is the same command.

Every training flag (from --config, a flagfile or the command line) goes to every run, except the
ones that belong to one method: `--sources` goes to sskt only, `--teacher` and `--kd_*` to kd,
`--dml_*` to dml, `--maxl_*` to maxl. With `--soft_label_cache`, every run stores and reads the
sources' and the teacher's logits in <output_dir>/soft_label_cache (unless --soft_label_cache_dir
says otherwise), so each is computed once for all methods and seeds. `--methods` and `--seeds` choose the runs: each method with
seeds `--seed`, `--seed`+1, ...; each run is `python -m sskt_tf.train ... --method=<m> --seed=<k>
--output_dir=<output_dir>/<m>/seed<k>` in a subprocess, its output in `train.log` there.
Without --output_dir, <output_dir> is runs/compare under the current directory (printed at the start).
A kd --teacher whose class count is not the dataset's is refused before the first run where both are
known without reading images (synthetic, CIFAR, folder class directories; `<app>:random:N` or a .keras file).

A finished run (results.json) is kept, not redone; an interrupted one resumes. A finished run with
other settings stops the runner (use another --output_dir, or delete that run). At the end it writes to
--output_dir: `comparison.md` (test accuracy, mean +- std over seeds per method, the paper's numbers
beside them where the dataset and target match), `comparison.json` (the same numbers), and
`comparison.png` (test accuracy per epoch, mean over seeds with a +-std band, one line per method).
"""

import json
import os
import subprocess
import sys
import time

from absl import flags  # noqa: E402

from sskt_tf import config as config_lib  # noqa: E402
from sskt_tf import report  # noqa: E402
from sskt_tf import run_dir as run_dir_lib  # noqa: E402
from sskt_tf.cli import flag_definitions, reject_arguments, run_cli  # noqa: E402
from sskt_tf.errors import UserError, writable_dir  # noqa: E402
from sskt_tf.names import METHODS  # noqa: E402

FLAGS = flags.FLAGS

# Where the runs go without --output_dir (relative to the current directory).
DEFAULT_OUTPUT_DIR = os.path.join("runs", "compare")

# Training flags the runner sets itself for every run.
_RUNNER_SET = ("method", "seed", "output_dir", "overwrite")


@flag_definitions
def define_flags(flag_values):
    """Defines the runner's flags on `flag_values` (see `sskt_tf.cli`): every training flag, --seeds, --methods."""
    config_lib.define_flags(flag_values)
    flags.DEFINE_integer("seeds", 3, "Seeds per method: --seed, --seed+1, ... (--seed is the first).", flag_values=flag_values)
    flags.DEFINE_list(
        "methods", list(METHODS), f"Methods to compare, in table order: {', '.join(METHODS)}.", flag_values=flag_values
    )


def define_command_flags(flag_values=None):
    """`define_flags`, with --output_dir described as the runner uses it (the flag is train's, shared).

    Only the command does this: in a process that also trains (the tests), train's own default stays.
    """
    flag_values = FLAGS if flag_values is None else flag_values
    define_flags(flag_values)
    flag_values["output_dir"].help = "Where the runs (<output_dir>/<method>/seed<k>) and the comparison go (relative: to the current directory)."
    flag_values.set_default("output_dir", DEFAULT_OUTPUT_DIR)  # Shown by --help; train's own default is another.


def training_args(fl, method, seed, run_dir):
    """The `python -m sskt_tf.train` arguments of one run, from the parsed flags `fl`."""
    args = []
    for flag in fl.get_flags_for_module(config_lib):
        if not flag.present or flag.name in _RUNNER_SET:
            continue
        owner = config_lib.METHOD_FLAGS.get(flag.name)  # None: every run takes it.
        if owner is None or owner == method:
            args.append(flag.serialize())
    args += [f"--method={method}", f"--seed={seed}", f"--output_dir={run_dir}", "--nooverwrite"]
    if fl.soft_label_cache != "off" and not fl["soft_label_cache_dir"].present:
        # One fill for every method and seed (the stored logits do not depend on either).
        root = os.path.dirname(os.path.dirname(run_dir))
        args.append(f"--soft_label_cache_dir={os.path.join(root, 'soft_label_cache')}")
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


def run_state(config):
    """'finished', 'new' (nothing or an unfinished run to resume); UserError for a finished run with other settings."""
    out = config.output_dir
    results_path = os.path.join(out, "results.json")
    if not os.path.exists(results_path) or run_dir_lib.read_json(results_path).get("status", "finished") != "finished":
        return "new"
    previous = run_dir_lib.read_json(os.path.join(out, "config.json")) if os.path.exists(os.path.join(out, "config.json")) else {}
    # The settings the training run's own check compares (`run_dir.inspect_output_dir`).
    changed = [flag for flag, _, _ in run_dir_lib.changed_settings(previous, json.loads(config.to_json()))]
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

        from sskt_tf import models  # noqa: F401  (registers the classes of a target.keras teacher)

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


# --- Progress ---------------------------------------------------------------------------------


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_duration(seconds):
    """`seconds` as "45 s", "12 min 05 s" or "3 h 20 min"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def time_left(methods_left, seconds, now=None):
    """The end of a run's "done" line: how many runs are left and about how long they take.

    Each run left is estimated by the mean wall time of the runs of its method trained so far,
    or of all runs trained so far for a method not trained yet (methods differ: DML trains two
    networks, MAXL runs a second-order meta step).

    Args:
        methods_left: the method of each run still to train, in order.
        seconds: `{method: [wall seconds of each run trained so far]}`, not empty.
        now: the time (`time.time()`) the estimate starts from; None: now.

    Returns:
        "" when no run is left, else e.g. "; 4 runs left, about 12 min 30 s (until about 14:35)".
    """
    if not methods_left:
        return ""
    every = [s for values in seconds.values() for s in values]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    estimate = sum(mean(seconds.get(m) or every) for m in methods_left)
    end = (time.time() if now is None else now) + estimate
    clock = time.strftime("%H:%M" if estimate < 20 * 3600 else "%Y-%m-%d %H:%M", time.localtime(end))
    return f"; {_count(len(methods_left), 'run')} left, about {format_duration(estimate)} (until about {clock})"


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
    reject_arguments(argv)
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
    # --verbose=0 (also passed to every run): no progress lines, only the comparison at the end.
    progress = (lambda line: print(line, flush=True)) if FLAGS.verbose != 0 else (lambda line: None)
    kept = states.count("finished")
    progress(f"{_count(len(runs), 'run')}: {kept} finished before (kept), {len(runs) - kept} to train")
    runs_by_method = {m: [] for m in methods}
    seconds = {}  # method -> wall seconds of each run trained here, for the time left.
    for i, ((method, seed, run_dir, args), state) in enumerate(zip(runs, states), 1):
        label = f"[{i}/{len(runs)}] {method} seed {seed}"
        if state == "finished":
            progress(f"{label}: finished before, kept ({run_dir})")
        else:
            progress(f"{label}: training ({run_dir}/train.log)")
            start = time.perf_counter()
            log_path = os.path.join(run_dir, "train.log")
            rc = run_training(args, log_path)
            results_path = os.path.join(run_dir, "results.json")
            if rc != 0 or not os.path.exists(results_path):
                raise _failure(method, seed, rc, log_path)
            accuracy = run_dir_lib.read_json(results_path)["test"]["accuracy"]
            seconds.setdefault(method, []).append(time.perf_counter() - start)
            left = [m for (m, *_), st in zip(runs[i:], states[i:]) if st != "finished"]
            progress(
                f"{label}: done in {format_duration(seconds[method][-1])}, test accuracy {100 * accuracy:.2f}%"
                f"{time_left(left, seconds)}"
            )
        runs_by_method[method].append(report.read_run(run_dir))
    summary = report.write_comparison(root, methods, runs_by_method, command)
    for line in report.summary_lines(summary):
        print(line)
    print(f"comparison: {os.path.join(root, 'comparison.md')}")
    return summary


def run():
    """The `python -m sskt_tf.compare` (and `sskt-compare`) command."""
    run_cli(main, define_command_flags, groups=[("Comparison", ["seeds", "methods"]), *config_lib.help_groups()], configs=True)


if __name__ == "__main__":
    run()
