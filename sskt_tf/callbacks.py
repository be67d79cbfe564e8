"""Callbacks of a training run: outputs on disk, resumption, throughput."""

import os
import time

import keras


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
