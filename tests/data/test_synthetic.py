"""Tests of sskt_tf.data.synthetic: shapes, classes, determinism, learnability, multi-label."""

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import data
from sskt_tf.errors import UserError


def test_synthetic_shapes_and_classes(arrays):
    ds = data.load("synthetic", batch_size=64)
    assert (ds.num_train, ds.num_test, ds.num_classes, ds.steps_per_epoch) == (512, 128, 10, 8)
    assert ds.image_size == (32, 32) and len(ds.class_names) == 10
    x, y = arrays(ds.test)
    assert x.shape == (128, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.array_equal(np.bincount(y), np.full(10, 12.8).astype(int) + (np.arange(10) < 8))

    ds3 = data.load("synthetic:3", batch_size=16, image_size=(12, 20))
    x, y = arrays(ds3.test)
    assert ds3.num_classes == 3 and set(y) == {0, 1, 2}
    assert x.shape == (128, 12, 20, 3)
    assert next(iter(ds3.train))[0].shape == (16, 12, 20, 3)


def test_synthetic_deterministic_from_seed(arrays):
    a = data.load("synthetic", batch_size=32, seed=1)
    b = data.load("synthetic", batch_size=32, seed=1)
    c = data.load("synthetic", batch_size=32, seed=2)
    np.testing.assert_array_equal(arrays(a.test)[0], arrays(b.test)[0])
    assert not np.array_equal(arrays(a.test)[0], arrays(c.test)[0])
    # The augmented, shuffled training stream too (several epochs' worth of batches).
    ta, tb, tc = (arrays(d.train, 20) for d in (a, b, c))
    np.testing.assert_array_equal(ta[0], tb[0])
    np.testing.assert_array_equal(ta[1], tb[1])
    assert not np.array_equal(ta[0], tc[0])


def test_synthetic_is_learnable(arrays):
    ds = data.load("synthetic", batch_size=64, augment="none")
    x, y = arrays(ds.train, ds.steps_per_epoch)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    tx, ty = arrays(ds.test)
    distances = ((tx[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    accuracy = np.mean(distances.argmin(axis=1) == ty)
    assert accuracy > 0.9  # Chance is 0.1.


def test_synthetic_bad_class_count(user_error):
    for name in ("synthetic:1", "synthetic:abc", "synthetic:1000"):
        assert "synthetic:10" in user_error(lambda: data.load(name, batch_size=8))


def test_synthetic_multilabel_has_multi_hot_labels():
    ds = data.load("synthetic_multilabel:7", batch_size=16, eval_batch_size=32)
    assert ds.multi_label and ds.num_classes == 7
    images, labels = next(iter(ds.train))
    assert images.shape == (16, 32, 32, 3) and labels.shape == (16, 7) and labels.dtype == tf.float32
    test_labels = np.concatenate([y.numpy() for _, y in ds.test])
    assert test_labels.shape == (128, 7) and set(np.unique(test_labels)) == {0.0, 1.0}
    per_image = test_labels.sum(axis=1)
    assert per_image.min() == 1 and per_image.max() <= 3 and (per_image > 1).any()
    assert not data.load("synthetic:7", batch_size=16).multi_label
    with pytest.raises(UserError, match="synthetic_multilabel:10"):
        data.load("synthetic_multilabel:x", batch_size=16)
