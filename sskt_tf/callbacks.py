"""Callbacks of a training run: outputs on disk (metrics.csv, TensorBoard), resumption, throughput, the
learning rate.

Epochs are numbered from 1 everywhere a run shows or writes them (Keras' "Epoch 1/N", metrics.csv's
`epoch`, TensorBoard's step of the `epoch_*` scalars, results.json), although Keras hands callbacks
the 0-based index."""

import csv
import glob
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from sskt_tf import metrics as metrics_lib
from sskt_tf import run_dir as run_dir_lib


class ResumeCheckpoint:
    """The full training state after the last finished epoch, saved atomically, for resumption.

    `save` writes `epoch_<n>.weights.h5` (model and optimizer) through a temporary file, then
    replaces the pointer `latest.json`: that replacement is the commit, and a crash at any moment
    leaves one complete state (unlike Keras' BackupAndRestore, whose weights and metadata can
    disagree after a crash between the two writes). The pointer also carries what the run needs
    besides the weights (the best checkpoint's value and epoch, the run's inputs, its timings).
    `prune` then deletes the older weight files. The run deletes the directory once results.json
    is written.

    Restoring is `restore(model)`, called before `fit(initial_epoch=...)`, because the data stream
    must also start where the interrupted run stopped.
    """

    def __init__(self, directory):
        self.directory = directory
        self._pointer = os.path.join(directory, "latest.json")

    def state(self):
        """The saved pointer (`epoch`, `weights` and what `save` was given), or None when there is none."""
        if not os.path.exists(self._pointer):
            return None
        with open(self._pointer) as f:
            return json.load(f)

    def saved_epoch(self):
        """Epochs completed by the saved state; 0 when there is none."""
        state = self.state()
        return int(state["epoch"]) if state else 0

    def restore(self, model):
        """Loads the saved state into `model` (built, compiled, optimizer built); returns its epoch count.

        Raises what Keras' weight loader raises when the file does not fit `model`.
        """
        state = self.state()
        if not state:
            return 0
        model.load_weights(os.path.join(self.directory, state["weights"]))
        return int(state["epoch"])

    def save(self, model, epoch, **info):
        """Saves `model`'s state as finished epoch `epoch` (1-based), with `info` in the pointer; atomic."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch_{epoch}.weights.h5"
        tmp = os.path.join(self.directory, f"tmp_{name}")
        model.save_weights(tmp)
        os.replace(tmp, os.path.join(self.directory, name))
        run_dir_lib.atomic_write_text(self._pointer, json.dumps({"epoch": epoch, "weights": name, **info}))

    def prune(self):
        """Deletes every weight file but the saved state's (older epochs, leftovers of a crash)."""
        state = self.state()
        keep = state["weights"] if state else None
        for path in sorted(glob.glob(os.path.join(self.directory, "*.weights.h5"))):
            if os.path.basename(path) != keep:
                os.remove(path)

    def delete(self):
        shutil.rmtree(self.directory, ignore_errors=True)


