"""Target networks and the models that train them.

- `Backbone` and the backbones by name (`get_backbone`): raw [0, 255] images -> named stage outputs.
- `TrainingModel`: the base of every model `fit` trains (the shared end of each training step).
- `TargetModel`: backbone -> pooling -> classifier; the base of SSKT, KD and MAXL, DML's peers.
"""

from sskt_tf.errors import UserError
from sskt_tf.models.backbone import Backbone
from sskt_tf.models.cifar_resnet import CifarResNet
from sskt_tf.models.layers import Classifier, ImageNormalization, class_names_of
from sskt_tf.models.resnet import ResNet, resnet_classifier
from sskt_tf.models.target_model import TargetMetrics, TargetModel
from sskt_tf.models.training_model import TrainingModel
from sskt_tf.models.vgg import VGG16BN
from sskt_tf.names import MODEL_NAMES

# name -> constructor(input_shape, sync_bn) of a backbone whose outputs are {"stage1", ..., "stageN"}; the
# names, in order, are sskt_tf.names.MODEL_NAMES (the --model choices; tests/test_names.py checks it).
def _cifar_resnet(depth):
    def build(input_shape, sync_bn=False):
        return CifarResNet(depth, input_shape, sync_bn=sync_bn, name=f"resnet{depth}")

    return build


def _imagenet_resnet(depth):
    def build(input_shape, sync_bn=False):
        return ResNet(depth, input_shape, sync_bn=sync_bn, name=f"resnet{depth}")

    return build


def _vgg16_bn(input_shape, sync_bn=False):
    return VGG16BN(input_shape, sync_bn=sync_bn, name="vgg16_bn")


_BACKBONES = {f"resnet{depth}": _cifar_resnet(depth) for depth in (20, 32, 44, 56, 110)}
_BACKBONES.update({f"resnet{depth}": _imagenet_resnet(depth) for depth in (18, 34, 50)})
_BACKBONES["vgg16_bn"] = _vgg16_bn


def get_backbone(name, input_shape, sync_bn=False):
    """Builds the backbone called `name` (the `--model` flag) for images of `input_shape`.

    `resnet20` ... `resnet110` are the CIFAR ResNets (`CifarResNet`, three stages of 16/32/64
    channels), `resnet18/34/50` torchvision's ImageNet ResNets (`ResNet`, four stages), `vgg16_bn`
    the CIFAR VGG-16 (`VGG16BN`, five stages). Weights are drawn from Keras' global generator
    (`keras.utils.set_random_seed` fixes them).

    Args:
        name: one of `sskt_tf.names.MODEL_NAMES`.
        input_shape: `(H, W, 3)` in pixels; H and W may be None.
        sync_bn: BatchNorm statistics over all replicas of a `tf.distribute` strategy.

    Returns:
        A `Backbone`, named `name`: float raw RGB `[B, H, W, 3]` in 0..255 -> dict of stage outputs
        `{"stage1": [B, H_1, W_1, C_1], ...}` (`stage_channels` gives each C).

    Raises:
        UserError: an unknown `name`; the message lists the allowed ones.
    """
    if name not in _BACKBONES:
        raise UserError(f"--model={name} is not a known target network. Allowed: {', '.join(MODEL_NAMES)}.")
    return _BACKBONES[name](tuple(input_shape), sync_bn=sync_bn)


__all__ = [
    "Backbone",
    "CifarResNet",
    "ImageNormalization",
    "ResNet",
    "TargetMetrics",
    "TargetModel",
    "TrainingModel",
    "VGG16BN",
    "get_backbone",
    "resnet_classifier",
]
