"""Callbacks of a training run: outputs on disk, resumption, throughput."""

import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from sskt_tf import metrics as metrics_lib


def atomic_save(model, path):
    """Saves `model` to `path` through a temporary file, so a crash never leaves a half-written file."""
    tmp = f"{path}.tmp{os.path.splitext(path)[1]}"
    model.save(tmp)
    os.replace(tmp, path)


class TargetCheckpoint(keras.callbacks.Callback):
    """After every epoch, saves the target alone (no heads, no sources) as `last.keras`, and `best.keras`.

    The target is small (1 MB for ResNet-20) where the sources are not (100 MB for a ResNet-50), so
    these checkpoints are cheap; the full training state for resumption is BackupAndRestore's.
    """

    def __init__(self, directory, monitor="val_accuracy"):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.best = None
        self._target = None

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._target = self.model.target_model()

    def on_epoch_end(self, epoch, logs=None):
        atomic_save(self._target, os.path.join(self.directory, "last.keras"))
        value = (logs or {}).get(self.monitor)
        if value is not None and (self.best is None or value > self.best):
            self.best = value
            atomic_save(self._target, os.path.join(self.directory, "best.keras"))


def multi_label_metrics(model, dataset):
    """Exact `map` and `map_per_image_reference` of `model` over one pass of `(images, multi-hot labels)`."""
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    scores, labels = [], []
    for images, batch_labels in dataset:
        scores.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    return metrics_lib.multi_label_metrics(np.concatenate(labels), np.concatenate(scores))


class MultiLabelEvaluation(keras.callbacks.Callback):
    """Adds `val_map` and `val_map_per_image_reference` to each epoch's logs (multi-label runs).

    AP ranks every example of the evaluation set against every other, so it is computed here, exactly,
    from one prediction pass over the whole set, rather than by a streaming metric (see
    `sskt_tf.metrics`). It must come before the callbacks that read the logs (CSV, TensorBoard,
    best checkpoint).
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for name, value in multi_label_metrics(self.model, self.dataset).items():
                logs[f"val_{name}"] = value


class Throughput(keras.callbacks.Callback):
    """Training images per second, from the training part of each epoch (validation excluded)."""

    def __init__(self, global_batch_size):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.epoch_seconds = []
        self.epoch_steps = []
        self._start = None
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def _close(self):
        if self._start is not None:
            self.epoch_seconds.append(time.perf_counter() - self._start)
            self.epoch_steps.append(self._steps)
            self._start = None

    def on_test_begin(self, logs=None):
        self._close()

    def on_epoch_end(self, epoch, logs=None):
        self._close()

    def images_per_second(self, skip_first=False):
        """Mean throughput; `skip_first` drops the first epoch (tracing and compilation)."""
        seconds, steps = self.epoch_seconds, self.epoch_steps
        if skip_first and len(seconds) > 1:
            seconds, steps = seconds[1:], steps[1:]
        total = sum(seconds)
        return sum(steps) * self.global_batch_size / total if total else 0.0


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves the full training state after every epoch, atomically, for resumption.

    Each save writes `epoch_<n>.weights.h5` (model and optimizer) through a temporary
    file, then replaces the pointer `latest.json`, then deletes the older file: a crash
    at any moment leaves a complete earlier state (unlike Keras' BackupAndRestore, whose
    weights and metadata can disagree after a crash between the two writes). The
    directory is deleted when training ends normally.

    Restoring is `restore(model)`, called before `fit(initial_epoch=...)`, because the
    data stream must also start where the interrupted run stopped.
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory
        self._pointer = os.path.join(directory, "latest.json")

    def saved_epoch(self):
        """Epochs completed by the saved state; 0 when there is none."""
        if not os.path.exists(self._pointer):
            return 0
        with open(self._pointer) as f:
            return int(json.load(f)["epoch"])

    def restore(self, model):
        """Loads the saved state into `model` (built, compiled, optimizer built); returns its epoch count."""
        epoch = self.saved_epoch()
        if epoch:
            model.load_weights(os.path.join(self.directory, f"epoch_{epoch}.weights.h5"))
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        previous = self.saved_epoch()
        name = f"epoch_{epoch + 1}.weights.h5"
        tmp = os.path.join(self.directory, f"tmp_{name}")
        self.model.save_weights(tmp)
        os.replace(tmp, os.path.join(self.directory, name))
        with open(f"{self._pointer}.tmp", "w") as f:
            json.dump({"epoch": epoch + 1, "weights": name}, f)
        os.replace(f"{self._pointer}.tmp", self._pointer)
        if previous and previous != epoch + 1:
            os.remove(os.path.join(self.directory, f"epoch_{previous}.weights.h5"))

    def on_train_end(self, logs=None):
        if not self.model.stop_training:
            shutil.rmtree(self.directory, ignore_errors=True)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch, step, global_step):
        self.epoch, self.step, self.global_step = epoch, step, global_step
        super().__init__(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1} "
            f"(global step {global_step + 1})"
        )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first non-finite loss by raising `NonFiniteLoss`.

    Raising (instead of Keras' TerminateOnNaN, which lets the epoch end) skips every
    `on_epoch_end`, so no checkpoint or backup is ever written from the diverged
    weights: the last good state stays on disk.
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
            raise NonFiniteLoss(self._epoch, batch, self._epoch * self.steps_per_epoch + batch)
