"""Test set-up: two logical CPU devices (for the 1-vs-2-replica tests), quiet TensorFlow logs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
