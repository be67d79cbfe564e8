"""From a kind's splits to the streams a model reads: hold-out, subset, cache, shuffle, batch, augment.

Every kind of source (`tfds`, `folder`, `synthetic`) hands `load` a `Source` of `Split`s; this
module turns them into the infinite, seeded, resumable training stream (`TrainStream`) and the
one-pass evaluation streams (`eval_stream`), and owns what is common to every kind: the seeded
validation hold-out (`hold_out`), the training subset (`subset`), where decoded images are kept
(`cache_modes`, `disk_prefix`, `cached`) and the shuffle buffer. The kinds resize images to one
size with `sskt_tf.serving.preprocessing.resize_images`, the resize the exported models run.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from sskt_tf import augment as augment_lib
from sskt_tf.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE

CACHE_MODES = ("auto", "memory", "disk", "none")
# `cache="auto"` keeps decoded images in memory while they fit in this share of physical RAM.
AUTO_CACHE_RAM_SHARE = 0.25

# Decoded images in the shuffle buffer are capped by bytes so that large images
# (e.g. 224x224 folders) cannot exhaust memory; CIFAR-sized data (50k x 3 KB = 150 MB)
# still gets a buffer covering the whole training set, i.e. a full shuffle.
_SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
_MIN_SHUFFLE_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source before shuffling and batching.

    `elements` holds what is cheap to keep (file paths, or images already in memory); `decode`,
    when set, maps one element to a decoded example. Keeping the two apart lets the un-cached
    folder pipeline decode after shuffling, in parallel, every epoch.

    Attributes:
        elements: the examples in a fixed order: `(string path, int32 label)` when `decode` is
            set for a folder, `(uint8 [h, w, 3], label)` for TFDS, `(uint8 [H, W, 3], label)`
            for synthetic data. Labels are int32 `[]`, or float32 multi-hot `[num_classes]`.
        size: number of examples.
        decode: maps one element to `(uint8 [H, W, 3], label)` at the source's image size, or
            None when `elements` are already decoded.
        image_bytes: bytes of one decoded image as it leaves `decoded()` (`H * W * 3`).
        labels: the labels in element order (`np.ndarray`, int32 `[size]` or float32
            `[size, num_classes]`), or a function computing them (TFDS reads them in a pass
            without decoding images); needed by `hold_out` only.
        key: identifies the contents (files and their stamps, TFDS version, seed), to name
            disk caches (`disk_prefix`).
    """

    elements: tf.data.Dataset
    size: int
    decode: Callable | None
    image_bytes: int
    labels: np.ndarray | Callable[[], np.ndarray] | None = None
    key: str = ""

    def decoded(self) -> tf.data.Dataset:
        """The examples as `(uint8 [H, W, 3], label)`, decoded in parallel in their order."""
        if self.decode is None:
            return self.elements
        return self.elements.map(self.decode, num_parallel_calls=AUTOTUNE, deterministic=True)

    def label_array(self) -> np.ndarray:
        """The labels in element order: int32 `[size]` or float32 `[size, num_classes]`."""
        labels = self.labels() if callable(self.labels) else self.labels
        return np.asarray(labels)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a kind of source (`tfds.source`, `folder.source`, `synthetic.source`) gives `load`.

    Attributes:
        train: the training split, before any hold-out or subset.
        test: the test split.
        class_names: class names; a label is an index into them.
        image_size: `(H, W)` in pixels of every decoded image of every split.
        multi_label: labels are float32 multi-hot `[num_classes]` instead of int32 `[]`.
        validation: the source's own validation split (a folder dataset's `val/`), or None.
        bad_files: image files left out because they cannot be decoded, sorted.
    """

    train: Split
    test: Split
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    multi_label: bool = False
    validation: Split | None = None
    bad_files: tuple[str, ...] = ()


def info(message: str) -> None:
    """Prints one line for the user (standard output, as the train command's other notes)."""
    print(message, flush=True)


# ----------------------------------------------------------------- hold-out and subset


def select(split: Split, keep: np.ndarray) -> Split:
    """The examples of `split` where a mask is set, in their order.

    Args:
        split: the examples.
        keep: bool `[split.size]`.

    Returns:
        A `Split` of `keep.sum()` examples (its labels too, when they are an array).
    """
    n = int(keep.sum())
    mask_t = tf.constant(keep)
    elements = (
        split.elements.enumerate()
        .filter(lambda i, element: tf.gather(mask_t, i))
        .map(lambda i, element: element)
        .apply(tf.data.experimental.assert_cardinality(n))
    )
    labels = split.labels[keep] if isinstance(split.labels, np.ndarray) else None
    return dataclasses.replace(split, elements=elements, size=n, labels=labels)


def hold_out(
    dataset: str, split: Split, fraction: float, seed: int, class_names: Sequence[str], multi_label: bool
) -> tuple[Split, Split]:
    """Splits a seeded validation set of about `fraction` of the examples off `split`; prints its size.

    Single-label data is stratified: per class, `round(fraction * n_c)` examples, at least 1 for a
    class with 2 or more. Multi-label data: `round(fraction * n)` examples drawn at random
    (`hold_out_mask` draws them).

    Args:
        dataset: the `--dataset` value, for messages.
        split: the training split.
        fraction: the share to hold out, in (0, 1).
        seed: seeds the draw (a stream of its own, independent of the other uses of `seed`).
        class_names: the source's class names (label `c` is `class_names[c]`).
        multi_label: whether labels are multi-hot.

    Returns:
        `(training part, validation part)`, each in the order of `split`.

    Raises:
        UserError: when a class would be left without training examples, or the validation set
            would be empty.
        ValueError: the split's labels do not number `split.size` (a bug of the kind's module).
    """
    labels = split.label_array()
    if len(labels) != split.size:
        raise ValueError(f"{len(labels)} labels for {split.size} examples")
    split = dataclasses.replace(split, labels=labels)
    held = hold_out_mask(dataset, labels, fraction, seed, class_names, multi_label)
    return select(split, ~held), select(split, held)


def hold_out_mask(
    dataset: str,
    labels: np.ndarray,
    fraction: float,
    seed: int,
    class_names: Sequence[str],
    multi_label: bool,
    unit: str = "examples",
    items: str = "images",
) -> np.ndarray:
    """Which examples `hold_out` puts in the validation set; prints its size.

    Args:
        dataset: the `--dataset` value, for messages.
        labels: int32 `[n]` class indices, or float32 multi-hot `[n, num_classes]`.
        fraction: the share to hold out, in (0, 1).
        seed: seeds the draw (a stream of its own, independent of the other uses of `seed`).
        class_names: the class names (label `c` is `class_names[c]`).
        multi_label: whether labels are multi-hot.
        unit: what an example is called in messages ("examples"; "videos" for video datasets).
        items: what a user adds to a class that has too few ("images"; "videos").

    Returns:
        bool `[n]`, True for the validation examples.

    Raises:
        UserError: when a class would be left without training examples, or the validation set
            would be empty.
    """
    flag = f"--validation_split={fraction}"
    size = len(labels)
    rng = np.random.default_rng([seed, 0x76616C])  # Its own stream: independent of the other draws from `seed`.
    held = np.zeros(size, dtype=bool)
    if multi_label:
        k = int(math.floor(fraction * size + 0.5))
        if k >= size:
            raise UserError(f"{flag} holds out all {size} training {unit} of {dataset}; pass a smaller share.")
        held[rng.choice(size, size=k, replace=False)] = True
        present = labels.sum(axis=0) > 0
        left = labels[~held].sum(axis=0) > 0
        lost = [class_names[c] for c in np.flatnonzero(present & ~left)]
        if lost:
            raise UserError(
                f"{flag} leaves class {lost[0]!r}{f' (and {len(lost) - 1} more)' if len(lost) > 1 else ''} of "
                f"{dataset} without a training example; pass a smaller --validation_split or another --seed."
            )
        how = "drawn at random (multi-label)"
    else:
        one = unit[:-1] if unit.endswith("s") else unit
        for c in range(len(class_names)):
            index = np.flatnonzero(labels == c)
            n_c = len(index)
            if n_c == 0:
                continue
            k = int(math.floor(fraction * n_c + 0.5))
            if n_c >= 2:
                k = max(k, 1)
            if k >= n_c:
                raise UserError(
                    f"{flag} would hold out all {n_c} training {one if n_c == 1 else unit} of class "
                    f"{class_names[c]!r} of {dataset}, leaving it none to train on; pass a smaller "
                    f"--validation_split, or add training {items} of that class."
                )
            held[rng.choice(index, size=k, replace=False)] = True
        how = "stratified: round(share x class size) per class, at least 1 per class of 2 or more"
    k = int(held.sum())
    if k == 0:
        raise UserError(
            f"{flag} holds out no example of the {size} training {unit} of {dataset}, so the "
            "validation set would be empty; pass a larger --validation_split, or 0 for no validation set."
        )
    info(
        f"{dataset}: validation set of {k} of the {size} training {unit} ({flag}, seed {seed}, {how}); "
        f"training on the other {size - k}."
    )
    return held


def subset(split: Split, n: int, seed: int) -> Split:
    """A fixed random subset of the examples of `split`, chosen from `seed`.

    Args:
        split: the examples.
        n: how many to keep, 1 to `split.size` (`load` checks `--train_subset`).
        seed: the same seed keeps the same examples.

    Returns:
        A `Split` of `n` examples, in the order of `split`.
    """
    return select(split, subset_mask(split.size, n, seed))


def subset_mask(size: int, n: int, seed: int) -> np.ndarray:
    """Which of `size` examples `subset` keeps: bool `[size]` with `n` seeded True entries."""
    # Sorted indices keep the source order, so a streamed source is read front to back.
    keep = np.sort(np.random.default_rng(seed).choice(size, size=n, replace=False))
    mask = np.zeros(size, dtype=bool)
    mask[keep] = True
    return mask


# ----------------------------------------------------------------------------- caches


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3  # Unknown: assume a small machine.


def _gb(n: float) -> str:
    return f"{n / 1024**3:.1f} GB"


def cache_modes(cache: str, parts: dict[str, Split], dataset: str) -> dict[str, str]:
    """The cache mode of each split: `cache` itself, or what "auto" chooses (printed when not "memory").

    Args:
        cache: one of `CACHE_MODES`.
        parts: `{name: split}` in the order in which "auto" gives them memory (training first:
            it is read most).
        dataset: the `--dataset` value, for the message.

    Returns:
        `{name: "memory" | "disk" | "none"}`; "auto" keeps a split in memory while the decoded
        splits so far fit in `AUTO_CACHE_RAM_SHARE` of physical RAM.
    """
    if cache != "auto":
        return {name: cache for name in parts}
    budget = AUTO_CACHE_RAM_SHARE * _physical_memory()
    modes, used = {}, 0
    for name, split in parts.items():  # Training first: it is read most.
        need = split.size * split.image_bytes
        if used + need <= budget:
            modes[name], used = "memory", used + need
        else:
            modes[name] = "none"
            info(
                f"--cache=auto: the decoded {name} images of {dataset} ({_gb(need)}) do not fit in "
                f"{AUTO_CACHE_RAM_SHARE:.0%} of this machine's {_gb(_physical_memory())} of memory "
                f"({_gb(max(0.0, budget - used))} left); they are decoded again every pass "
                "(--cache=disk keeps a decoded copy on disk instead)."
            )
    return modes


def disk_prefix(cache_dir: str, name: str, split: Split, selection: Sequence) -> str:
    """The tf.data cache file prefix of one split.

    Args:
        cache_dir: the directory of the cache files (`~` expanded).
        name: "train", "validation" or "test".
        split: the split whose decoded images the cache holds.
        selection: what chose its examples (the seed, the validation share, the subset size),
            JSON-serialisable.

    Returns:
        The absolute `<cache_dir>/<name>-<16 hex digits>`, the digits a SHA-256 of `split.key`,
        `split.size` and `selection`, so that other contents get another file.
    """
    key = hashlib.sha256(json.dumps([split.key, split.size, selection]).encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), f"{name}-{key}")


