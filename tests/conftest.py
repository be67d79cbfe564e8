"""Test set-up: two logical CPU devices (for the 1-vs-2-replica tests), quiet TensorFlow logs, tiny
stand-in sources, and a background lane for the tests whose work is in subprocesses."""

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


def pytest_configure(config):
    # Keras' numpy-2 conversion shim warns on every tensor -> array call; it says nothing about this code.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")
    config.addinivalue_line(
        "markers",
        "background(job=prepare): the test's subprocess work, `prepare(workdir, stand_ins, items)` -> a "
        "callable run in the background lane (see the `background` fixture)",
    )


import keras  # noqa: E402
import pytest  # noqa: E402


# --- Global state -----------------------------------------------------------------------------------
#
# TensorFlow, Keras and absl keep process-wide settings that a test (or the training command it runs
# in-process: train.main turns on op determinism under --deterministic and sets the dtype policy)
# would otherwise leave to every later test. Op determinism, for one, makes Keras compile without
# XLA with a mere warning, and makes unseeded random ops raise. Every test starts from, and leaves,
# the state the session started with (`_reset_global_state`, autouse; also after module fixtures,
# which are set up before it).


def _global_state():
    import random

    import numpy as np
    from absl import flags
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils
    from tensorflow.python.eager import context
    from tensorflow.python.framework import config as tf_config

    return {
        "dtype_policy": keras.config.dtype_policy().name,
        "floatx": keras.config.floatx(),
        "epsilon": keras.config.epsilon(),
        "image_data_format": keras.config.image_data_format(),
        "op_determinism": tf_config.is_op_determinism_enabled(),
        "functions_run_eagerly": tf.config.functions_run_eagerly(),
        "auto_jit": tf.config.optimizer.get_jit(),
        "tf_global_seed": context.global_seed(),
        "keras_seed": (
            global_state.get_global_attribute(rng_utils.GLOBAL_RANDOM_SEED),
            global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR),
        ),
        "python_random": random.getstate(),
        "numpy_random": np.random.get_state(),
        "flags_parsed": flags.FLAGS.is_parsed(),
        "cwd": os.getcwd(),
        "environ": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},  # pytest's own
    }


def _restore_global_state(state):
    """Puts back what differs from `state`; returns the names of what differed."""
    import random

    import numpy as np
    from absl import flags
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils
    from tensorflow.python.framework import config as tf_config

    now = _global_state()
    changed = [k for k in state if k not in ("python_random", "numpy_random") and _differs(now[k], state[k])]
    if "dtype_policy" in changed:
        keras.config.set_dtype_policy(state["dtype_policy"])
    if "floatx" in changed:
        keras.config.set_floatx(state["floatx"])
    if "epsilon" in changed:
        keras.config.set_epsilon(state["epsilon"])
    if "image_data_format" in changed:
        keras.config.set_image_data_format(state["image_data_format"])
    if "op_determinism" in changed:
        (tf_config.enable_op_determinism if state["op_determinism"] else tf_config.disable_op_determinism)()
    if "functions_run_eagerly" in changed:
        tf.config.run_functions_eagerly(state["functions_run_eagerly"])
    if "auto_jit" in changed:
        tf.config.optimizer.set_jit(state["auto_jit"] or False)
    if "tf_global_seed" in changed:
        tf.random.set_seed(state["tf_global_seed"])
    if "keras_seed" in changed:
        global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, state["keras_seed"][0])
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, state["keras_seed"][1])
    # The global random streams start where the session's started: no test sees another's draws.
    random.setstate(state["python_random"])
    np.random.set_state(state["numpy_random"])
    if "flags_parsed" in changed and not state["flags_parsed"]:
        flags.FLAGS.unparse_flags()
    if "cwd" in changed:
        os.chdir(state["cwd"])
    if "environ" in changed:
        for key in set(os.environ) - set(state["environ"]) - {"PYTEST_CURRENT_TEST"}:
            del os.environ[key]
        os.environ.update(state["environ"])
    return changed


def _differs(a, b):
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001  (objects without a plain comparison)
        return a is not b


_SESSION_STATE = _global_state()


@pytest.fixture(autouse=True)
def _reset_global_state():
    """Every test starts from the session's initial global state and leaves it so (see above)."""
    _restore_global_state(_SESSION_STATE)
    yield
    _restore_global_state(_SESSION_STATE)
    # Not restorable, so it fails the test that leaked it: a strategy scope left entered.
    assert not tf.distribute.has_strategy(), "the test left a tf.distribute strategy scope entered"


