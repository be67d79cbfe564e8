"""`load`: one `--dataset` value and the input flags -> the `Datasets` a run trains and evaluates on.

`--dataset` names a kind of source through `KINDS`, a table of its forms; each kind of images is one
module of this package with a `source(dataset, *, data_dir, image_size, seed, skip_bad_images)`
function that returns a `pipeline.Source` (see `tfds.source`). Adding a kind is one module and one
row of `KINDS`, as big_vision's `datasets/` (google-research/big_vision) adds a data source. The
kind "video" (clips instead of images) builds its own streams: `video.load`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import tensorflow as tf

from sskt_tf import augment as augment_lib
from sskt_tf.config import AugmentationConfig
from sskt_tf.data import pipeline
from sskt_tf.errors import UserError
from sskt_tf.names import AUGMENTS

if TYPE_CHECKING:
    from sskt_tf.data import video

# Every form of --dataset, as errors list them, and the module of sskt_tf.data that reads it. A form
# with a "<...>" part matches every value that starts with what precedes it; the others match
# exactly. The first matching row wins.
KINDS = (
    ("cifar10", "tfds"),
    ("cifar100", "tfds"),
    ("stl10", "tfds"),
    ("voc2007", "tfds"),
    ("tfds:<name>", "tfds"),
    ("folder:<path>", "folder"),
    ("synthetic", "synthetic"),
    ("synthetic:<num_classes>", "synthetic"),
    ("synthetic_multilabel:<num_classes>", "synthetic"),
    ("ucf101", "video"),
    ("hmdb51", "video"),
    ("video_folder:<path>", "video"),
    ("synthetic_video", "video"),
    ("synthetic_video:<num_classes>", "video"),
)
ALLOWED_DATASETS = tuple(form for form, _ in KINDS)


def kind_of(dataset: str) -> str | None:
    """The kind of source a `--dataset` value names.

    Args:
        dataset: the `--dataset` value, e.g. "cifar10", "folder:/data/images", "synthetic:5".

    Returns:
        The module name under `sskt_tf.data` of the first `KINDS` row that `dataset` matches
        ("tfds", "folder", "synthetic", "video"), or None when no row does.
    """
    for form, module in KINDS:
        prefix, placeholder, _ = form.partition("<")
        if dataset.startswith(prefix) if placeholder else dataset == form:
            return module
    return None


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The result of `load`: the streams of one dataset and what a run needs to know about them.

    Attributes:
        train: infinite, shuffled, batched (drop_remainder=True) and augmented stream of
            `(images float32 [B, H, W, 3] in 0..255, labels)`, i.e. `train_from(0)`. Labels are
            int32 `[B]`, float32 multi-hot `[B, num_classes]` when `multi_label`, or float32
            soft rows `[B, num_classes]` when batches are mixed (MixUp, CutMix). Video datasets
            (`is_video`): `(clips float32 [B, T, H, W, 3] in 0..255, labels int32 [B])`, one
            random clip per training video per pass.
        test: one pass over the test split, batched with the partial last batch kept,
            never augmented, same element types as `train` (labels never soft). Video
            datasets: centre-cropped clips at Hara et al.'s per-epoch validation starts
            (`video.eval_starts`: three per video, more for videos shorter than 2T or so).
        num_classes: number of classes.
        class_names: class names; the label is the index.
        image_size: `(H, W)` in pixels of every image in every stream.
        num_train: training examples actually used (after the validation hold-out, then
            `train_subset`, and without skipped bad files); videos for video datasets.
        num_test: test examples (video datasets: test videos).
        steps_per_epoch: `num_train // batch_size`.
        multi_label: labels are float32 multi-hot `[B, num_classes]` instead of int32 `[B]`
            (VOC, `synthetic_multilabel`); train with `--target_loss=bce`.
        validation: one un-augmented pass over the validation set, like `test`
            (batched with `eval_batch_size`), or None without one.
        num_validation: validation examples (0 without a validation set); video datasets: videos.
        validation_from: "validation_split" (held out of the training set), "val/" (the
            `val/` folder of a folder dataset), or None.
        bad_files: image files left out because they cannot be decoded
            (`skip_bad_images=True`, folder datasets), sorted.
        clip_length: frames per clip T of a video dataset; None for images.
        test_videos: video datasets: the final test, every non-overlapping clip of every test
            video with the video of each (`video.VideoClips`), for video accuracy; else None.
    """

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    num_train: int
    num_test: int
    steps_per_epoch: int
    multi_label: bool = False
    validation: tf.data.Dataset | None = None
    num_validation: int = 0
    validation_from: str | None = None
    bad_files: tuple[str, ...] = ()
    clip_length: int | None = None
    test_videos: video.VideoClips | None = None
    # How `train_from` and `train_ordered` build their streams.
    _train_stream: pipeline.TrainStream | video.ClipStream | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_video(self) -> bool:
        """Whether examples are clips `[T, H, W, 3]` (a video dataset) rather than images."""
        return self.clip_length is not None

    @property
    def content_key(self) -> str:
        """What the training files are: their paths with sizes and modification times (folders), the TFDS
        version (TFDS), the generator's seed (synthetic); see `pipeline.Split.key`. Video datasets: the
        video list's key (`VideoList.key`) and what selected the training videos (seed, validation
        share, subset)."""
        if self._train_stream is None:
            return ""
        return self._train_stream.key if self.is_video else self._train_stream.split.key

    def train_from(self, start_batch: int, extras: Sequence[np.ndarray] = (), replay=None) -> tf.data.Dataset:
        """`train` from its `start_batch`-th batch on: the stream a resumed run must see.

        Args:
            start_batch: index of the first batch (0: `train` itself).
            extras: arrays `[num_train, ...]` in the order of `train_ordered` (e.g. stored
                source logits), which follow their examples through the shuffle.
            replay: stored views and their logits (`sskt_tf.soft_labels.Replay`), which take the
                place of the random crop and flip and become the batch's extras.

        Returns:
            Batches as `train`; with `extras`, `({"images": images, "extras": (rows [B, ...],
            ...)}, labels)`.

        Raises:
            UserError: `extras` or `replay` with mixed batches (MixUp or CutMix), whose images no
                longer belong to one example; `replay` with RandAugment, whose operations it does
                not store; `extras` or `replay` with a video dataset.
            ValueError: an array of `extras` without one row per training example.
        """
        if self.is_video:
            if extras or replay is not None:
                raise UserError(_NO_SOFT_LABEL_CACHE)
            return self._train_stream.batches(start_batch)
        augmentation = self._train_stream.augmenter.augmentation
        if (extras or replay is not None) and augmentation.mixes:
            raise UserError(
                "stored source logits (--soft_label_cache) belong to single images and cannot follow "
                "--mixup/--cutmix; use --soft_label_cache=off."
            )
        if replay is not None and augmentation.kind == "randaugment":
            raise UserError("stored views (--soft_label_cache=replay) cannot follow --augment=randaugment; use --augment=standard.")
        return self._train_stream.batches(start_batch, extras, replay)

    def train_ordered(self, batch_size: int) -> tf.data.Dataset:
        """One un-augmented pass over the training examples in a fixed order (that of `extras`).

        Args:
            batch_size: examples per batch; the partial last batch is kept.

        Returns:
            `ceil(num_train / batch_size)` batches `(images float32 [B, H, W, 3] in 0..255, labels)`.

        Raises:
            UserError: a video dataset, whose training clips differ at every step (nothing to store).
        """
        if self.is_video:
            raise UserError(_NO_SOFT_LABEL_CACHE)
        return pipeline.eval_stream(self._train_stream.split, batch_size, "none")


