"""Input pipelines for SSKT: CIFAR through TFDS, image folders, and a synthetic set.

`load` returns a `Datasets` whose `train` stream is infinite, shuffled, batched and
augmented (by default like the reference PyTorch code: RandomCrop(size, padding=4) with
zero fill, then RandomHorizontalFlip(p=0.5); see `sskt_tf.augment` for RandAugment,
MixUp and CutMix), and whose `test` stream is one un-augmented pass. Images leave the
pipeline as float32 in 0..255 (models normalise inside); labels as int32 class indices,
float32 multi-hot rows for multi-label data, or float32 soft rows when batches are mixed.

Determinism: decoding maps keep their order, shuffling uses `seed`, and augmentation
draws from the batch's seed `[seed, batch index]`, so a fixed `seed` gives the same
training stream in every run (with RandAugment, when `deterministic`). (A global TF seed, e.g. from
`keras.utils.set_random_seed`, also feeds into the shuffle order, as everywhere in
tf.data.)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from sskt_tf import augment as augment_lib
from sskt_tf.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE

# Every format tf.io.decode_image reads (it goes by the content, not the name).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp")

CACHE_MODES = ("auto", "memory", "disk", "none")
# `cache="auto"` keeps decoded images in memory while they fit in this share of physical RAM.
AUTO_CACHE_RAM_SHARE = 0.25

SYNTHETIC_NUM_TRAIN = 512
SYNTHETIC_NUM_TEST = 128
SYNTHETIC_DEFAULT_CLASSES = 10
# The test split has 128 images with balanced labels; more classes than that would
# leave some classes without a single test image.
SYNTHETIC_MAX_CLASSES = SYNTHETIC_NUM_TEST

ALLOWED_DATASETS = (
    "cifar10",
    "cifar100",
    "stl10",
    "voc2007",
    "tfds:<name>",
    "folder:<path>",
    "synthetic",
    "synthetic:<num_classes>",
    "synthetic_multilabel:<num_classes>",
)

# Decoded images in the shuffle buffer are capped by bytes so that large images
# (e.g. 224x224 folders) cannot exhaust memory; CIFAR-sized data (50k x 3 KB = 150 MB)
# still gets a buffer covering the whole training set, i.e. a full shuffle.
_SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
_MIN_SHUFFLE_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    """A named TFDS dataset: which TFDS builder, which splits, and how labels are read."""

    tfds_name: str
    train_split: str = "train"
    test_split: str = "test"
    multi_label: bool = False
    # Variable-size images (VOC, many TFDS sets) need one size before batching.
    default_image_size: tuple[int, int] | None = None


_TFDS_DATASETS = {
    "cifar10": _TfdsSpec("cifar10"),
    "cifar100": _TfdsSpec("cifar100"),
    # The labelled splits (5,000 train, 8,000 test, 96x96); "unlabelled" is not used.
    "stl10": _TfdsSpec("stl10"),
    # The reference trains on VOC 2007 trainval and tests on test (4,952 images); labels are the
    # classes of the objects not marked difficult, as its encode_labels does.
    "voc2007": _TfdsSpec(
        "voc/2007", train_split="train+validation", multi_label=True, default_image_size=(224, 224)
    ),
}
_TFDS_PREFIX = "tfds:"
# Size given to variable-size images of a `tfds:<name>` dataset without --image_size.
_DEFAULT_VARIABLE_IMAGE_SIZE = (224, 224)


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The result of `load`.

    Attributes:
        train: infinite, shuffled, batched (drop_remainder=True) and augmented stream
            of `(images float32 [B, H, W, 3] in 0..255, labels int32 [B])`.
        test: one pass over the test split, batched with the partial last batch kept,
            never augmented, same element types as `train`.
        num_classes: number of classes.
        class_names: class names; the label is the index.
        image_size: `(H, W)` of every image in both streams.
        num_train: training examples actually used (after the validation hold-out, then
            `train_subset`, and without skipped bad files).
        num_test: test examples.
        steps_per_epoch: `num_train // batch_size`.
        train_from: `train_from(start_batch, extras=())` is `train` from its
            `start_batch`-th batch on, the stream a resumed run must see; with `extras`
            (arrays `[num_train, ...]` in the order of `train_ordered`), each batch is
            `({"images": images, "extras": (extra batches, ...)}, labels)`.
        train_ordered: `train_ordered(batch_size)` is one un-augmented pass over the
            training examples in a fixed order, `(images float32, labels)`.
        multi_label: labels are float32 multi-hot `[B, num_classes]` instead of int32 `[B]`
            (VOC, `synthetic_multilabel`); train with `--target_loss=bce`.
        validation: one un-augmented pass over the validation set, like `test`
            (batched with `eval_batch_size`), or None without one.
        num_validation: validation examples (0 without a validation set).
        validation_from: "validation_split" (held out of the training set), "val/" (the
            `val/` folder of a folder dataset), or None.
        bad_files: image files left out because they cannot be decoded
            (`skip_bad_images=True`, folder datasets), sorted.
    """

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    num_train: int
    num_test: int
    steps_per_epoch: int
    train_from: Callable = dataclasses.field(repr=False, default=None)
    train_ordered: Callable = dataclasses.field(repr=False, default=None)
    multi_label: bool = False
    validation: tf.data.Dataset | None = None
    num_validation: int = 0
    validation_from: str | None = None
    bad_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Split:
    """One split before shuffling and batching.

    `elements` holds what is cheap to keep (file paths, or images already in memory)
    with int32 labels; `decode`, when set, maps one element to
    `(uint8 [H, W, 3], int32 label)`. Keeping the two apart lets the un-cached folder
    pipeline decode after shuffling, in parallel, every epoch.
    """

    elements: tf.data.Dataset
    size: int
    decode: Callable | None
    image_bytes: int  # Bytes of one decoded image as it leaves `decoded()` (H * W * 3).
    # The labels in element order (np.ndarray), or a function computing them (TFDS reads them
    # in a pass without image decoding); needed by the validation hold-out only.
    labels: np.ndarray | Callable[[], np.ndarray] | None = None
    # Identifies the contents (files and their stamps, TFDS version, seed), to name disk caches.
    key: str = ""

    def decoded(self) -> tf.data.Dataset:
        if self.decode is None:
            return self.elements
        return self.elements.map(self.decode, num_parallel_calls=AUTOTUNE, deterministic=True)

    def label_array(self) -> np.ndarray:
        labels = self.labels() if callable(self.labels) else self.labels
        return np.asarray(labels)