def tf_native_log_line(line):
    """Whether a stderr line is TensorFlow's C++ start-up logging (printed at `import tensorflow`,
    whatever TF_CPP_MIN_LOG_LEVEL says), which no command of this package writes or controls."""
    return bool(
        re.match(r"[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ", line)  # glog: I0000 00:00:1795.12  4512 port.cc:153] ...
        or line.startswith("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
        or line.startswith("To enable the following instructions:")  # The second line of cpu_feature_guard's.
    )


def run_commands(commands, timeout=300):
    """Runs the commands (argument lists) at once from the repository root; `[(returncode, stdout, stderr lines)]`.

    The stderr lines leave out TensorFlow's C++ start-up logging (`tf_native_log_line`).
    """
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        results.append((proc.returncode, stdout, [l for l in stderr.splitlines() if not tf_native_log_line(l)]))
    return results


def assert_one_error_line(result, *needles):
    """`result` of `run_commands` is a one-line `error: ...` on stderr with exit status 2, containing `needles`."""
    rc, stdout, stderr = result
    assert rc == 2 and len(stderr) == 1 and stderr[0].startswith("error: "), (rc, stderr[-40:])
    for needle in needles:
        assert needle in stderr[0], (needle, stderr[0])
    return stderr[0]


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy over the 2 logical CPUs for the whole session.

    Several MirroredStrategy objects in one process share collective instance keys on CPU and can
    mix up their all-reduces, so the tests share this one.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """`stand_ins(name, classes, index=0)`: the path of a tiny random source, saved once per session.

    Raw images -> mean colour -> Dense(classes), any input size, named `name` (runs with it log
    `aux_loss_<name>`). It stands in for real sources where a test is about the training command, not
    about the source network: the class count is what shapes the auxiliary head and the loss, and
    building and tracing a real application would cost most of such a run. The sources themselves
    (applications, files, preprocessing) are tested in test_sources.py.
    """
    root = tmp_path_factory.mktemp("stand_in_sources")

    def make(name, classes, index=0):
        path = root / f"{index}.{classes}" / f"{name}.keras"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            inputs = keras.Input((None, None, 3))
            x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
            x = keras.layers.GlobalAveragePooling2D()(x)
            keras.Model(inputs, keras.layers.Dense(classes)(x), name=name).save(path)
        return str(path)

    return make


# --- The background lane ----------------------------------------------------------------------------
#
# Most of this suite runs on one core: TensorFlow's import and the tracing of training steps are
# single-threaded Python. The tests whose work can run in subprocesses (command-line runs, notebook
# kernels, multi-worker training, runs of the training command) hand it to one background thread, the
# lane, which works through those jobs in test order while the tests go on here: at most one job at a
# time beside the tests. A test that reaches its job before the lane does runs the job itself, as it
# would without the lane; the runs of a `TrainingRuns` job are taken from both ends.
#
# A job only starts subprocesses and reads files; it never calls TensorFlow in this process (its
# `prepare`, which may, runs here in the main thread), and every assertion stays in its test.
# SSKT_TESTS_BACKGROUND=0 turns the lane off: every job then runs inside its test, in order.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BackgroundJob:
    """One job of the lane: runs once, in the lane or in the test that needs it first.

    `prepared` is what the job's `prepare` returned: a callable, or a `TrainingRuns`.
    """

    def __init__(self, name, prepared, workdir, prepare_error=None):
        self.name = name
        self._prepared = prepared
        self._prepare_error = prepare_error  # Raised in the tests of a job whose `prepare` failed.
        self.workdir = workdir  # The directory its `prepare` was given.
        self._lock = threading.Lock()
        self._started = False
        self._done = threading.Event()
        self._value = self._error = None
        self.where, self.seconds = None, None  # Where it ran ("lane" or "test") and for how long.

    @property
    def prepared(self):
        if self._prepare_error is not None:
            raise self._prepare_error
        return self._prepared

    def start(self, where="test"):
        """Runs the job here unless it has started elsewhere; returns whether it ran here."""
        with self._lock:
            if self._started:
                return False
            self._started = True
        begin = time.perf_counter()
        try:
            self._value = self.prepared()
        except BaseException as e:  # noqa: BLE001  (re-raised by result())
            self._error = e
        finally:
            self.where, self.seconds = where, time.perf_counter() - begin
            self._done.set()
        return True

    @property
    def finished(self):
        return self._done.is_set()

    def result(self):
        """The job's return value (raises what it raised); runs it here if the lane has not started it."""
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def training_run(self, index):
        """The outcome of run `index` of a `TrainingRuns` job (see there)."""
        return self.prepared.outcome(index, self)


def run_training(args):
    """train.main on `args` (from the repository root): its results."""
    from absl import flags

    from sskt_tf import config as config_lib
    from sskt_tf import train

    config_lib.define_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # Flagfiles and checkpoints/ paths are relative to the repository root.
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["sskt_tf.train", *args])
        return train.main(["sskt_tf.train"])
    finally:
        flags.FLAGS.unparse_flags()
        os.chdir(cwd)


