"""Training throughput of SSKT and its parts, measured in one run; prints one table.

    python benchmarks/throughput.py [--steps=10] [--batch_size=128] [--data=folder:/tmp/cifar10]

Rows (ResNet-20 target, 32x32 images, global batch --batch_size):
  input pipeline alone      the training tf.data pipeline (decode/cache, shuffle, batch, augment)
  scratch                   train step of the target alone
  SSKT, 1 x ResNet-50 @74   train step with one frozen ResNet-50 source (random weights: same cost)
  SSKT, 2 x ResNet-50 @74   two sources with 1000 and 365 classes (the paper's I + P)
  SSKT, ..., soft-label cache  the step reading stored source logits (--soft_label_cache=clean)
  source forward alone      one ResNet-50 forward at 74 px, inference mode
and the ratio  SSKT step / (scratch step + source forward): above 1 means SSKT adds work beyond
the sources' own forward pass.

Model steps run on one batch held in memory, so they measure compute, not input.
"""

import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from sskt_tf import data as data_lib  # noqa: E402
from sskt_tf import methods, optim  # noqa: E402
from sskt_tf.config import Config  # noqa: E402

flags.DEFINE_integer("steps", 10, "Timed steps per row (after warm-up steps).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per row (tracing, compilation).")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_string("data", "synthetic", "Dataset of the input-pipeline row (e.g. folder:/tmp/cifar10).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the model steps.")
FLAGS = flags.FLAGS


def _time_train_step(config, inputs, labels, jit):
    model = methods.build_model(config, (32, 32), 10)
    model.compile(optimizer=optim.build_optimizer(config, 100), jit_compile=jit)
    ds = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.warmup, verbose=0)
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
    return (time.perf_counter() - start) / FLAGS.steps, model


def _time_source_forward(source, images):
    forward = tf.function(lambda x: source(x), jit_compile=FLAGS.jit_compile == "true")
    for _ in range(FLAGS.warmup):
        forward(images).numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        forward(images).numpy()
    return (time.perf_counter() - start) / FLAGS.steps


def _time_pipeline():
    datasets = data_lib.load(FLAGS.data, batch_size=FLAGS.batch_size)
    it = iter(datasets.train)
    # A first full pass fills the in-memory cache; the steady state is what training sees.
    for _ in range(max(datasets.steps_per_epoch, FLAGS.warmup)):
        next(it)
    steps = 10 * FLAGS.steps
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    jit = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    b = FLAGS.batch_size
    images = tf.constant(np.random.RandomState(0).uniform(0, 255, (b, 32, 32, 3)).astype("float32"))
    labels = tf.constant(np.arange(b) % 10, tf.int32)
    base = Config(dataset="synthetic", model="resnet20", batch_size=b)
    rows = [("input pipeline alone", _time_pipeline())]
    scratch, _ = _time_train_step(base, images, labels, jit)
    rows.append(("scratch", scratch))
    one, model = _time_train_step(dataclasses.replace(base, sources=("resnet50:random",)), images, labels, jit)
    rows.append(("SSKT, 1 x ResNet-50 @74", one))
    cached_inputs = {"images": images, "extras": (model.sources[0](images),)}
    cached, _ = _time_train_step(dataclasses.replace(base, sources=("resnet50:random",)), cached_inputs, labels, jit)
    rows.append(("SSKT, 1 x ResNet-50, --soft_label_cache", cached))
    two_sources = dataclasses.replace(base, sources=("resnet50:random", "resnet50:random:365"))
    two, _ = _time_train_step(two_sources, images, labels, jit)
    rows.append(("SSKT, 2 x ResNet-50 @74 (1000 + 365)", two))
    forward = _time_source_forward(model.sources[0], images)
    rows.append(("source forward alone (ResNet-50 @74)", forward))

    print(f"\n{'':<40}{'ms/step':>10}{'images/s':>12}")
    for name, seconds in rows:
        print(f"{name:<40}{seconds * 1e3:>10.1f}{b / seconds:>12.0f}")
    print(f"\nratio SSKT(1) step / (scratch step + source forward) = {one / (scratch + forward):.3f}")
    print(
        f"devices: {[d.name for d in tf.config.list_logical_devices()]}; batch {b}; "
        f"jit_compile={FLAGS.jit_compile}; {FLAGS.steps} timed steps after {FLAGS.warmup} warm-up"
    )


if __name__ == "__main__":
    app.run(main)
