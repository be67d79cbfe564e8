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

import concurrent.futures
import dataclasses
import os
import socket
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from sskt_tf import augment as augment_lib
from sskt_tf.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

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
        num_train: training examples actually used (after `train_subset`).
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


@dataclasses.dataclass(frozen=True)
class _Split:
    """One split before shuffling and batching.

    `elements` holds what is cheap to keep (file paths, or images already in memory)
    with int32 labels; `decode`, when set, maps one element to
    `(uint8 [H, W, 3], int32 label)`. Keeping the two apart lets the un-cached folder
    pipeline shuffle file names, which costs nothing, instead of decoded images.
    """

    elements: tf.data.Dataset
    size: int
    decode: Callable | None
    element_bytes: int  # Rough size of one element of `elements`, to size the shuffle buffer.

    def decoded(self) -> tf.data.Dataset:
        if self.decode is None:
            return self.elements
        return self.elements.map(self.decode, num_parallel_calls=AUTOTUNE, deterministic=True)


@dataclasses.dataclass(frozen=True)
class _Source:
    train: _Split
    test: _Split
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    multi_label: bool = False


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
    cache: bool = True,
    deterministic: bool = False,
) -> Datasets:
    """Builds the training and test pipelines for `dataset`.

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
              image files (JPEG/PNG/BMP/GIF by extension; other files are ignored).
              Labels follow the sorted class folder names; the test split must have
              the same class folders. The first bytes of every file are checked here,
              so an empty or non-image file raises a `UserError` naming it; a file
              with a valid header but a corrupt body fails only when the pipeline
              decodes it, with TensorFlow's decode error (which names no file).
            - `synthetic` or `synthetic:<num_classes>`: 512 train and 128 test
              images generated from `seed` (10 classes by default), each class with
              its own colour and stripe pattern plus noise, so a model can learn it.
              `synthetic_multilabel:<num_classes>`: the same with one to three classes
              per image (the mean of their patterns) and multi-hot float32 labels.
        batch_size: training batch size; the partial batch at the end of an epoch is
            dropped.
        eval_batch_size: test batch size (default `batch_size`); the partial last
            batch is kept.
        data_dir: TFDS data directory (default: TFDS's own, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`). Unused by folder and synthetic datasets.
        image_size: `(H, W)` to resize every image to (bilinear). Default: the CIFAR
            size, the size of the first training image of a folder dataset, or 32x32
            for synthetic data.
        seed: seeds the training subset, the shuffle order, the augmentation and the
            synthetic data.
        train_subset: if set, train on a fixed random subset of this many examples.
        augment: an `sskt_tf.augment.Augmentation`, or one of its kinds: "none",
            "standard" (random crop of the 4-padded image and flip), "randaugment".
            With mixing (MixUp/CutMix), training labels are float32 soft rows
            `[B, num_classes]`.
        cache: keep the decoded uint8 images in memory after the first pass (about
            `examples * H * W * 3` bytes per split). Without it every epoch decodes
            again.
        deterministic: run RandAugment one batch at a time, which makes its stream
            bit-reproducible (and resumable) at the cost of parallelism. The other
            augmentations are reproducible either way.

    Returns:
        A `Datasets`.

    Raises:
        UserError: unknown dataset, missing or malformed data, no way to download,
            or batch/subset sizes that do not fit the data.
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

    if dataset in _TFDS_DATASETS or dataset.startswith(_TFDS_PREFIX):
        source = _tfds_source(dataset, data_dir, image_size)
    elif dataset.startswith("folder:"):
        source = _folder_source(dataset[len("folder:"):], image_size)
    elif dataset == "synthetic" or dataset.startswith(("synthetic:", "synthetic_multilabel:")):
        source = _synthetic_source(dataset, image_size or (32, 32), seed)
    else:
        raise UserError(
            f"--dataset={dataset!r} is not a known dataset; allowed: "
            f"{', '.join(ALLOWED_DATASETS)}. Pass one of these, e.g. --dataset=cifar10 "
            "or --dataset=folder:/path/to/images."
        )

    train_split = source.train
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

    def train_from(start_batch, extras=()):
        if extras and augment.mixes:
            raise UserError(
                "stored source logits (--soft_label_cache=clean) belong to single images and cannot follow "
                "--mixup/--cutmix; use --soft_label_cache=off."
            )
        return _train_pipeline(train_split, batch_size, seed, augmenter, cache, start_batch, extras, deterministic)

    def train_ordered(ordered_batch_size):
        return _test_pipeline(train_split, ordered_batch_size, cache=False)

    return Datasets(
        train=train_from(0),
        train_from=train_from,
        train_ordered=train_ordered,
        test=_test_pipeline(source.test, eval_batch_size, cache),
        num_classes=len(source.class_names),
        class_names=source.class_names,
        image_size=source.image_size,
        num_train=train_split.size,
        num_test=source.test.size,
        steps_per_epoch=train_split.size // batch_size,
        multi_label=source.multi_label,
    )


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


def _train_pipeline(
    split: _Split,
    batch_size: int,
    seed: int,
    augmenter: augment_lib.BatchAugmenter,
    cache: bool,
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
    """
    extras = tuple(np.asarray(e) for e in extras)
    for e in extras:
        if len(e) != split.size:
            raise ValueError(f"extras must have one row per training example ({split.size}); got {len(e)}")
    elements = split.decoded().cache() if cache else split.elements
    if extras:
        # Attached before shuffling, so each example keeps its own rows.
        if not cache:
            elements = split.decoded()
        elements = tf.data.Dataset.zip((elements, tf.data.Dataset.from_tensor_slices(extras))).map(
            lambda example, rows: (*example, *rows)
        )
    decode = split.decode if (not cache and not extras) else None
    element_bytes = _image_bytes(elements.element_spec) if decode is None else split.element_bytes
    buffer = _shuffle_buffer(split.size, element_bytes)
    # Shuffling before decoding (un-cached folders: file names) costs nothing.
    ds = elements.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.skip(int(start_batch) * batch_size)
    if decode is not None:
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
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


