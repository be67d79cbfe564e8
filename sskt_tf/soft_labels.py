"""The soft-label cache (`--soft_label_cache`): the sources' logits, computed once.

Sources are most of SSKT's cost: a ResNet-50 at 74 px is about 4x the FLOPs of a ResNet-20
training step. Two caches remove it from training:

- `clean`: every source runs once over the un-augmented training images; training reads the
  stored logits of each example (they travel with it through the shuffled pipeline). An
  approximation: the source sees the clean image while the target sees its random crop and flip.
- `replay`: exact soft labels of exact views, in the spirit of FKD (Shen & Xing, "A Fast
  Knowledge Distillation Framework for Visual Recognition", ECCV 2022) and ReLabel (Yun et al.,
  "Re-labeling ImageNet", CVPR 2021). `--replay_views=V` views (crop offsets and flip of the
  padded image) are drawn once per training image, from a seed of their own, so every run with
  the same data shares them whatever its `--seed`; every source's logits on each view are stored
  with the view (top `--replay_top_k` logits in float16 with their class indices, or every logit
  in float32 with `full`). In training each example picks one of its views per epoch (from the
  batch's seed), the pipeline cuts exactly that view, and the model reads its stored logits: the
  target trains on the very images whose soft labels it gets, and the sources never run.

`off` (the default) runs the sources on every augmented batch.

Files are named by a key of everything the logits depend on (the data, the subset, the image
size, the source's spec, input size, BatchNorm mode, precision and a fingerprint of its
weights; for `replay` also the views and the storage), so a changed source or dataset never
reads stale logits, and runs that share them can share the directory (`--soft_label_cache_dir`).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile

import keras
import numpy as np
import tensorflow as tf

from sskt_tf import augment


def fingerprint(source):
    """SHA-256 of a source's weights and the settings that change its logits.

    Also the weights' identity in a run's saved training state (`resumption.run_inputs`): another
    network copied over the same file is another source.

    Args:
        source: a built `sskt_tf.sources.Source` (or any layer with its `spec`, `image_size`,
            `source_bn` and `network`).

    Returns:
        str, the first 16 hex digits (64 bits) of the digest.
    """
    h = hashlib.sha256()
    fields = [source.spec, list(source.image_size), source.source_bn, source.network.dtype_policy.name]
    # What turns the network's outputs into logits; only where something does, so that the keys
    # of plain-logits sources (all sources before this existed) stay the same.
    adapted = [getattr(source, "network_outputs", "logits"), getattr(source, "stripped_activation", None)]
    if adapted != ["logits", None]:
        fields.append(adapted)
    h.update(json.dumps(fields).encode())
    for weight in source.network.weights:
        h.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return h.hexdigest()[:16]


# Raised whenever the order of `Datasets.train_ordered` can change for the same data, so that no cache
# written in an older order is read (2: folder training files in a fixed pseudo-random order).
_ORDER_VERSION = 2


def data_key(config, data):
    """What the training images are and their order: dataset, location, hold-out and subset (both
    depend on the seed), skipped files, size.

    Args:
        config: the run's `Config` (reads `dataset`, `data_dir`, `train_subset`, `validation_split`,
            `seed`).
        data: the run's `sskt_tf.data.Datasets`.

    Returns:
        str, the first 16 hex digits of a SHA-256 of those fields.
    """
    seeded = config.train_subset or config.validation_split
    fields = [config.dataset, config.data_dir, config.train_subset, config.validation_split, data.validation_from,
              config.seed if seeded else None, list(data.bad_files), list(data.image_size), data.num_train,
              _ORDER_VERSION, getattr(data, "content_key", "")]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def _shown(source):
    """A source's name as the metrics and the run summary show it (`teacher`, not `source_teacher`)."""
    return source.name.removeprefix("source_")


def _compute(source, batches, count, verbose):
    """`source`'s logits over `batches` of `(images, labels)`, concatenated, with a progress bar over `count` images."""
    progress = keras.utils.Progbar(count, verbose=verbose, unit_name="image")
    logits, seen = [], 0
    for images, _ in batches:
        logits.append(source(images).numpy())
        seen += len(logits[-1])
        progress.update(seen)
    return np.concatenate(logits)


