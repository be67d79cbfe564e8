"""Tests for sskt_tf.augment: pad-crop-flip, MixUp, CutMix, RandAugment, and their place in the pipeline."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import augment, data, heads, models, sources
from sskt_tf.config import AugmentationConfig
from sskt_tf.sskt import SSKTModel
from conftest import run_training


# ---------------------------------------------------------------- pad_crop_flip


def _random_images(b, h=8, w=8, seed=0):
    # Values >= 1 so zero padding can be told apart from image content.
    return np.random.default_rng(seed).integers(1, 256, size=(b, h, w, 3), dtype=np.uint8)


def _candidates(image, padding):
    """Every (dy, dx, flipped) crop torchvision's RandomCrop+flip could produce."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop[:, ::-1]
    return out


def _recover(images, outputs, padding):
    """For each output, the list of (dy, dx, flipped) that reproduce it exactly."""
    found = []
    for image, output in zip(images, outputs):
        found.append([k for k, c in _candidates(image, padding).items()
                      if np.array_equal(c.astype(np.float32), output)])
    return found


def test_pad_crop_flip_shape_dtype():
    images = _random_images(5, 6, 7)
    out = augment.pad_crop_flip(images, tf.constant([1, 2]))
    assert out.shape == (5, 6, 7, 3)
    assert out.dtype == tf.float32
    out_f = augment.pad_crop_flip(tf.constant(images, tf.float32), tf.constant([1, 2], tf.int64))
    assert out_f.dtype == tf.float32
    # Same seed, uint8 or float input: same crops.
    np.testing.assert_array_equal(out.numpy(), out_f.numpy())


def test_pad_crop_flip_is_crop_of_zero_padded_image_possibly_flipped():
    padding = 2  # 25 offsets x 2 flips to check by brute force.
    images = _random_images(512)
    out = augment.pad_crop_flip(images, tf.constant([7, 11]), padding=padding).numpy()
    found = _recover(images, out, padding)
    assert all(len(f) == 1 for f in found), "every output must be exactly one crop/flip"
    params = [f[0] for f in found]
    # Offsets cover [0, 2p]^2 (each of 25 appears with prob ~1 in 512 draws) and nothing else.
    assert {(dy, dx) for dy, dx, _ in params} == {
        (dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)}
    flips = np.mean([f for _, _, f in params])
    assert 0.4 < flips < 0.6


def test_pad_crop_flip_default_padding_four():
    images = _random_images(256, seed=3)
    out = augment.pad_crop_flip(images, tf.constant([0, 5])).numpy()
    params = [f[0] for f in _recover(images, out, 4)]
    assert len(params) == 256
    assert max(max(dy, dx) for dy, dx, _ in params) == 8
    assert min(min(dy, dx) for dy, dx, _ in params) == 0


def test_pad_crop_flip_randomness_is_per_image():
    images = np.repeat(_random_images(1), 64, axis=0)
    out = augment.pad_crop_flip(images, tf.constant([3, 4])).numpy()
    distinct = {o.tobytes() for o in out}
    assert len(distinct) > 20  # One crop for the whole batch would give 1.
    flipped = [f[0][2] for f in _recover(images, out, 4)]
    assert any(flipped) and not all(flipped)