@dataclasses.dataclass(frozen=True)
class _Source:
    train: _Split
    test: _Split
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    multi_label: bool = False
    validation: _Split | None = None  # A folder dataset's val/.
    bad_files: tuple[str, ...] = ()


def check_target_loss(dataset: str, multi_label: bool, target_loss: str) -> None:
    """Raises a UserError when `--target_loss` does not fit the dataset's kind of labels."""
    from sskt_tf.losses import MULTI_LABEL_TARGET_LOSSES, TARGET_LOSSES

    if multi_label and target_loss not in MULTI_LABEL_TARGET_LOSSES:
        raise UserError(
            f"--dataset={dataset} is multi-label (multi-hot labels) but --target_loss={target_loss} needs one "
            f"class per image; pass --target_loss=bce."
        )
    if not multi_label and target_loss in MULTI_LABEL_TARGET_LOSSES:
        single = [t for t in TARGET_LOSSES if t not in MULTI_LABEL_TARGET_LOSSES]
        raise UserError(
            f"--target_loss={target_loss} is for multi-label datasets but --dataset={dataset} has one class "
            f"per image; pass --target_loss={' or '.join(single)}, or a multi-label dataset (voc2007)."
        )


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Returns whether a TCP connection to `host:port` succeeds within about `timeout` s.

    The connect runs in a worker thread because the socket timeout does not cover name
    resolution, which can hang far longer than `timeout` on a machine without network.
    """

    def connect() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout + 0.5)
    except concurrent.futures.TimeoutError:
        return False
    finally:
        # Do not wait for a hung resolver; the worker thread finishes on its own.
        pool.shutdown(wait=False)


def load(
    dataset: str,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    data_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    train_subset: int | None = None,
    augment: augment_lib.Augmentation | str = "standard",
    cache: str = "auto",
    cache_dir: str | None = None,
    validation_split: float = 0.0,
    skip_bad_images: bool = False,
    deterministic: bool = False,
) -> Datasets:
    """Builds the training, validation and test pipelines for `dataset`.

    Everything is checked here, before anything is written (only the folder-check cache,
    under `~/.cache`, is written); a `UserError` names the problem in one line.

    Args:
        dataset: one of
            - `cifar10`, `cifar100`: TFDS, stored under `data_dir`. Without network
              the dataset must already be prepared in `data_dir`, or the original
              archive (e.g. `cifar-10-binary.tar.gz`) must be in
              `<data_dir>/downloads/manual/`; otherwise a `UserError` comes within
              seconds instead of TFDS retrying for minutes.
            - `stl10`: TFDS, the labelled train (5,000) and test (8,000) splits, 96x96.
            - `voc2007`: TFDS `voc/2007`, trained on train+validation and tested on test,
              as the reference; labels are float32 multi-hot `[20]` of the classes of the
              objects not marked difficult (`labels_no_difficult`). Images vary in size
              and are resized to `image_size` (default 224x224) before batching.
            - `tfds:<name>`: any TFDS dataset with an `image` and a class `label` feature
              and `train`/`test` splits (e.g. `tfds:oxford_flowers102`); variable-size
              images are resized to `image_size` (default 224x224).
              All TFDS datasets fail fast offline as CIFAR does (the archives TFDS would
              download, named as in their URLs, may be put in the manual directory).
            - `folder:<path>`: `<path>/train/<class>/*` and `<path>/test/<class>/*`
              image files (JPEG, PNG, BMP, GIF, WebP, by extension, see
              `IMAGE_EXTENSIONS`), and optionally `<path>/val/<class>/*`, the
              validation set. Labels follow the sorted class folder names; test/ and
              val/ must have the same class folders as train/. Every other file (other
              extensions, hidden files, files outside the class folders or in their
              sub-folders) is reported in one printed line, counted per extension.
              Every image is decoded once up front, in parallel (the result is cached
              in `$XDG_CACHE_HOME/sskt_tf/folder_checks/`, keyed by path, size and
              modification time, so a second run checks only new or changed files): a
              file that cannot be decoded raises a `UserError` naming it, or is left
              out with `skip_bad_images`. Without `image_size`, images are resized to
              the most common size of the training images (ties: the larger), printed
              when the sizes differ.
            - `synthetic` or `synthetic:<num_classes>`: 512 train and 128 test
              images generated from `seed` (10 classes by default), each class with
              its own colour and stripe pattern plus noise, so a model can learn it.
              `synthetic_multilabel:<num_classes>`: the same with one to three classes
              per image (the mean of their patterns) and multi-hot float32 labels.
        batch_size: training batch size; the partial batch at the end of an epoch is
            dropped.
        eval_batch_size: test and validation batch size (default `batch_size`); the
            partial last batch is kept.
        data_dir: TFDS data directory (default: TFDS's own, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`). Unused by folder and synthetic datasets.
        image_size: `(H, W)` to resize every image to (bilinear). Default: the CIFAR
            size, the most common size of the training images of a folder dataset,
            or 32x32 for synthetic data.
        seed: seeds the validation hold-out, the training subset, the shuffle order,
            the augmentation and the synthetic data.
        train_subset: if set, train on a fixed random subset of this many examples of
            the training part (after the validation hold-out).
        augment: an `sskt_tf.augment.Augmentation`, or one of its kinds: "none",
            "standard" (random crop of the 4-padded image and flip), "randaugment".
            With mixing (MixUp/CutMix), training labels are float32 soft rows
            `[B, num_classes]`.
        cache: where decoded images are kept between epochs, for every split:
            "memory" (after the first pass, about `examples * H * W * 3` bytes),
            "disk" (a `tf.data` cache file per split under `cache_dir`, written
            during the first pass; a partial file left by a killed process is
            removed and written again), "none" (decoded from the files, in
            parallel, every epoch; TFDS data is read from its records), or "auto":
            "memory" while the decoded splits (training, then validation, then test)
            fit in `AUTO_CACHE_RAM_SHARE` of physical RAM, "none" for the rest
            (printed). The training batches are bit-identical whichever is used.
        cache_dir: directory of the "disk" cache (needed for it); created when the
            first pass starts. It belongs to one process at a time.
        validation_split: F in [0, 1). 0 (default): no validation set (the paper's
            protocol), unless a folder dataset has `val/`. F > 0: hold out a seeded
            share of the training set. Single-label data is stratified: per class,
            `round(F * n_c)` examples, at least 1 for a class with 2 or more (so the
            total is about `F * n` and every such class is validated); multi-label
            data: `round(F * n)` examples drawn at random. A `UserError` when the
            validation set would be empty, a class would be left without training
            examples, or a folder dataset has `val/` as well.
        skip_bad_images: folder datasets: leave out image files that cannot be
            decoded (returned in `Datasets.bad_files`) instead of raising.
        deterministic: run RandAugment one batch at a time, which makes its stream
            bit-reproducible (and resumable) at the cost of parallelism. The other
            augmentations are reproducible either way.

    Returns:
        A `Datasets`.

    Raises:
        UserError: unknown dataset, missing, malformed or undecodable data, no way to
            download, or sizes and flags that do not fit the data.
    """
    if not isinstance(dataset, str):
        raise UserError(
            f"--dataset must be a string, got {dataset!r}; allowed: "
            f"{', '.join(ALLOWED_DATASETS)}."
        )
    _check_positive_int("--batch_size", batch_size)
    if eval_batch_size is None:
        eval_batch_size = batch_size
    _check_positive_int("--eval_batch_size", eval_batch_size)
    if image_size is not None:
        image_size = _check_image_size(image_size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise UserError(f"--seed must be an integer, got {seed!r}; pass e.g. --seed=0.")
    seed = int(seed)
    cache = _check_cache(cache, cache_dir)
    validation_split = _check_validation_split(validation_split)

    if dataset in _TFDS_DATASETS or dataset.startswith(_TFDS_PREFIX):
        source = _tfds_source(dataset, data_dir, image_size)
    elif dataset.startswith("folder:"):
        source = _folder_source(dataset[len("folder:"):], image_size, skip_bad_images)
    elif dataset == "synthetic" or dataset.startswith(("synthetic:", "synthetic_multilabel:")):
        source = _synthetic_source(dataset, image_size or (32, 32), seed)
    else:
        raise UserError(
            f"--dataset={dataset!r} is not a known dataset; allowed: "
            f"{', '.join(ALLOWED_DATASETS)}. Pass one of these, e.g. --dataset=cifar10 "
            "or --dataset=folder:/path/to/images."
        )

    train_split = source.train
    validation_split_data, validation_from = None, None
    if source.validation is not None:
        if validation_split > 0:
            raise UserError(
                f"--validation_split={validation_split} contradicts {dataset}, which has a val/ folder (its "
                "validation set); pass --validation_split=0 to validate on val/, or remove val/ to hold out "
                "part of train/."
            )
        validation_split_data, validation_from = source.validation, "val/"
    elif validation_split > 0:
        train_split, validation_split_data = _hold_out(
            dataset, train_split, validation_split, seed, source.class_names, source.multi_label
        )
        validation_from = "validation_split"
    if train_subset is not None:
        train_split = _subset(dataset, train_split, train_subset, batch_size, seed)
    if batch_size > train_split.size:
        raise UserError(
            f"--batch_size={batch_size} is larger than the {train_split.size} training "
            f"examples of --dataset={dataset}; use --batch_size <= {train_split.size}."
        )

    if isinstance(augment, str):
        augment = augment_lib.Augmentation(kind=augment)
    if not isinstance(augment, augment_lib.Augmentation):
        raise UserError(f"augment must be an Augmentation or one of {', '.join(augment_lib.AUGMENTS)}; got {augment!r}.")
    augmenter = augment_lib.BatchAugmenter(augment, len(source.class_names), source.multi_label)

    # Where each split's decoded images live; decided (and stale disk caches cleared) only
    # once everything above has been checked.
    parts = {"train": train_split, "validation": validation_split_data, "test": source.test}
    parts = {name: split for name, split in parts.items() if split is not None}
    modes = _cache_modes(cache, parts, dataset)
    selection = [seed, validation_split, train_subset]
    caches = {
        name: _disk_prefix(cache_dir, name, split, selection) if modes[name] == "disk" else modes[name]
        for name, split in parts.items()
    }
    for name, where in caches.items():
        if modes[name] == "disk":
            _clear_partial_cache(where)

    def train_from(start_batch, extras=()):
        if extras and augment.mixes:
            raise UserError(
                "stored source logits (--soft_label_cache=clean) belong to single images and cannot follow "
                "--mixup/--cutmix; use --soft_label_cache=off."
            )
        return _train_pipeline(
            train_split, batch_size, seed, augmenter, caches["train"], start_batch, extras, deterministic
        )

    def train_ordered(ordered_batch_size):
        return _test_pipeline(train_split, ordered_batch_size, "none")

    validation = None
    if validation_split_data is not None:
        validation = _test_pipeline(validation_split_data, eval_batch_size, caches["validation"])
    return Datasets(
        train=train_from(0),
        train_from=train_from,
        train_ordered=train_ordered,
        test=_test_pipeline(source.test, eval_batch_size, caches["test"]),
        num_classes=len(source.class_names),
        class_names=source.class_names,
        image_size=source.image_size,
        num_train=train_split.size,
        num_test=source.test.size,
        steps_per_epoch=train_split.size // batch_size,
        multi_label=source.multi_label,
        validation=validation,
        num_validation=validation_split_data.size if validation_split_data is not None else 0,
        validation_from=validation_from,
        bad_files=source.bad_files,
    )


def _info(message: str) -> None:
    """One line for the user (standard output, as the train command's other notes)."""
    print(message, flush=True)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_positive_int(flag: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value!r}; pass e.g. {flag}=128.")


def _check_image_size(image_size) -> tuple[int, int]:
    ok = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(_is_int(v) and v > 0 for v in image_size)
    )
    if not ok:
        raise UserError(
            f"--image_size must be two positive integers (height, width), got "
            f"{image_size!r}; pass e.g. --image_size=32,32 or leave it unset to keep the "
            "data's own size."
        )
    return int(image_size[0]), int(image_size[1])


def _check_cache(cache, cache_dir) -> str:
    if isinstance(cache, bool):  # The former API: True kept decoded images in memory.
        cache = "memory" if cache else "none"
    if cache not in CACHE_MODES:
        raise UserError(f"--cache={cache!r} is not known; allowed: {', '.join(CACHE_MODES)}; pass e.g. --cache=auto.")
    if cache == "disk" and not cache_dir:
        raise UserError(
            "--cache=disk needs a directory for the cache files (cache_dir, the train command's "
            "<output_dir>/data_cache); pass one, or use --cache=memory, none or auto."
        )
    return cache


def _check_validation_split(value) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value < 1:
        raise UserError(
            f"--validation_split must be a number in [0, 1), got {value!r}; pass e.g. --validation_split=0.1, "
            "or 0 for no validation set."
        )
    return float(value)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3  # Unknown: assume a small machine.


def _gb(n: float) -> str:
    return f"{n / 1024**3:.1f} GB"


def _cache_modes(cache: str, parts: dict, dataset: str) -> dict:
    """The cache mode of each split: `cache` itself, or what "auto" chooses."""
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
            _info(
                f"--cache=auto: the decoded {name} images of {dataset} ({_gb(need)}) do not fit in "
                f"{AUTO_CACHE_RAM_SHARE:.0%} of this machine's {_gb(_physical_memory())} of memory "
                f"({_gb(max(0.0, budget - used))} left); they are decoded again every pass "
                "(--cache=disk keeps a decoded copy on disk instead)."
            )
    return modes


def _disk_prefix(cache_dir: str, name: str, split: _Split, selection) -> str:
    """The tf.data cache file prefix of one split: named by what is in it."""
    key = hashlib.sha256(json.dumps([split.key, split.size, selection]).encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), f"{name}-{key}")