_NO_SOFT_LABEL_CACHE = (
    "--soft_label_cache does not apply to video datasets (a training clip is drawn anew at every step, so "
    "there is no fixed view to store logits of); use --soft_label_cache=off."
)


def load(
    dataset: str,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    data_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    train_subset: int | None = None,
    augment: AugmentationConfig | str = "standard",
    cache: str = "auto",
    cache_dir: str | None = None,
    validation_split: float = 0.0,
    skip_bad_images: bool = False,
    deterministic: bool = False,
    clip_length: int = 16,
    video_split: int = 1,
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
              `folder.IMAGE_EXTENSIONS`), and optionally `<path>/val/<class>/*`, the
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
            Video datasets (clips of `clip_length` frames; `sskt_tf.data.video`):
            - `ucf101`, `hmdb51`: frame folders `<data_dir>/frames/<class>/<video>/image_00001.jpg`
              (written by `python -m sskt_tf.prepare_video`) and the official split lists under
              `data_dir` (`ucfTrainTestlist/`, `testTrainMulti_7030_splits/`); `video_split`
              chooses the split.
            - `video_folder:<path>`: `<path>/train/<class>/<video files>`, `<path>/test/...`
              (and optionally `val/`); their frames are extracted once into
              `$XDG_CACHE_HOME/sskt_tf/video_frames/` (default `~/.cache`).
            - `synthetic_video` or `synthetic_video:<num_classes>` (2 to 16, default 4): 96
              train and 32 test videos of 20 to 28 frames of 40x40 pixels generated from
              `seed`, held in memory, a class per direction of motion of a square over noise.
            Training clips: a random start (loop-padded when fewer than `clip_length` frames
            are left), a multi-scale corner crop and a flip, the same for every frame (Hara
            et al., CVPR 2018); `test` and `validation`: centre-cropped clips, three per
            video (`video.eval_starts`); `Datasets.test_videos`: every non-overlapping clip,
            for video accuracy.
        batch_size: training batch size; the partial batch at the end of an epoch is
            dropped.
        eval_batch_size: test and validation batch size (default `batch_size`); the
            partial last batch is kept.
        data_dir: TFDS data directory (default: TFDS's own, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`); the dataset's root for `ucf101` and `hmdb51`.
            Unused by folder and synthetic datasets.
        image_size: `(H, W)` to resize every image to (bilinear). Default: the CIFAR
            size, the most common size of the training images of a folder dataset,
            or 32x32 for synthetic data. Video datasets: the size every frame's square
            crop is resized to (bilinear with antialiasing); default 112x112, 32x32 for
            `synthetic_video`.
        seed: seeds the validation hold-out, the training subset, the shuffle order,
            the augmentation and the synthetic data.
        train_subset: if set, train on a fixed random subset of this many examples of
            the training part (after the validation hold-out).
        augment: an `sskt_tf.config.AugmentationConfig`, or one of its kinds: "none",
            "standard" (random crop of the 4-padded image and flip), "randaugment".
            With mixing (MixUp/CutMix), training labels are float32 soft rows
            `[B, num_classes]`. Video datasets: "standard" is the multi-scale corner crop
            and flip of the clip, "none" the evaluation's centre crop; RandAugment, MixUp
            and CutMix are refused.
        cache: where decoded images are kept between epochs, for every split:
            "memory" (after the first pass, about `examples * H * W * 3` bytes),
            "disk" (a `tf.data` cache file per split under `cache_dir`, written
            during the first pass; a partial file left by a killed process is
            removed and written again), "none" (decoded from the files, in
            parallel, every epoch; TFDS data is read from its records), or "auto":
            "memory" while the decoded splits (training, then validation, then test)
            fit in `pipeline.AUTO_CACHE_RAM_SHARE` of physical RAM, "none" for the rest
            (printed). The training batches are bit-identical whichever is used. Video
            datasets: "auto" or "none" (clips are decoded at every step).
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
            decoded (returned in `Datasets.bad_files`) instead of raising. Refused for
            video datasets.
        deterministic: run RandAugment one batch at a time, which makes its stream
            bit-reproducible (and resumable) at the cost of parallelism. The other
            augmentations (and video clips) are reproducible either way.
        clip_length: video datasets: frames per clip T (default 16, Hara et al.'s).
            Unused by image datasets.
        video_split: `ucf101`, `hmdb51`: which official train/test split, 1, 2 or 3.
            Unused by other datasets.

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

    kind = kind_of(dataset)
    if kind is None:
        raise UserError(
            f"--dataset={dataset!r} is not a known dataset; allowed: "
            f"{', '.join(ALLOWED_DATASETS)}. Pass one of these, e.g. --dataset=cifar10 "
            "or --dataset=folder:/path/to/images."
        )
    if kind == "video":
        return importlib.import_module("sskt_tf.data.video").load(
            dataset,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            data_dir=data_dir,
            image_size=image_size,
            seed=seed,
            train_subset=train_subset,
            augment=augment,
            cache=cache,
            validation_split=validation_split,
            skip_bad_images=skip_bad_images,
            clip_length=clip_length,
            video_split=video_split,
        )
    source = importlib.import_module(f"sskt_tf.data.{kind}").source(
        dataset, data_dir=data_dir, image_size=image_size, seed=seed, skip_bad_images=skip_bad_images
    )
    if len(source.class_names) < 2:
        # One softmax output is 1 whatever the image: accuracy 1.0 and loss 0 would mean nothing.
        raise UserError(
            f"--dataset={dataset} has {len(source.class_names)} class ({', '.join(source.class_names)}); a classifier "
            "needs at least 2: add a folder per class under train/ and test/."
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
        train_split, validation_split_data = pipeline.hold_out(
            dataset, train_split, validation_split, seed, source.class_names, source.multi_label
        )
        validation_from = "validation_split"
    if train_subset is not None:
        _check_train_subset(dataset, train_subset, train_split.size, batch_size)
        train_split = pipeline.subset(train_split, int(train_subset), seed)
    if batch_size > train_split.size:
        raise UserError(
            f"--batch_size={batch_size} is larger than the {train_split.size} training "
            f"examples of --dataset={dataset}; use --batch_size <= {train_split.size}."
        )

    if isinstance(augment, str):
        augment = AugmentationConfig(kind=augment)
    if not isinstance(augment, AugmentationConfig):
        raise UserError(f"augment must be an AugmentationConfig or one of {', '.join(AUGMENTS)}; got {augment!r}.")
    augmenter = augment_lib.BatchAugmenter(augment, len(source.class_names), source.multi_label)

    # Where each split's decoded images live; decided (and stale disk caches cleared) only
    # once everything above has been checked.
    parts = {"train": train_split, "validation": validation_split_data, "test": source.test}
    parts = {name: split for name, split in parts.items() if split is not None}
    modes = pipeline.cache_modes(cache, parts, dataset)
    selection = [seed, validation_split, train_subset]
    caches = {
        name: pipeline.disk_prefix(cache_dir, name, split, selection) if modes[name] == "disk" else modes[name]
        for name, split in parts.items()
    }
    for name, where in caches.items():
        if modes[name] == "disk":
            pipeline.clear_partial_cache(where)

    stream = pipeline.TrainStream(train_split, batch_size, seed, augmenter, caches["train"], deterministic)
    validation = None
    if validation_split_data is not None:
        validation = pipeline.eval_stream(validation_split_data, eval_batch_size, caches["validation"])
    return Datasets(
        train=stream.batches(0),
        test=pipeline.eval_stream(source.test, eval_batch_size, caches["test"]),
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
        _train_stream=stream,
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


def _check_cache(cache, cache_dir) -> str:
    if isinstance(cache, bool):  # The former API: True kept decoded images in memory.
        cache = "memory" if cache else "none"
    if cache not in pipeline.CACHE_MODES:
        raise UserError(f"--cache={cache!r} is not known; allowed: {', '.join(pipeline.CACHE_MODES)}; pass e.g. --cache=auto.")
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


def _check_train_subset(dataset: str, n, num_train: int, batch_size: int) -> None:
    if not _is_int(n) or n < 1:
        raise UserError(
            f"--train_subset must be a positive integer, got {n!r}; pass e.g. "
            "--train_subset=5000 or leave it unset."
        )
    n = int(n)
    if n > num_train:
        raise UserError(
            f"--train_subset={n} is larger than the {num_train} training examples of "
            f"--dataset={dataset}; use --train_subset <= {num_train} or leave it unset."
        )
    if n < batch_size:
        raise UserError(
            f"--train_subset={n} is smaller than --batch_size={batch_size}, so not one "
            f"training batch fits; use --train_subset >= {batch_size} or a smaller "
            "--batch_size."
        )