class TargetCheckpoint(keras.callbacks.Callback):
    """At every epoch end: the resumption state, then the target alone as `last.keras` and `best.keras`.

    The target is small (1 MB for ResNet-20) where the sources are not (100 MB for a ResNet-50), so
    these checkpoints are cheap. `best.keras` follows `monitor` over the epochs that have it (with
    `--eval_every`, not every epoch is evaluated).

    The writes of an epoch end are ordered so that a crash (SIGKILL) between any two of them loses
    nothing (tested in test_resilience.py):

    1. `resume.save`: the full state with the best value and epoch so far (the commit). A crash
       before it: the resumed run redoes this epoch and writes everything below again.
    2. `last.keras`, 3. `best.keras` (when this epoch is the best). A crash after the commit but
       before these: `on_train_begin` of the resumed run writes them from the restored state,
       which holds this epoch's weights.
    4. `resume.prune()`: the older state's weights.

    The best value and its epoch come back from the resumption state, so the first epoch after a
    resume replaces `best.keras` only when it beats the best before the crash.

    Args:
        directory: the `checkpoints/` directory.
        monitor: the log entry to maximise (`val_accuracy`, `val_map`).
        resume: a `ResumeCheckpoint` (None: `--noresume`, no resumption state).
        restored: the state the run resumed from (`ResumeCheckpoint.state()`), or None.
        extra_state: a function returning what else the resumption state must carry (a dict).
    """

    def __init__(self, directory, monitor="val_accuracy", resume=None, restored=None, extra_state=None):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.resume = resume
        self.restored_epoch = int(restored["epoch"]) if restored else 0
        self.best = (restored or {}).get("best")
        self.best_epoch = (restored or {}).get("best_epoch")
        self._extra_state = extra_state or dict
        self._target = None

    @property
    def last_path(self):
        return os.path.join(self.directory, "last.keras")

    @property
    def best_path(self):
        return os.path.join(self.directory, "best.keras")

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._target = self.model.target_model()
        if self.restored_epoch:
            # The crash may have come between the commit and these files: write them from the
            # restored state (this epoch's weights). Idempotent when they were written.
            run_dir_lib.atomic_save(self._target, self.last_path)
            if self.best_epoch == self.restored_epoch:
                run_dir_lib.atomic_save(self._target, self.best_path)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        value = None if value is None else float(value)
        improved = value is not None and math.isfinite(value) and (self.best is None or value > self.best)
        if improved:
            self.best, self.best_epoch = value, epoch + 1
        if self.resume is not None:
            self.resume.save(self.model, epoch + 1, best=self.best, best_epoch=self.best_epoch, **self._extra_state())
        run_dir_lib.atomic_save(self._target, self.last_path)
        if improved:
            run_dir_lib.atomic_save(self._target, self.best_path)
        if self.resume is not None:
            self.resume.prune()


