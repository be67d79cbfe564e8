"""Tests of the frozen sources: spec parsing, preprocessing, sizes, weight files, BatchNorm modes, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import sources
from sskt_tf.errors import UserError

RNG = np.random.RandomState(0)
IMAGES = RNG.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "mode, module",
    [("caffe", keras.applications.resnet50), ("tf", keras.applications.mobilenet_v2), ("torch", keras.applications.densenet)],
)
def test_preprocessing_matches_the_applications(mode, module):
    expected = module.preprocess_input(IMAGES.copy())
    np.testing.assert_allclose(sources.SourcePreprocess(mode)(IMAGES).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_scaled_size_is_the_reference_upsampling():
    assert sources.scaled_size((32, 32), 7 / 3) == (74, 74)
    assert sources.scaled_size((96, 96), 7 / 3) == (224, 224)
    assert sources.scaled_size((32, 48), 2) == (64, 96)


def test_application_source_resizes_and_is_frozen():
    source = sources.build_source("mobilenet_v2:random:10", (32, 32))
    assert source.image_size == (74, 74) and source.num_classes == 10
    assert source.trainable_weights == [] and not source.trainable
    out = source(IMAGES).numpy()
    expected = source.network(tf.image.resize(IMAGES, (74, 74), method="bilinear"), training=False).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.shape == (4, 10)
    # The source is inside a stop-gradient: no gradient reaches the images through it.
    x = tf.constant(IMAGES)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(source(x))
    assert tape.gradient(y, x) is None


def test_fixed_size_application_sees_its_own_size():
    source = sources.build_source("nasnet_mobile:random:5", (32, 32))
    assert source.image_size == (224, 224)


def _torch_adaptive_pool(features, size):
    """torch.nn.AdaptiveAvgPool2d on an NHWC array: the reference's torchvision VGG pooling."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 3, 1, 2)))
    return torch.nn.AdaptiveAvgPool2d(size)(x).numpy().transpose(0, 2, 3, 1)


def test_vgg_source_runs_at_the_scaled_size_like_torchvision():
    source = sources.build_source("vgg16:random:10", (32, 32))
    assert source.image_size == (74, 74) and source.num_classes == 10
    x = tf.image.resize(IMAGES[:2], (74, 74), method="bilinear").numpy()
    vgg = source.network.get_layer("vgg16")
    features = sources.SourcePreprocess("caffe")(x)
    for layer in vgg.layers[1 : [l.name for l in vgg.layers].index("avgpool")]:
        features = layer(features)
    features = features.numpy()
    assert features.shape == (2, 2, 2, 512)  # 74 -> 37 -> 18 -> 9 -> 4 -> 2 px
    # Independently of the layer under test: torch's pooling, Keras' HWC flatten, numpy Dense layers.
    h = _torch_adaptive_pool(features, 7).reshape(2, -1)
    for name, relu in (("fc1", True), ("fc2", True), ("predictions", False)):
        kernel, bias = vgg.get_layer(name).get_weights()
        h = h @ kernel + bias
        h = np.maximum(h, 0.0) if relu else h
    out = source(IMAGES[:2]).numpy()
    assert np.abs(h).max() > 0.05 and np.abs(h[0] - h[1]).max() > 1e-3  # logits that can tell a difference
    np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)


def test_vgg_source_at_224_is_the_keras_application_exactly(tmp_path):
    # Random weights through a weights file: the offline route of --sources=vgg16:/path/weights.h5.
    application = keras.applications.VGG16(weights=None, classifier_activation=None)
    path = str(tmp_path / "vgg16.weights.h5")
    application.save_weights(path)
    source = sources.build_source(f"vgg16:{path}", (96, 96))  # x7/3: 224 px, where 7x7 -> 7x7 is the identity
    assert source.image_size == (224, 224) and source.num_classes == 1000
    x = RNG.uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)  # one image: VGG at 224 px is slow on CPU
    expected = application(sources.SourcePreprocess("caffe")(tf.image.resize(x, (224, 224)))).numpy()
    np.testing.assert_array_equal(source(x).numpy(), expected)


def test_vgg_imagenet_weights_load_at_224_and_serve_every_size(monkeypatch):
    # Offline stand-in for the download: Keras loads ImageNet weights only into the 224-px network.
    loaded, constructor = [], keras.applications.VGG19

    def vgg19(weights=None, input_shape=None, **kwargs):
        assert input_shape is None, "ImageNet weights with the top need the default 224-px input"
        loaded.append(constructor(weights=None, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(keras.applications, "VGG19", vgg19)
    source = sources.build_source("vgg19:imagenet", (48, 48))
    assert source.image_size == (112, 112) and len(loaded) == 1
    # The source's network holds the downloaded weights themselves, the classifier's included.
    expected = {w.path: w.numpy() for w in loaded[0].weights}
    assert sorted(w.path for w in source.network.weights) == sorted(expected)
    assert all(np.array_equal(w.numpy(), expected[w.path]) for w in source.network.weights)
    assert tuple(source(RNG.uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)).shape) == (2, 1000)


def test_weights_file_loads_offline(tmp_path):
    reference = sources.build_source("mobilenet_v2:random", (32, 32))
    path = str(tmp_path / "mobilenet_v2.weights.h5")
    reference.network.layers[-1].save_weights(path)
    loaded = sources.build_source(f"mobilenet_v2:{path}", (32, 32))
    np.testing.assert_allclose(loaded(IMAGES).numpy(), reference(IMAGES).numpy(), rtol=1e-5, atol=1e-5)
    assert loaded.name == "source_mobilenet_v2_mobilenet_v2_weights"


def _tiny_model(input_shape=(16, 16, 3), classes=3):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name="tiny")


