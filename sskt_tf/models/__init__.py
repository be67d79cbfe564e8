"""Target networks and the models that train them.

- `Backbone` and the backbones by name (`get_backbone`): raw [0, 255] images (or video clips, for the
  3D ResNets; `is_video_model`) -> named stage outputs.
- `TrainingModel`: the base of every model `fit` trains (the shared end of each training step).
- `TargetModel`: backbone -> pooling -> classifier; the base of SSKT, KD and MAXL, DML's peers.
"""

from sskt_tf.errors import UserError
from sskt_tf.models.backbone import Backbone
from sskt_tf.models.cifar_resnet import CifarResNet
from sskt_tf.models.layers import Classifier, ImageNormalization, class_names_of
from sskt_tf.models.resnet import ResNet, resnet_classifier
from sskt_tf.models.resnet3d import ResNet3D, resnet3d_classifier
from sskt_tf.models.target_model import TargetMetrics, TargetModel
from sskt_tf.models.training_model import TrainingModel
from sskt_tf.models.vgg import VGG16BN
from sskt_tf.names import MODEL_NAMES, RESNET_SHORTCUTS

# name -> constructor(input_shape, sync_bn, shortcut) of a backbone whose outputs are {"stage1", ...,
# "stageN"}; the names, in order, are sskt_tf.names.MODEL_NAMES (the --model choices; tests/test_names.py
# checks it). Only the 3D ResNets read `shortcut`.
def _cifar_resnet(depth):
    def build(input_shape, sync_bn=False, shortcut=None):
        return CifarResNet(depth, input_shape, sync_bn=sync_bn, name=f"resnet{depth}")

    return build


def _imagenet_resnet(depth):
    def build(input_shape, sync_bn=False, shortcut=None):
        return ResNet(depth, input_shape, sync_bn=sync_bn, name=f"resnet{depth}")

    return build


def _video_resnet(depth):
    def build(input_shape, sync_bn=False, shortcut="B"):
        return ResNet3D(depth, input_shape, shortcut=shortcut, sync_bn=sync_bn, name=f"resnet{depth}_3d")

    return build


def _vgg16_bn(input_shape, sync_bn=False, shortcut=None):
    return VGG16BN(input_shape, sync_bn=sync_bn, name="vgg16_bn")


_BACKBONES = {f"resnet{depth}": _cifar_resnet(depth) for depth in (20, 32, 44, 56, 110)}
_BACKBONES.update({f"resnet{depth}": _imagenet_resnet(depth) for depth in (18, 34, 50)})
_BACKBONES["vgg16_bn"] = _vgg16_bn
_VIDEO_BACKBONES = {f"resnet{depth}_3d": _video_resnet(depth) for depth in (10, 18, 34, 50)}
_BACKBONES.update(_VIDEO_BACKBONES)


def is_video_model(name):
    """Whether the target network `name` (the `--model` flag) takes video clips `[B, T, H, W, 3]`.

    Args:
        name: a target network's name (`sskt_tf.names.MODEL_NAMES`).

    Returns:
        True for the 3D ResNets (`resnet10_3d` ... `resnet50_3d`), False for the image networks
        and for names that are not target networks.
    """
    return name in _VIDEO_BACKBONES


def get_backbone(name, input_shape, sync_bn=False, shortcut="B"):
    """Builds the backbone called `name` (the `--model` flag) for images or clips of `input_shape`.

    `resnet20` ... `resnet110` are the CIFAR ResNets (`CifarResNet`, three stages of 16/32/64
    channels), `resnet18/34/50` torchvision's ImageNet ResNets (`ResNet`, four stages), `vgg16_bn`
    the CIFAR VGG-16 (`VGG16BN`, five stages), `resnet10_3d/18_3d/34_3d/50_3d` Hara et al.'s 3D
    ResNets for video clips (`ResNet3D`, four stages; `is_video_model`). Weights are drawn from
    Keras' global generator (`keras.utils.set_random_seed` fixes them).

    Args:
        name: one of `sskt_tf.names.MODEL_NAMES`.
        input_shape: `(H, W, 3)` in pixels for image networks, `(T, H, W, 3)` (frames, pixels) for
            video networks; the sizes may be None.
        sync_bn: BatchNorm statistics over all replicas of a `tf.distribute` strategy.
        shortcut: the 3D ResNets' shortcut where a block changes the shape (`--resnet_shortcut`,
            `sskt_tf.names.RESNET_SHORTCUTS`): "A" zero-padded identity, "B" 1x1x1 projection.
            The image networks ignore it (theirs are fixed by their papers).

    Returns:
        A `Backbone`, named `name`: float raw RGB `[B, H, W, 3]` (or `[B, T, H, W, 3]`) in 0..255 ->
        dict of stage outputs `{"stage1": [B, H_1, W_1, C_1], ...}` (`[B, T_1, H_1, W_1, C_1]`;
        `stage_channels` gives each C).

    Raises:
        UserError: an unknown `name` or `shortcut`; the message lists the allowed ones.
    """
    if name not in _BACKBONES:
        raise UserError(f"--model={name} is not a known target network. Allowed: {', '.join(MODEL_NAMES)}.")
    if shortcut not in RESNET_SHORTCUTS:
        raise UserError(f"--resnet_shortcut={shortcut} is not a shortcut. Allowed: {', '.join(RESNET_SHORTCUTS)}.")
    return _BACKBONES[name](tuple(input_shape), sync_bn=sync_bn, shortcut=shortcut)


__all__ = [
    "Backbone",
    "CifarResNet",
    "ImageNormalization",
    "ResNet",
    "ResNet3D",
    "TargetMetrics",
    "TargetModel",
    "TrainingModel",
    "VGG16BN",
    "get_backbone",
    "is_video_model",
    "resnet3d_classifier",
    "resnet_classifier",
]
