"""Test set-up: two logical CPU devices (for the 1-vs-2-replica tests), quiet TensorFlow logs."""

import os

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


import keras  # noqa: E402
import pytest  # noqa: E402


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
