"""Tests of the frozen sources: spec parsing, preprocessing, sizes, weight files, BatchNorm modes, errors."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import losses, sources
from sskt_tf.errors import UserError
from sskt_tf.models.layers import BatchNormalization as FusedBatchNormalization
from round_trip import assert_round_trips

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


def _tiny_model(input_shape=(16, 16, 3), classes=3, batch_norm=keras.layers.BatchNormalization):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = batch_norm()(x)
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


# Keras' layer, and this project's fused one, which converted PyTorch networks (convert_torch) carry.
@pytest.mark.parametrize("batch_norm", [keras.layers.BatchNormalization, FusedBatchNormalization], ids=["keras", "fused"])
def test_batch_mode_uses_batch_statistics_and_never_updates(tmp_path, batch_norm):
    model = _tiny_model(batch_norm=batch_norm)
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
    clone = assert_round_trips(source, IMAGES, rtol=1e-5, atol=1e-5)
    assert clone.source_bn == "batch" and clone.image_size == (74, 74)


def test_source_names():
    assert sources.source_name("resnet50:imagenet") == "resnet50_imagenet"
    assert sources.source_name("resnet50:random:365") == "resnet50_random365"
    assert sources.source_name("/data/places365 r50.keras") == "places365_r50"
    # What a run wrote is named after its run directory: never aux_loss_target next to target_loss.
    assert sources.source_name("/runs/c10_r32/target.keras") == "c10_r32"
    assert sources.source_name("/runs/c10_r32/checkpoints/best.keras") == "c10_r32_best"
    assert sources.source_name("/runs/c10_r32/checkpoints/last.keras") == "c10_r32_last"
    assert sources.source_name("/runs/dml/peer_1.keras") == "dml_peer_1"
    # Any other file keeps its stem, wherever it is.
    assert sources.source_name("/runs/c10_r32/checkpoints/places365.keras") == "places365"
    assert sources.source_name("/runs/targets.keras") == "targets"
    assert sources.source_name("/target.keras") == "target"


def test_runs_sources_get_their_run_names_and_two_runs_of_one_name_are_numbered(stand_ins, tmp_path):
    import shutil

    from sskt_tf import methods
    from sskt_tf.config import Config

    a, b = stand_ins("target", 4, index=0), stand_ins("target", 3, index=1)  # <root>/0.4/target.keras, <root>/1.3/...
    (tmp_path / "0.4").mkdir()
    c = shutil.copy(a, tmp_path / "0.4" / "target.keras")  # Another run directory of the same name.
    model = methods.build_model(Config(dataset="synthetic", sources=(a, b, str(c)), aux_head="linear"), (16, 16), 10)
    assert [s.name for s in model.sources] == ["source_0_4", "source_1_3", "source_0_4_2"]
    assert [t.name for t in model.aux_loss_trackers] == ["aux_loss_0_4", "aux_loss_1_3", "aux_loss_0_4_2"]


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
    # Keras' own words for it are "File not found": the message says what the file is instead.
    with pytest.raises(UserError, match=r"broken.keras' is not a .keras file \(a .keras file is a zip archive"):
        sources.build_source(str(path), (32, 32))
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(UserError, match=r"model file '\S+' is a directory; pass the path of a .keras file"):
        sources.build_source(str(tmp_path / "dir.keras"), (32, 32))
    # A zip archive that is no Keras model still gets Keras' reason, in one line.
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("hello.txt", "x")
    with pytest.raises(UserError, match="could not load"):
        sources.build_source(str(tmp_path / "other.keras"), (32, 32))


# --- What the outputs are: softmax, sigmoid, probabilities, logits (--source_outputs) -------------


@keras.saving.register_keras_serializable(package="sskt_tf_tests")
class HiddenSoftmaxHead(keras.layers.Layer):
    """A classifier whose softmax is inside its `call`: invisible to any inspection of the graph."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return keras.ops.softmax(self.dense(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


