"""Tests for sskt_tf.data: folder/synthetic/TFDS sources, the training stream, fail-fast offline."""

import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sskt_tf import data
from sskt_tf.errors import UserError


@pytest.fixture(autouse=True)
def _own_check_cache(monkeypatch, tmp_path_factory):
    """The folder-check cache of each test in a fresh directory (not ~/.cache, not inside a data folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


# ------------------------------------------------------------------------ folders


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


def _label_of(path, class_names):
    return class_names.index(os.path.basename(os.path.dirname(path)))


def _match(image, pixels):
    hits = [p for p, px in pixels.items() if np.array_equal(px.astype(np.float32), image)]
    assert len(hits) == 1, "image must equal exactly one file"
    return hits[0]


def test_folder_dataset_contents(tmp_path):
    pixels = _make_tree(str(tmp_path))
    # Non-image files and hidden folders are ignored.
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "test" / ".ipynb_checkpoints")
    ds = data.load(f"folder:{tmp_path}", batch_size=2, augment="none")
    assert ds.class_names == ("ant", "bee", "cat")
    assert ds.num_classes == 3
    assert (ds.num_train, ds.num_test, ds.steps_per_epoch) == (9, 4, 4)
    assert ds.image_size == (8, 8)

    test_seen = []
    for images, labels in ds.test:
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        for image, label in zip(images.numpy(), labels.numpy()):
            path = _match(image, pixels)
            assert "/test/" in path
            assert label == _label_of(path, ds.class_names)
            test_seen.append(path)
    assert len(test_seen) == 4 and len(set(test_seen)) == 4

    # One epoch (4 batches of 2 out of 9): distinct training files with their labels.
    train_seen = []
    for images, labels in ds.train.take(4):
        assert images.shape == (2, 8, 8, 3)
        for image, label in zip(images.numpy(), labels.numpy()):
            path = _match(image, pixels)
            assert "/train/" in path
            assert label == _label_of(path, ds.class_names)
            train_seen.append(path)
    assert len(set(train_seen)) == 8


def test_folder_dataset_augmented_train_batch(tmp_path):
    _make_tree(str(tmp_path))
    ds = data.load(f"folder:{tmp_path}", batch_size=2, eval_batch_size=3)
    images, labels = next(iter(ds.train))
    assert images.shape == (2, 8, 8, 3) and images.dtype == tf.float32
    assert labels.shape == (2,) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert [int(b[0].shape[0]) for b in ds.test] == [3, 1]


def test_folder_dataset_reads_jpeg_and_resizes(tmp_path):
    pixels = _make_tree(str(tmp_path))
    jpeg_path = str(tmp_path / "test" / "ant" / "x.jpg")
    tf.io.write_file(jpeg_path, tf.io.encode_jpeg(np.full((8, 8, 3), 120, np.uint8)))
    ds = data.load(f"folder:{tmp_path}", batch_size=2, image_size=(4, 6))
    assert ds.image_size == (4, 6) and ds.num_test == 5
    images = np.concatenate([b[0].numpy() for b in ds.test])
    assert images.shape == (5, 4, 6, 3)
    assert next(iter(ds.train))[0].shape == (2, 4, 6, 3)
    # Test order is class then file name: ant/000.png is first.
    first = pixels[str(tmp_path / "test" / "ant" / "000.png")]
    expected = np.round(tf.image.resize(first, (4, 6), method="bilinear").numpy())
    np.testing.assert_array_equal(images[0], np.clip(expected, 0, 255))
    # JPEG of a flat colour stays (nearly) flat after decoding and resizing.
    assert np.abs(images[2] - 120).max() <= 3


def test_folder_dataset_size_of_the_images(tmp_path, capsys):
    _make_tree(str(tmp_path), size=(6, 10))
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert ds.image_size == (6, 10)
    assert next(iter(ds.test))[0].shape[1:] == (6, 10, 3)
    assert "sizes" not in capsys.readouterr().out  # One size: nothing to say.


def _error(fn):
    with pytest.raises(UserError) as info:
        fn()
    return str(info.value)


def test_folder_dataset_errors(tmp_path):
    missing = tmp_path / "nope"
    assert f"{missing} does not exist" in _error(lambda: data.load(f"folder:{missing}", batch_size=2))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert f"{a_file} is a file, not a directory" in _error(lambda: data.load(f"folder:{a_file}", batch_size=2))

    root = tmp_path / "d"
    _make_tree(str(root))
    load = lambda: data.load(f"folder:{root}", batch_size=2)  # noqa: E731

    os.rename(root / "test", tmp_path / "test_saved")
    assert str(root / "test") in _error(load)
    os.rename(tmp_path / "test_saved", root / "test")

    os.makedirs(root / "test" / "dog")
    message = _error(load)
    assert str(root / "test") in message and "dog" in message
    os.makedirs(root / "train" / "dog")
    (root / "train" / "dog" / "readme.txt").write_text("no images here")
    assert str(root / "train" / "dog") in _error(load)
    os.remove(root / "train" / "dog" / "readme.txt")
    os.rmdir(root / "train" / "dog")
    os.rmdir(root / "test" / "dog")

    bad = root / "train" / "bee" / "broken.jpg"
    bad.write_bytes(b"<html>404</html>")
    assert str(bad) in _error(load)
    bad.write_bytes(b"")
    assert str(bad) in _error(load)
    os.remove(bad)
    data.load(f"folder:{root}", batch_size=2)  # Back to a valid tree.

    assert "--batch_size=10" in _error(lambda: data.load(f"folder:{root}", batch_size=10))

    empty = tmp_path / "empty"
    os.makedirs(empty / "train")
    os.makedirs(empty / "test")
    assert str(empty / "train") in _error(lambda: data.load(f"folder:{empty}", batch_size=2))
    os.rmdir(empty / "train")
    assert str(empty / "train") in _error(lambda: data.load(f"folder:{empty}", batch_size=2))


# ---------------------------------------------------------------------- synthetic


def _arrays(ds, batches=None):
    source = ds if batches is None else ds.take(batches)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in source])
    return np.concatenate(xs), np.concatenate(ys)


def test_synthetic_shapes_and_classes():
    ds = data.load("synthetic", batch_size=64)
    assert (ds.num_train, ds.num_test, ds.num_classes, ds.steps_per_epoch) == (512, 128, 10, 8)
    assert ds.image_size == (32, 32) and len(ds.class_names) == 10
    x, y = _arrays(ds.test)
    assert x.shape == (128, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.array_equal(np.bincount(y), np.full(10, 12.8).astype(int) + (np.arange(10) < 8))

    ds3 = data.load("synthetic:3", batch_size=16, image_size=(12, 20))
    x, y = _arrays(ds3.test)
    assert ds3.num_classes == 3 and set(y) == {0, 1, 2}
    assert x.shape == (128, 12, 20, 3)
    assert next(iter(ds3.train))[0].shape == (16, 12, 20, 3)


def test_synthetic_deterministic_from_seed():
    a = data.load("synthetic", batch_size=32, seed=1)
    b = data.load("synthetic", batch_size=32, seed=1)
    c = data.load("synthetic", batch_size=32, seed=2)
    np.testing.assert_array_equal(_arrays(a.test)[0], _arrays(b.test)[0])
    assert not np.array_equal(_arrays(a.test)[0], _arrays(c.test)[0])
    # The augmented, shuffled training stream too (several epochs' worth of batches).
    ta, tb, tc = (_arrays(d.train, 20) for d in (a, b, c))
    np.testing.assert_array_equal(ta[0], tb[0])
    np.testing.assert_array_equal(ta[1], tb[1])
    assert not np.array_equal(ta[0], tc[0])


def test_synthetic_is_learnable():
    ds = data.load("synthetic", batch_size=64, augment="none")
    x, y = _arrays(ds.train, ds.steps_per_epoch)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    tx, ty = _arrays(ds.test)
    distances = ((tx[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    accuracy = np.mean(distances.argmin(axis=1) == ty)
    assert accuracy > 0.9  # Chance is 0.1.


def test_synthetic_bad_class_count():
    for name in ("synthetic:1", "synthetic:abc", "synthetic:1000"):
        assert "synthetic:10" in _error(lambda: data.load(name, batch_size=8))


# ------------------------------------------------------------ training stream shape


def _ids(images):
    return [im.tobytes() for im in images]


def test_train_epochs_cover_all_and_reshuffle():
    ds = data.load("synthetic", batch_size=64, augment="none")
    x, _ = _arrays(ds.train, 2 * ds.steps_per_epoch)
    again, _ = _arrays(data.load("synthetic", batch_size=64, augment="none").train,
                       ds.steps_per_epoch)
    epoch1, epoch2 = _ids(x[:512]), _ids(x[512:])
    assert len(set(epoch1)) == 512 and set(epoch1) == set(epoch2)
    assert epoch1 != epoch2  # Reshuffled each epoch.
    assert epoch1 == _ids(again)  # Same seed, same order.


def test_train_subset():
    full = data.load("synthetic", batch_size=8, augment="none")
    all_ids = set(_ids(_arrays(full.train, full.steps_per_epoch)[0]))

    def subset_ids(seed):
        ds = data.load("synthetic", batch_size=8, augment="none", train_subset=40, seed=seed)
        assert (ds.num_train, ds.steps_per_epoch) == (40, 5)
        return set(_ids(_arrays(ds.train, 5)[0]))

    a, b, c = subset_ids(0), subset_ids(0), subset_ids(1)
    assert len(a) == 40 and a <= all_ids
    assert a == b and a != c

    assert "--train_subset=513" in _error(
        lambda: data.load("synthetic", batch_size=8, train_subset=513))
    assert "--train_subset=4" in _error(
        lambda: data.load("synthetic", batch_size=8, train_subset=4))


def test_bad_arguments():
    message = _error(lambda: data.load("imagenet", batch_size=8))
    for allowed in ("cifar10", "cifar100", "folder:", "synthetic"):
        assert allowed in message
    assert "imagenet" in message
    assert "--batch_size" in _error(lambda: data.load("synthetic", batch_size=0))
    assert "--image_size" in _error(lambda: data.load("synthetic", batch_size=8, image_size=(32,)))
    assert "--batch_size=1000" in _error(lambda: data.load("synthetic", batch_size=1000))


# --------------------------------------------------------------------------- TFDS


def test_network_available_on_local_ports():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    open_port = server.getsockname()[1]
    try:
        assert data.network_available("127.0.0.1", port=open_port, timeout=1)
    finally:
        server.close()
    # Just closed, so nothing listens there any more.
    assert not data.network_available("127.0.0.1", port=open_port, timeout=1)


def test_cifar_offline_fails_fast(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data, "network_available", lambda host, **kw: probed.append(host) or False)
    # Failing fast means never reaching TFDS's download, which retries for minutes offline.
    def no_download(*args, **kwargs):
        raise AssertionError("TFDS was asked to download")

    monkeypatch.setattr(tfds, "load", no_download)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    message = _error(lambda: data.load("cifar10", batch_size=8, data_dir=str(tmp_path)))
    assert probed == ["www.cs.toronto.edu"]
    parts = ("--data_dir", "downloads/manual", "folder:", str(tmp_path), "cifar-10-binary.tar.gz")
    for part in parts:
        assert part in message


def test_cifar_through_mocked_tfds(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data, "network_available", lambda host, **kw: probed.append(host) or True)
    with tfds.testing.mock_data(num_examples=20):
        ds = data.load("cifar10", batch_size=8, eval_batch_size=6, data_dir=str(tmp_path))
        names = tuple(tfds.builder("cifar10").info.features["label"].names)
    # The mock reports the data as not prepared, so the probe ran and allowed TFDS.
    assert probed == ["www.cs.toronto.edu"]
    assert ds.num_classes == 10 and ds.class_names == names and len(names) == 10
    assert (ds.num_train, ds.num_test, ds.steps_per_epoch, ds.image_size) == (20, 20, 2, (32, 32))
    images, labels = next(iter(ds.train))
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32 and all(0 <= int(v) < 10 for v in labels)
    assert [int(b[0].shape[0]) for b in ds.test] == [6, 6, 6, 2]


def test_cifar_uses_manual_archive_without_probing(tmp_path, monkeypatch):
    manual = tmp_path / "downloads" / "manual"
    os.makedirs(manual)
    (manual / "cifar-100-binary.tar.gz").write_bytes(b"stand-in; the mock never reads it")

    def no_probe(*args, **kwargs):
        raise AssertionError("the network must not be probed when the archive is there")

    monkeypatch.setattr(data, "network_available", no_probe)
    calls = []
    real_load = tfds.load
    monkeypatch.setattr(tfds, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("cifar100", batch_size=4, data_dir=str(tmp_path), image_size=(16, 16))
    assert ds.num_classes == 100 and ds.image_size == (16, 16)
    config = calls[0]["download_and_prepare_kwargs"]["download_config"]
    assert os.path.samefile(config.manual_dir, manual)
    assert next(iter(ds.train))[0].shape == (4, 16, 16, 3)


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


def test_stl10_through_mocked_tfds(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data, "network_available", lambda host, **kw: probed.append(host) or True)
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("stl10", batch_size=4, eval_batch_size=5, data_dir=str(tmp_path))
    assert probed == ["ai.stanford.edu"]
    assert ds.num_classes == 10 and not ds.multi_label and len(ds.class_names) == 10
    assert (ds.num_train, ds.num_test, ds.image_size) == (12, 12, (96, 96))
    images, labels = next(iter(ds.train))
    assert images.shape == (4, 96, 96, 3) and labels.dtype == tf.int32
    assert [int(b[0].shape[0]) for b in ds.test] == [5, 5, 2]


def test_voc2007_multi_hot_labels_exclude_difficult_objects(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda host, **kw: True)
    with tfds.testing.mock_data(num_examples=9):
        ds = data.load("voc2007", batch_size=4, eval_batch_size=4, data_dir=str(tmp_path), image_size=(40, 48))
        raw = list(tfds.load("voc/2007", split="test", data_dir=str(tmp_path)).as_numpy_iterator())
    assert ds.multi_label and ds.num_classes == 20 and ds.class_names[:2] == ("aeroplane", "bicycle")
    assert ds.image_size == (40, 48)  # Mock images vary in size: resized before batching.
    images, labels = next(iter(ds.train))
    assert images.shape == (4, 40, 48, 3) and labels.shape == (4, 20) and labels.dtype == tf.float32
    got = np.concatenate([y.numpy() for _, y in ds.test])
    expected = np.zeros((len(raw), 20), np.float32)
    for i, example in enumerate(raw):
        expected[i, example["labels_no_difficult"]] = 1.0
    assert got.shape == (9, 20)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, np.zeros_like(got))


def test_voc2007_default_size_is_224(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda host, **kw: True)
    with tfds.testing.mock_data(num_examples=4):
        ds = data.load("voc2007", batch_size=2, data_dir=str(tmp_path))
    assert ds.image_size == (224, 224) and next(iter(ds.test))[0].shape == (2, 224, 224, 3)


def test_generic_tfds_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda host, **kw: True)
    with tfds.testing.mock_data(num_examples=8):
        ds = data.load("tfds:oxford_flowers102", batch_size=4, data_dir=str(tmp_path), image_size=(32, 32))
    assert ds.num_classes == 102 and not ds.multi_label
    images, labels = next(iter(ds.train))
    assert images.shape == (4, 32, 32, 3) and labels.dtype == tf.int32


def test_generic_tfds_errors_name_the_features_and_the_dataset(tmp_path):
    with pytest.raises(UserError, match=r"needs an 'image' feature and a class 'label' feature.*'labels_no_difficult'"):
        data.load("tfds:voc/2007", batch_size=4, data_dir=str(tmp_path))
    with pytest.raises(UserError, match="TFDS has no dataset 'no_such_set'"):
        data.load("tfds:no_such_set", batch_size=4, data_dir=str(tmp_path))
    with pytest.raises(UserError, match="needs a TFDS dataset name"):
        data.load("tfds:", batch_size=4, data_dir=str(tmp_path))


def test_stl10_offline_fails_fast_naming_the_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda host, **kw: False)
    with pytest.raises(UserError, match=r"stl10 is not prepared.*stl10_binary\.tar\.gz.*downloads/manual"):
        data.load("stl10", batch_size=4, data_dir=str(tmp_path))


# ------------------------------------------- folders: formats, bad files, sizes, check cache

# An 8x8 lossless WebP of the flat colour (10, 200, 30), written once with Pillow (TensorFlow
# decodes WebP but cannot encode it).
_WEBP_10_200_30 = (
    b"RIFF\x1e\x00\x00\x00WEBPVP8L\x11\x00\x00\x00/\x07\xc0\x01\x00\x07P\xe4*\xd4\xa3\xff\x81\x88\xe8\x7f\x00\x00"
)
# An 8x8 animated GIF: a frame of grey 50, then one of grey 150 (Pillow, once).
_GIF_50_THEN_150 = (
    b"GIF87a\x08\x00\x08\x00\x81\x00\x00222\x00\x00\x00\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x08"
    b"\x00\x08\x00\x00\x08\x0f\x00\x01\x08\x1cH\xb0\xa0\xc1\x83\x08\x13*L\x18\x10\x00!\xf9\x04\x01\x00\x00"
    b"\x01\x00,\x00\x00\x00\x00\x08\x00\x08\x00\x81\x96\x96\x96\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08"
    b"\x0f\x00\x01\x08\x1cH\xb0\xa0\xc1\x83\x08\x13*L\x18\x10\x00;"
)


def _messy_tree(root):
    """A folder as users bring them: every format, odd files, three bad images, one thumbnail.

    Returns (bad files, number of good train files, number of good test files).
    """
    rng = np.random.default_rng(1)
    rgb = lambda h=8, w=8: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # noqa: E731
    for d in ("train/cat/extra", "train/dog", "test/cat", "test/dog"):
        os.makedirs(os.path.join(root, d))
    put = lambda rel, content: open(os.path.join(root, rel), "wb").write(content)  # noqa: E731
    png = lambda px: tf.io.encode_png(px).numpy()  # noqa: E731
    good_png = png(rgb())
    put("train/cat/000.png", good_png)
    put("train/cat/001.webp", _WEBP_10_200_30)
    put("train/cat/002.gif", _GIF_50_THEN_150)
    put("train/cat/003.jpg", png(rgb()))  # PNG data under a .jpg name: TensorFlow goes by the content.
    put("train/cat/004.PNG", png(rgb()[..., :1]))  # Grayscale, upper-case extension.
    put("train/cat/005.png", png(np.concatenate([rgb(), rgb()[..., :1]], axis=-1)))  # RGBA.
    put("train/cat/006.bmp", tf.io.encode_png(rgb()).numpy())  # Any content TF decodes is fine.
    put("train/dog/000_thumb.png", png(rgb(4, 4)))  # Sorts first; must not set the size.
    put("train/dog/001.png", png(rgb()))
    put("train/dog/002.jpeg", tf.io.encode_jpeg(rgb()).numpy())
    jpeg = tf.io.encode_jpeg(rgb()).numpy()
    put("train/dog/003.jpg", jpeg[:4] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())  # Garbage after the magic.
    put("train/dog/004.png", good_png[: len(good_png) // 2])  # Truncated.
    put("test/cat/000.png", png(rgb()))
    put("test/dog/000.png", png(rgb()))
    put("test/dog/001.png", b"")  # Empty.
    # Not used: reported, never read.
    put("train/cat/notes.txt", b"x")
    put("test/cat/labels.TXT", b"x")
    put("train/dog/.DS_Store", b"x")
    put("train/cat/extra/more.png", png(rgb()))
    put("train/README.md", b"x")
    put("train/dog/._001.png", b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: hidden, so not read.
    bad = sorted(os.path.join(root, p) for p in ("train/dog/003.jpg", "train/dog/004.png", "test/dog/001.png"))
    return bad, 10, 2


def test_folder_formats_unused_files_bad_files_and_sizes(tmp_path, capsys):
    root = str(tmp_path)
    bad, num_train, num_test = _messy_tree(root)

    message = _error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert f"3 of {num_train + 2 + num_test + 1} image files cannot be decoded" in message
    for path in bad:
        assert path in message
    assert "empty file" in message and "--skip_bad_images" in message and "\n" not in message
    assert "name:" not in message and "[Op:" not in message  # TensorFlow's wrapping is stripped.
    out = capsys.readouterr().out
    report = [line for line in out.splitlines() if "not used" in line]
    assert len(report) == 1
    # 6 files: 2 .txt, and one each of .md, .png (sub-folder), no extension (.DS_Store), .png (._001.png).
    assert "6 files are not used (.png: 2, .txt: 2, .md: 1, no extension: 1;" in report[0]
    assert "2 hidden" in report[0] and "1 in a sub-folder of a class folder" in report[0]
    assert "1 outside the class folders" in report[0] and "2 not an image extension" in report[0]

    ds = data.load(f"folder:{root}", batch_size=2, skip_bad_images=True, augment="none")
    assert ds.bad_files == tuple(bad)
    assert (ds.num_train, ds.num_test) == (num_train, num_test)
    # The most common size, not the thumbnail's that sorts first; said in one line.
    assert ds.image_size == (8, 8)
    out = capsys.readouterr().out
    assert f"2 sizes (8x8: {num_train - 1} files, 4x4: 1 file); training at 8x8" in out
    assert "leaving out 3 image files" in out
    images = np.concatenate([x.numpy() for x, _ in ds.train_ordered(64)])
    assert images.shape == (num_train, 8, 8, 3)
    flat = lambda colour: any((im == np.array(colour, np.float32)).all() for im in images)  # noqa: E731
    assert flat((10, 200, 30))  # The WebP, exactly (lossless).
    assert flat((50, 50, 50))  # The animated GIF's first frame.
    assert not flat((150, 150, 150))

    assert data.load(f"folder:{root}", batch_size=2, skip_bad_images=True, image_size=(4, 4)).image_size == (4, 4)
    assert "sizes" not in capsys.readouterr().out  # --image_size chosen: nothing to say.


def test_folder_check_is_cached(tmp_path, monkeypatch):
    root = tmp_path / "d"
    _make_tree(str(root))
    real = data._decode_all
    calls = []
    monkeypatch.setattr(data, "_decode_all", lambda paths, flag: calls.append(list(paths)) or real(paths, flag))
    data.load(f"folder:{root}", batch_size=2)
    assert len(calls) == 1 and len(calls[0]) == 13  # 9 train + 4 test files, decoded once.
    cache_files = list((tmp_path.parent / os.environ["XDG_CACHE_HOME"]).glob("sskt_tf/folder_checks/*.json"))
    assert len(cache_files) == 1

    data.load(f"folder:{root}", batch_size=2)
    assert len(calls) == 1  # Nothing decoded again.

    # A file that changes (size and time) is checked again, alone; so is a new one.
    changed = root / "train" / "cat" / "000.png"
    changed.write_bytes(changed.read_bytes()[:20])
    _write_png(str(root / "test" / "bee" / "new.png"), np.zeros((8, 8, 3), np.uint8))
    message = _error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert str(changed) in message and "1 of 14" in message
    assert sorted(calls[1]) == sorted([str(changed), str(root / "test" / "bee" / "new.png")])
    # A bad file stays bad from the cache too, with its reason.
    assert str(changed) in _error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert len(calls) == 2


def test_folder_check_cache_in_unwritable_place_still_loads(tmp_path, monkeypatch, capsys):
    _make_tree(str(tmp_path / "d"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    ds = data.load(f"folder:{tmp_path / 'd'}", batch_size=2)
    assert ds.num_train == 9
    assert "could not store the image check" in capsys.readouterr().out


def test_folder_size_ties_go_to_the_larger(tmp_path, capsys):
    _make_tree(str(tmp_path), train_counts={"a": 2}, test_counts={"a": 1}, size=(6, 6))
    for i in range(2):
        _write_png(str(tmp_path / "train" / "a" / f"big{i}.png"), np.zeros((9, 7, 3), np.uint8))
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert ds.image_size == (9, 7)
    assert "2 sizes (9x7: 2 files, 6x6: 2 files); training at 9x7" in capsys.readouterr().out


# ------------------------------------------------------------------------- validation


def test_validation_split_is_stratified_seeded_and_disjoint():
    ds = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4)
    full = data.load("synthetic", batch_size=8, augment="none", seed=4)  # The same images (they come from the seed).
    full_x, full_y = _arrays(full.train_ordered(128))
    # Independent count: synthetic labels are arange(512) % 10 permuted, so classes have 52, 52, 51 x 8.
    sizes = np.bincount(full_y, minlength=10)
    expected = np.floor(0.1 * sizes + 0.5).astype(int)
    vx, vy = _arrays(ds.validation)
    tx, ty = _arrays(ds.train_ordered(128))
    assert (ds.validation_from, ds.num_validation, ds.num_train) == ("validation_split", expected.sum(), 512 - expected.sum())
    assert ds.steps_per_epoch == ds.num_train // 8
    np.testing.assert_array_equal(np.bincount(vy, minlength=10), expected)
    np.testing.assert_array_equal(np.bincount(ty, minlength=10), sizes - expected)
    # Together exactly the training set, no image in both.
    assert sorted(_ids(vx) + _ids(tx)) == sorted(_ids(full_x))
    assert not set(_ids(vx)) & set(_ids(tx))
    # The training stream never shows a validation image.
    assert not set(_ids(_arrays(ds.train, 2 * ds.steps_per_epoch)[0])) & set(_ids(vx))
    # Seeded: the same seed holds out the same images (another seed: see the folder test).
    again = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4)
    assert _ids(_arrays(again.validation)[0]) == _ids(vx)
    # train_subset is drawn from the training part.
    sub = data.load("synthetic", batch_size=8, augment="none", validation_split=0.1, seed=4, train_subset=100)
    assert (sub.num_train, sub.num_validation) == (100, expected.sum())
    assert set(_ids(_arrays(sub.train_ordered(50))[0])) <= set(_ids(tx))
    assert full.validation is None and full.num_validation == 0 and full.validation_from is None


def test_validation_split_folder_small_classes_and_errors(tmp_path):
    _make_tree(str(tmp_path), train_counts={"a": 10, "b": 3, "c": 1}, test_counts={"a": 1, "b": 1, "c": 1})
    ds = data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.2)
    # a: round(2.0) = 2; b: round(0.6) = 1; c: a single image stays for training.
    labels = _arrays(ds.validation)[1]
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [2, 1, 0])
    assert (ds.num_validation, ds.num_train) == (3, 11)
    held = lambda seed: _ids(_arrays(  # noqa: E731
        data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.2, seed=seed).validation)[0])
    assert held(0) == _ids(_arrays(ds.validation)[0]) and held(1) != held(0)

    message = _error(lambda: data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.5))
    assert "--validation_split=0.5" in message and "'c'" in message  # c's only image would be held out.
    for bad in (1.0, -0.1, float("nan"), "0.1"):
        assert "--validation_split" in _error(lambda: data.load("synthetic", batch_size=8, validation_split=bad))

    singles = tmp_path / "singles"
    _make_tree(str(singles), train_counts={"a": 1, "b": 1}, test_counts={"a": 1, "b": 1})
    assert "empty" in _error(lambda: data.load(f"folder:{singles}", batch_size=1, validation_split=0.3))


def test_validation_split_multi_label():
    ds = data.load("synthetic_multilabel:5", batch_size=16, validation_split=0.25)
    assert (ds.num_validation, ds.num_train) == (128, 384)
    assert _arrays(ds.validation)[1].shape == (128, 5)


def test_val_folder_is_the_validation_set(tmp_path):
    pixels = _make_tree(str(tmp_path))
    rng = np.random.default_rng(7)
    for cls, n in (("ant", 1), ("bee", 2), ("cat", 1)):
        os.makedirs(tmp_path / "val" / cls)
        for i in range(n):
            p = str(tmp_path / "val" / cls / f"{i}.png")
            pixels[p] = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            _write_png(p, pixels[p])
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert (ds.validation_from, ds.num_validation, ds.num_train) == ("val/", 4, 9)
    seen = [_match(image, pixels) for batch, _ in ds.validation for image in batch.numpy()]
    assert all("/val/" in p for p in seen) and len(set(seen)) == 4
    assert "--validation_split=0.1 contradicts" in _error(
        lambda: data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.1))
    os.makedirs(tmp_path / "val" / "dog")
    assert str(tmp_path / "val") in _error(lambda: data.load(f"folder:{tmp_path}", batch_size=2))


# ----------------------------------------------------------------------------- cache


def _stream(ds, batches, start=0):
    return [(x.numpy(), y.numpy()) for x, y in ds.train_from(start).take(batches)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("dataset", ["folder", "synthetic"])
def test_cache_modes_give_identical_batches(tmp_path, dataset, monkeypatch):
    if dataset == "folder":
        _make_tree(str(tmp_path / "d"), train_counts={"a": 7, "b": 6, "c": 4}, test_counts={"a": 2, "b": 1, "c": 2})
        name, batch = f"folder:{tmp_path / 'd'}", 4  # 17 examples: 4 batches per epoch.
    else:
        name, batch = "synthetic:4", 100  # 512 examples: 5 batches per epoch.
    size = (8, 8) if dataset == "synthetic" else None
    # A shuffle buffer smaller than the split, so its size matters.
    monkeypatch.setattr(data, "_SHUFFLE_BUFFER_BYTES", 0)
    monkeypatch.setattr(data, "_MIN_SHUFFLE_BUFFER", 5)
    load = lambda cache, **kw: data.load(name, batch_size=batch, seed=3, cache=cache, image_size=size, **kw)  # noqa: E731
    cache_dir = tmp_path / "cache"
    memory = load("memory")
    reference = _stream(memory, 11)  # Two epoch boundaries and more.
    disk = load("disk", cache_dir=str(cache_dir))
    assert not cache_dir.exists()  # load writes nothing; the first pass creates it.
    for other in (load("none"), disk, load("disk", cache_dir=str(cache_dir))):  # Writing, then reading the file.
        _assert_same(_stream(other, 11), reference)
        _assert_same(_stream(other, 5, start=6), reference[6:])  # Resumed mid-stream.
        _assert_same([_arrays(other.test)], [_arrays(memory.test)])
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


def test_cache_auto_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_physical_memory", lambda: 4 * 512 * 32 * 32 * 3)  # 25%: just the training set.
    data.load("synthetic", batch_size=8, cache="auto")
    out = capsys.readouterr().out
    assert "--cache=auto" in out and "decoded test images" in out and "decoded train images" not in out
    assert "--cache=disk needs a directory" in _error(lambda: data.load("synthetic", batch_size=8, cache="disk"))
    assert "--cache='ram'" in _error(lambda: data.load("synthetic", batch_size=8, cache="ram"))