def clear_partial_cache(prefix: str) -> None:
    """Removes what a process killed while writing the cache `prefix` left behind.

    A finished cache has `<prefix>.index`. Without it, the lock file `<prefix>_0.lockfile`
    of a killed writer would make TensorFlow refuse the cache ("There appears to be a
    concurrent caching iterator running"), so it and the partial data go.
    """
    if os.path.exists(f"{prefix}.index"):
        return
    for path in glob.glob(f"{glob.escape(prefix)}_*") + glob.glob(f"{glob.escape(prefix)}.data-*"):
        try:
            os.remove(path)
        except OSError:
            pass


def cached(ds: tf.data.Dataset, where: str) -> tf.data.Dataset:
    """`ds` with its elements kept after the first pass.

    Args:
        ds: the decoded examples.
        where: "memory", "none" (or "auto", left to `cache_modes`: not cached), or the file
            cache prefix of `disk_prefix`, whose directory is created when the first pass
            starts, not here.

    Returns:
        The same elements, in the same order.
    """
    if where == "memory":
        return ds.cache()
    if where in ("none", "auto"):
        return ds
    directory = os.path.dirname(where)
    note = os.path.join(directory, "README.txt")
    text = "tf.data cache files of sskt_tf (decoded images); delete them when no run uses them.\n"

    def make_directory(_):
        # TensorFlow's cache does not create its directory; tf.io.write_file does. Creating it
        # when the first pass starts, not in `load`, keeps `load` from writing anything.
        with tf.control_dependencies([tf.io.write_file(note, text)]):
            return tf.constant(0)

    return tf.data.Dataset.from_tensors(0).map(make_directory).flat_map(lambda _: ds.cache(where))


