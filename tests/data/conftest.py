"""Fixtures of the sskt_tf.data tests: a private folder-check cache, small image folders, and helpers
shared by the test modules (as factories, so that they need no import path)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf.errors import UserError


@pytest.fixture(autouse=True)
def _own_check_cache(monkeypatch, tmp_path_factory):
    """The folder-check cache of each test in a fresh directory (not ~/.cache, not inside a data folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


def _write_png(path, pixels):
    tf.io.write_file(path, tf.io.encode_png(pixels))


def _make_tree(root, train_counts=None, test_counts=None, size=(8, 8)):
    """Writes PNG images; returns {path: pixels} and the per-split {class: count}."""
    train_counts = train_counts or {"cat": 3, "ant": 2, "bee": 4}
    test_counts = test_counts or {"cat": 1, "ant": 2, "bee": 1}
    rng = np.random.default_rng(0)
    pixels = {}
    for split, counts in (("train", train_counts), ("test", test_counts)):
        for cls, n in counts.items():
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for i in range(n):
                p = os.path.join(root, split, cls, f"{i:03d}.png")
                pixels[p] = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                _write_png(p, pixels[p])
    return pixels


def _error(fn):
    with pytest.raises(UserError) as info:
        fn()
    return str(info.value)


def _arrays(ds, batches=None):
    source = ds if batches is None else ds.take(batches)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in source])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def write_png():
    """`write_png(path, pixels)`: writes uint8 `[H, W, C]` pixels as a PNG file."""
    return _write_png


@pytest.fixture
def make_tree():
    """`make_tree(root, train_counts=None, test_counts=None, size=(8, 8))`: a folder dataset of random
    PNGs under `root` (default 3 classes, 9 train and 4 test images); returns `{path: pixels}`."""
    return _make_tree


@pytest.fixture
def user_error():
    """`user_error(fn)`: the message of the `UserError` that `fn()` must raise."""
    return _error


@pytest.fixture
def arrays():
    """`arrays(ds, batches=None)`: `(images, labels)` numpy arrays of `ds` (its first `batches` batches)."""
    return _arrays