CLASSES = 5


def _features(inputs):
    """The shared trunk of the twins: raw [0, 255] images -> 8 features, weights drawn fresh."""
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(x)
    return keras.layers.GlobalAveragePooling2D()(x)


def _twins(ending, tmp_path, input_shape=(None, None, 3), seed=1):
    """`(logits model, its twin ending in `ending`, path of the twin's .keras file)`, with equal weights.

    The logits model is saved too (`logits.keras`). Both map raw images to [N, CLASSES].
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    features = _features(inputs)
    # Logits spread over several units, as a trained classifier's: softmax(p / T) of probabilities is
    # then far from softmax(z / T), so the tests below can tell the two apart.
    classifier = keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.RandomNormal(stddev=60.0), name="classifier")
    logits_model = keras.Model(inputs, classifier(features), name="twin")
    inputs = keras.Input(input_shape)
    features = _features(inputs)
    if ending == "dense_softmax":
        outputs = keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(features)
    elif ending == "dense_sigmoid":
        outputs = keras.layers.Dense(CLASSES, activation="sigmoid", name="classifier")(features)
    elif ending == "softmax_layer":
        outputs = keras.layers.Softmax()(keras.layers.Dense(CLASSES, name="classifier")(features))
    elif ending == "activation_layer":
        # As the mixed-precision guide writes it: a float32 softmax after the classifier.
        outputs = keras.layers.Activation("softmax", dtype="float32")(keras.layers.Dense(CLASSES, name="classifier")(features))
    elif ending == "activation_function":
        outputs = keras.layers.Dense(CLASSES, activation=keras.activations.softmax, name="classifier")(features)
    elif ending == "ops_softmax":
        outputs = keras.ops.softmax(keras.layers.Dense(CLASSES, name="classifier")(features))
    elif ending == "softmax_then_dropout":
        outputs = keras.layers.Dropout(0.5)(keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(features))
    elif ending == "nested_sequential":
        head = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(CLASSES, name="classifier"), keras.layers.Softmax()], name="head"
        )
        outputs = head(features)
    elif ending == "nested_functional":
        head_in = keras.Input((8,))
        head = keras.Model(head_in, keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(head_in), name="head")
        outputs = head(features)
    elif ending == "hidden_softmax":
        outputs = HiddenSoftmaxHead(CLASSES, name="hidden")(features)
    else:
        raise ValueError(ending)
    model = keras.Model(inputs, outputs, name="ended")
    model.set_weights(logits_model.get_weights())
    logits_model.save(str(tmp_path / "logits.keras"))
    path = str(tmp_path / f"{ending}.keras")
    model.save(path)
    return logits_model, model, path


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_soft_ce(source_logits, aux_logits, t):
    """SSKT's `ce` auxiliary loss in numpy: T^2 * mean_b sum_c -softmax(s/T) log_softmax(a/T)."""
    p = np.exp(np_log_softmax(np.asarray(source_logits, np.float64) / t))
    return t * t * float(np.mean(np.sum(-p * np_log_softmax(np.asarray(aux_logits, np.float64) / t), -1)))


AUX = RNG.normal(0, 2, (4, CLASSES)).astype(np.float32)
SOFTMAX_ENDINGS = [
    "dense_softmax", "softmax_layer", "activation_layer", "activation_function", "ops_softmax",
    "softmax_then_dropout", "nested_sequential", "nested_functional",
]