def _clear_partial_cache(prefix: str) -> None:
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


def _cached(ds: tf.data.Dataset, where: str) -> tf.data.Dataset:
    """`ds` cached in memory ("memory"), not at all ("none"), or in the file cache `where`."""
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


def _train_pipeline(
    split: _Split,
    batch_size: int,
    seed: int,
    augmenter: augment_lib.BatchAugmenter,
    cache: str,
    start_batch: int = 0,
    extras: Sequence[np.ndarray] = (),
    deterministic: bool = False,
) -> tf.data.Dataset:
    """Shuffled, repeated, batched and augmented training stream.

    The stream is a function of `seed` (and TensorFlow's global seed) and the
    position in it alone: the shuffle order of every pass is fixed by the seeds, and
    batch i is augmented with seed (seed, i). A stream started at `start_batch` skips
    that many batches' worth of (undecoded or cached) examples, which is cheap, so a
    run resumed after a crash sees exactly the batches an uninterrupted run sees.
    `cache` ("memory", "none" or a disk cache prefix) changes where decoded images come
    from, never the stream: the shuffle buffer has the same size in every mode, and
    shuffling does not depend on what it shuffles.
    """
    extras = tuple(np.asarray(e) for e in extras)
    for e in extras:
        if len(e) != split.size:
            raise ValueError(f"extras must have one row per training example ({split.size}); got {len(e)}")
    decode_late = cache == "none" and not extras and split.decode is not None
    elements = split.elements if decode_late else _cached(split.decoded(), cache)
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
        if deterministic:
            ds = ds.map(randaugment)
        else:
            ds = ds.map(randaugment, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def _test_pipeline(split: _Split, batch_size: int, cache: str) -> tf.data.Dataset:
    """One un-augmented pass with the partial last batch kept and a known length."""
    ds = _cached(split.decoded(), cache)
    ds = ds.apply(tf.data.experimental.assert_cardinality(split.size))
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return ds.prefetch(AUTOTUNE)


def _shuffle_buffer(size: int, image_bytes: int) -> int:
    by_memory = max(_MIN_SHUFFLE_BUFFER, _SHUFFLE_BUFFER_BYTES // max(1, image_bytes))
    return int(max(1, min(size, by_memory)))


def _select(split: _Split, keep: np.ndarray) -> _Split:
    """The examples of `split` where the boolean mask `keep` is set, in their order."""
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


def _hold_out(dataset, split: _Split, fraction: float, seed: int, class_names, multi_label: bool):
    """(training part, validation part) of `split`: a seeded hold-out of about `fraction`."""
    flag = f"--validation_split={fraction}"
    labels = split.label_array()
    if len(labels) != split.size:
        raise ValueError(f"{len(labels)} labels for {split.size} examples")
    split = dataclasses.replace(split, labels=labels)
    rng = np.random.default_rng([seed, 0x76616C])  # Its own stream: independent of the other draws from `seed`.
    held = np.zeros(split.size, dtype=bool)
    if multi_label:
        k = int(math.floor(fraction * split.size + 0.5))
        if k >= split.size:
            raise UserError(f"{flag} holds out all {split.size} training examples of {dataset}; pass a smaller share.")
        held[rng.choice(split.size, size=k, replace=False)] = True
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
                    f"{flag} would hold out all {n_c} training example{'s' if n_c > 1 else ''} of class "
                    f"{class_names[c]!r} of {dataset}, leaving it none to train on; pass a smaller "
                    "--validation_split, or add training images of that class."
                )
            held[rng.choice(index, size=k, replace=False)] = True
        how = "stratified: round(share x class size) per class, at least 1 per class of 2 or more"
    k = int(held.sum())
    if k == 0:
        raise UserError(
            f"{flag} holds out no example of the {split.size} training examples of {dataset}, so the "
            "validation set would be empty; pass a larger --validation_split, or 0 for no validation set."
        )
    _info(
        f"{dataset}: validation set of {k} of the {split.size} training examples ({flag}, seed {seed}, {how}); "
        f"training on the other {split.size - k}."
    )
    return _select(split, ~held), _select(split, held)


def _subset(dataset: str, split: _Split, n, batch_size: int, seed: int) -> _Split:
    """A fixed random subset of `n` examples of `split`, chosen from `seed`."""
    if not _is_int(n) or n < 1:
        raise UserError(
            f"--train_subset must be a positive integer, got {n!r}; pass e.g. "
            "--train_subset=5000 or leave it unset."
        )
    n = int(n)
    if n > split.size:
        raise UserError(
            f"--train_subset={n} is larger than the {split.size} training examples of "
            f"--dataset={dataset}; use --train_subset <= {split.size} or leave it unset."
        )
    if n < batch_size:
        raise UserError(
            f"--train_subset={n} is smaller than --batch_size={batch_size}, so not one "
            f"training batch fits; use --train_subset >= {batch_size} or a smaller "
            "--batch_size."
        )
    # Sorted indices keep the source order, so a streamed source is read front to back.
    keep = np.sort(np.random.default_rng(seed).choice(split.size, size=n, replace=False))
    mask = np.zeros(split.size, dtype=bool)
    mask[keep] = True
    return _select(split, mask)


def _to_size(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Resizes uint8 `[h, w, 3]` to `image_size` (bilinear) unless it already has it."""

    def resize():
        resized = tf.image.resize(image, image_size, method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.constant(image_size, tf.int32)))
    image = tf.cond(same, lambda: image, resize)
    return tf.ensure_shape(image, (*image_size, 3))


# ---------------------------------------------------------------------------- TFDS


def _tfds_spec(dataset: str) -> _TfdsSpec:
    if dataset in _TFDS_DATASETS:
        return _TFDS_DATASETS[dataset]
    name = dataset[len(_TFDS_PREFIX):]
    if not name:
        raise UserError(
            "--dataset=tfds: needs a TFDS dataset name after 'tfds:'; pass e.g. --dataset=tfds:oxford_flowers102."
        )
    return _TfdsSpec(name, default_image_size=_DEFAULT_VARIABLE_IMAGE_SIZE)


def _tfds_source(dataset: str, data_dir: str | None, image_size: tuple[int, int] | None) -> _Source:
    """A TFDS image dataset (CIFAR, STL-10, VOC 2007, `tfds:<name>`); fails fast when TFDS could only wait for a network."""
    import tensorflow_datasets as tfds  # Heavy import, needed on this path only.
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    spec = _tfds_spec(dataset)
    name = spec.tfds_name
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    root = data_dir or tfds.core.constants.get_default_data_dir()
    manual_dir = os.path.join(root, "downloads", "manual")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UserError(
            f"--dataset={dataset}: TFDS has no dataset {name!r}; pass a name from "
            "https://www.tensorflow.org/datasets/catalog (e.g. --dataset=tfds:oxford_flowers102)."
        ) from e
    features = builder.info.features
    if spec.multi_label:
        label_key = "labels_no_difficult"
        class_names = tuple(features[label_key].feature.names)
    else:
        label_key = "label"
        label = features["label"] if "label" in features else None
        if "image" not in features or not isinstance(label, tfds.features.ClassLabel):
            raise UserError(
                f"--dataset={dataset} needs an 'image' feature and a class 'label' feature; TFDS {name} has "
                f"{sorted(features)}. Use a TFDS image-classification dataset, or --dataset=folder:<path>."
            )
        class_names = tuple(label.names)
    # The files TFDS downloads: their host is probed, their names are what it looks for in its manual directory.
    urls = sorted(builder.url_infos or {})
    archives = [u.rstrip("/").split("/")[-1] for u in urls]
    load_kwargs = {}
    if not builder.is_prepared():
        if archives and all(os.path.isfile(os.path.join(manual_dir, a)) for a in archives):
            load_kwargs["download_and_prepare_kwargs"] = {
                "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
            }
        elif urls and not network_available(urls[0].split("/")[2]):
            host = urls[0].split("/")[2]
            where = f"--data_dir={data_dir}" if data_dir else f"--data_dir (unset, so {root})"
            raise UserError(
                f"--dataset={dataset} is not prepared in {where} and {host} cannot be "
                f"reached to download it. Fix one of: put the original archive "
                f"{' and '.join(archives)} (from {', '.join(urls)}) in {manual_dir}/ (that is "
                f"<data_dir>/downloads/manual/); or point --data_dir at a directory where "
                f"TFDS has already prepared {name}; or use an image folder with "
                "--dataset=folder:<path> (<path>/train/<class>/*.jpg and "
                "<path>/test/<class>/*.jpg)."
            )
    try:
        (train, test), info = tfds.load(
            name,
            split=[spec.train_split, spec.test_split],
            data_dir=data_dir,
            with_info=True,
            **load_kwargs,
        )
    except NonMatchingChecksumError as e:
        raise UserError(
            f"--dataset={dataset}: an archive in {manual_dir} does not match the checksum TFDS expects; "
            f"replace it with the original file from {', '.join(urls)}."
        ) from e
    except ValueError as e:
        if "split" not in str(e).lower():
            raise
        raise UserError(
            f"--dataset={dataset}: TFDS {name} has no {spec.train_split!r} and {spec.test_split!r} splits "
            f"(it has {sorted(info_splits(builder))}); use a dataset with train and test splits, or --dataset=folder:<path>."
        ) from e

    native_shape = info.features["image"].shape[:2]
    native_size = tuple(int(d) for d in native_shape) if None not in native_shape else None
    size = image_size or native_size or spec.default_image_size
    num_classes = len(class_names)

    def to_pair(example):
        if spec.multi_label:
            # Multi-hot over the classes present; an image whose every object is difficult has none.
            hot = tf.reduce_sum(tf.one_hot(example[label_key], num_classes, dtype=tf.float32), axis=0)
            return example["image"], tf.minimum(hot, 1.0)
        return example["image"], tf.cast(example[label_key], tf.int32)

    def make_split(ds: tf.data.Dataset, split_name: str) -> _Split:
        n = int(ds.cardinality())
        if n < 0:
            n = int(info.splits[split_name].num_examples)
        ds = ds.map(to_pair, num_parallel_calls=AUTOTUNE, deterministic=True)
        decode = None if size == native_size else (lambda x, y: (_to_size(x, size), y))

        def labels():
            # One pass over the records without decoding images, in the order of `ds`.
            raw = tfds.load(
                name, split=split_name, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()}
            )
            pairs = raw.map(lambda example: to_pair(example)[1], num_parallel_calls=AUTOTUNE, deterministic=True)
            return np.concatenate([batch for batch in pairs.batch(8192).as_numpy_iterator()])

        return _Split(
            elements=ds,
            size=n,
            decode=decode,
            image_bytes=size[0] * size[1] * 3,
            labels=labels,
            key=json.dumps(["tfds", name, str(info.version), split_name, data_dir, list(size)]),
        )

    return _Source(
        train=make_split(train, spec.train_split),
        test=make_split(test, spec.test_split),
        class_names=class_names,
        image_size=size,
        multi_label=spec.multi_label,
    )


def info_splits(builder) -> list[str]:
    try:
        return list(builder.info.splits)
    except Exception:  # noqa: BLE001  (only for the message)
        return []


# ------------------------------------------------------------------------- folders

_LAYOUT = "<path>/train/<class>/<image> and <path>/test/<class>/<image> (optionally <path>/val/<class>/<image>)"
_SPLIT_DIRS = ("train", "test", "val")
_FORMATS = "JPEG, PNG, BMP, GIF or WebP"
# Raised when what the check stores changes (2: reasons without TensorFlow's "name:" wrapping).
_CHECK_CACHE_VERSION = 2
# Show a progress bar when the check has run this long and is not done.
_PROGRESS_AFTER_S = 1.0


def _folder_source(path: str, image_size: tuple[int, int] | None, skip_bad_images: bool = False) -> _Source:
    """An image folder with `train/<class>/*`, `test/<class>/*` and optionally `val/<class>/*`."""
    flag = f"--dataset=folder:{path}"
    if not path:
        raise UserError(
            "--dataset=folder: needs a directory after 'folder:', got an empty path; pass "
            f"--dataset=folder:/path/to/images laid out as {_LAYOUT}."
        )
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        what = "is a file, not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"{flag}: {root} {what}; pass a directory laid out as {_LAYOUT}.")
    splits = ["train", "test"] + (["val"] if os.path.isdir(os.path.join(root, "val")) else [])
    classes = {split: _class_folders(root, split, flag) for split in splits}
    for split in splits[1:]:
        if classes[split] != classes["train"]:
            only_train = sorted(set(classes["train"]) - set(classes[split]))
            only_other = sorted(set(classes[split]) - set(classes["train"]))
            raise UserError(
                f"{flag}: {os.path.join(root, split)} must have the same class folders as "
                f"{os.path.join(root, 'train')}; only in train: {only_train or 'none'}, only in "
                f"{split}: {only_other or 'none'}. Add or remove class folders so that both match."
            )
    class_names = classes["train"]

    listed, unused = _scan_folder(root, splits, class_names)
    _report_unused(flag, root, unused)
    for split in splits:
        _check_not_empty(root, split, class_names, listed[split], flag)
    all_paths = [p for split in splits for p, _ in listed[split]]
    checked, stamps = _check_images(root, all_paths, flag)
    bad = sorted(p for p in all_paths if isinstance(checked[p], str))
    if bad and not skip_bad_images:
        shown = "; ".join(f"{p} ({checked[p]})" for p in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(
            f"{flag}: {len(bad)} of {len(all_paths)} image files cannot be decoded: {shown}{more}. Delete or "
            "replace them, or pass --skip_bad_images to go on without them (the command lists them in its output: "
            "skipped_images.txt of a training run, metrics.json of an evaluation)."
        )
    if bad:
        _info(
            f"{flag}: leaving out {len(bad)} image file{'s' if len(bad) > 1 else ''} that cannot be decoded "
            f"(--skip_bad_images): {', '.join(bad[:3])}{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}."
        )
        bad_set = set(bad)
        listed = {split: [(p, y) for p, y in items if p not in bad_set] for split, items in listed.items()}
        for split in splits:
            _check_not_empty(root, split, class_names, listed[split], flag, after_skipping=True)

    size = image_size or _common_size(flag, [checked[p] for p, _ in listed["train"]])

    def decode(file_path, label):
        image = tf.io.decode_image(
            tf.io.read_file(file_path), channels=3, expand_animations=False, dtype=tf.uint8
        )
        return _to_size(image, size), label

    def make_split(items, split: str, mix: bool) -> _Split:
        if mix:
            # The files come sorted by class; a fixed permutation (independent of --seed, so the
            # soft-label cache's order stays put) lets a bounded shuffle buffer mix the classes.
            items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
        paths = [p for p, _ in items]
        labels = np.asarray([y for _, y in items], np.int32)
        return _Split(
            elements=tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels))),
            size=len(paths),
            decode=decode,
            image_bytes=size[0] * size[1] * 3,
            labels=labels,
            key=json.dumps(["folder", split, list(size), hashlib.sha256(json.dumps([paths, [stamps[p] for p in paths]]).encode()).hexdigest()]),
        )

    return _Source(
        train=make_split(listed["train"], "train", mix=True),
        test=make_split(listed["test"], "test", mix=False),
        validation=make_split(listed["val"], "val", mix=False) if "val" in listed else None,
        class_names=tuple(class_names),
        image_size=size,
        bad_files=tuple(bad),
    )


def _class_folders(root: str, split: str, flag: str) -> list[str]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise UserError(f"{flag}: {split_dir} is missing; lay the folder out as {_LAYOUT}.")
    # Hidden folders (.ipynb_checkpoints, .git, ...) are tool artefacts, not classes.
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(
            f"{flag}: {split_dir} has no class folders; put each class's images in "
            f"{split_dir}/<class>/ ({_LAYOUT})."
        )
    return classes


def _files_under(directory: str) -> list[str]:
    """Every file below `directory`, hidden ones included."""
    found = []
    for where, _, files in os.walk(directory):
        found.extend(os.path.join(where, f) for f in files)
    return found


def _scan_folder(root: str, splits: Sequence[str], classes: Sequence[str]):
    """The image files of each split as `[(path, label)]`, and every other file as `[(path, why)]`.

    Read: files with an image extension directly in `<split>/<class>/`, not hidden.
    Everything else under `root` is returned as unused, with the reason.
    """
    listed = {split: [] for split in splits}
    unused = []
    with os.scandir(root) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name in splits and e.is_dir():
                continue
            why = "hidden" if e.name.startswith(".") else f"outside {'/, '.join(splits)}/"
            unused.extend((p, why) for p in (_files_under(e.path) if e.is_dir() else [e.path]))
    for split in splits:
        split_dir = os.path.join(root, split)
        with os.scandir(split_dir) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                if e.is_dir() and not e.name.startswith("."):
                    continue  # A class folder.
                why = "hidden" if e.name.startswith(".") else "outside the class folders"
                unused.extend((p, why) for p in (_files_under(e.path) if e.is_dir() else [e.path]))
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            with os.scandir(class_dir) as entries:
                for e in sorted(entries, key=lambda e: e.name):
                    if e.name.startswith("."):
                        unused.extend((p, "hidden") for p in (_files_under(e.path) if e.is_dir() else [e.path]))
                    elif e.is_dir():
                        unused.extend((p, "in a sub-folder of a class folder") for p in _files_under(e.path))
                    elif not e.is_file():
                        unused.append((e.path, "not a regular file (a broken link?)"))
                    elif not e.name.lower().endswith(IMAGE_EXTENSIONS):
                        unused.append((e.path, "not an image extension"))
                    else:
                        listed[split].append((e.path, label))
    return listed, unused


def _extension(path: str) -> str:
    name = os.path.basename(path)
    ext = os.path.splitext(name.lstrip("."))[1].lower()
    return ext or "no extension"


def _report_unused(flag: str, root: str, unused) -> None:
    """One line: the files under `root` that are not read, counted per extension and per reason."""
    if not unused:
        return
    by_ext = collections.Counter(_extension(p) for p, _ in unused)
    by_why = collections.Counter(why for _, why in unused)
    exts = ", ".join(f"{ext}: {n}" for ext, n in sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0])))
    whys = ", ".join(f"{n} {why}" for why, n in sorted(by_why.items(), key=lambda kv: (-kv[1], kv[0])))
    _info(
        f"{flag}: {len(unused)} file{'s are' if len(unused) > 1 else ' is'} not used ({exts}; {whys}; e.g. "
        f"{unused[0][0]}); read are {'/'.join(IMAGE_EXTENSIONS)} files directly in <split>/<class>/ "
        "(train/, test/, val/), not hidden."
    )


def _check_not_empty(root, split, classes, items, flag, after_skipping=False) -> None:
    counts = collections.Counter(y for _, y in items)
    for label, name in enumerate(classes):
        if not counts[label]:
            class_dir = os.path.join(root, split, name)
            why = " once the files that cannot be decoded are left out" if after_skipping else ""
            raise UserError(
                f"{flag}: class folder {class_dir} has no image files{why} "
                f"({'/'.join(IMAGE_EXTENSIONS)}); add images or remove the class from "
                f"{', '.join(s + '/' for s in _SPLIT_DIRS if os.path.isdir(os.path.join(root, s)))}."
            )


def _stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _check_cache_file(root: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = hashlib.sha256(root.encode()).hexdigest()[:24] + ".json"
    return os.path.join(base, "sskt_tf", "folder_checks", name)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what the C image libraries print to standard error ("Corrupt JPEG data...")."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _decode_reason(path: str) -> str:
    """Why TensorFlow cannot decode the file at `path`, in a few words."""
    try:
        data = tf.io.read_file(path)
    except tf.errors.OpError as e:
        return f"cannot be read: {e.message.splitlines()[0]}"
    if int(tf.strings.length(data)) == 0:
        return "empty file"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        # TensorFlow wraps the reason in "{{function_node ...}} ... [Op:DecodeImage] name: ".
        text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\s*name:\s*$", "", e.message.splitlines()[0]).strip()
        return f"{text} (not a complete {_FORMATS} image)" if text else f"not a complete {_FORMATS} image"
    return "decodes now; it failed during the check"


def _check_images(root: str, paths: Sequence[str], flag: str) -> tuple[dict, dict]:
    """Decodes every file once, as the pipeline will: `{path: (height, width) or reason it fails}`,
    and `{path: [size, mtime_ns]}`.

    Results are cached per file under `$XDG_CACHE_HOME/sskt_tf/folder_checks/` (default
    `~/.cache`), keyed by path, size and modification time (and the TensorFlow version),
    so a second run decodes only new or changed files. The data folder may be read-only.
    """
    cache_file = _check_cache_file(root)
    try:
        with open(cache_file) as f:
            stored = json.load(f)
        if stored.get("version") != _CHECK_CACHE_VERSION or stored.get("tensorflow") != tf.__version__:
            stored = {}
    except (OSError, ValueError):
        stored = {}
    known = stored.get("files", {}) if stored.get("root") == root else {}
    results, entries, todo, stamps = {}, {}, [], {}
    for p in paths:
        stamp = stamps[p] = _stamp(p)
        entry = known.get(p)
        if entry is not None and entry[:2] == stamp:
            results[p] = entry[2] if len(entry) == 3 else (entry[2], entry[3])
            entries[p] = entry
        else:
            todo.append((p, stamp))
    if todo:
        found = _decode_all([p for p, _ in todo], flag)
        with _quiet_stderr():
            for p, stamp in todo:
                result = found.get(p) or _decode_reason(p)
                results[p] = result
                entries[p] = stamp + (list(result) if isinstance(result, tuple) else [result])
    if todo or len(known) != len(entries):
        record = {"version": _CHECK_CACHE_VERSION, "tensorflow": tf.__version__, "root": root, "files": entries}
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, cache_file)
        except OSError as e:
            _info(f"{flag}: could not store the image check in {cache_file} ({e.strerror}); the next run checks again.")
    return results, stamps


def _decode_all(paths: Sequence[str], flag: str) -> dict:
    """`{path: (height, width)}` of the files that decode; one parallel pass, with a progress bar."""

    def probe(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        shape = tf.shape(image)
        return path, shape[0], shape[1]

    ds = (
        tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
        .map(probe, num_parallel_calls=AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(256)
        .prefetch(AUTOTUNE)
    )
    found, done, bar = {}, 0, None
    start = time.perf_counter()
    with _quiet_stderr():
        for names, heights, widths in ds.as_numpy_iterator():
            for name, h, w in zip(names, heights, widths):
                found[name.decode()] = (int(h), int(w))
            done += len(names)
            if bar is None and time.perf_counter() - start > _PROGRESS_AFTER_S:
                import keras  # Only when a bar is shown.

                print(f"{flag}: checking that every one of {len(paths)} images decodes (once; the result is cached)", flush=True)
                bar = keras.utils.Progbar(len(paths), unit_name="image")
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.update(len(paths), finalize=True)
        _info(f"{flag}: checked {len(paths)} images in {time.perf_counter() - start:.1f} s.")
    return found


def _size_text(size, n) -> str:
    return f"{size[0]}x{size[1]}: {n} file{'s' if n > 1 else ''}"


def _common_size(flag: str, sizes) -> tuple[int, int]:
    """The most common (height, width) of the training images (ties: the larger); printed when they differ."""
    counts = collections.Counter(sizes)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], -kv[0][0] * kv[0][1], -kv[0][0]))
    size = ranked[0][0]
    if len(ranked) > 1:
        shown = ", ".join(_size_text(s, n) for s, n in ranked[:5])
        more = f", and {len(ranked) - 5} more sizes" if len(ranked) > 5 else ""
        _info(
            f"{flag}: the training images have {len(ranked)} sizes ({shown}{more}); training at "
            f"{size[0]}x{size[1]}, the most common (every image is resized to it); pass --image_size=H,W to choose."
        )
    return size


# ----------------------------------------------------------------------- synthetic


def _synthetic_source(dataset: str, image_size: tuple[int, int], seed: int) -> _Source:
    """Offline data a model learns in a few steps: per-class colour and stripes."""
    num_classes = SYNTHETIC_DEFAULT_CLASSES
    multi_label = dataset.startswith("synthetic_multilabel:")
    if dataset != "synthetic":
        text = dataset.split(":", 1)[1]
        if not text.isdigit() or not 2 <= int(text) <= SYNTHETIC_MAX_CLASSES:
            raise UserError(
                f"--dataset={dataset}: the number of classes must be an integer from 2 to "
                f"{SYNTHETIC_MAX_CLASSES}, got {text!r}; pass e.g. --dataset={dataset.split(':')[0]}:10."
            )
        num_classes = int(text)
    height, width = image_size
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40.0, 215.0, size=(num_classes, 1, 1, 3))
    # Stripes of a class-specific direction and frequency make classes differ in
    # texture as well as colour, so two classes with similar colours stay separable.
    angle = rng.uniform(0.0, np.pi, size=(num_classes, 1, 1))
    freq = rng.uniform(1.0, 4.0, size=(num_classes, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(num_classes, 1, 1))
    yy, xx = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    waves = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    templates = colours + 35.0 * waves[..., None]

    def make(n: int) -> _Split:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        noise = rng.normal(0.0, 25.0, size=(n, height, width, 3))
        if multi_label:
            # Each image: its balanced first class plus up to two more at random, drawn as the
            # mean of their patterns.
            hot = np.zeros((n, num_classes), np.float32)
            hot[np.arange(n), labels] = 1.0
            extra = rng.integers(0, num_classes, size=(n, 2))
            keep = rng.random((n, 2)) < 0.5
            for j in range(2):
                hot[np.arange(n)[keep[:, j]], extra[keep[:, j], j]] = 1.0
            mean_template = np.einsum("nc,chwk->nhwk", hot / hot.sum(1, keepdims=True), templates)
            images = np.clip(np.round(mean_template + noise), 0, 255).astype(np.uint8)
            labels = hot
        else:
            images = np.clip(np.round(templates[labels] + noise), 0, 255).astype(np.uint8)
        return _Split(
            elements=tf.data.Dataset.from_tensor_slices((images, labels)),
            size=n,
            decode=None,
            image_bytes=height * width * 3,
            labels=labels,
            key=json.dumps([dataset, seed, height, width, n]),
        )

    return _Source(
        train=make(SYNTHETIC_NUM_TRAIN),
        test=make(SYNTHETIC_NUM_TEST),
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
        image_size=(height, width),
        multi_label=multi_label,
    )
