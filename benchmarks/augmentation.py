"""Images per second of the training input pipeline under each augmentation option; prints one table.

    python benchmarks/augmentation.py [--data=folder:/tmp/cifar10] [--batches=40] [--batch_size=128]

Each row builds the training stream of `sskt_tf.data.load` with one `AugmentationConfig` and times
`--batches` batches after `--warmup` (the first pass fills the in-memory cache). The pipeline
runs on the CPU in every setting, so these figures say whether the input can keep up with a
given training step.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from sskt_tf import data as data_lib  # noqa: E402
from sskt_tf.config import AugmentationConfig  # noqa: E402

flags.DEFINE_string("data", "synthetic", "Dataset (e.g. folder:/tmp/cifar10).")
flags.DEFINE_integer("batches", 40, "Timed batches per row.")
flags.DEFINE_integer("warmup", 5, "Untimed batches per row.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
FLAGS = flags.FLAGS

ROWS = (
    ("none", AugmentationConfig(kind="none"), False),
    ("standard (pad-4 crop + flip)", AugmentationConfig(), False),
    ("standard + mixup 0.2", AugmentationConfig(mixup=0.2), False),
    ("standard + cutmix 1.0", AugmentationConfig(cutmix=1.0), False),
    ("randaugment N=2 M=0.5, parallel", AugmentationConfig(kind="randaugment"), False),
    ("randaugment N=2 M=0.5, --deterministic", AugmentationConfig(kind="randaugment"), True),
)


def main(argv):
    del argv
    print(f"data={FLAGS.data} batch_size={FLAGS.batch_size} cpus={os.cpu_count()}")
    print(f"| augmentation | images/s | ms/batch |\n|---|---|---|")
    for name, aug, deterministic in ROWS:
        ds = data_lib.load(FLAGS.data, batch_size=FLAGS.batch_size, augment=aug, deterministic=deterministic).train
        it = iter(ds)
        for _ in range(FLAGS.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            next(it)
        seconds = (time.perf_counter() - start) / FLAGS.batches
        print(f"| {name} | {FLAGS.batch_size / seconds:,.0f} | {1000 * seconds:.1f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
