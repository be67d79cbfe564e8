"""Test set-up: two logical CPU devices (for the 1-vs-2-replica tests), quiet TensorFlow logs, the
session's global state restored around every test, tiny stand-in sources, and the helpers of the
command-line tests.

The suite runs in parallel with pytest-xdist, in two commands (the README's): `python -m pytest -n auto
-m "not slow"`, then `-m slow`, the tests that start subprocesses, run notebooks or train through the
command end to end; each worker is its own process with its own TensorFlow."""

import os
import re
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
        "markers", "slow: starts subprocesses or trains through a command (deselect with -m 'not slow')"
    )


import keras  # noqa: E402
import pytest  # noqa: E402


def _xdist_group(item):
    marker = item.get_closest_marker("xdist_group")
    return marker.args[0] if marker is not None and marker.args else None


def pytest_collection_modifyitems(config, items):
    # The slow tests first, in collection order: xdist hands tests out in this order, and a
    # minute-long test that starts last keeps one worker busy after the other has finished. An
    # xdist_group moves with its slow tests, in one piece, so that its module fixtures (a training
    # run) are built once.
    early_groups = {_xdist_group(item) for item in items if item.get_closest_marker("slow")} - {None}
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or _xdist_group(item) in early_groups))


# --- Global state -----------------------------------------------------------------------------------
#
# TensorFlow, Keras and absl keep process-wide settings that a test (or the training command it runs
# in-process: train_lib.run turns on op determinism under --deterministic and sets the dtype policy)
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
    """Whether a stderr line is TensorFlow's C++ logging, which no command of this package writes.

    `sskt_tf.tf_import` leaves its start-up lines out (tests/test_tf_import.py checks that); the
    commands' tests ignore any that TensorFlow prints later, so that they assert on the package's
    own lines."""
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


def run_training(args):
    """train.main on `args` (from the repository root): its results."""
    from absl import flags

    from sskt_tf import config as config_lib
    from sskt_tf import train
    from sskt_tf.cli import expand_flagfiles

    config_lib.define_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # Flagfiles and checkpoints/ paths are relative to the repository root.
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["sskt_tf.train", *expand_flagfiles(args, configs=True)])  # As the command reads them.
        return train.main(["sskt_tf.train"])
    finally:
        flags.FLAGS.unparse_flags()
        os.chdir(cwd)