@pytest.mark.parametrize("ending", SOFTMAX_ENDINGS)
def test_a_softmax_ended_source_gives_the_aux_loss_of_its_logits_twin(ending, tmp_path, capsys):
    logits_model, model, path = _twins(ending, tmp_path)
    source = sources.build_source(path, (16, 16))
    assert (source.network_outputs, source.stripped_activation) == ("logits", "softmax")
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"--sources={path}: using the pre-softmax logits of 'ended'") and "\n" not in line
    size = source.image_size
    assert size == (37, 37)
    z = logits_model(tf.image.resize(IMAGES, size), training=False).numpy()
    # The file's own outputs are the twin's probabilities: the test compares what it should.
    p = model(tf.image.resize(IMAGES, size), training=False).numpy()
    assert np.ptp(z, axis=1).min() > 2.0
    np.testing.assert_allclose(p, np.exp(np_log_softmax(z)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(source(IMAGES).numpy(), z, rtol=1e-5, atol=1e-5)
    for t in (1.0, 4.0):
        expected = np_soft_ce(z, AUX, t)
        for kind in ("ce", "kd"):
            twin_loss = float(losses.aux_loss(kind, sources.build_source(str(tmp_path / "logits.keras"), (16, 16))(IMAGES), AUX, t))
            assert float(losses.aux_loss(kind, source(IMAGES), AUX, t)) == pytest.approx(twin_loss, rel=1e-5, abs=1e-6)
        assert float(losses.aux_loss("ce", source(IMAGES), AUX, t)) == pytest.approx(expected, rel=1e-5)
        # Taken as logits, the probabilities would have given another loss: the test can tell.
        assert abs(np_soft_ce(p, AUX, t) - expected) > 1e-2
    # The stripped copy shares the trunk's layers; the loaded model itself still ends in its softmax.
    np.testing.assert_allclose(model(tf.image.resize(IMAGES, size)).numpy(), p)


def test_a_sigmoid_ended_source_gives_its_pre_sigmoid_logits(tmp_path, capsys):
    logits_model, _, path = _twins("dense_sigmoid", tmp_path)
    source = sources.build_source(path, (16, 16))
    assert (source.network_outputs, source.stripped_activation) == ("logits", "sigmoid")
    assert "using the pre-sigmoid logits of 'ended'" in capsys.readouterr().out
    z = logits_model(tf.image.resize(IMAGES, source.image_size)).numpy()
    np.testing.assert_allclose(source(IMAGES).numpy(), z, rtol=1e-5, atol=1e-5)
    # Per-label probabilities are not one distribution: neither 'logits' nor 'probabilities' fits.
    for outputs in ("logits", "probabilities"):
        with pytest.raises(UserError, match=rf"--sources={path}: --source_outputs={outputs}, but the network ends in a sigmoid.*use --source_outputs=auto"):
            sources.build_source(path, (16, 16), outputs=outputs)


@pytest.mark.parametrize("outputs", ["probabilities", "auto"])
def test_a_hidden_softmax_gives_log_probabilities_equal_to_the_logits_under_every_softmax(outputs, tmp_path, capsys):
    logits_model, model, path = _twins("hidden_softmax", tmp_path)
    source = sources.build_source(path, (16, 16), outputs=outputs)
    assert (source.network_outputs, source.stripped_activation) == ("probabilities", None)
    assert f"--sources={path}: using the log of the outputs of 'ended' as its logits" in capsys.readouterr().out
    size = source.image_size
    z = logits_model(tf.image.resize(IMAGES, size)).numpy().astype(np.float64)
    p = model(tf.image.resize(IMAGES, size)).numpy().astype(np.float64)
    s = source(IMAGES).numpy()
    np.testing.assert_allclose(s, np.log(p), rtol=1e-6, atol=1e-6)
    # log p = z - logsumexp(z): a per-row shift, so softmax(log p / T) == softmax(z / T) at every T.
    shift = s - z
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], CLASSES, axis=1), atol=1e-4)
    for t in (1.0, 2.0, 4.0):
        np.testing.assert_allclose(np.exp(np_log_softmax(s / t)), np.exp(np_log_softmax(z / t)), atol=1e-5)
        assert float(losses.aux_loss("ce", source(IMAGES), AUX, t)) == pytest.approx(np_soft_ce(z, AUX, t), rel=1e-4)


