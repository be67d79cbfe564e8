"""Tests of the ImageNet-style ResNets (torchvision v1.5) and the CIFAR VGG-16 targets.

Parameter counts are checked against independently published integers; the numerics against
PyTorch are in test_convert_torch.py.
"""

import keras
import numpy as np
import pytest

from sskt_tf import heads
from sskt_tf.models import Backbone, ResNet, VGG16BN, get_backbone, resnet_classifier
from sskt_tf.names import MODEL_NAMES
from round_trip import assert_round_trips

# Trainable parameters of torchvision's resnetN(num_classes=1000), as its documentation's model table
# lists them (11.7M, 21.8M, 25.6M, 44.5M, 60.2M; exact integers from torchvision's weight metadata).
TORCHVISION_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("depth", sorted(TORCHVISION_COUNTS))
def test_parameter_counts_match_torchvision(depth):
    assert trainable_count(resnet_classifier(depth, 1000)) == TORCHVISION_COUNTS[depth]


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_stage_outputs_are_named_and_shaped_at_96_and_224_px(name, expansion):
    backbone = get_backbone(name, (None, None, 3))
    channels = {f"stage{s}": w * expansion for s, w in enumerate((64, 128, 256, 512), start=1)}
    assert backbone.stage_channels == channels
    assert backbone.name == name and isinstance(backbone, ResNet)
    for size, sides in ((96, (24, 12, 6, 3)), (224, (56, 28, 14, 7))):
        x = np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        features = backbone(x)
        assert {k: tuple(v.shape) for k, v in features.items()} == {
            k: (1, side, side, c) for (k, c), side in zip(channels.items(), sides)
        }


def test_bottleneck_strides_on_the_3x3_conv_as_torchvision_v1_5():
    model = ResNet(50, input_shape=(None, None, 3))
    layer = {l.name: l for l in model.layers}
    assert layer["layer2_0_conv1"].strides == (1, 1) and layer["layer2_0_conv1"].kernel_size == (1, 1)
    assert layer["layer2_0_conv2"].strides == (2, 2) and layer["layer2_0_conv2"].kernel_size == (3, 3)
    assert layer["layer2_0_downsample_0"].strides == (2, 2)
    # Strided 3x3 convs pad 1 on every side (torch), not Keras' asymmetric "same".
    assert layer["layer2_0_conv2"].padding == "valid" and layer["layer2_0_conv2_pad"].padding == ((1, 1), (1, 1))
    assert layer["conv1"].padding == "valid" and layer["conv1_pad"].padding == ((3, 3), (3, 3))
    # layer1 of a bottleneck network widens 64 -> 256, so its first block projects without striding.
    assert layer["layer1_0_downsample_0"].strides == (1, 1)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert {(bn.epsilon, bn.momentum) for bn in bns} == {(1e-5, 0.9)}
    # 1 stem + 16 blocks x 3 convs + 4 projections.
    assert sum(isinstance(l, keras.layers.Conv2D) for l in model.layers) == 53


def test_basic_blocks_project_only_where_the_shape_changes():
    names = {l.name for l in ResNet(18, input_shape=(None, None, 3)).layers}
    assert {n for n in names if "downsample_0" in n} == {f"layer{s}_0_downsample_0" for s in (2, 3, 4)}
    assert "layer1_0_conv3" not in names


@pytest.mark.parametrize("cls, kwargs", [(ResNet, {"depth": 18}), (VGG16BN, {})])
def test_config_round_trip_gives_the_same_network(cls, kwargs):
    backbone = cls(input_shape=(None, None, 3), name="net", **kwargs)
    x = np.random.RandomState(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    last = list(backbone.stage_channels)[-1]
    assert_round_trips(backbone, x, pick=lambda stages: stages[last], rtol=1e-5)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone)).get_config() == (
        backbone.get_config()
    )


@pytest.mark.parametrize("name, transfer_width", [("resnet20", None), ("resnet18", 1000), ("vgg16_bn", None)])
def test_every_backbone_names_its_stage_outputs(name, transfer_width):
    backbone = get_backbone(name, (32, 32, 3))
    assert isinstance(backbone, Backbone) and backbone.transfer_width == transfer_width
    outputs = backbone(np.zeros((1, 32, 32, 3), np.float32))
    assert list(backbone.stage_channels) == [f"stage{s}" for s in range(1, len(outputs) + 1)]
    assert {key: out.shape[-1] for key, out in outputs.items()} == backbone.stage_channels


def test_vgg16_bn_stages_and_parameter_count():
    backbone = get_backbone("vgg16_bn", (32, 32, 3))
    features = backbone(np.zeros((2, 32, 32, 3), np.float32))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "stage1": (2, 16, 16, 64),
        "stage2": (2, 8, 8, 128),
        "stage3": (2, 4, 4, 256),
        "stage4": (2, 2, 2, 512),
        "stage5": (2, 1, 1, 512),
    }
    assert sum(isinstance(l, keras.layers.Conv2D) for l in backbone.layers) == 13
    convs_and_bns = trainable_count(backbone)
    # With Linear(512, 10): 14,728,266, the count of kuangliu/pytorch-cifar's VGG('VGG16'), the
    # "14.7M" quoted for CIFAR VGG-16.
    assert convs_and_bns + 512 * 10 + 10 == 14_728_266
    # MAXL's VGG-16 (lorenmt/maxl) has the same convolutions plus a Linear(512, 512) hidden layer:
    # its published "15.0M" for CIFAR-10.
    assert round((convs_and_bns + 512 * 512 + 512 + 512 * 10 + 10) / 1e6, 1) == 15.0


def test_transfer_module_on_four_stages_with_the_reference_width():
    backbone = get_backbone("resnet18", (64, 64, 3))
    head = heads.build_head("transfer_module", 365, backbone.stage_channels, width=backbone.transfer_width)
    out = head(backbone(np.zeros((2, 64, 64, 3), np.float32)))
    assert tuple(out.shape) == (2, 365)
    assert head.stage_keys == ("stage1", "stage2", "stage3", "stage4")
    for key, cin in backbone.stage_channels.items():
        branch = next(b for b in head.branches if b.name == f"{key}_branch")
        convs = [l for l in branch.layers if isinstance(l, keras.layers.Conv2D)]
        # 2D_SSKT/models/resnet.py, aggregation_feature: 1000-wide branches, middle 500.
        assert [tuple(c.kernel.shape) for c in convs] == [(1, 1, cin, 500), (3, 3, 500, 500), (1, 1, 500, 1000)]
    assert tuple(head.dense.kernel.shape) == (1000, 365)


def test_transfer_module_defaults_to_the_last_stage_width_on_vgg():
    backbone = get_backbone("vgg16_bn", (32, 32, 3))
    head = heads.build_head("transfer_module", 10, backbone.stage_channels)
    assert tuple(head(backbone(np.zeros((1, 32, 32, 3), np.float32))).shape) == (1, 10)
    assert len(head.branches) == 5 and (head.middle_channels, head.out_channels) == (256, 512)


def test_new_targets_are_registered():
    for name in ("resnet18", "resnet34", "resnet50", "vgg16_bn"):
        assert name in MODEL_NAMES
    assert get_backbone("resnet50", (96, 96, 3), sync_bn=True).sync_bn
    with pytest.raises(ValueError, match="depth must be one of.*Received: depth=26"):
        ResNet(26)
