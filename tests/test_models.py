"""Tests of the target networks and their layers: published parameter counts, stage outputs,
option-A shortcuts, PyTorch's adaptive average pooling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskt_tf.errors import UserError
from sskt_tf.models import CifarResNet, ImageNormalization, get_backbone
from sskt_tf.models.cifar_resnet import OptionAShortcut
from sskt_tf.models.layers import AdaptiveAveragePooling2D, adaptive_pool_bins
from round_trip import assert_round_trips

# Trainable parameters with a 10-class classifier. Published (He et al. 2016, table 6): 0.27M, 0.46M,
# 0.66M, 0.85M, 1.7M (rounded); the exact integers are those of the widely used PyTorch
# re-implementation (akamaster/pytorch_resnet_cifar10), counted independently of this code.
EXACT = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
PUBLISHED_MILLIONS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("depth", sorted(EXACT))
def test_parameter_counts(depth):
    backbone = get_backbone(f"resnet{depth}", (32, 32, 3))
    count = trainable_count(backbone) + 64 * 10 + 10  # + the classifier Dense(64 -> 10)
    assert count == EXACT[depth]
    # The published figure is the exact count rounded to two significant digits.
    assert float(f"{count / 1e6:.2g}") == PUBLISHED_MILLIONS[depth]


def test_stage_outputs_are_named_and_shaped():
    backbone = CifarResNet(20)
    features = backbone(np.zeros((2, 32, 32, 3), np.float32))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "stage1": (2, 32, 32, 16),
        "stage2": (2, 16, 16, 32),
        "stage3": (2, 8, 8, 64),
    }
    assert backbone.stage_channels == {"stage1": 16, "stage2": 32, "stage3": 64}
    # 3 blocks per stage x 2 convs + stem = 19 convolutions (+ classifier = 20 layers).
    assert sum(isinstance(l, keras.layers.Conv2D) for l in backbone.layers) == 19


def test_option_a_shortcut_is_strided_identity_with_zero_channels():
    x = np.random.RandomState(0).randn(2, 4, 4, 16).astype(np.float32)
    y = OptionAShortcut(2, 32)(x).numpy()
    assert y.shape == (2, 2, 2, 32)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    assert not y[..., :8].any() and not y[..., 24:].any()


def test_image_normalization_matches_imagenet_formula():
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ImageNormalization()(x).numpy(), (x / 255.0 - mean) / std, rtol=1e-5)


def test_config_round_trip_gives_the_same_network(tmp_path):
    backbone = CifarResNet(20, input_shape=(None, None, 3), name="r20")
    x = np.random.RandomState(1).uniform(0, 255, (2, 24, 24, 3)).astype(np.float32)
    assert_round_trips(backbone, x, tmp_path, pick=lambda stages: stages["stage3"])


def test_unknown_depth_and_name():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)
    with pytest.raises(UserError, match="--model=resnet19.*resnet20"):
        get_backbone("resnet19", (32, 32, 3))


def _torch_adaptive_average_pool(x, output_size):
    import torch  # In the [dev] extra, as for test_convert_torch.py: this test must run, never skip.
    pooled = torch.nn.AdaptiveAvgPool2d(output_size)(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    return pooled.numpy().transpose(0, 2, 3, 1)


def test_adaptive_pool_bins_are_pytorchs():
    # Hand-computed [floor(i*in/out), ceil((i+1)*in/out)): 2 -> 7 repeats each input, with one mixed cell.
    assert adaptive_pool_bins(2, 7) == [(0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (1, 2), (1, 2)]
    assert adaptive_pool_bins(10, 7) == [(0, 2), (1, 3), (2, 5), (4, 6), (5, 8), (7, 9), (8, 10)]
    assert adaptive_pool_bins(7, 7) == [(i, i + 1) for i in range(7)]


@pytest.mark.parametrize(
    "in_size, out_size", [((2, 2), (7, 7)), ((3, 3), (7, 7)), ((10, 10), (7, 7)), ((1, 1), (7, 7)), ((5, 13), (3, 7))]
)
def test_adaptive_average_pooling_matches_torch(in_size, out_size):
    x = np.random.RandomState(sum(in_size)).randn(2, *in_size, 5).astype(np.float32)
    expected = _torch_adaptive_average_pool(x, out_size)
    pool = AdaptiveAveragePooling2D(out_size)
    np.testing.assert_allclose(pool(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    # Also with H and W unknown until the graph runs (a converted source with free input size).
    dynamic = tf.function(pool, input_signature=[tf.TensorSpec((None, None, None, 5), tf.float32)])
    np.testing.assert_allclose(dynamic(x).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_adaptive_average_pooling_to_its_own_size_is_the_identity():
    x = np.random.RandomState(0).randn(2, 7, 7, 3).astype(np.float32)
    np.testing.assert_array_equal(AdaptiveAveragePooling2D(7)(x).numpy(), x)
    dynamic = tf.function(AdaptiveAveragePooling2D(7), input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_array_equal(dynamic(x).numpy(), x)


def test_adaptive_average_pooling_in_a_saved_model(tmp_path):
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, AdaptiveAveragePooling2D((7, 3), name="avgpool")(inputs))
    assert model.output_shape == (None, 7, 3, 4)
    layer = model.get_layer("avgpool")
    assert AdaptiveAveragePooling2D.from_config(layer.get_config()).get_config() == layer.get_config()
    model.save(tmp_path / "pool.keras")
    reloaded = keras.saving.load_model(tmp_path / "pool.keras")
    x = np.random.RandomState(1).randn(1, 9, 5, 4).astype(np.float32)
    np.testing.assert_allclose(reloaded(x).numpy(), _torch_adaptive_average_pool(x, (7, 3)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"output_size must be two positive ints. Received: output_size=\(0, 7\)"):
        AdaptiveAveragePooling2D((0, 7))


_BN_WEIGHTS = [np.random.RandomState(0).uniform(0.5, 2, 4).astype("float32") for _ in range(4)]  # gamma, beta, mean, var


def _bn_pair(shape=(None, 5, 6, 4)):
    """Our BatchNormalization and Keras', built alike with the same (non-trivial) weights."""
    from sskt_tf.models.layers import BatchNormalization

    ours, theirs = BatchNormalization(momentum=0.9, epsilon=1e-5), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.set_weights(_BN_WEIGHTS)
    return ours, theirs


