"""Tests of sskt_tf.data.pipeline: the training stream, subsets, the validation hold-out, the caches."""

import os

import numpy as np
import pytest

from sskt_tf import data
from sskt_tf.data import pipeline


def _ids(images):
    return [im.tobytes() for im in images]


def test_train_epochs_cover_all_and_reshuffle(arrays):
    ds = data.load("synthetic", batch_size=64, augment="none")
    x, _ = arrays(ds.train, 2 * ds.steps_per_epoch)
    again, _ = arrays(data.load("synthetic", batch_size=64, augment="none").train,
                       ds.steps_per_epoch)
    epoch1, epoch2 = _ids(x[:512]), _ids(x[512:])
    assert len(set(epoch1)) == 512 and set(epoch1) == set(epoch2)
    assert epoch1 != epoch2  # Reshuffled each epoch.
    assert epoch1 == _ids(again)  # Same seed, same order.


def test_train_subset(user_error, arrays):
    full = data.load("synthetic", batch_size=8, augment="none")
    all_ids = set(_ids(arrays(full.train, full.steps_per_epoch)[0]))

    def subset_ids(seed):
        ds = data.load("synthetic", batch_size=8, augment="none", train_subset=40, seed=seed)
        assert (ds.num_train, ds.steps_per_epoch) == (40, 5)
        return set(_ids(arrays(ds.train, 5)[0]))

    a, b, c = subset_ids(0), subset_ids(0), subset_ids(1)
    assert len(a) == 40 and a <= all_ids
    assert a == b and a != c

    assert "--train_subset=513" in user_error(
        lambda: data.load("synthetic", batch_size=8, train_subset=513))
    assert "--train_subset=4" in user_error(
        lambda: data.load("synthetic", batch_size=8, train_subset=4))


def test_validation_split_is_stratified_seeded_and_disjoint(arrays):
    ds = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4)
    full = data.load("synthetic", batch_size=8, augment="none", seed=4)  # The same images (they come from the seed).
    full_x, full_y = arrays(full.train_ordered(128))
    # Independent count: synthetic labels are arange(512) % 10 permuted, so classes have 52, 52, 51 x 8.
    sizes = np.bincount(full_y, minlength=10)
    expected = np.floor(0.1 * sizes + 0.5).astype(int)
    vx, vy = arrays(ds.validation)
    tx, ty = arrays(ds.train_ordered(128))
    assert (ds.validation_from, ds.num_validation, ds.num_train) == ("validation_split", expected.sum(), 512 - expected.sum())
    assert ds.steps_per_epoch == ds.num_train // 8
    np.testing.assert_array_equal(np.bincount(vy, minlength=10), expected)
    np.testing.assert_array_equal(np.bincount(ty, minlength=10), sizes - expected)
    # Together exactly the training set, no image in both.
    assert sorted(_ids(vx) + _ids(tx)) == sorted(_ids(full_x))
    assert not set(_ids(vx)) & set(_ids(tx))
    # The training stream never shows a validation image.
    assert not set(_ids(arrays(ds.train, 2 * ds.steps_per_epoch)[0])) & set(_ids(vx))
    # Seeded: the same seed holds out the same images (another seed: see the folder test).
    again = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4)
    assert _ids(arrays(again.validation)[0]) == _ids(vx)
    # train_subset is drawn from the training part.
    sub = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4, train_subset=100)
    assert (sub.num_train, sub.num_validation) == (100, expected.sum())
    assert set(_ids(arrays(sub.train_ordered(50))[0])) <= set(_ids(tx))
    assert full.validation is None and full.num_validation == 0 and full.validation_from is None


def test_validation_split_folder_small_classes_and_errors(tmp_path, user_error, make_tree, arrays):
    make_tree(str(tmp_path), train_counts={"a": 10, "b": 3, "c": 1}, test_counts={"a": 1, "b": 1, "c": 1})
    ds = data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.2)
    # a: round(2.0) = 2; b: round(0.6) = 1; c: a single image stays for training.
    labels = arrays(ds.validation)[1]
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [2, 1, 0])
    assert (ds.num_validation, ds.num_train) == (3, 11)
    held = lambda seed: _ids(arrays(  # noqa: E731
        data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.2, seed=seed).validation)[0])
    assert held(0) == _ids(arrays(ds.validation)[0]) and held(1) != held(0)

    message = user_error(lambda: data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.5))
    assert "--validation_split=0.5" in message and "'c'" in message  # c's only image would be held out.
    for bad in (1.0, -0.1, float("nan"), "0.1"):
        assert "--validation_split" in user_error(lambda: data.load("synthetic", batch_size=8, validation_split=bad))

    singles = tmp_path / "singles"
    make_tree(str(singles), train_counts={"a": 1, "b": 1}, test_counts={"a": 1, "b": 1})
    assert "empty" in user_error(lambda: data.load(f"folder:{singles}", batch_size=1, validation_split=0.3))


