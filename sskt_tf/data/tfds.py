"""TFDS sources: CIFAR-10/100, STL-10, VOC 2007 and any `tfds:<name>` image-classification set.

Offline, `tfds.load` retries for minutes before it fails; `source` probes the download host first
and fails in seconds with a `UserError` that names the archive to put in the manual directory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import socket

import numpy as np
import tensorflow as tf

from sskt_tf.data import pipeline
from sskt_tf.errors import UserError
from sskt_tf.serving import preprocessing


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    """A named TFDS dataset: which TFDS builder, which splits, and how labels are read."""

    tfds_name: str
    train_split: str = "train"
    test_split: str = "test"
    multi_label: bool = False
    # Variable-size images (VOC, many TFDS sets) need one size before batching.
    default_image_size: tuple[int, int] | None = None


NAMED = {
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
PREFIX = "tfds:"
# Size given to variable-size images of a `tfds:<name>` dataset without --image_size.
_DEFAULT_VARIABLE_IMAGE_SIZE = (224, 224)


def _network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host:port` succeeds within about `timeout` seconds.

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


def _spec(dataset: str) -> _TfdsSpec:
    if dataset in NAMED:
        return NAMED[dataset]
    name = dataset[len(PREFIX):]
    if not name:
        raise UserError(
            "--dataset=tfds: needs a TFDS dataset name after 'tfds:'; pass e.g. --dataset=tfds:oxford_flowers102."
        )
    return _TfdsSpec(name, default_image_size=_DEFAULT_VARIABLE_IMAGE_SIZE)


def _split_names(builder) -> list[str]:
    try:
        return list(builder.info.splits)
    except Exception:  # noqa: BLE001  (only for the message)
        return []


def source(
    dataset: str,
    *,
    data_dir: str | None,
    image_size: tuple[int, int] | None,
    seed: int,
    skip_bad_images: bool,
) -> pipeline.Source:
    """A TFDS image dataset, prepared (or downloaded) under `data_dir`.

    Uses `tensorflow_datasets` (https://www.tensorflow.org/datasets). Single-label sets need an
    `image` and a class `label` feature and `train`/`test` splits; `voc2007` is trained on
    `train+validation` and tested on `test`, with float32 multi-hot labels `[20]` of the objects
    not marked difficult (`labels_no_difficult`), as the reference code's `encode_labels`.

    Args:
        dataset: a name of `NAMED` (`cifar10`, `cifar100`, `stl10`, `voc2007`) or
            `tfds:<TFDS name>`.
        data_dir: TFDS data directory (`~` expanded); None: TFDS's default (`$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`). Offline, the archives TFDS would download, named as in
            their URLs, are read from `<data_dir>/downloads/manual/`.
        image_size: `(H, W)` in pixels to resize every image to (bilinear); None: the dataset's
            own size, or 224x224 for variable-size images.
        seed: unused (TFDS splits are fixed).
        skip_bad_images: unused (TFDS records decode).

    Returns:
        A `pipeline.Source` whose splits stream uint8 `[H, W, 3]` images from the TFDS records,
        with int32 labels (float32 multi-hot for `voc2007`).

    Raises:
        UserError: an unknown TFDS name, a dataset without an image and a class label or without
            the splits, an archive with the wrong checksum, or a dataset that is not prepared
            while its download host cannot be reached.
    """
    del seed, skip_bad_images  # Every kind takes them; TFDS data is fixed and decodes.
    import tensorflow_datasets as tfds  # Heavy import, needed on this path only.
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    spec = _spec(dataset)
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
        elif urls and not _network_available(urls[0].split("/")[2]):
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
            f"(it has {sorted(_split_names(builder))}); use a dataset with train and test splits, or --dataset=folder:<path>."
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

    def make_split(ds: tf.data.Dataset, split_name: str) -> pipeline.Split:
        n = int(ds.cardinality())
        if n < 0:
            n = int(info.splits[split_name].num_examples)
        ds = ds.map(to_pair, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
        decode = None if size == native_size else (lambda x, y: (preprocessing.resize_images(x, size), y))

        def labels():
            # One pass over the records without decoding images, in the order of `ds`.
            raw = tfds.load(
                name, split=split_name, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()}
            )
            pairs = raw.map(lambda example: to_pair(example)[1], num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
            return np.concatenate([batch for batch in pairs.batch(8192).as_numpy_iterator()])

        return pipeline.Split(
            elements=ds,
            size=n,
            decode=decode,
            image_bytes=size[0] * size[1] * 3,
            labels=labels,
            key=json.dumps(["tfds", name, str(info.version), split_name, data_dir, list(size)]),
        )

    return pipeline.Source(
        train=make_split(train, spec.train_split),
        test=make_split(test, spec.test_split),
        class_names=class_names,
        image_size=size,
        multi_label=spec.multi_label,
    )
