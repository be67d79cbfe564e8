"""Training throughput of SSKT and its parts, side by side with the PyTorch way, in one run.

    python benchmarks/throughput.py [--steps=10] [--warmup=3] [--repeats=3] [--batch_size=128]
        [--threads=2] [--data=folder:/tmp/cifar10] [--torch=true] [--jit_compile=auto] [--precision=float32]

Every row runs in a process of its own (this script again, with `--row=<name>`), so that no row
inherits another's threads, allocator state or prefetching pipeline; each does `--warmup` untimed
steps, then `--repeats` timed blocks of `--steps` steps, and reports the median ms/step over the
blocks, their spread ((max - min) / median), the process's peak memory (resident set size on
CPU, the device's peak allocation on GPU) and the CPU steal while it ran (the share of CPU time a
shared cloud machine's hypervisor gave to others: it slows a row with nothing in it changing).

Rows (ResNet-20 target, 32x32 images, global batch --batch_size):
  pipeline   the training tf.data pipeline (decode/cache, shuffle, batch, augment), --data
  scratch    train step of the target alone
  sskt       train step with one frozen ResNet-50 source at 74 px (random weights: same cost)
  sskt2      two sources with 1000 and 365 classes (the paper's I + P)
  clean      the step reading stored logits of one source (--soft_label_cache=clean)
  replay     the pipeline cutting stored views and expanding their top-10 float16 logits
             (--soft_label_cache=replay, 10 views per image) feeding the step, both timed
  source     one ResNet-50 forward at 74 px, inference mode
The PyTorch way (`benchmarks/torch_reference.py`, with the same batch and --threads) runs the rows
scratch, sskt, sskt2 and source; the table gives the ratio of its ms/step to ours (above 1: we are
faster), and the script ends with the issue's goals, each met or not.

Model steps (but replay's) run on one batch held in memory, so they measure compute, not input.
TensorFlow runs with `--threads` intra-op threads and one inter-op thread, torch with
`torch.set_num_threads(--threads)` and one inter-op thread.
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("steps", 10, "Timed steps per block.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed steps before the first block (tracing, compilation).", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed blocks per row; the table gives their median.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("threads", 2, "Intra-op threads of TensorFlow and of torch.", lower_bound=1)
flags.DEFINE_integer("inter_op_threads", 1, "TensorFlow's inter-op threads (0: its default, one per core).")
flags.DEFINE_string("data", "synthetic", "Dataset of the pipeline row (e.g. folder:/tmp/cifar10).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the model steps.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Target precision.")
flags.DEFINE_enum("source_precision", "same", ["same", "float32", "float16", "bfloat16"], "Sources' precision.")
flags.DEFINE_bool("torch", True, "Also run the PyTorch way (benchmarks/torch_reference.py).")
flags.DEFINE_string("rows", "pipeline,scratch,sskt,sskt2,clean,replay,source", "Rows to run, in order.")
flags.DEFINE_string("row", None, "Internal: run this one row in this process and print its JSON line.")
FLAGS = flags.FLAGS

TORCH_ROWS = {"scratch": "scratch", "sskt": "sskt", "sskt2": "sskt2", "source": "source_forward"}
LABELS = {
    "pipeline": "input pipeline alone",
    "scratch": "scratch",
    "sskt": "SSKT, 1 x ResNet-50 @74",
    "sskt2": "SSKT, 2 x ResNet-50 @74 (1000 + 365)",
    "clean": "SSKT, --soft_label_cache=clean",
    "replay": "SSKT, --soft_label_cache=replay",
    "source": "source forward alone (ResNet-50 @74)",
}


# --------------------------------------------------------------------------- one row, in its process


def _peak_memory_mib(tf):
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux.


def cpu_jiffies():
    """(steal, total) jiffies of all CPUs from /proc/stat (Linux), or None elsewhere.

    Steal is time the hypervisor gave this virtual machine's CPUs to others: on a shared cloud
    machine it slows a row without anything in this process changing, so each row reports it.
    """
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return values[7], sum(values[:8])


def _blocks(run_steps):
    """Warm-up, then `repeats` timed blocks; ms per step of each block."""
    run_steps(FLAGS.warmup)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        run_steps(FLAGS.steps)
        times.append((time.perf_counter() - start) / FLAGS.steps * 1e3)
    return times


def _row(name):
    import dataclasses

    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    from sskt_tf import data as data_lib
    from sskt_tf import methods, optim, soft_labels
    from sskt_tf.config import Config

    keras.utils.set_random_seed(0)
    b = FLAGS.batch_size
    jit = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    base = Config(dataset="synthetic", model="resnet20", batch_size=b, precision=FLAGS.precision,
                  source_precision=FLAGS.source_precision, jit_compile=FLAGS.jit_compile)
    one = dataclasses.replace(base, sources=("resnet50:random",))
    images = tf.constant(np.random.RandomState(0).uniform(0, 255, (b, 32, 32, 3)).astype("float32"))
    labels = tf.constant(np.arange(b) % 10, tf.int32)

    def fit_blocks(config, ds):
        if config.precision != "float32":
            keras.mixed_precision.set_global_policy(config.precision)
        model = methods.build_model(config, (32, 32), 10)
        model.compile(optimizer=optim.build_optimizer(config, 100), jit_compile=jit)
        # fit builds the optimizer and traces the step; the blocks then call that step on one
        # iterator (no pipeline restarts, no per-call set-up of fit), as fit's own loop does.
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        it = iter(ds)

        def steps(n):
            for _ in range(n):
                logs = model.train_function(it)
            float(logs["loss"])  # Waits for the last step.

        return _blocks(steps), model

    def in_memory(x):
        return tf.data.Dataset.from_tensors((x, labels)).repeat()

    if name == "pipeline":
        datasets = data_lib.load(FLAGS.data, batch_size=b)
        it = iter(datasets.train)
        for _ in range(datasets.steps_per_epoch):  # The first pass fills the in-memory cache.
            next(it)
        times = _blocks(lambda n: [next(it) for _ in range(n)])
    elif name in ("scratch", "sskt", "sskt2"):
        config = {"scratch": base, "sskt": one,
                  "sskt2": dataclasses.replace(base, sources=("resnet50:random", "resnet50:random:365"))}[name]
        times, _ = fit_blocks(config, in_memory(images))
    elif name == "clean":
        logits = tf.constant(np.random.RandomState(1).normal(0, 3, (b, 1000)).astype("float32"))
        times, _ = fit_blocks(one, in_memory({"images": images, "extras": (logits,)}))
    elif name == "replay":
        # Stored views of the synthetic training images; random logits (their values do not change the cost).
        data = data_lib.load("synthetic", batch_size=b, train_subset=None)
        config = dataclasses.replace(one, soft_label_cache="replay")
        views = soft_labels.draw_views(data.num_train, 10, config.augmentation)
        logits = np.random.RandomState(1).normal(0, 3, (data.num_train, views.count, 1000)).astype("float32")
        replay = soft_labels.Replay(views, [soft_labels.compress(logits, 10)], [1000])
        times, _ = fit_blocks(config, data.train_from(0, replay=replay))
    elif name == "source":
        from sskt_tf import sources

        source = sources.build_source("resnet50:random", (32, 32), 7 / 3)
        forward = tf.function(lambda x: source(x), jit_compile=FLAGS.jit_compile == "true")
        times = _blocks(lambda n: [forward(images).numpy() for _ in range(n)])
    else:
        raise app.UsageError(f"--row={name} is not a row; rows: {', '.join(LABELS)}")
    return {"row": name, "framework": "sskt_tf", "ms_per_step": times, "median_ms": statistics.median(times),
            "peak_memory_mib": _peak_memory_mib(tf), "devices": [d.name for d in tf.config.list_logical_devices()]}


# --------------------------------------------------------------------------- the table


def _run(command):
    """The JSON line a row's process prints (its last stdout line), or its error; with the CPU steal while it ran."""
    before = cpu_jiffies()
    done = subprocess.run(command, capture_output=True, text=True)
    after = cpu_jiffies()
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit status {done.returncode}, {tail}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if before and after and after[1] > before[1]:
        result["cpu_steal"] = (after[0] - before[0]) / (after[1] - before[1])
    return result