def test_validation_split_multi_label(arrays):
    ds = data.load("synthetic_multilabel:5", batch_size=16, validation_split=0.25)
    assert (ds.num_validation, ds.num_train) == (128, 384)
    assert arrays(ds.validation)[1].shape == (128, 5)


def _stream(ds, batches, start=0):
    return [(x.numpy(), y.numpy()) for x, y in ds.train_from(start).take(batches)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("dataset", ["folder", "synthetic"])
def test_cache_modes_give_identical_batches(tmp_path, dataset, monkeypatch, make_tree, arrays):
    if dataset == "folder":
        make_tree(str(tmp_path / "d"), train_counts={"a": 7, "b": 6, "c": 4}, test_counts={"a": 2, "b": 1, "c": 2})
        name, batch = f"folder:{tmp_path / 'd'}", 4  # 17 examples: 4 batches per epoch.
    else:
        name, batch = "synthetic:4", 100  # 512 examples: 5 batches per epoch.
    size = (8, 8) if dataset == "synthetic" else None
    # A shuffle buffer smaller than the split, so its size matters.
    monkeypatch.setattr(pipeline, "_SHUFFLE_BUFFER_BYTES", 0)
    monkeypatch.setattr(pipeline, "_MIN_SHUFFLE_BUFFER", 5)
    load = lambda cache, **kw: data.load(name, batch_size=batch, seed=3, cache=cache, image_size=size, **kw)  # noqa: E731
    cache_dir = tmp_path / "cache"
    memory = load("memory")
    reference = _stream(memory, 11)  # Two epoch boundaries and more.
    disk = load("disk", cache_dir=str(cache_dir))
    assert not cache_dir.exists()  # load writes nothing; the first pass creates it.
    for other in (load("none"), disk, load("disk", cache_dir=str(cache_dir))):  # Writing, then reading the file.
        _assert_same(_stream(other, 11), reference)
        _assert_same(_stream(other, 5, start=6), reference[6:])  # Resumed mid-stream.
        _assert_same([arrays(other.test)], [arrays(memory.test)])
    assert list(cache_dir.glob("train-*.index")) and list(cache_dir.glob("test-*.index"))

    # A run killed while writing the cache leaves a lock file; the next load clears it.
    for f in cache_dir.iterdir():
        if f.name.startswith("train-"):
            f.unlink()
    _stream(load("disk", cache_dir=str(cache_dir)), 11)  # Written again, from scratch.
    index = next(cache_dir.glob("train-*.index"))
    prefix = str(index)[: -len(".index")]
    for f in cache_dir.glob("train-*"):
        f.unlink()
    open(f"{prefix}_0.lockfile", "w").write("Created by a process that was killed")
    open(f"{prefix}_0.data-00000-of-00001.tempstate123", "w").write("partial")
    _assert_same(_stream(load("disk", cache_dir=str(cache_dir)), 11), reference)
    assert os.path.exists(f"{prefix}.index") and not os.path.exists(f"{prefix}_0.lockfile")


def test_cache_auto_and_errors(tmp_path, monkeypatch, capsys, user_error):
    monkeypatch.setattr(pipeline, "_physical_memory", lambda: 4 * 512 * 32 * 32 * 3)  # 25%: just the training set.
    data.load("synthetic", batch_size=8, cache="auto")
    out = capsys.readouterr().out
    assert "--cache=auto" in out and "decoded test images" in out and "decoded train images" not in out
    assert "--cache=disk needs a directory" in user_error(lambda: data.load("synthetic", batch_size=8, cache="disk"))
    assert "--cache='ram'" in user_error(lambda: data.load("synthetic", batch_size=8, cache="ram"))