def load_or_compute(sources, data, config, directory, batch_size=256, log=print, verbose=1):
    """The logits of every source on every training image, in `data.train_ordered` order.

    Each source's logits are read from `<directory>/<data key>_<fingerprint>.npy`
    when that file holds `[num_train, classes]` values, else computed on the un-augmented
    training images and written there atomically (a temporary file, then `os.replace`), so that an interrupted run
    leaves no partial file behind.

    Args:
        sources: the built `sskt_tf.sources.Source`s, in the model's order.
        data: the run's `sskt_tf.data.Datasets`; `train_ordered(batch_size)` yields the
            un-augmented training batches in a fixed order.
        config: the run's `Config` (see `data_key`).
        directory: where the `.npy` files are (created if missing); `--soft_label_cache_dir`, by
            default `<output_dir>/soft_label_cache`.
        batch_size: images per source call while computing (bounds the memory it takes).
        log: called with one line per source (read or computed).
        verbose: 1: a progress bar with the time left while a source's logits are computed
            (`keras.utils.Progbar`, on stdout); 2: one line when each is done; 0: none.

    Returns:
        list with one float32 array `[num_train, source classes]` per source (about
        `4 * num_train * classes` bytes each).

    Raises:
        OSError: `directory` cannot be created or a file in it cannot be read or written.
    """
    os.makedirs(directory, exist_ok=True)
    key = data_key(config, data)
    results = []
    for source in sources:
        path = os.path.join(directory, f"{key}_{fingerprint(source)}.npy")
        if os.path.exists(path):
            logits = np.load(path)
            if logits.shape == (data.num_train, source.num_classes):
                log(f"soft-label cache: {_shown(source)} logits from {path}")
                results.append(logits)
                continue
        log(f"soft-label cache: computing {_shown(source)} logits on {data.num_train} training images")
        logits = _compute(source, data.train_ordered(batch_size), data.num_train, verbose)
        tmp = f"{path}.tmp.npy"
        np.save(tmp, logits.astype(np.float32))
        os.replace(tmp, path)
        results.append(logits)
    return results


# --- replay: exact views -------------------------------------------------------------------------

# The views are drawn from this seed, never from the run's --seed: runs with other seeds, other
# targets and the KD baseline then read the same fill.
REPLAY_SEED = 20220104
# Raised whenever what a replay file holds, or how views are drawn, changes for the same key.
_REPLAY_VERSION = 1
# The batch's stateless stream that picks each example's view (augment.py uses 1 and 2).
_VIEW_STREAM = 3
# Decoded images held at once while filling (the views are cut from them batch by batch), and the views
# of one chunk file: what a killed fill loses at most.
_FILL_CHUNK_BYTES = 64 * 1024 * 1024
_FILL_CHUNK_VIEWS = 8192


@dataclasses.dataclass(frozen=True)
class Views:
    """The stored views of every training image.

    Attributes:
        offsets: uint8 `[N, V, 2]`, row and column offsets of each view's crop in the image padded by
            `padding` (`augment.crop_flip`).
        flips: bool `[N, V]`, horizontal flip after the crop.
        padding: zero padding of the crop, pixels per side (0 with `--augment=none`).
    """

    offsets: np.ndarray
    flips: np.ndarray
    padding: int

    @property
    def count(self) -> int:
        """V, the views per image."""
        return self.offsets.shape[1]

    def cut(self, images, first_image: int, start: int, stop: int):
        """Views `start .. stop - 1` of `images`, counted in (image, view) order.

        Args:
            images: uint8 or float `[n, H, W, C]`, training images `first_image .. first_image + n - 1`.
            first_image: index of `images[0]` among the training images.
            start, stop: positions in the `n * V` views of `images`.

        Returns:
            float32 `[stop - start, H, W, C]`, cut by `augment.crop_flip` as training cuts them.
        """
        at = np.arange(start, stop)
        image, view = at // self.count, at % self.count
        offsets = self.offsets[first_image + image, view]
        flips = self.flips[first_image + image, view]
        return augment.crop_flip(tf.gather(images, image), offsets.T.astype(np.int32), flips, self.padding)