def _test_pipeline(split: _Split, batch_size: int, cache: bool) -> tf.data.Dataset:
    """One un-augmented pass with the partial last batch kept and a known length."""
    ds = split.decoded()
    if cache:
        ds = ds.cache()
    ds = ds.apply(tf.data.experimental.assert_cardinality(split.size))
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return ds.prefetch(AUTOTUNE)


def _image_bytes(element_spec) -> int:
    shape = element_spec[0].shape
    return int(np.prod([d if d is not None else 256 for d in shape]))


def _shuffle_buffer(size: int, element_bytes: int) -> int:
    by_memory = max(_MIN_SHUFFLE_BUFFER, _SHUFFLE_BUFFER_BYTES // max(1, element_bytes))
    return int(max(1, min(size, by_memory)))


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
    mask_t = tf.constant(mask)
    elements = (
        split.elements.enumerate()
        .filter(lambda i, element: tf.gather(mask_t, i))
        .map(lambda i, element: element)
        .apply(tf.data.experimental.assert_cardinality(n))
    )
    return dataclasses.replace(split, elements=elements, size=n)


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
        return _Split(elements=ds, size=n, decode=decode, element_bytes=(native_size or size)[0] * (native_size or size)[1] * 3)

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

_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
)
_LAYOUT = "<path>/train/<class>/<image> and <path>/test/<class>/<image>"


def _folder_source(path: str, image_size: tuple[int, int] | None) -> _Source:
    """An image folder with `train/<class>/*` and `test/<class>/*`."""
    flag = f"--dataset=folder:{path}"
    if not path:
        raise UserError(
            "--dataset=folder: needs a directory after 'folder:', got an empty path; pass "
            f"--dataset=folder:/path/to/images laid out as {_LAYOUT}."
        )
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        raise UserError(
            f"{flag}: directory {root} does not exist; pass a directory laid out as {_LAYOUT}."
        )
    train_classes = _class_folders(root, "train", flag)
    test_classes = _class_folders(root, "test", flag)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise UserError(
            f"{flag}: {os.path.join(root, 'test')} must have the same class folders as "
            f"{os.path.join(root, 'train')}; only in train: {only_train or 'none'}, only in "
            f"test: {only_test or 'none'}. Add or remove class folders so that both match."
        )

    train_paths, train_labels = _list_images(root, "train", train_classes, flag)
    test_paths, test_labels = _list_images(root, "test", test_classes, flag)
    _check_headers(train_paths + test_paths, flag)
    size = image_size or _first_image_size(train_paths[0], flag)

    def decode(file_path, label):
        image = tf.io.decode_image(
            tf.io.read_file(file_path), channels=3, expand_animations=False, dtype=tf.uint8
        )
        return _to_size(image, size), label

    def make_split(paths: list[str], labels: list[int]) -> _Split:
        elements = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string), tf.constant(labels, tf.int32))
        )
        return _Split(
            elements=elements,
            size=len(paths),
            decode=decode,
            element_bytes=max(len(p) for p in paths),
        )

    return _Source(
        train=make_split(train_paths, train_labels),
        test=make_split(test_paths, test_labels),
        class_names=tuple(train_classes),
        image_size=size,
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


def _list_images(
    root: str, split: str, classes: Sequence[str], flag: str
) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, split, name)
        with os.scandir(class_dir) as entries:
            files = sorted(
                e.name
                for e in entries
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        if not files:
            raise UserError(
                f"{flag}: class folder {class_dir} has no image files "
                f"({'/'.join(IMAGE_EXTENSIONS)}); add images or remove the class from both "
                "train/ and test/."
            )
        paths.extend(os.path.join(class_dir, f) for f in files)
        labels.extend([label] * len(files))
    return paths, labels


def _check_headers(paths: Sequence[str], flag: str) -> None:
    """Raises a UserError naming a file that is empty, unreadable or not an image.

    Reads 8 bytes per file (about 0.5 s for CIFAR-10's 60k files with a warm page
    cache); decoding everything here would cost a whole extra pass.
    """
    bad = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                head = f.read(8)
        except OSError:
            head = b""
        if not head.startswith(_MAGIC):
            bad.append(p)
    if bad:
        more = f" (and {len(bad) - 1} more such files)" if len(bad) > 1 else ""
        raise UserError(
            f"{flag}: {bad[0]}{more} is empty, unreadable or not a JPEG/PNG/BMP/GIF image; "
            "delete or replace it."
        )


def _first_image_size(path: str, flag: str) -> tuple[int, int]:
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise UserError(
            f"{flag}: cannot decode {path} ({e.message.splitlines()[0]}); delete or replace "
            "the file, or pass --image_size."
        ) from e
    return int(image.shape[0]), int(image.shape[1])


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
            element_bytes=height * width * 3,
        )

    return _Source(
        train=make(SYNTHETIC_NUM_TRAIN),
        test=make(SYNTHETIC_NUM_TEST),
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
        image_size=(height, width),
        multi_label=multi_label,
    )
