"""Where the time of the ResNet-20 training step goes: its parts, timed one by one, beside PyTorch's.

    python benchmarks/step_profile.py [--batch_size=128] [--threads=2] [--steps=10] [--repeats=3]

Each part is a compiled function (a `tf.function`; plain eager PyTorch) over one batch of 32x32
images held in memory, timed as `--repeats` blocks of `--steps` calls after warm-up (median ms per
call). The parts add one piece of the step at a time:

  forward (inference)     the target, training=False
  forward (training)      the target, training=True (BatchNorm on batch statistics)
  + backward              cross-entropy and its gradient on every variable
  + coupled L2            the weight decay term in the loss (as sskt_tf adds it)
  + SGD update            momentum SGD applied: a whole step without metrics
  Keras train_step        sskt_tf's own step as `fit` runs it (metrics and logs included)
  ... with XLA            the same with jit_compile=True
  ... steps_per_execution=10   fit's loop runs 10 steps per call into TensorFlow

The PyTorch column runs the same parts of `benchmarks/torch_reference.py`'s target (NCHW, eager),
each part in its own process is not needed here: both frameworks run one after the other in
separate processes (this script runs itself with --framework=...).
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("batch_size", 128, "Images per step.")
flags.DEFINE_integer("threads", 2, "Intra-op threads.")
flags.DEFINE_integer("steps", 10, "Calls per timed block.")
flags.DEFINE_integer("warmup", 3, "Untimed calls first.")
flags.DEFINE_integer("repeats", 3, "Timed blocks; the median is printed.")
flags.DEFINE_enum("framework", None, ["tensorflow", "torch"], "Internal: time one framework's parts.")
FLAGS = flags.FLAGS


def _time(fn):
    for _ in range(FLAGS.warmup):
        fn()
    blocks = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            fn()
        blocks.append((time.perf_counter() - start) / FLAGS.steps * 1e3)
    return statistics.median(blocks)


def _tensorflow_parts():
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from sskt_tf import methods, optim
    from sskt_tf.config import Config
    from sskt_tf.models.training_model import coupled_l2

    b = FLAGS.batch_size
    keras.utils.set_random_seed(0)
    images = tf.constant(np.random.RandomState(0).uniform(0, 255, (b, 32, 32, 3)).astype("float32"))
    labels = tf.constant(np.arange(b) % 10, tf.int32)
    config = Config(dataset="synthetic", model="resnet20", batch_size=b)
    model = methods.build_model(config, (32, 32), 10)
    variables = model.target_variables
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    sgd.build(variables)

    def loss(training=True):
        logits = model(images, training=training)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def grads(l2):
        with tf.GradientTape() as tape:
            value = loss()
            if l2:
                value = value + coupled_l2(variables, 5e-4)
        return tape.gradient(value, variables)

    parts = {
        "forward (inference)": tf.function(lambda: model(images, training=False)),
        "forward (training)": tf.function(lambda: model(images, training=True)),
        "+ backward": tf.function(lambda: grads(False)),
        "+ coupled L2": tf.function(lambda: grads(True)),
        "+ SGD update": tf.function(lambda: sgd.apply(grads(True), variables)),
    }
    results = {name: _time(lambda f=fn: tf.nest.map_structure(lambda t: t, f())) for name, fn in parts.items()}

    ds = tf.data.Dataset.from_tensors((images, labels)).repeat()
    for name, kwargs in (("Keras train_step", {}), ("... with XLA", {"jit_compile": True}),
                         ("... steps_per_execution=10", {"steps_per_execution": 10})):
        fit_model = methods.build_model(config, (32, 32), 10)
        fit_model.compile(optimizer=optim.build_optimizer(config, 100), **{"jit_compile": False, **kwargs})
        fit_model.fit(ds, epochs=1, steps_per_epoch=kwargs.get("steps_per_execution", 1), verbose=0)
        it = iter(ds)
        per_call = kwargs.get("steps_per_execution", 1)
        results[name] = _time(lambda m=fit_model, i=it: float(m.train_function(i)["loss"])) / per_call
    return results


def _torch_parts():
    import importlib.util

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(FLAGS.threads)
    torch.set_num_interop_threads(1)
    spec = importlib.util.spec_from_file_location("torch_reference", os.path.join(os.path.dirname(__file__), "torch_reference.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.manual_seed(0)
    images, labels = ref.fixed_batch(FLAGS.batch_size)
    model = ref.CifarResNet(20, 10)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def inference():
        model.eval()
        with torch.no_grad():
            model(images)
        model.train()

    def backward():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images)[0], labels).backward()

    def step():
        backward()
        sgd.step()

    return {
        "forward (inference)": _time(inference),
        "forward (training)": _time(lambda: model(images)),
        "+ backward": _time(backward),
        "+ SGD update": _time(step),
    }


def main(argv):
    del argv
    if FLAGS.framework:
        parts = _tensorflow_parts() if FLAGS.framework == "tensorflow" else _torch_parts()
        print(json.dumps(parts))
        return
    common = [f"--{n}={FLAGS[n].value}" for n in ("batch_size", "threads", "steps", "warmup", "repeats")]
    results = {}
    for framework in ("tensorflow", "torch"):
        done = subprocess.run([sys.executable, __file__, f"--framework={framework}", *common], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{framework}: {done.stderr.strip().splitlines()[-1]}")
        results[framework] = json.loads(done.stdout.strip().splitlines()[-1])
    tf_parts, torch_parts = results["tensorflow"], results["torch"]
    print(f"\nResNet-20 step parts, batch {FLAGS.batch_size}, {FLAGS.threads} threads, median of {FLAGS.repeats} x {FLAGS.steps} calls (ms)")
    print(f"{'part':<30}{'sskt_tf':>10}{'PyTorch':>10}{'torch/ours':>12}")
    for name, ms in tf_parts.items():
        theirs = torch_parts.get(name)
        extra = f"{theirs:>10.1f}{theirs / ms:>11.2f}x" if theirs else ""
        print(f"{name:<30}{ms:>10.1f}{extra}")
    print("(PyTorch's weight decay is inside SGD: its '+ SGD update' row is the whole step.)")


if __name__ == "__main__":
    app.run(main)