def test_keras_file_source_uses_its_fixed_input_size(tmp_path):
    model = _tiny_model()
    path = str(tmp_path / "tiny_source.keras")
    model.save(path)
    source = sources.build_source(path, (32, 32))
    assert source.image_size == (16, 16) and source.num_classes == 3
    assert source.name == "source_tiny_source"
    expected = model(tf.image.resize(IMAGES, (16, 16)), training=False).numpy()
    np.testing.assert_allclose(source(IMAGES).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_keras_file_with_free_size_gets_the_scaled_size(tmp_path):
    path = str(tmp_path / "free.keras")
    _tiny_model((None, None, 3)).save(path)
    assert sources.build_source(path, (32, 32)).image_size == (74, 74)


def _moving_stats(model):
    return [w.numpy().copy() for w in model.weights if "moving" in w.path]


def test_batch_mode_uses_batch_statistics_and_never_updates(tmp_path):
    model = _tiny_model()
    bn = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    bn.moving_mean.assign([0.3, -0.2, 0.1, 0.5])
    bn.moving_variance.assign([2.0, 0.5, 1.5, 3.0])
    path = str(tmp_path / "bn.keras")
    model.save(path)
    batch = sources.build_source(path, (16, 16), source_bn="batch")
    inference = sources.build_source(path, (16, 16), source_bn="inference")
    before = _moving_stats(batch.network)
    out_batch, out_inf = batch(IMAGES[:, :16, :16]).numpy(), inference(IMAGES[:, :16, :16]).numpy()
    assert all(np.array_equal(a, b) for a, b in zip(before, _moving_stats(batch.network)))
    # Independent computation of the batch-statistics path in numpy.
    conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    h = conv(IMAGES[:, :16, :16] / 255.0).numpy()
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
    h = (h - mean) / np.sqrt(var + bn.epsilon) * gamma + beta
    kernel, bias = model.layers[-1].get_weights()
    np.testing.assert_allclose(out_batch, h.mean(axis=(1, 2)) @ kernel + bias, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out_batch, out_inf)
    np.testing.assert_allclose(out_inf, model(IMAGES[:, :16, :16], training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_source_config_round_trip(tmp_path):
    source = sources.build_source("mobilenet_v2:random:7", (32, 32), source_bn="batch")
    source(IMAGES)
    clone = sources.Source.from_config(source.get_config())
    clone.set_weights(source.get_weights())
    assert clone.source_bn == "batch" and clone.image_size == (74, 74)
    np.testing.assert_allclose(clone(IMAGES).numpy(), source(IMAGES).numpy(), rtol=1e-5, atol=1e-5)


def test_source_names():
    assert sources.source_name("resnet50:imagenet") == "resnet50_imagenet"
    assert sources.source_name("resnet50:random:365") == "resnet50_random365"
    assert sources.source_name("/data/places365 r50.keras") == "places365_r50"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet51:imagenet", "names no known source.*resnet50"),
        ("resnet50:/nowhere/w.h5", "weights file '/nowhere/w.h5' does not exist"),
        ("/nowhere/model.keras", "model file '/nowhere/model.keras' does not exist"),
        ("resnet50:random:many", "resnet50:random:<classes>"),
        ("inception_v3:random", "at least 75 px.*--source_scale"),
        # Five 2x2 max-pools: below 32 px VGG's last feature map is empty.
        ("vgg16:random", r"vgg16 needs inputs of at least 32 px, received 30x30; raise --source_scale"),
    ],
)
def test_bad_specs_are_one_clear_error(spec, message):
    size = {"inception_v3": (16, 16), "vgg16": (13, 13)}.get(spec.split(":")[0], (32, 32))
    with pytest.raises(UserError, match=message):
        sources.build_source(spec, size)


def test_offline_imagenet_download_names_the_offline_way(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(UserError, match=r"could not download.*--sources=resnet50:/path/to/weights.h5"):
        sources.build_source("resnet50:imagenet", (32, 32))


def test_a_file_that_is_not_a_keras_model(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_text("not a zip")
    with pytest.raises(UserError, match="could not load"):
        sources.build_source(str(path), (32, 32))
