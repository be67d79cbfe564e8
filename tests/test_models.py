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