@pytest.mark.parametrize("shape", [(8, 5, 6, 4), (4, 2, 5, 6, 4)], ids=["images", "clips"])
def test_batch_normalization_trains_as_keras_and_runs_the_fused_kernel(shape):
    import tensorflow as tf

    ours, theirs = _bn_pair((None, *shape[1:]))
    x = tf.constant(np.random.RandomState(1).normal(3, 2, shape).astype("float32"))
    upstream = tf.constant(np.random.RandomState(2).normal(0, 1, shape).astype("float32"))
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-5)
    # Moving variance follows the biased batch variance over every axis but the channels (Keras'),
    # not the kernel's unbiased one.
    biased = np.var(x.numpy(), axis=tuple(range(len(shape) - 1)))
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 * _BN_WEIGHTS[3] + 0.1 * biased, rtol=1e-5)
    # The fused kernel is what ran: its op is in the traced training graph, and not in inference.
    graph = tf.function(lambda t, training: ours(t, training=training))
    ops = lambda training: {op.type for op in graph.get_concrete_function(x, training).graph.get_operations()}  # noqa: E731
    assert "FusedBatchNormV3" in ops(True) and "FusedBatchNormV3" not in ops(False)
    # Same variable names as Keras' (checkpoints of either load into the other) and a round-tripping config.
    assert [w.path for w in ours.weights] == [w.path.replace(theirs.name, ours.name) for w in theirs.weights]
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()


def test_batch_normalization_leaves_other_ranks_to_keras():
    import tensorflow as tf

    ours, theirs = _bn_pair((None, 3, 4))
    x = tf.constant(np.random.RandomState(1).normal(3, 2, (8, 3, 4)).astype("float32"))
    np.testing.assert_array_equal(ours(x, training=True).numpy(), theirs(x, training=True).numpy())
    graph = tf.function(lambda t: ours(t, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    "shape, keras_pool",
    [((2, 5, 3, 4), keras.layers.GlobalAveragePooling2D), ((2, 3, 5, 2, 4), keras.layers.GlobalAveragePooling3D)],
    ids=["images", "clips"],
)
def test_global_average_pooling_of_images_and_clips(shape, keras_pool):
    from sskt_tf.models.layers import GlobalAveragePooling

    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    pooled = GlobalAveragePooling(name="pool")(x).numpy()
    np.testing.assert_allclose(pooled, x.mean(axis=tuple(range(1, len(shape) - 1))), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pooled, keras_pool()(x).numpy(), rtol=1e-6, atol=1e-6)
    assert GlobalAveragePooling().compute_output_shape((None, *[None] * (len(shape) - 2), 4)) == (None, 4)
    inputs = keras.Input((None,) * (len(shape) - 2) + (4,))
    assert keras.Model(inputs, GlobalAveragePooling()(inputs)).output_shape == (None, 4)


def test_global_average_pooling_round_trips(tmp_path):
    from sskt_tf.models.layers import GlobalAveragePooling

    assert_round_trips(GlobalAveragePooling(name="pool"), np.random.RandomState(0).randn(2, 3, 4, 4, 5), tmp_path)


def test_resnet20_steps_to_the_same_loss_and_weights_with_the_fused_batch_norm_as_with_keras(monkeypatch):
    from sskt_tf import methods, optim
    from sskt_tf.config import Config
    from sskt_tf.models import cifar_resnet

    # Small images and batch: the check is of the arithmetic, which does not depend on the size.
    config = Config(dataset="synthetic", model="resnet20", batch_size=8)
    images = np.random.RandomState(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = np.arange(8) % 10
    losses, models, initial = [], [], None
    for bn in (cifar_resnet.BatchNormalization, keras.layers.BatchNormalization):
        monkeypatch.setattr(cifar_resnet, "BatchNormalization", bn)
        keras.utils.set_random_seed(0)
        model = methods.build_model(config, (16, 16), 10)
        initial = initial or model.get_weights()
        model.set_weights(initial)
        model.compile(optimizer=optim.build_optimizer(config, 100))
        losses.append(model.train_on_batch(images, labels, return_dict=True)["loss"])
        models.append(model)
    fused = [type(layer).__module__ for layer in models[0].backbone.layers if "BatchNormalization" in type(layer).__name__]
    assert len(fused) == 19 and set(fused) == {"sskt_tf.models.layers"}
    # One SGD step from the same weights on the same batch: the same loss, and the same weights after
    # it (moving statistics included) within float32 rounding. (Over many steps at lr 0.1 rounding
    # differences grow, as between any two orders of the same sums.)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(models[0].get_weights(), initial))
