"""tf.distribute strategies, by name."""

import tensorflow as tf

from sskt_tf.errors import UserError


def get_strategy(name="auto"):
    """The strategy called `name` (the `--strategy` flag).

    auto: MirroredStrategy over all GPUs when there are several, else the default strategy.
    one_device: the first GPU, or the CPU.
    mirrored: MirroredStrategy over all GPUs, or over all logical CPU devices when there is no GPU
        (how the multi-replica path is tested on a CPU machine).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise UserError(f"--strategy={name} is not known. Allowed: auto, one_device, mirrored.")


def check_batch_size(batch_size, strategy, flag="--batch_size"):
    """The global batch must split evenly over the replicas, or replicas would see different batch sizes."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(
            f"{flag}={batch_size} does not divide by the {replicas} replicas of the strategy; "
            f"use a multiple of {replicas}."
        )