def test_log_probabilities_survive_underflow():
    inputs = keras.Input((1, 1, 3))
    # A confident softmax: probabilities of 0 where exp underflowed in float32.
    net = keras.Model(inputs, keras.ops.softmax(keras.layers.Flatten()(inputs) * 1e3))
    source = sources.Source(net, (1, 1), network_outputs="probabilities")
    images = np.array([[[[0.0, 255.0, 10.0]]]], np.float32)
    assert np.array_equal(net(images).numpy(), [[0.0, 1.0, 0.0]])
    # log(0) would be -inf (and a NaN in the KL); the floor is log(float32 tiny) = -87.34.
    np.testing.assert_allclose(source(images).numpy(), [[-87.336544, 0.0, -87.336544]], rtol=1e-6)


def test_logits_are_refused_where_the_outputs_are_probabilities(tmp_path):
    _, _, path = _twins("dense_softmax", tmp_path)
    with pytest.raises(UserError, match=rf"--sources={path}: --source_outputs=logits, but the network ends in a softmax \(Dense 'classifier'\).*use --source_outputs=auto"):
        sources.build_source(path, (16, 16), outputs="logits")
    _, _, hidden = _twins("hidden_softmax", tmp_path)
    with pytest.raises(UserError, match=r"--source_outputs=logits, but the outputs on random images are probability rows.*use --source_outputs=probabilities"):
        sources.build_source(hidden, (16, 16), outputs="logits")


