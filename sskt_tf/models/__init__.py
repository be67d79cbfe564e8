"""Target networks, by name. Every backbone takes raw [0, 255] images and returns named stage outputs."""

from sskt_tf.errors import UserError
from sskt_tf.models.cifar_resnet import CifarResNet
from sskt_tf.models.layers import Classifier, ImageNormalization, class_names_of
from sskt_tf.models.resnet import ResNet, resnet_classifier
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
    """Builds the backbone called `name` (the `--model` flag) for images of `input_shape`."""
    if name not in _BACKBONES:
        raise UserError(f"--model={name} is not a known target network. Allowed: {', '.join(MODEL_NAMES)}.")
    return _BACKBONES[name](tuple(input_shape), sync_bn=sync_bn)


__all__ = ["CifarResNet", "ImageNormalization", "ResNet", "VGG16BN", "get_backbone", "resnet_classifier"]