def test_pad_crop_flip_seed_determinism():
    images = _random_images(32)
    a = augment.pad_crop_flip(images, tf.constant([1, 2])).numpy()
    b = augment.pad_crop_flip(images, tf.constant([1, 2])).numpy()
    c = augment.pad_crop_flip(images, tf.constant([1, 3])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pad_crop_flip_zero_padding_visible():
    images = np.full((64, 8, 8, 3), 200, np.uint8)
    out = augment.pad_crop_flip(images, tf.constant([9, 9])).numpy()
    # Offset (4, 4) is the only crop without padding: probability 1/81 per image.
    has_zero = [(o == 0).any() for o in out]
    assert sum(has_zero) > 50
    assert set(np.unique(out)) <= {0.0, 200.0}
    # The padding is zeros, a band of whole rows/columns at the edges.
    for o in out:
        nonzero_rows = np.where(o[:, :, 0].any(axis=1))[0]
        nonzero_cols = np.where(o[:, :, 0].any(axis=0))[0]
        block = o[nonzero_rows[0]:nonzero_rows[-1] + 1, nonzero_cols[0]:nonzero_cols[-1] + 1]
        assert (block == 200).all()
        assert len(nonzero_rows) >= 4 and len(nonzero_cols) >= 4


def test_pad_crop_flip_inside_tf_data_map_matches_eager():
    images = _random_images(16)
    seed = tf.constant([5, 6], tf.int64)
    ds = tf.data.Dataset.from_tensors(images).map(lambda x: augment.pad_crop_flip(x, seed))
    in_graph = next(iter(ds)).numpy()
    eager = augment.pad_crop_flip(images, seed).numpy()
    np.testing.assert_array_equal(in_graph, eager)
    assert all(len(f) == 1 for f in _recover(images, in_graph, 4))


# ------------------------------------------------------------------ MixUp / CutMix


def _constant_images(b, h=8, w=8):
    # Image i is the constant 2^i: any convex mix or paste of two images tells which two.
    return tf.constant(np.broadcast_to((2.0 ** np.arange(b))[:, None, None, None], (b, h, w, 3)), tf.float32)


def test_mixup_mixes_each_image_with_one_partner_and_its_label_with_the_same_weight():
    b = 8
    images, labels = _constant_images(b), tf.eye(b)
    out, mixed, lam = augment.mixup(images, labels, tf.constant([4, 2], tf.int64), alpha=1.0)
    out, mixed, lam = out.numpy(), mixed.numpy(), float(lam)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    partners = []
    for i in range(b):
        # Every pixel is lam * 2^i + (1 - lam) * 2^j for one partner j.
        assert np.ptp(out[i]) < 1e-4
        j = int(np.argmax(np.where(np.arange(b) == i, -1, mixed[i]))) if mixed[i, i] < 1 - 1e-6 else i
        partners.append(j)
        np.testing.assert_allclose(out[i, 0, 0, 0], lam * 2.0**i + (1 - lam) * 2.0**j, rtol=1e-5)
        expected = np.zeros(b)
        expected[i] += lam
        expected[j] += 1 - lam
        np.testing.assert_allclose(mixed[i], expected, atol=1e-6)
    assert sorted(partners) == list(range(b))  # A permutation of the batch.


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_weight_follows_beta_alpha_alpha(alpha):
    images, labels = _constant_images(4), tf.eye(4)
    draw = tf.function(lambda s: augment.mixup(images, labels, tf.stack([s, tf.constant(0, tf.int64)]), alpha)[2])
    lams = np.array([float(draw(tf.constant(s, tf.int64))) for s in range(1500)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); the tolerances are ~5 standard errors.
    assert abs(lams.mean() - 0.5) < 0.05
    assert abs(lams.var() - 1.0 / (4 * (2 * alpha + 1))) < 0.02
    assert lams.min() >= 0 and lams.max() <= 1


def test_cutmix_pastes_one_box_and_weighs_labels_by_its_exact_area():
    b, h, w = 6, 16, 12
    images = _constant_images(b, h, w)
    labels = tf.eye(b)
    seen_areas = []
    for s in range(40):
        out, mixed, lam = augment.cutmix(images, labels, tf.constant([s, 1], tf.int64), alpha=1.0)
        out, mixed = out.numpy()[..., 0], mixed.numpy()
        own = out == (2.0 ** np.arange(b))[:, None, None]
        pasted = ~own
        # One box, the same in every image whose partner is another image.
        others = [i for i in range(b) if mixed[i, i] < 1]
        if not others:  # An empty box (lam = 1 after clipping) or the identity permutation.
            continue
        box = pasted[others[0]]
        for i in others:
            np.testing.assert_array_equal(pasted[i], box)
        rows, cols = np.where(box)
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # A rectangle.
        area = box.sum() / (h * w)
        for i in others:
            np.testing.assert_allclose(mixed[i, i], 1.0 - area, rtol=1e-6)
        np.testing.assert_allclose(float(lam), 1.0 - area, rtol=1e-6)
        seen_areas.append(area)
        np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    assert len(set(seen_areas)) > 10  # The box size varies with lam.


def test_mix_batch_probability_and_switch():
    images, labels = _constant_images(8), tf.eye(8)
    kinds = []
    mix = tf.function(lambda seed: augment.mix_batch(images, labels, seed, 0.5, 1.0, prob=0.4)[0])
    for s in range(300):
        out = mix(tf.constant([s, 7], tf.int64)).numpy()[..., 0]
        if np.array_equal(out, images.numpy()[..., 0]):
            kinds.append("none")
        elif all(np.ptp(o) == 0 for o in out):
            kinds.append("mixup")
        else:
            kinds.append("cutmix")
    mixed = [k for k in kinds if k != "none"]
    # Binomial(300, 0.4): 120 +- 8.5; mixed batches split about evenly.
    assert 90 < len(mixed) < 150
    assert 0.3 < mixed.count("cutmix") / len(mixed) < 0.7


def test_mix_keeps_multi_hot_labels_as_label_wise_mixes():
    augmenter = augment.BatchAugmenter(AugmentationConfig(kind="none", mixup=1.0), num_classes=3, multi_label=True)
    labels = tf.constant([[1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]], tf.float32)
    _, mixed = augmenter.mix(_constant_images(4), labels, tf.constant([1, 1], tf.int64))
    mixed = mixed.numpy()
    assert mixed.shape == (4, 3) and mixed.min() >= 0 and mixed.max() <= 1
    assert not np.array_equal(mixed, labels.numpy())


# ----------------------------------------------------------------------- RandAugment


def test_randaugment_is_a_function_of_the_batch_seed():
    ra = augment.KerasCVRandAugment(layers=2, magnitude=0.6)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)), tf.float32)
    a = ra(images, tf.constant([1, 2], tf.int64)).numpy()
    b = ra(images, tf.constant([1, 3], tf.int64)).numpy()
    a_again = ra(images, tf.constant([1, 2], tf.int64)).numpy()
    fresh = augment.KerasCVRandAugment(layers=2, magnitude=0.6)(images, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(a, a_again)
    np.testing.assert_array_equal(a, fresh)  # Another instance (another run) gives the same batch.
    assert not np.array_equal(a, b)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 255
    # Per image: different images of the batch get different operations, and most change.
    changed = [not np.allclose(a[i], images[i]) for i in range(8)]
    assert sum(changed) >= 4


# ------------------------------------------------------------------------- pipeline


def _batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_pipeline_with_randaugment_and_mixing_is_reproducible_and_resumable():
    aug = AugmentationConfig(kind="randaugment", mixup=0.4, cutmix=1.0, mix_prob=0.9)
    tf.random.set_seed(1)
    first = data.load("synthetic", batch_size=32, seed=2, augment=aug, deterministic=True)
    stream = _batches(first.train, 5)
    tf.random.set_seed(1)
    second = data.load("synthetic", batch_size=32, seed=2, augment=aug, deterministic=True)
    again = _batches(second.train, 5)
    resumed = _batches(second.train_from(3), 2)
    for (x1, y1), (x2, y2) in zip(stream, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(stream[3:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    x, y = stream[0]
    assert y.shape == (32, 10) and y.dtype == np.float32
    labels = np.concatenate([y for _, y in stream])
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert (labels.max(axis=1) < 1).mean() > 0.3  # Soft rows (a batch is left unmixed 1 time in 10).
    plain = _batches(data.load("synthetic", batch_size=32, seed=2, augment="standard").train, 1)[0][0]
    assert not np.array_equal(x, plain)


def test_pipeline_standard_is_unchanged_by_the_refactor():
    """`standard` is pad-crop-flip with the batch seed itself: batch i equals pad_crop_flip(raw batch i, [seed, i])."""
    tf.random.set_seed(4)
    raw = _batches(data.load("synthetic", batch_size=16, seed=9, augment="none").train, 3)
    tf.random.set_seed(4)
    standard = _batches(data.load("synthetic", batch_size=16, seed=9, augment="standard").train, 3)
    for i, ((x_raw, y_raw), (x, y)) in enumerate(zip(raw, standard)):
        np.testing.assert_array_equal(y, y_raw)
        np.testing.assert_array_equal(x, augment.pad_crop_flip(x_raw, tf.constant([9, i], tf.int64)).numpy())


def test_sources_see_the_mixed_images_and_soft_labels_train_the_target():
    """One SSKT step on a mixed batch: logged losses equal soft CE and aux CE computed on that very batch."""
    keras.utils.set_random_seed(0)
    datasets = data.load("synthetic:5", batch_size=16, seed=0, augment=AugmentationConfig(mixup=1.0, cutmix=1.0))
    images, labels = next(iter(datasets.train))
    assert labels.shape == (16, 5)
    inputs = keras.Input((32, 32, 3))
    net = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(inputs / 255.0)))
    source = sources.Source(net, (32, 32), name="source_tiny")
    backbone = models.get_backbone("resnet20", (32, 32, 3))
    model = SSKTModel(
        backbone, 5, [source], [heads.build_head("linear", 7, backbone.stage_channels)], [0.1], [3.0],
        feature_key="stage3",
    )
    model.build((None, 32, 32, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logits, aux_logits = model._forward_with_heads(images, training=True)
    logs = model.train_step((images, labels))
    z, y = logits.numpy().astype(np.float64), labels.numpy().astype(np.float64)
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(float(logs["target_loss"]), -(y * log_p).sum(1).mean(), rtol=1e-5)
    s = net(images).numpy().astype(np.float64) / 3.0
    q = np.exp(s - s.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    a = aux_logits[0].numpy().astype(np.float64) / 3.0
    log_qa = a - a.max(1, keepdims=True) - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(float(logs["aux_loss_tiny"]), 9.0 * -(q * log_qa).sum(1).mean(), rtol=1e-5)
    top = (z.argmax(1) == y.argmax(1)).mean()
    np.testing.assert_allclose(float(logs["accuracy"]), top, atol=1e-6)


@pytest.mark.slow
def test_training_cli_runs_with_randaugment_mixup_and_cutmix(tmp_path):
    import json

    from sskt_tf import config as config_lib

    out = tmp_path / "run"
    results = run_training([
        "--flagfile=flags/smoke.cfg", "--augment=randaugment", "--mixup=0.2", "--cutmix=1",
        "--sources=", "--deterministic", "--epochs=1", "--steps_per_epoch=2", f"--output_dir={out}", "--verbose=0",
    ])
    from tensorflow.python.framework import config as tf_config

    assert tf_config.is_op_determinism_enabled()  # --deterministic took effect (conftest turns it off after).
    assert np.isfinite(results["test"]["loss"])
    written = config_lib.flag_values(json.loads((out / "config.json").read_text()))
    assert (written["augment"], written["mixup"], written["cutmix"]) == ("randaugment", 0.2, 1.0)
