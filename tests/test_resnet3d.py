"""Tests of Hara et al.'s 3D ResNets (the video targets): stage shapes, layout, shortcut A, registration.

Parameter counts and the numerics against an independent PyTorch 3D ResNet are in test_convert_torch.py.
"""

import keras
import numpy as np
import pytest

from sskt_tf import heads
from sskt_tf.errors import UserError
from sskt_tf.models import Backbone, ResNet3D, get_backbone, is_video_model
from sskt_tf.models.resnet3d import ZeroPadShortcut
from sskt_tf.names import MODEL_NAMES
from round_trip import assert_round_trips


def clips(shape, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, shape).astype(np.float32)


def assert_stages_of_a_16_frame_112_px_clip(backbone, expansion):
    widths = {f"stage{s}": w * expansion for s, w in enumerate((64, 128, 256, 512), start=1)}
    assert backbone.stage_channels == widths
    # Stem: time kept, space halved; the max-pool halves all three; layers 2-4 halve all three,
    # down to Hara et al.'s 1x4x4 last map.
    sizes = {"stage1": (8, 28, 28), "stage2": (4, 14, 14), "stage3": (2, 7, 7), "stage4": (1, 4, 4)}
    assert {k: tuple(v.shape) for k, v in backbone.output.items()} == {
        k: (None, *sizes[k], c) for k, c in widths.items()
    }


def test_stages_of_a_basic_block_network():
    assert_stages_of_a_16_frame_112_px_clip(ResNet3D(18, input_shape=(16, 112, 112, 3)), expansion=1)


def test_free_sizes_round_up_as_torch():
    backbone = get_backbone("resnet10_3d", (None, None, None, 3), shortcut="A")
    features = backbone(clips((2, 3, 36, 20, 3)))
    # torch's floor((n + 2 * pad - kernel) / stride) + 1 through stem, max-pool (= stage1), stages 2-4:
    # T 3, 2, 1, 1, 1; H 18, 9, 5, 3, 2; W 10, 5, 3, 2, 1.
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "stage1": (2, 2, 9, 5, 64),
        "stage2": (2, 1, 5, 3, 128),
        "stage3": (2, 1, 3, 2, 256),
        "stage4": (2, 1, 2, 1, 512),
    }


def test_layout_padding_and_stages_of_a_bottleneck_network_follow_3d_resnets_pytorch():
    model = ResNet3D(50, input_shape=(16, 112, 112, 3), shortcut="B")
    assert_stages_of_a_16_frame_112_px_clip(model, expansion=4)
    layer = {l.name: l for l in model.layers}
    assert layer["conv1"].kernel_size == (7, 7, 7) and layer["conv1"].strides == (1, 2, 2)
    assert layer["conv1"].padding == "valid" and layer["conv1_pad"].padding == ((3, 3), (3, 3), (3, 3))
    assert layer["maxpool"].pool_size == (3, 3, 3) and layer["maxpool"].strides == (2, 2, 2)
    assert layer["maxpool_pad"].padding == ((1, 1), (1, 1), (1, 1))
    # The stride sits on the bottleneck's 3x3x3 conv, padded 1 on every side (torch), and strides time too.
    assert layer["layer2_0_conv1"].strides == (1, 1, 1) and layer["layer2_0_conv1"].kernel_size == (1, 1, 1)
    assert layer["layer2_0_conv2"].strides == (2, 2, 2) and layer["layer2_0_conv2_pad"].padding == ((1, 1),) * 3
    assert layer["layer2_0_downsample_0"].strides == (2, 2, 2) and layer["layer1_0_downsample_0"].strides == (1, 1, 1)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert {(bn.epsilon, bn.momentum) for bn in bns} == {(1e-5, 0.9)}
    # 1 stem + 16 blocks x 3 convs + 4 projections.
    assert sum(isinstance(l, keras.layers.Conv3D) for l in model.layers) == 53
    assert model.transfer_width == 1000