def test_probabilities_are_refused_where_the_outputs_are_logits(tmp_path, capsys):
    logits_model, _, _ = _twins("dense_softmax", tmp_path)
    path = str(tmp_path / "logits.keras")
    with pytest.raises(UserError, match=rf"--sources={path}: --source_outputs=probabilities, but the outputs on random images are no probability rows \(values -.*use --source_outputs=auto or logits"):
        sources.build_source(path, (16, 16), outputs="probabilities")
    # Logits as they are: no line, no change, with auto and with logits.
    for outputs in ("auto", "logits"):
        source = sources.build_source(path, (16, 16), outputs=outputs)
        assert (source.network_outputs, source.stripped_activation) == ("logits", None)
        expected = logits_model(tf.image.resize(IMAGES, source.image_size)).numpy()
        np.testing.assert_allclose(source(IMAGES).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert capsys.readouterr().out == ""
    with pytest.raises(UserError, match="--source_outputs=softmax is not known. Allowed: auto, logits, probabilities"):
        sources.build_source(path, (16, 16), outputs="softmax")


def test_applications_return_logits_whatever_the_flag_says(capsys):
    source = sources.build_source("mobilenet_v2:random:4", (32, 32), outputs="probabilities")
    assert (source.network_outputs, source.stripped_activation) == ("logits", None)
    assert source.network.layers[-1].get_layer("predictions").activation is keras.activations.linear
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("ending, outputs", [("dense_softmax", "auto"), ("hidden_softmax", "probabilities")])
def test_an_adapted_source_reloads_identically(ending, outputs, tmp_path):
    _, _, path = _twins(ending, tmp_path)
    source = sources.build_source(path, (16, 16), outputs=outputs)
    inputs = keras.Input((16, 16, 3))
    wrapper = keras.Model(inputs, source(inputs))
    wrapper.save(str(tmp_path / "wrapper.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "wrapper.keras"))
    reloaded = loaded.layers[-1]
    assert isinstance(reloaded, sources.Source)
    assert (reloaded.network_outputs, reloaded.stripped_activation) == (source.network_outputs, source.stripped_activation)
    np.testing.assert_array_equal(loaded(IMAGES[:, :16, :16]).numpy(), wrapper(IMAGES[:, :16, :16]).numpy())
    assert_round_trips(source, IMAGES, rtol=0, atol=0)


def test_a_stripped_source_also_runs_with_batch_statistics(tmp_path):
    logits_model, _, path = _twins("nested_functional", tmp_path)
    source = sources.build_source(path, (16, 16), source_bn="batch")
    z = logits_model(tf.image.resize(IMAGES, source.image_size)).numpy()
    np.testing.assert_allclose(source(IMAGES).numpy(), z, rtol=1e-5, atol=1e-5)  # No BatchNorm in the twins.


# --- Misfits: what a source assumes, checked before training ------------------------------------------


def _saved(tmp_path, name, inputs, outputs):
    path = str(tmp_path / f"{name}.keras")
    keras.Model(inputs, outputs).save(path)
    return path


def _misfit(kind, tmp_path):
    if kind == "channels":
        inputs = keras.Input((16, 16, 1))
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)))
    if kind == "channels_first":
        inputs = keras.Input((3, 16, 16))
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    if kind == "channels_first_any_size":
        inputs = keras.Input((3, None, None))
        pooled = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(inputs)
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(4)(pooled))
    if kind == "two_inputs":
        a, b = keras.Input((16, 16, 3)), keras.Input((16, 16, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
        return _saved(tmp_path, kind, [a, b], keras.layers.Dense(4)(x))
    if kind == "flat_input":
        inputs = keras.Input((48,))
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(4)(inputs))
    if kind == "two_outputs":
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        return _saved(tmp_path, kind, inputs, [keras.layers.Dense(4)(x), keras.layers.Dense(2)(x)])
    if kind == "rank4_output":
        inputs = keras.Input((16, 16, 3))
        return _saved(tmp_path, kind, inputs, keras.layers.Conv2D(4, 1)(inputs))
    if kind == "one_class":
        inputs = keras.Input((16, 16, 3))
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inputs)))
    if kind == "too_small":
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(4, 48)(inputs)  # A 48x48 kernel, 'valid': 37 px is too small.
        return _saved(tmp_path, kind, inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    if kind == "non_finite":
        inputs = keras.Input((None, None, 3))
        dense = keras.layers.Dense(4)
        outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
        dense.kernel.assign(np.full((3, 4), np.nan, np.float32))
        return _saved(tmp_path, kind, inputs, outputs)
    if kind == "unbuilt":
        path = str(tmp_path / "unbuilt.keras")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns that it saves a model never built: the point here.
            keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]).save(path)
        return path
    if kind == "lambda":
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs))
        return _saved(tmp_path, kind, inputs, keras.layers.Lambda(lambda t: keras.ops.softmax(t))(x))
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("channels", r"the model takes 1-channel images, input shape \(None, 16, 16, 1\); it receives RGB images .*pass a model built for 3-channel"),
        ("channels_first", r"takes 3-channel images, input shape \(None, 3, 16, 16\) \(channels first\); it receives RGB images \[N, H, W, 3\], channels last"),
        # Free H and W put None last: channels first all the same, not "any channels".
        ("channels_first_any_size", r"takes 3-channel images, input shape \(None, 3, None, None\) \(channels first\)"),
        ("two_inputs", r"the model takes 2 inputs .*pass a model with one image input"),
        ("flat_input", r"the model takes inputs of shape \(None, 48\), not image batches.*keras.Input\(\(H, W, 3\)\)"),
        ("two_outputs", r"the model has 2 outputs .*save a model with only the classifier's output"),
        ("rank4_output", r"returns outputs of shape \(None, 16, 16, 4\); a source or teacher returns logits \[N, classes\]; end the model"),
        ("one_class", r"the network predicts 1 class; a softmax over fewer than 2 classes is constant.*at least 2 classes"),
        ("too_small", r"the network does not run on images of 37x37 \(.*raise --source_scale"),
        ("non_finite", r"returns NaN or infinite values on random images"),
        ("unbuilt", r"no defined input and output shapes \(a Sequential never built\); save it built"),
        ("lambda", r"could not load .*: it holds a Lambda layer of Python code.*re-save the network with a registered custom layer"),
    ],
)
def test_a_misfit_source_is_one_line_naming_the_file_and_the_fix(kind, message, tmp_path):
    path = _misfit(kind, tmp_path)
    with pytest.raises(UserError) as error:
        sources.build_source(path, (16, 16))
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"--sources={path}: " if kind != "lambda" else "--sources: could not load")
    assert re.search(message, text), text


