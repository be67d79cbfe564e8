"""tf.distribute strategies, by name."""

import os

import tensorflow as tf

from sskt_tf.errors import UserError


def get_strategy(name="auto", tpu=""):
    """The strategy called `name` (the `--strategy` flag), as Model Garden's `get_distribution_strategy`.

    auto: MirroredStrategy over all GPUs when there are several, else the default strategy.
    one_device: the first GPU, or the CPU.
    mirrored: MirroredStrategy over all GPUs, or over all logical CPU devices when there is no GPU
        (how the multi-replica path is tested on a CPU machine).
    multi_worker: MultiWorkerMirroredStrategy over the machines that TF_CONFIG lists (the same
        command runs on every worker, each with its own TF_CONFIG task index).
    tpu: TPUStrategy on the TPU at address `tpu` ('' finds the local or Colab TPU).

    Call it before any other TensorFlow call of the program: multi_worker configures the
    collective ops, which must happen before devices are listed. Build the model inside the
    returned strategy's `scope()`.

    Args:
        name: one of `sskt_tf.names.STRATEGIES`.
        tpu: `--tpu`, the TPU's name or `grpc://` address; '' for the local or Colab TPU. Only
            read when `name` is "tpu".

    Returns:
        A `tf.distribute.Strategy`; `num_replicas_in_sync` is the number of replicas the global
        batch is split over.

    Raises:
        UserError: multi_worker without the TF_CONFIG environment variable, tpu when no TPU is
            found at `tpu`, or an unknown `name`.
    """
    # Before anything lists devices: collective ops must be configured at program start.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable on every worker, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise UserError(f"--strategy={name} is not known. Allowed: auto, one_device, mirrored, multi_worker, tpu.")


def worker_output_dir(output_dir, strategy):
    """Where this worker writes: --output_dir on the chief, <output_dir>/worker_<i> on the others.

    Every worker of a multi-worker run saves its own state (it needs it to resume); only the
    chief's copy is the run's output.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return output_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())
    return output_dir if is_chief else os.path.join(output_dir, f"{task_type}_{task_id}")


def _tpu_strategy(address):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        where = f"at --tpu={address}" if address else "on this machine (--tpu='')"
        raise UserError(
            f"--strategy=tpu: no TPU found {where} ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "On a Cloud TPU VM leave --tpu empty; elsewhere pass its name or grpc:// address."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def check_batch_size(batch_size, strategy, flag="--batch_size"):
    """The global batch must split evenly over the replicas, or replicas would see different batch sizes."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(
            f"{flag}={batch_size} does not divide by the {replicas} replicas of the strategy; "
            f"use a multiple of {replicas}."
        )