def possible_views(augmentation) -> int:
    """How many distinct views the augmentation has: (2p + 1)^2 crops x 2 flips (162 for p = 4), or 1 without augmentation."""
    if augmentation.kind == "none":
        return 1
    side = 2 * int(augmentation.padding) + 1
    return side * side * 2


def draw_views(num_images: int, num_views: int, augmentation) -> Views:
    """`num_views` distinct views per image, drawn from `REPLAY_SEED` (not the run's seed).

    With `--augment=standard` a view is one of the `(2p + 1)^2 * 2` crops and flips of
    `pad_crop_flip` (162 for p = 4), each as likely as there; `V` of them are drawn without
    replacement (all of them when V is larger). With `--augment=none` the one view is the image.

    Args:
        num_images: N, the training images.
        num_views: V >= 1.
        augmentation: the run's `AugmentationConfig` (`kind` "standard" or "none", `padding`).

    Returns:
        `Views` with `min(V, possible views)` views per image.
    """
    if augmentation.kind == "none":
        return Views(np.zeros((num_images, 1, 2), np.uint8), np.zeros((num_images, 1), bool), 0)
    p = int(augmentation.padding)
    side = 2 * p + 1
    possible = possible_views(augmentation)
    v = min(int(num_views), possible)
    rng = np.random.default_rng([REPLAY_SEED, num_images, p])
    offsets = np.empty((num_images, v, 2), np.uint8)
    flips = np.empty((num_images, v), bool)
    step = 8192  # Images per draw: bounds the [step, possible] keys.
    for start in range(0, num_images, step):
        n = min(step, num_images - start)
        chosen = np.argsort(rng.random((n, possible)), axis=1)[:, :v]
        offsets[start : start + n, :, 0] = (chosen // 2) // side
        offsets[start : start + n, :, 1] = (chosen // 2) % side
        flips[start : start + n] = chosen % 2 == 1
    return Views(offsets, flips, p)


def compress(logits: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """How `replay` stores logits `[..., C]`.

    Args:
        logits: float `[..., C]`.
        top_k: 0 (`full`) or >= C: every logit, float32. Else the `top_k` largest logits in float16
            with their class indices (int16, or int32 beyond 32,767 classes) and `tail`, the mean of
            the other logits in float16, which `expand` gives to every other class.

    Returns:
        `{"logits": float32 [..., C]}`, or `{"values": float16 [..., k], "indices": [..., k], "tail": float16 [...]}`.
    """
    logits = np.asarray(logits, np.float32)
    classes = logits.shape[-1]
    if not top_k or top_k >= classes:  # Every logit: in float32 it is exact, and smaller than k float16 + indices.
        return {"logits": logits}
    k = int(top_k)
    indices = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    values = np.take_along_axis(logits, indices, axis=-1)
    rest = logits.sum(-1, dtype=np.float64) - values.sum(-1, dtype=np.float64)
    tail = rest / (classes - k)
    index_dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
    return {"values": values.astype(np.float16), "indices": indices.astype(index_dtype), "tail": tail.astype(np.float16)}


def expand(stored, num_classes: int):
    """The logits `[B, C]` (float32) of stored rows: `compress` undone, the tail's mean for the classes not kept.

    Args:
        stored: the `compress` arrays of B views (tensors): `(logits,)` or `(values, indices, tail)`.
        num_classes: C.
    """
    if len(stored) == 1:
        return tf.cast(stored[0], tf.float32)
    values, indices, tail = stored
    batch = tf.shape(values)[0]
    base = tf.broadcast_to(tf.cast(tail, tf.float32)[:, None], tf.stack([batch, num_classes]))
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    at = tf.stack([rows, tf.cast(indices, tf.int32)], axis=-1)
    return tf.tensor_scatter_nd_update(base, at, tf.cast(values, tf.float32))


_STORED_FIELDS = (("logits",), ("values", "indices", "tail"))


class Replay:
    """The views and every source's stored logits, as the training pipeline reads them.

    `Datasets.train_from(..., replay=...)` attaches `rows` to their examples before the shuffle and
    calls `select` on each batch instead of the random crop and flip.

    Args:
        views: the `Views`.
        stored: one dict of `compress` arrays `[N, V, ...]` per source, in the model's order.
        num_classes: each source's class count C.
    """

    def __init__(self, views: Views, stored: list[dict], num_classes: list[int]):
        self.views, self.num_classes = views, list(num_classes)
        self._layout = [next(f for f in _STORED_FIELDS if set(f) == set(s)) for s in stored]
        self.rows = (views.offsets, views.flips, *(s[f] for s, fields in zip(stored, self._layout) for f in fields))

    def select(self, images, rows, seed):
        """Cuts each example's view of this batch and brings its sources' logits.

        Args:
            images: uint8 or float `[B, H, W, 3]`, the decoded images.
            rows: the batch's rows of `rows`.
            seed: int64 `[2]`, the batch's stateless seed; picks one of the V views per example.

        Returns:
            `(views float32 [B, H, W, 3], [float32 [B, C_k] per source])`.
        """
        offsets, flips, rest = rows[0], rows[1], list(rows[2:])
        batch = tf.shape(images)[0]
        pick_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), _VIEW_STREAM)
        view = tf.random.stateless_uniform([batch], seed=pick_seed, maxval=self.views.count, dtype=tf.int32)
        offsets = tf.gather(offsets, view, batch_dims=1)
        cut = augment.crop_flip(images, tf.transpose(offsets), tf.gather(flips, view, batch_dims=1), self.views.padding)
        logits = []
        for fields, classes in zip(self._layout, self.num_classes):
            chosen = [tf.gather(rest.pop(0), view, batch_dims=1) for _ in fields]
            logits.append(expand(chosen, classes))
        return cut, logits


def replay_key(config, data, views: Views) -> str:
    """What a replay file's contents depend on besides the source: the data (`data_key`), the views and the storage."""
    fields = [data_key(config, data), config.augmentation.kind, views.padding, views.count,
              config.replay_top_k, REPLAY_SEED, _REPLAY_VERSION]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def _save_npz(path, arrays):
    """Writes `path` whole or not at all: a temporary file, then `os.replace`."""
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _read_replay(path, num_train, views, num_classes, top_k):
    """The arrays of a finished replay file, or None when it does not hold what this run needs."""
    try:
        with np.load(path) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # Missing, truncated, not an .npz.
        return None
    lead = (num_train, views.count)
    expected = {"logits": lead + (num_classes,)} if not top_k or top_k >= num_classes else {
        "values": lead + (top_k,), "indices": lead + (top_k,), "tail": lead}
    if {k: v.shape for k, v in arrays.items() if k in expected} != expected:
        return None
    if not (np.array_equal(arrays.get("offsets"), views.offsets) and np.array_equal(arrays.get("flips"), views.flips)):
        return None
    if "indices" in expected and (arrays["indices"].min() < 0 or arrays["indices"].max() >= num_classes):
        return None  # Another source's classes.
    return {k: arrays[k] for k in expected}


def _load_chunk(name):
    """A written chunk's arrays, or None when it cannot be read (then it is computed again)."""
    try:
        with np.load(name) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _fill(source, data, views, top_k, partial, batch_size, progress):
    """`source`'s stored logits on every view, chunk by chunk under `partial/`; a readable chunk already there is kept."""
    os.makedirs(partial, exist_ok=True)
    height, width = data.image_size
    v = views.count
    # About _FILL_CHUNK_VIEWS views per chunk (what a killed fill can lose), within _FILL_CHUNK_BYTES of images.
    chunk = max(1, min(_FILL_CHUNK_VIEWS // v, _FILL_CHUNK_BYTES // (height * width * 3 * 4)))
    parts, first = [], 0
    for images, _ in data.train_ordered(chunk):
        n = int(images.shape[0])
        name = os.path.join(partial, f"{first:010d}.npz")
        arrays = _load_chunk(name) if os.path.exists(name) else None
        if arrays is None:
            logits = []
            for start in range(0, n * v, batch_size):
                logits.append(source(views.cut(images, first, start, min(start + batch_size, n * v))).numpy())
                progress.add(len(logits[-1]))
            arrays = compress(np.concatenate(logits).reshape(n, v, -1), top_k)
            _save_npz(name, arrays)
        else:
            progress.add(n * v)
        parts.append(arrays)
        first += n
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# Source input pixels per call while filling: 512 views at 74 px (CIFAR x7/3), 55 at 224 px.
_FILL_PIXELS = 512 * 74 * 74


def fill_batch_size(source) -> int:
    """Views per source call while filling: as many as keep one call's input at `_FILL_PIXELS` pixels (8 to 512)."""
    height, width = source.image_size
    return max(8, min(512, _FILL_PIXELS // max(1, height * width)))


def load_or_fill_replay(sources, data, config, directory, batch_size=None, log=print, verbose=1) -> Replay:
    """The `replay` cache of every source: read from `directory`, or filled there first.

    Each source's file is `<directory>/<replay_key>_<fingerprint>_replay.npz` (a SSKT source and a KD
    teacher of the same network share it) and holds
    the views (`offsets`, `flips`) with the stored logits (`compress`). A missing or unreadable one
    (another run's views or storage, a truncated file) is filled: the sources run in inference mode
    on every view, in batches of views, with a progress bar. The fill writes one file per
    chunk of images under `<file>.partial/` as it goes, so a killed fill continues where it stopped
    when the same command runs again; the finished file replaces them atomically.

    Args:
        sources: the built `sskt_tf.sources.Source`s (or the KD teacher), in the model's order.
        data: the run's `sskt_tf.data.Datasets`.
        config: the run's `Config` (`replay_views`, `replay_top_k`, `augmentation`, see `data_key`).
        directory: where the files are (created if missing).
        batch_size: views per source call while filling; None: `fill_batch_size` of each source
            (bounds the memory a call takes at the source's input size).
        log: called with one line per source (read or filled).
        verbose: 1: a progress bar over the views (`keras.utils.Progbar`); 2: one line per source; 0: none.

    Returns:
        the `Replay` the training pipeline reads.

    Raises:
        OSError: `directory` cannot be created or written.
    """
    os.makedirs(directory, exist_ok=True)
    views = draw_views(data.num_train, config.replay_views, config.augmentation)
    key = replay_key(config, data, views)
    top_k = config.replay_top_k
    stored = []
    for source in sources:
        path = os.path.join(directory, f"{key}_{fingerprint(source)}_replay.npz")
        arrays = _read_replay(path, data.num_train, views, source.num_classes, top_k) if os.path.exists(path) else None
        if arrays is not None:
            log(f"soft-label cache (replay): {_shown(source)} logits of {views.count} view{'s' if views.count > 1 else ''} per image from {path}")
        else:
            count = data.num_train * views.count
            full = not top_k or top_k >= source.num_classes
            storage = "every logit, float32" if full else f"top {top_k} of {source.num_classes} logits, float16"
            each = "the one view" if views.count == 1 else f"{views.count} views"
            log(f"soft-label cache (replay): computing {_shown(source)} logits on {each} of each of "
                f"{data.num_train} training images ({count} views; {storage}) into {path}")
            progress = keras.utils.Progbar(count, verbose=verbose, unit_name="view")
            calls = batch_size or fill_batch_size(source)
            arrays = _fill(source, data, views, top_k, f"{path}.partial", calls, progress)
            _save_npz(path, {"offsets": views.offsets, "flips": views.flips, **arrays})
            shutil.rmtree(f"{path}.partial", ignore_errors=True)
        stored.append(arrays)
    return Replay(views, stored, [s.num_classes for s in sources])