def test_shortcut_a_has_no_projection_and_widens_a_bottleneck_layer1_with_zeros():
    names = {l.name for l in ResNet3D(18, (None, None, None, 3), shortcut="A").layers}
    assert {n for n in names if "downsample" in n} == {f"layer{s}_0_downsample" for s in (2, 3, 4)}
    names_b = {l.name for l in ResNet3D(18, (None, None, None, 3), shortcut="B").layers}
    projections = {f"layer{s}_0_downsample_{i}" for s in (2, 3, 4) for i in (0, 1)}
    assert {n for n in names_b if "downsample" in n} == projections
    bottleneck = ResNet3D(50, (None, None, None, 3), shortcut="A")
    widen = bottleneck.get_layer("layer1_0_downsample")
    assert isinstance(widen, ZeroPadShortcut) and (widen.stride, widen.out_channels) == (1, 256)


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = np.random.RandomState(0).randn(2, 3, 5, 4, 8).astype(np.float32)
    y = ZeroPadShortcut(2, 16)(x).numpy()
    assert y.shape == (2, 2, 3, 2, 16)  # ceil(3/2), ceil(5/2), ceil(4/2), as torch's avg_pool3d(kernel 1)
    np.testing.assert_array_equal(y[..., :8], x[:, ::2, ::2, ::2, :])
    assert not y[..., 8:].any()
    widened = ZeroPadShortcut(1, 12)(x).numpy()
    np.testing.assert_array_equal(widened[..., :8], x)
    assert widened.shape == (2, 3, 5, 4, 12) and not widened[..., 8:].any()
    layer = ZeroPadShortcut(2, 16)
    assert layer.compute_output_shape((None, None, 7, 1, 8)) == (None, None, 4, 1, 16)
    assert ZeroPadShortcut.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="widens to 4 channels"):
        ZeroPadShortcut(1, 4)(x)


def test_clips_are_centred_on_the_activitynet_mean_without_scaling():
    x = clips((1, 2, 3, 3, 3))
    normalized = ResNet3D(10, (None, None, None, 3)).get_layer("normalize")(x).numpy()
    np.testing.assert_allclose(normalized, x - np.array([114.7748, 107.7354, 99.4750]), rtol=0, atol=1e-4)


def test_config_round_trip_gives_the_same_network():
    backbone = ResNet3D(10, input_shape=(None, None, None, 3), shortcut="A", name="net")
    config = backbone.get_config()
    assert {k: config[k] for k in ("depth", "input_shape", "shortcut", "normalize", "sync_bn")} == {
        "depth": 10, "input_shape": (None, None, None, 3), "shortcut": "A", "normalize": True, "sync_bn": False,
    }
    assert_round_trips(backbone, clips((1, 4, 32, 32, 3)), pick=lambda stages: stages["stage4"], rtol=1e-5)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone)).get_config() == config


def test_video_targets_are_registered_and_take_the_shortcut():
    video = [n for n in MODEL_NAMES if is_video_model(n)]
    assert video == ["resnet10_3d", "resnet18_3d", "resnet34_3d", "resnet50_3d"]
    assert not is_video_model("resnet18") and not is_video_model("nonsense")
    backbone = get_backbone("resnet18_3d", (4, 32, 32, 3), sync_bn=True, shortcut="A")
    assert isinstance(backbone, ResNet3D) and isinstance(backbone, Backbone) and backbone.name == "resnet18_3d"
    assert (backbone.depth, backbone.shortcut, backbone.sync_bn, backbone.clip_shape) == (18, "A", True, (4, 32, 32, 3))
    assert get_backbone("resnet18", (32, 32, 3), shortcut="A").name == "resnet18"  # image networks ignore it
    with pytest.raises(UserError, match="--resnet_shortcut=C is not a shortcut. Allowed: A, B."):
        get_backbone("resnet18_3d", (4, 32, 32, 3), shortcut="C")
    with pytest.raises(ValueError, match="depth must be one of.*Received: depth=26"):
        ResNet3D(26)
    with pytest.raises(ValueError, match=r"a clip's \(T, H, W, 3\). Received: input_shape=\(112, 112, 3\)"):
        ResNet3D(18, input_shape=(112, 112, 3))


def test_heads_read_the_stages_of_a_video_target():
    backbone = get_backbone("resnet10_3d", (4, 32, 32, 3))
    features = backbone(clips((2, 4, 32, 32, 3)))
    linear = heads.build_head("linear", 7, backbone.stage_channels)
    kernel_input = features["stage4"].numpy().mean(axis=(1, 2, 3))
    out = linear(features).numpy()
    np.testing.assert_allclose(out, kernel_input @ linear.dense.kernel.numpy() + linear.dense.bias.numpy(), atol=1e-4)
    module = heads.build_head("transfer_module", 7, backbone.stage_channels, width=64, spatial_dims=3)
    assert tuple(module(features).shape) == (2, 7) and module.stage_keys == ("stage1", "stage2", "stage3", "stage4")