def _common_args():
    return [f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
            f"--repeats={FLAGS.repeats}"]


def _ours(row):
    flags_ = [f"--{n}={FLAGS[n].value}" for n in ("threads", "inter_op_threads", "data", "jit_compile", "precision", "source_precision")]
    return _run([sys.executable, __file__, f"--row={row}", *_common_args(), *flags_])


def _theirs(row):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
    result = _run([sys.executable, script, f"--row={TORCH_ROWS[row]}", f"--threads={FLAGS.threads}", *_common_args()])
    if "peak_rss_mib" in result:
        result["peak_memory_mib"] = result["peak_rss_mib"]
    return result


def _spread(r):
    return (max(r["ms_per_step"]) - min(r["ms_per_step"])) / r["median_ms"]


def _cell(r):
    if r is None:
        return " " * 41
    if "error" in r:
        return f"  {r['error'][:39]:<39}"
    ips = FLAGS.batch_size / r["median_ms"] * 1e3
    steal = f"{r['cpu_steal']:>6.0%}" if r.get("cpu_steal") is not None else f"{'':>6}"
    return f"{r['median_ms']:>10.1f}{_spread(r):>8.0%}{ips:>9.0f}{r['peak_memory_mib']:>8.0f}{steal}"


def main(argv):
    del argv
    if FLAGS.row:
        print(json.dumps(_row(FLAGS.row)))
        return
    rows = [r for r in FLAGS.rows.split(",") if r]
    unknown = [r for r in rows if r not in LABELS]
    if unknown:
        print(f"error: --rows={FLAGS.rows}: {', '.join(unknown)} unknown; rows: {', '.join(LABELS)}", file=sys.stderr)
        sys.exit(2)
    ours, theirs = {}, {}
    for row in rows:
        ours[row] = _ours(row)
        if FLAGS.torch and row in TORCH_ROWS:
            theirs[row] = _theirs(row)
        print(f"measured {row}", file=sys.stderr, flush=True)

    head = f"{'ms/step':>10}{'spread':>8}{'img/s':>9}{'MiB':>8}{'steal':>6}"
    print(f"\n{'':<38}{'sskt_tf':^41}|{'PyTorch way':^41}|")
    print(f"{'row':<38}{head}|{head}|{'torch/ours':>11}")
    for row in rows:
        r, t = ours[row], theirs.get(row)
        ratio = f"{t['median_ms'] / r['median_ms']:>10.2f}x" if t and "error" not in t and "error" not in r else ""
        print(f"{LABELS[row]:<38}{_cell(r)}|{_cell(t)}|{ratio}")

    def ms(results, row):
        r = results.get(row)
        return r["median_ms"] if r and "error" not in r else None

    goals = [
        ("scratch step >= 1.0x the PyTorch way's", ms(theirs, "scratch"), ms(ours, "scratch"), 1.0),
        ("SSKT step >= 1.5x the PyTorch way's", ms(theirs, "sskt"), ms(ours, "sskt"), 1.5),
        ("replay >= 4x the PyTorch way's SSKT step", ms(theirs, "sskt"), ms(ours, "replay"), 4.0),
        ("replay >= 0.9x our scratch step", ms(ours, "scratch"), ms(ours, "replay"), 0.9),
    ]
    print("\ngoals (speed-up = their ms / our ms):")
    for text, slow, fast, goal in goals:
        if slow and fast:
            print(f"  {text:<44} {slow / fast:>6.2f}x  {'met' if slow / fast >= goal else 'NOT met'}")
    one, scratch, source = ms(ours, "sskt"), ms(ours, "scratch"), ms(ours, "source")
    if one and scratch and source:
        ratio = one / (scratch + source)
        print(f"  {'SSKT step / (scratch + source) <= 1.1':<44} {ratio:>6.2f}   {'met' if ratio <= 1.1 else 'NOT met'}")
    failed = [(f"{framework} {row}", r["error"]) for framework, results in (("sskt_tf", ours), ("PyTorch", theirs))
              for row, r in results.items() if "error" in r]
    devices = next((r["devices"] for r in ours.values() if "devices" in r), [])
    print(f"\ndevices: {devices}; batch {FLAGS.batch_size}; {FLAGS.threads} intra-op threads; "
          f"jit_compile={FLAGS.jit_compile}; precision={FLAGS.precision}/{FLAGS.source_precision}; "
          f"{FLAGS.repeats} blocks of {FLAGS.steps} steps after {FLAGS.warmup} warm-up, each row in its own process; "
          "spread = (max - min) / median over the blocks; "
          "steal = CPU time the hypervisor gave to other machines while the row's process ran (a row under steal "
          "measures less than this machine can do)")
    if failed:
        for name, error in failed:
            print(f"error: the {name} row failed: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