class TrainingRuns:
    """Runs of the training command, shared out between the tests and one helper process.

    Run i writes to `<workdir>/run_<i>/run` (its `--output_dir`). The lane starts a helper process
    (this file as a script: one TensorFlow start-up for all its runs) that takes the runs from the
    last; a test takes its run from here (`BackgroundJob.training_run`). Whoever starts a run first
    claims it (an atomic mkdir); the other waits for its outcome, `{"results": ...}` or `{"error": ...}`.
    """

    def __init__(self, workdir, runs):
        """`runs`: a list of (name, args); each run's --output_dir is added here."""
        self.runs = []
        for i, (name, args) in enumerate(runs):
            run_dir = os.path.join(str(workdir), f"run_{i:02d}")
            self.runs.append({"name": name, "dir": run_dir, "args": [*args, f"--output_dir={run_dir}/run"]})
        self.plan = os.path.join(str(workdir), "plan.json")
        self.log = os.path.join(str(workdir), "helper.log")
        self.stop_file = os.path.join(str(workdir), "stop")  # The helper starts no run once it exists.
        with open(self.plan, "w") as f:
            json.dump({"runs": self.runs, "stop_file": self.stop_file}, f, indent=1)

    def output_dir(self, index):
        return pathlib.Path(self.runs[index]["dir"]) / "run"

    def __call__(self):
        if all(os.path.exists(os.path.join(r["dir"], "claim")) for r in self.runs):
            return 0  # The tests have taken them all.
        with open(self.log, "w") as log:
            command = [sys.executable, os.path.abspath(__file__), self.plan]
            return subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=3600).returncode

    def outcome(self, index, job):
        run = self.runs[index]
        if _claim(run["dir"]):
            _record(run["dir"], lambda: run_training(run["args"]))
        path = os.path.join(run["dir"], "outcome.json")
        deadline = time.time() + 1800
        while not os.path.exists(path):
            if job.finished or time.time() > deadline:
                log = open(self.log).read()[-3000:] if os.path.exists(self.log) else ""
                assert os.path.exists(path), f"the helper process stopped without the outcome of {run['name']}:\n{log}"
            time.sleep(0.2)
        with open(path) as f:
            return json.load(f)


def _claim(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    try:
        os.mkdir(os.path.join(run_dir, "claim"))
        return True
    except FileExistsError:
        return False


def _record(run_dir, train_fn):
    """Runs `train_fn()` and writes its outcome (its results, or its error) to run_dir/outcome.json."""
    try:
        outcome = {"results": train_fn()}
    except Exception:  # noqa: BLE001  (the test reports it)
        outcome = {"error": traceback.format_exc()}
    path = os.path.join(run_dir, "outcome.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump(outcome, f)
    os.replace(f"{path}.tmp", path)


@pytest.fixture(scope="session", autouse=True)
def _background_lane(request, tmp_path_factory, stand_ins):
    """Prepares the jobs of the selected tests marked `background`, and runs them in a thread."""
    jobs, users = {}, {}
    for item in request.session.items:
        marker = item.get_closest_marker("background")
        if marker is not None:
            users.setdefault(marker.kwargs["job"], []).append(item)
    for prepare, items in users.items():
        workdir = tmp_path_factory.mktemp(prepare.__name__.strip("_"))
        try:
            jobs[prepare] = BackgroundJob(prepare.__name__, prepare(workdir, stand_ins, items), workdir)
        except Exception as e:  # noqa: BLE001  (fails the job's own tests, not the session)
            jobs[prepare] = BackgroundJob(prepare.__name__, None, workdir, prepare_error=e)
    stop = threading.Event()

    def lane():
        for job in jobs.values():
            if stop.is_set():
                return
            job.start("lane")

    thread = None
    if jobs and os.environ.get("SSKT_TESTS_BACKGROUND", "1") != "0":
        thread = threading.Thread(target=lane, name="background-lane", daemon=True)
        thread.start()
    yield jobs
    # The session is over (all its tests have their jobs' results, or it was cut short): start nothing new.
    stop.set()
    for job in jobs.values():
        if isinstance(job._prepared, TrainingRuns):
            open(job._prepared.stop_file, "w").close()
    if thread is not None:
        thread.join()
    _LANE_REPORT[:] = [(job.name, job.where, job.seconds) for job in jobs.values()]


_LANE_REPORT = []


def pytest_terminal_summary(terminalreporter):
    """Where each background job ran and for how long (a test's duration includes its waiting)."""
    if _LANE_REPORT:
        terminalreporter.section("background jobs")
        for name, where, seconds in _LANE_REPORT:
            ran = f"{seconds:7.2f}s in the {where}" if where else "    not run"
            terminalreporter.write_line(f"{ran:>22}  {name}")


@pytest.fixture
def background(request, _background_lane):
    """The `BackgroundJob` of this test's `background` marker: `background.result()` is what it returned."""
    marker = request.node.get_closest_marker("background")
    assert marker is not None, "the background fixture needs @pytest.mark.background(job=prepare)"
    return _background_lane[marker.kwargs["job"]]


def _helper(plan):
    """The helper process of a `TrainingRuns`: its runs from the last, each unless claimed already."""
    with open(plan) as f:
        plan = json.load(f)
    for run in reversed(plan["runs"]):
        if os.path.exists(plan["stop_file"]):
            return
        if _claim(run["dir"]):
            _record(run["dir"], lambda: run_training(run["args"]))
            print(f"ran {run['name']}", flush=True)


if __name__ == "__main__":
    _helper(sys.argv[1])