def test_misfits_of_a_teacher_name_the_teacher(tmp_path):
    with pytest.raises(UserError, match=r"^--teacher=.*channels\.keras: the model takes 1-channel images"):
        sources.build_source(_misfit("channels", tmp_path), (16, 16), 1.0, flag="--teacher")
    with pytest.raises(UserError, match=r"^--sources=mobilenet_v2:random:1: the network predicts 1 class"):
        sources.build_source("mobilenet_v2:random:1", (32, 32))
    for classes in ("0", "-5"):  # Keras would fail building a Dense of that many units, with a traceback.
        with pytest.raises(UserError, match=rf"^--sources=mobilenet_v2:random:{classes}: the network predicts {classes} classes"):
            sources.build_source(f"mobilenet_v2:random:{classes}", (32, 32))


def test_a_fixed_input_size_is_used_with_one_line(tmp_path, capsys):
    path = str(tmp_path / "fixed.keras")
    model = _tiny_model((16, 16, 3))
    # Logits outside [0, 1] whatever the random kernel: else `auto` rightly warns of a hidden sigmoid.
    model.layers[-1].bias.assign(np.array([-3.0, 0.0, 3.0], np.float32))
    model.save(path)
    assert sources.build_source(path, (32, 32)).image_size == (16, 16)
    assert capsys.readouterr().out == (
        f"--sources={path}: the network has a fixed input size of 16x16, so it sees the images resized to 16x16 "
        "instead of 74x74 (--source_scale does not apply to it).\n"
    )
    assert sources.build_source(path, (16, 16), 1.0, flag="--teacher").image_size == (16, 16)
    assert capsys.readouterr().out == ""  # The size it would receive anyway: nothing to say.
    sources.build_source(path, (32, 32), 1.0, flag="--teacher")
    assert "instead of 32x32 (not the target's size)" in capsys.readouterr().out


def _frame_logits_model():
    """An image network whose logits are the mean of each colour channel: a frame's logits name it."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, x, name="frame_means")


@pytest.mark.parametrize("frames, k, expected", [("middle", 4, [3]), ("mean", 3, [1, 3, 5]), ("mean", 9, list(range(7)))])
def test_an_image_source_sees_the_chosen_frames_of_a_clip(frames, k, expected, tmp_path):
    """--video_source_frames: a clip of 7 frames whose frame t is flat t * 10 (+ the channel): middle is frame
    7 // 2 = 3, as the reference's inputs[:, :, T // 2]; mean of k frames averages the logits of the centres of k
    equal segments, floor((2i + 1) 7 / 2k): (1, 3, 5) for k = 3; k above T uses every frame once."""
    path = str(tmp_path / "frame_means.keras")
    _frame_logits_model().save(path)
    source = sources.build_source(path, (8, 8), source_scale=1.0, video_frames=frames, video_num_frames=k)
    assert source.frame_indices(7) == expected
    clips = np.zeros((2, 7, 8, 8, 3), np.float32)
    for t in range(7):
        clips[:, t] = t * 10 + np.arange(3)
    clips[1] += 100
    logits = source(clips).numpy()
    want = np.stack([np.mean([t * 10 + np.arange(3) + offset for t in expected], axis=0) for offset in (0, 100)])
    np.testing.assert_allclose(logits, want, rtol=1e-6)
    clone = assert_round_trips(source, clips, rtol=1e-6, atol=1e-6)
    assert clone.video_frames == frames and clone.video_num_frames == k