# ---------------------------------------------------------------------------- streams


def _shuffle_buffer(size: int, image_bytes: int) -> int:
    by_memory = max(_MIN_SHUFFLE_BUFFER, _SHUFFLE_BUFFER_BYTES // max(1, image_bytes))
    return int(max(1, min(size, by_memory)))


@dataclasses.dataclass(frozen=True)
class TrainStream:
    """The recipe of the training stream, which `batches` builds from any position.

    The stream is a function of `seed` (and TensorFlow's global seed) and the position in it
    alone: the shuffle order of every pass is fixed by the seeds, and batch i is augmented with
    seed `[seed, i]`. `cache` changes where decoded images come from, never the stream: the
    shuffle buffer has the same size in every mode, and shuffling does not depend on what it
    shuffles.

    Attributes:
        split: the training examples (after the hold-out and the subset).
        batch_size: examples per batch; the partial batch at the end of a pass is dropped.
        seed: seeds the shuffle order and the augmentation.
        augmenter: the batch augmentation (pad-crop-flip, RandAugment, mixing).
        cache: "memory", "none" or a disk cache prefix (`disk_prefix`).
        deterministic: run RandAugment one batch at a time, so that it is bit-reproducible.
    """

    split: Split
    batch_size: int
    seed: int
    augmenter: augment_lib.BatchAugmenter
    cache: str
    deterministic: bool = False

    def batches(self, start_batch: int = 0, extras: Sequence[np.ndarray] = (), replay=None) -> tf.data.Dataset:
        """The infinite, shuffled, batched and augmented stream from its `start_batch`-th batch on.

        A stream started at `start_batch` skips that many batches' worth of (undecoded or
        cached) examples, which is cheap, so a run resumed after a crash sees exactly the
        batches an uninterrupted run sees.

        Args:
            start_batch: index of the first batch (0: the beginning).
            extras: arrays `[split.size, ...]` in the order of `split`, attached to their
                examples before shuffling.
            replay: instead of `extras` and the random crop and flip, stored views
                (`sskt_tf.soft_labels.Replay`): its `rows` follow their examples, and
                `replay.select(images, rows, batch seed)` cuts each batch's views and gives
                their stored logits, which become the batch's extras.

        Returns:
            Batches `(images float32 [B, H, W, 3] in 0..255, labels)`, or with `extras`
            `({"images": images, "extras": (rows [B, ...], ...)}, labels)`. Labels are int32
            `[B]`, float32 multi-hot `[B, num_classes]`, or float32 soft `[B, num_classes]`
            when batches are mixed.

        Raises:
            ValueError: an array of `extras` does not have one row per training example.
        """
        split, batch_size, seed, augmenter = self.split, self.batch_size, self.seed, self.augmenter
        if replay is not None:
            extras = replay.rows
        extras = tuple(np.asarray(e) for e in extras)
        for e in extras:
            if len(e) != split.size:
                raise ValueError(f"extras must have one row per training example ({split.size}); got {len(e)}")
        decode_late = self.cache == "none" and not extras and split.decode is not None
        elements = split.elements if decode_late else cached(split.decoded(), self.cache)
        if extras:
            # Attached before shuffling, so each example keeps its own rows.
            elements = tf.data.Dataset.zip((elements, tf.data.Dataset.from_tensor_slices(extras))).map(
                lambda example, rows: (*example, *rows)
            )
        buffer = _shuffle_buffer(split.size, split.image_bytes)
        # Un-cached: file names are shuffled and decoded afterwards, in parallel.
        ds = elements.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.skip(int(start_batch) * batch_size)
        if decode_late:
            ds = ds.map(split.decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True)
        seed64 = tf.constant(seed, tf.int64)
        # One seed per batch, [seed, batch index]: the augmented stream then depends only on
        # `seed` and the position in the stream, not on thread timing or a global RNG.
        batch_seeds = tf.data.Dataset.counter(start=int(start_batch), dtype=tf.int64).map(
            lambda i: tf.stack([seed64, i])
        )
        ds = tf.data.Dataset.zip((ds, batch_seeds))

        def geometric(batch, batch_seed):
            if replay is not None:
                images, logits = replay.select(batch[0], batch[2:], batch_seed)
                return (images, batch[1], *logits), batch_seed
            return (augmenter.geometric(batch[0], batch_seed), *batch[1:]), batch_seed

        def randaugment(batch, batch_seed):
            return (augmenter.randaugment_stage(batch[0], batch_seed), *batch[1:]), batch_seed

        def finish(batch, batch_seed):
            images, labels, rows = batch[0], batch[1], batch[2:]
            images, labels = augmenter.mix(images, labels, batch_seed)
            if rows:
                return {"images": images, "extras": tuple(rows)}, labels
            return images, labels

        ds = ds.map(geometric, num_parallel_calls=AUTOTUNE, deterministic=True)
        if augmenter.randaugment is not None:
            # keras-cv's generators are shared: one batch at a time keeps each batch's draws its own.
            if self.deterministic:
                ds = ds.map(randaugment)
            else:
                ds = ds.map(randaugment, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.prefetch(AUTOTUNE)


def eval_stream(split: Split, batch_size: int, cache: str) -> tf.data.Dataset:
    """One un-augmented pass over `split`, with the partial last batch kept and a known length.

    Args:
        split: the examples, in the order they are read.
        batch_size: examples per batch.
        cache: "memory", "none" or a disk cache prefix (`disk_prefix`).

    Returns:
        `ceil(split.size / batch_size)` batches `(images float32 [B, H, W, 3] in 0..255, labels)`.
    """
    ds = cached(split.decoded(), cache)
    ds = ds.apply(tf.data.experimental.assert_cardinality(split.size))
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return ds.prefetch(AUTOTUNE)
