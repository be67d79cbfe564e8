"""Synthetic sources (`--dataset=synthetic[:<num_classes>]`, `synthetic_multilabel:<num_classes>`).

Generated from `--seed`, offline, learnable in a few steps: for smoke runs and tests.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from sskt_tf.data import pipeline
from sskt_tf.errors import UserError

NUM_TRAIN = 512
NUM_TEST = 128
DEFAULT_CLASSES = 10
# The test split has 128 images with balanced labels; more classes than that would
# leave some classes without a single test image.
MAX_CLASSES = NUM_TEST


def source(
    dataset: str,
    *,
    data_dir: str | None,
    image_size: tuple[int, int] | None,
    seed: int,
    skip_bad_images: bool,
) -> pipeline.Source:
    """Offline data a model learns in a few steps: per-class colour and stripes, plus noise.

    `NUM_TRAIN` training and `NUM_TEST` test images with balanced labels. Each class has a
    colour and a stripe pattern of its own direction and frequency; each image is its class's
    template plus Gaussian noise (standard deviation 25 on the 0..255 scale). Multi-label images
    have one to three classes, drawn as the mean of their templates.

    Args:
        dataset: `synthetic` (`DEFAULT_CLASSES` classes), `synthetic:<num_classes>`, or
            `synthetic_multilabel:<num_classes>`, with 2 to `MAX_CLASSES` classes.
        data_dir: unused (TFDS only).
        image_size: `(H, W)` in pixels; None: 32x32.
        seed: seeds the templates, the labels and the noise: the same seed gives the same images.
        skip_bad_images: unused (every image is generated).

    Returns:
        A `pipeline.Source` whose splits hold uint8 `[H, W, 3]` images in memory, with int32
        labels, or float32 multi-hot `[num_classes]` for `synthetic_multilabel`.

    Raises:
        UserError: a number of classes that is not an integer from 2 to `MAX_CLASSES`.
    """
    del data_dir, skip_bad_images  # Every kind takes them; nothing is read from files.
    image_size = image_size or (32, 32)
    num_classes = DEFAULT_CLASSES
    multi_label = dataset.startswith("synthetic_multilabel:")
    if dataset != "synthetic":
        text = dataset.split(":", 1)[1]
        if not text.isdigit() or not 2 <= int(text) <= MAX_CLASSES:
            raise UserError(
                f"--dataset={dataset}: the number of classes must be an integer from 2 to "
                f"{MAX_CLASSES}, got {text!r}; pass e.g. --dataset={dataset.split(':')[0]}:10."
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

    def make(n: int) -> pipeline.Split:
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
        return pipeline.Split(
            elements=tf.data.Dataset.from_tensor_slices((images, labels)),
            size=n,
            decode=None,
            image_bytes=height * width * 3,
            labels=labels,
            key=json.dumps([dataset, seed, height, width, n]),
        )

    return pipeline.Source(
        train=make(NUM_TRAIN),
        test=make(NUM_TEST),
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
        image_size=(height, width),
        multi_label=multi_label,
    )