class MetricsLog(keras.callbacks.Callback):
    """`metrics.csv`: one row per finished epoch, `epoch` counted from 1 (as the console's "Epoch 1/N").

    The columns are the epoch's logs: the training metrics (running means over the epoch), `lr` and
    `images_per_second` (`LearningRateLog`, `Throughput`), and the `val_*` metrics. The file is
    rewritten atomically after every epoch with the union of the columns seen so far: epochs
    without evaluation (`--eval_every`) leave their `val_*` cells empty instead of fixing the
    columns without them, as CSVLogger would. A resumed run keeps only the rows of the epochs its
    state holds: a crash after an epoch's row but before its commit redoes that epoch.
    """

    def __init__(self, path, initial_epoch=0):
        super().__init__()
        self.path = path
        self.rows = []
        if initial_epoch and os.path.exists(path):
            with open(path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= initial_epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        columns = sorted({k for row in self.rows for k in row} - {"epoch"})
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, ["epoch", *columns], restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def multi_label_metrics(model, dataset):
    """Exact `map` and `map_per_image_reference` of `model` over one pass of `(images, multi-hot labels)`."""
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    scores, labels = [], []
    for images, batch_labels in dataset:
        scores.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    return metrics_lib.multi_label_metrics(np.concatenate(labels), np.concatenate(scores))


class MultiLabelEvaluation(keras.callbacks.Callback):
    """Adds `val_map` and `val_map_per_image_reference` to the logs of each evaluated epoch (multi-label runs).

    AP ranks every example of the evaluation set against every other, so it is computed here, exactly,
    from one prediction pass over the whole set, rather than by a streaming metric (see
    `sskt_tf.metrics`). It runs on the epochs `fit` evaluated (their logs have `val_loss`), over the
    same set, and must come before the callbacks that read the logs (CSV, TensorBoard, best checkpoint).
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_loss" in logs:
            for name, value in multi_label_metrics(self.model, self.dataset).items():
                logs[f"val_{name}"] = value


class Throughput(keras.callbacks.Callback):
    """Training images per second, from the training part of each epoch (validation and writes excluded).

    Logged as `images_per_second`: after each step, the images of the epoch so far over its time so far
    (the progress bar's value; the first epoch's includes tracing and compilation); at the epoch's
    end, the epoch's training part (metrics.csv, TensorBoard). Images are counted in global batches
    (`--batch_size`, over all replicas and workers), so the figure is the whole run's, not one
    replica's. It is wall-clock time: two identical runs log different values.

    Put it first among the callbacks: its `on_epoch_end` then stops the clock before the others write,
    and the others see its value in the logs. `history` (from a resumed run's state) holds the epochs
    measured before the resume.
    """

    def __init__(self, global_batch_size, history=None, clock=time.perf_counter):
        super().__init__()
        self.global_batch_size = global_batch_size
        self._clock = clock  # Seconds; the tests pass a clock of their own.
        self.epoch_seconds = list((history or {}).get("seconds", []))
        self.epoch_steps = list((history or {}).get("steps", []))
        self._start = None
        self._steps = 0

    def history(self):
        """What a resumed run needs to go on measuring (see `__init__`)."""
        return {"seconds": list(self.epoch_seconds), "steps": list(self.epoch_steps)}

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = self._clock(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if logs is not None and self._start is not None:
            seconds = self._clock() - self._start
            logs["images_per_second"] = self._steps * self.global_batch_size / seconds if seconds > 0 else 0.0

    def _close(self):
        if self._start is not None:
            self.epoch_seconds.append(self._clock() - self._start)
            self.epoch_steps.append(self._steps)
            self._start = None

    def on_test_begin(self, logs=None):
        self._close()

    def on_epoch_end(self, epoch, logs=None):
        self._close()
        if logs is not None and self.epoch_seconds and self.epoch_seconds[-1] > 0:
            logs["images_per_second"] = self.epoch_steps[-1] * self.global_batch_size / self.epoch_seconds[-1]

    def images_per_second(self, skip_first=False):
        """Mean throughput; `skip_first` drops the first epoch (tracing and compilation)."""
        seconds, steps = self.epoch_seconds, self.epoch_steps
        if skip_first and len(seconds) > 1:
            seconds, steps = seconds[1:], steps[1:]
        total = sum(seconds)
        return sum(steps) * self.global_batch_size / total if total else 0.0


class EpochTracker(keras.callbacks.Callback):
    """Where a run is, for the message of an interrupted run.

    `epoch`: the epoch in progress (0-based; None before the first). `ended`: whether that epoch's
    end has run (an interrupt can land between two epochs). `finished`: set by the run once `fit`
    has returned (the results are being written). `progress_line_open`: whether Keras' progress bar
    (verbose=1) may be in the middle of its line, which it redraws in place. `filling`: set by the run
    while it stores the sources' logits (`--soft_label_cache`), before training.
    """

    def __init__(self):
        super().__init__()
        self.epoch = None
        self.ended = False
        self.finished = False
        self.filling = False
        self._steps = 0

    @property
    def progress_line_open(self):
        # The bar draws its line from the epoch's first step on and ends it after every other
        # callback's `on_epoch_end` (Keras appends its ProgbarLogger last): open until the next epoch.
        return self.epoch is not None and self._steps > 0 and not self.finished

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.ended, self._steps = epoch, False, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.ended = True


class LearningRateLog(keras.callbacks.Callback):
    """Logs `lr`, the learning rate of the step just taken (the optimizer's schedule at that step).

    After each step when the progress bar shows it (verbose=1), and at the epoch's end (the rate
    of its last step) for metrics.csv and TensorBoard. Keras' own TensorBoard callback logged
    `optimizer.learning_rate` instead: the rate of the next step, the next epoch's after a milestone.
    """

    def _rate(self):
        optimizer = self.model.optimizer
        step = int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1
        # The float32 rate as its shortest decimal (0.02, not 0.019999999552965164) for metrics.csv.
        return float(str(np.float32(learning_rate_at(optimizer, max(step, 0)))))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self.params.get("verbose") == 1:
            logs["lr"] = self._rate()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self._rate()


class ReduceLROnPlateau(keras.callbacks.Callback):
    """`--lr_schedule=plateau`: multiplies the learning rate by `factor` when the monitored loss stalls.

    PyTorch's `ReduceLROnPlateau(mode="min")` with its defaults (relative threshold 1e-4, no
    cooldown, no minimum), the video reference's scheduler (Hara et al.'s 3D-ResNets-PyTorch, as
    the SSKT authors' 3D code uses it), stepped after every evaluation with its validation loss:
    a loss below `best * (1 - 1e-4)` becomes the best and clears the count of bad evaluations;
    any other adds one, and more than `patience` of them in a row multiply the rate by `factor`
    and clear the count. Epochs that do not evaluate (`--eval_every`) change nothing.

    Its state (`best`, `bad_evaluations`) travels in the resumption state (`state()`); the rate
    itself is an optimizer variable, saved with the optimizer.

    Args:
        factor: the multiplier, in (0, 1) (`--lr_gamma`).
        patience: bad evaluations tolerated (`--lr_patience`).
        monitor: the log entry, `val_loss`.
        restored: a `state()` of the run this one resumes, or None.
    """

    THRESHOLD = 1e-4

    def __init__(self, factor, patience, monitor="val_loss", restored=None):
        super().__init__()
        self.factor = float(factor)
        self.patience = int(patience)
        self.monitor = monitor
        restored = restored or {}
        self.best = restored.get("best")
        self.bad_evaluations = int(restored.get("bad_evaluations", 0))

    def state(self):
        """What a resumed run needs: `{"best": float or None, "bad_evaluations": int}`."""
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value < self.best * (1 - self.THRESHOLD):
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations > self.patience:
            optimizer = self.model.optimizer
            optimizer.learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) * self.factor
            self.bad_evaluations = 0


class EpochSummaries(keras.callbacks.Callback):
    """TensorBoard scalars of every epoch, at step = the epoch's number counted from 1.

    The layout of Keras' TensorBoard callback (`train/` and `validation/` under `log_dir`, tags
    `epoch_<name>`, the `val_` prefix dropped in `validation/`), but at the step the console and
    metrics.csv name the epoch by (Keras' callback uses the 0-based index). A resumed run appends
    its epochs in new event files of the same directories.

    Args:
        log_dir: the run's `tensorboard/` directory.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = None

    def _writer(self, split):
        if self._writers is None:
            self._writers = {
                name: tf.summary.create_file_writer(os.path.join(self.log_dir, name)) for name in ("train", "validation")
            }
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for split, items in (
            ("train", [(k, v) for k, v in logs.items() if not k.startswith("val_")]),
            ("validation", [(k.removeprefix("val_"), v) for k, v in logs.items() if k.startswith("val_")]),
        ):
            if items:
                with self._writer(split).as_default():
                    for name, value in items:
                        tf.summary.scalar(f"epoch_{name}", float(value), step=epoch + 1)
                self._writer(split).flush()

    def on_train_end(self, logs=None):
        for writer in (self._writers or {}).values():
            writer.close()
        self._writers = None


def learning_rate_at(optimizer, step):
    """The learning rate `optimizer` used at 0-based `step` (its schedule's value there), as a float."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(lr(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite.

    Attributes:
        epoch, step, global_step: where (0-based).
        terms: `{name: value}` of every loss term logged at that step (the running means of the epoch).
        learning_rate: the learning rate of that step.
    """

    def __init__(self, epoch, step, global_step, terms=None, learning_rate=None):
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.terms = dict(terms or {})
        self.learning_rate = learning_rate
        bad = [f"{k}={v}" for k, v in self.terms.items() if not math.isfinite(v)]
        good = [f"{k}={v:.4g}" for k, v in self.terms.items() if math.isfinite(v)]
        detail = f": non-finite {', '.join(bad)}" if bad else ""
        detail += f" (finite: {', '.join(good)})" if good else ""
        detail += f"; learning rate at that step {learning_rate:.4g}" if learning_rate is not None else ""
        super().__init__(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
            f"(global step {global_step + 1}){detail}"
        )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first non-finite loss by raising `NonFiniteLoss`.

    Raising (instead of Keras' TerminateOnNaN, which lets the epoch end) skips every
    `on_epoch_end`, so no checkpoint or backup is ever written from the diverged
    weights: the last good state stays on disk. The exception names the loss terms that
    are non-finite (`loss` is their weighted sum) and the learning rate of that step.
    """

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            global_step = self._epoch * self.steps_per_epoch + batch
            terms = {k: float(v) for k, v in logs.items() if "loss" in k}
            try:
                lr = learning_rate_at(self.model.optimizer, global_step)
            except Exception:  # noqa: BLE001  (an optimizer without a readable rate: the message goes without it)
                lr = None
            raise NonFiniteLoss(self._epoch, batch, global_step, terms, lr)
