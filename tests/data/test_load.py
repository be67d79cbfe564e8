"""Tests of sskt_tf.data.load: argument checks, the --dataset table, and the `Datasets` streams."""

import importlib
import inspect

import numpy as np
import tensorflow as tf

from sskt_tf import data
from sskt_tf.config import is_video_dataset
from sskt_tf.data import tfds as data_tfds

# The module, not the function `sskt_tf.data.load` that the package exposes under the same name.
load_lib = importlib.import_module("sskt_tf.data.load")


def test_bad_arguments(user_error):
    message = user_error(lambda: data.load("imagenet", batch_size=8))
    for allowed in ("cifar10", "cifar100", "folder:", "synthetic"):
        assert allowed in message
    assert "imagenet" in message
    assert "--batch_size" in user_error(lambda: data.load("synthetic", batch_size=0))
    assert "--image_size" in user_error(lambda: data.load("synthetic", batch_size=8, image_size=(32,)))
    assert "--batch_size=1000" in user_error(lambda: data.load("synthetic", batch_size=1000))


def test_train_from_rebuilds_the_stream_at_any_position():
    """A resumed run must see the batches an uninterrupted run sees, across data epochs too."""
    tf.random.set_seed(5)  # As train.py does (keras.utils.set_random_seed): the global seed joins in.
    datasets = data.load("synthetic", batch_size=64, seed=3)  # 512 examples: 8 batches per epoch
    full = [(x.numpy(), y.numpy()) for x, y in datasets.train.take(14)]
    resumed = [(x.numpy(), y.numpy()) for x, y in datasets.train_from(6).take(8)]
    for (x1, y1), (x2, y2) in zip(full[6:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # Data epochs differ in order (labels of the first batches of epochs 0 and 1).
    assert not np.array_equal(full[0][1], full[8][1])


def test_extras_stay_with_their_examples():
    datasets = data.load("synthetic", batch_size=32, seed=0, augment="none")
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in datasets.train_ordered(100)])
    images, labels = np.concatenate(images), np.concatenate(labels)
    means = images.mean(axis=(1, 2, 3))
    stream = datasets.train_from(0, extras=(means, labels * 10))
    for x, y in stream.take(20):
        assert set(x) == {"images", "extras"}
        np.testing.assert_allclose(x["extras"][0].numpy(), x["images"].numpy().mean(axis=(1, 2, 3)), rtol=1e-5)
        np.testing.assert_array_equal(x["extras"][1].numpy(), y.numpy() * 10)


def test_every_dataset_form_goes_to_the_module_of_its_kind():
    expected = {
        "cifar10": "tfds", "cifar100": "tfds", "stl10": "tfds", "voc2007": "tfds",
        "tfds:oxford_flowers102": "tfds", "tfds:voc/2007": "tfds", "tfds:": "tfds",
        "folder:/data/images": "folder", "folder:/a:b": "folder", "folder:": "folder",
        "synthetic": "synthetic", "synthetic:3": "synthetic", "synthetic:": "synthetic",
        "synthetic_multilabel:4": "synthetic",
        "ucf101": "video", "hmdb51": "video", "video_folder:/data/clips": "video", "video_folder:": "video",
        "synthetic_video": "video", "synthetic_video:3": "video",
        # Not a form of the table: the error that lists ALLOWED_DATASETS.
        "synthetic_multilabel": None, "cifar10:x": None, "folder": None, "tfds": None, "imagenet": None, "": None,
        "ucf101:1": None, "video_folder": None, "synthetic_videos": None,
    }
    assert {name: load_lib.kind_of(name) for name in expected} == expected
    assert load_lib.ALLOWED_DATASETS == tuple(form for form, _ in load_lib.KINDS)
    # The exact TFDS names of the table are those the tfds module describes.
    assert {form for form, kind in load_lib.KINDS if kind == "tfds" and "<" not in form} == set(data_tfds.NAMED)
    # Every kind's module takes the arguments load passes.
    for kind in {kind for _, kind in load_lib.KINDS} - {"video"}:
        source = importlib.import_module(f"sskt_tf.data.{kind}").source
        assert list(inspect.signature(source).parameters) == ["dataset", "data_dir", "image_size", "seed", "skip_bad_images"]
    # Video kinds get every argument of load but those of image caches and RandAugment.
    video_load = inspect.signature(importlib.import_module("sskt_tf.data.video").load).parameters
    assert set(video_load) == set(inspect.signature(load_lib.load).parameters) - {"cache_dir", "deterministic"}
    # config.py's list of video forms is the table's.
    assert all(is_video_dataset(name) == (kind == "video") for name, kind in expected.items() if kind)
