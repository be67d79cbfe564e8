"""Tests of sskt_tf.data.tfds through mocked TFDS: CIFAR, STL-10, VOC 2007, tfds:<name>, failing fast offline."""

import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sskt_tf import data
from sskt_tf.data import tfds as data_tfds
from sskt_tf.errors import UserError


def test_network_available_on_local_ports():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    open_port = server.getsockname()[1]
    try:
        assert data_tfds._network_available("127.0.0.1", port=open_port, timeout=1)
    finally:
        server.close()
    # Just closed, so nothing listens there any more.
    assert not data_tfds._network_available("127.0.0.1", port=open_port, timeout=1)


def test_cifar_offline_fails_fast(tmp_path, monkeypatch, user_error):
    probed = []
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: probed.append(host) or False)
    # Failing fast means never reaching TFDS's download, which retries for minutes offline.
    def no_download(*args, **kwargs):
        raise AssertionError("TFDS was asked to download")

    monkeypatch.setattr(tfds, "load", no_download)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    message = user_error(lambda: data.load("cifar10", batch_size=8, data_dir=str(tmp_path)))
    assert probed == ["www.cs.toronto.edu"]
    parts = ("--data_dir", "downloads/manual", "folder:", str(tmp_path), "cifar-10-binary.tar.gz")
    for part in parts:
        assert part in message


def test_cifar_through_mocked_tfds(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: probed.append(host) or True)
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

    monkeypatch.setattr(data_tfds, "_network_available", no_probe)
    calls = []
    real_load = tfds.load
    monkeypatch.setattr(tfds, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("cifar100", batch_size=4, data_dir=str(tmp_path), image_size=(16, 16))
    assert ds.num_classes == 100 and ds.image_size == (16, 16)
    config = calls[0]["download_and_prepare_kwargs"]["download_config"]
    assert os.path.samefile(config.manual_dir, manual)
    assert next(iter(ds.train))[0].shape == (4, 16, 16, 3)


def test_stl10_through_mocked_tfds(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: probed.append(host) or True)
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("stl10", batch_size=4, eval_batch_size=5, data_dir=str(tmp_path))
    assert probed == ["ai.stanford.edu"]
    assert ds.num_classes == 10 and not ds.multi_label and len(ds.class_names) == 10
    assert (ds.num_train, ds.num_test, ds.image_size) == (12, 12, (96, 96))
    images, labels = next(iter(ds.train))
    assert images.shape == (4, 96, 96, 3) and labels.dtype == tf.int32
    assert [int(b[0].shape[0]) for b in ds.test] == [5, 5, 2]


def test_voc2007_multi_hot_labels_exclude_difficult_objects(tmp_path, monkeypatch):
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: True)
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
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: True)
    with tfds.testing.mock_data(num_examples=4):
        ds = data.load("voc2007", batch_size=2, data_dir=str(tmp_path))
    assert ds.image_size == (224, 224) and next(iter(ds.test))[0].shape == (2, 224, 224, 3)


def test_generic_tfds_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: True)
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
    monkeypatch.setattr(data_tfds, "_network_available", lambda host, **kw: False)
    with pytest.raises(UserError, match=r"stl10 is not prepared.*stl10_binary\.tar\.gz.*downloads/manual"):
        data.load("stl10", batch_size=4, data_dir=str(tmp_path))
