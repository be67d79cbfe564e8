"""torchvision's ImageNet ResNets (v1.5): ResNet-18/34 (basic blocks), ResNet-50/101/152 (bottlenecks).

Layer names follow torchvision's module paths with "." -> "_" (`layer1.0.conv1` -> `layer1_0_conv1`),
so that `sskt_tf.convert_torch` maps a PyTorch state dict onto these networks name by name.
"""

import keras

from sskt_tf.models.backbone import Backbone
from sskt_tf.models.layers import BatchNormalization, ImageNormalization

# depth -> (block kind, blocks per stage), as torchvision's resnet18 ... resnet152.
CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}


def _check_depth(depth):
    if depth not in CONFIGS:
        raise ValueError(f"ResNet depth must be one of {sorted(CONFIGS)}. Received: depth={depth}")


def _conv(x, filters, size, stride, name):
    # PyTorch pads k // 2 on every side; Keras "same" pads (0, 1) for even inputs at stride 2,
    # which shifts the sampling grid. Explicit padding + "valid" gives torch's numbers exactly.
    if size > 1 and stride > 1:
        x = keras.layers.ZeroPadding2D(size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # Identical to torch's padding at stride 1 with odd kernels.
    return keras.layers.Conv2D(
        filters,
        size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        name=name,
    )(x)


def _bn(x, name, sync_bn):
    # PyTorch BatchNorm2d defaults (momentum 0.1, eps 1e-5), as torchvision.
    return BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        synchronized=sync_bn,
        name=name,
    )(x)


def _block(x, kind, width, stride, name, sync_bn):
    out_channels = width * _EXPANSION[kind]
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, f"{name}_downsample_0")
        shortcut = _bn(shortcut, f"{name}_downsample_1", sync_bn)
    if kind == "basic":
        y = _conv(x, width, 3, stride, f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", sync_bn))
        y = _bn(_conv(y, width, 3, 1, f"{name}_conv2"), f"{name}_bn2", sync_bn)
    else:
        # v1.5: the stride sits on the 3x3 conv (v1, e.g. Keras' ResNet50, strides the first 1x1).
        y = _conv(x, width, 1, 1, f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", sync_bn))
        y = _conv(y, width, 3, stride, f"{name}_conv2")
        y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(y, f"{name}_bn2", sync_bn))
        y = _bn(_conv(y, out_channels, 1, 1, f"{name}_conv3"), f"{name}_bn3", sync_bn)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def resnet_stages(images, depth, normalize=True, sync_bn=False):
    """Applies a torchvision ResNet up to `layer4` to the Keras tensor `images`.

    Args:
        images: raw [0, 255] RGB images, a Keras tensor [B, H, W, 3].
        depth: 18, 34, 50, 101 or 152.
        normalize: prepend the ImageNet mean/std normalisation (torchvision's).
        sync_bn: BatchNorm statistics over all replicas.

    Returns:
        `{"stage1": layer1 output, ..., "stage4": layer4 output}`, Keras tensors
        `[B, H/4, W/4, C1]` ... `[B, H/32, W/32, C4]` (C = 64/128/256/512, x4 for bottlenecks).

    Raises:
        ValueError: a depth not in `CONFIGS`.
    """
    _check_depth(depth)
    kind, blocks = CONFIGS[depth]
    x = ImageNormalization(name="normalize")(images) if normalize else images
    x = _conv(x, 64, 7, 2, "conv1")
    x = keras.layers.ReLU(name="relu")(_bn(x, "bn1", sync_bn))
    # Zero padding equals torch's -inf padding here: the inputs are ReLU outputs, >= 0.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    outputs = {}
    for s, (width, n) in enumerate(zip(STAGE_WIDTHS, blocks), start=1):
        for b in range(n):
            stride = 2 if (s > 1 and b == 0) else 1
            x = _block(x, kind, width, stride, f"layer{s}_{b}", sync_bn)
        outputs[f"stage{s}"] = x
    return outputs


@keras.saving.register_keras_serializable(package="sskt_tf")
class ResNet(Backbone):
    """torchvision's ImageNet ResNet (v1.5) backbone, for 96-224 px targets.

    7x7/2 stem conv + BN + ReLU + 3x3/2 max-pool, then four stages of basic
    (ResNet-18/34) or bottleneck (ResNet-50/101/152, stride on the 3x3 conv)
    blocks with 1x1 projection shortcuts where the shape changes. Takes raw
    [0, 255] RGB images and returns `{"stage1": [B,H/4,W/4,C1], "stage2":
    [B,H/8,W/8,C2], "stage3": [B,H/16,W/16,C3], "stage4": [B,H/32,W/32,C4]}`
    with C = 64/128/256/512 (x4 for bottlenecks); the classifier pools
    `stage4`, the transfer module reads all four. Padding, BatchNorm epsilon
    and layer names match torchvision, so converted PyTorch weights give
    torch's numbers (see `sskt_tf.convert_torch`).

    Args:
        depth: 18, 34, 50, 101 or 152.
        input_shape: image shape (H, W, 3) in pixels; H and W may be None.
        normalize: prepend the ImageNet mean/std normalisation of raw images.
        sync_bn: BatchNorm statistics over all replicas of a tf.distribute strategy.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: a depth not in `CONFIGS`.

    Example:
    >>> backbone = ResNet(depth=18, input_shape=(96, 96, 3))
    >>> features = backbone(keras.ops.ones((2, 96, 96, 3)))
    >>> features["stage4"].shape
    TensorShape([2, 3, 3, 512])

    Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for
    Image Recognition", CVPR 2016; torchvision.models.resnet (v1.5).
    """

    def __init__(self, depth=50, input_shape=(224, 224, 3), normalize=True, sync_bn=False, **kwargs):
        _check_depth(depth)

        # === Functional Model ===
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        outputs = resnet_stages(inputs, depth, normalize=normalize, sync_bn=sync_bn)
        super().__init__(inputs, outputs, **kwargs)

        # === Config ===
        self.depth = depth
        self.image_shape = tuple(input_shape)
        self.normalize = normalize
        self.sync_bn = sync_bn
        # The reference's transfer module for these targets has 1000-wide branches
        # (2D_SSKT/models/resnet.py, aggregation_feature), not the last stage's width.
        self.transfer_width = 1000

    def get_config(self):
        config = super().get_config()
        config.update(
            {"depth": self.depth, "input_shape": self.image_shape, "normalize": self.normalize, "sync_bn": self.sync_bn}
        )
        return config


def resnet_classifier(depth, num_classes=1000, input_shape=(None, None, 3), name=None):
    """A whole torchvision ResNet as one plain functional model: raw images -> logits.

    The backbone of `ResNet`, global average pooling and `Dense(num_classes)`
    named `fc`, all in one flat graph (no nested model), so that the model can
    serve as a `/path/model.keras` source, also with `--source_bn=batch`
    (which clones it layer by layer).

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: classifier width (1000 for ImageNet, 365 for Places365).
        input_shape: image shape; free H and W let the source follow `--source_scale`.
        name: model name; default `resnet{depth}`.

    Returns:
        A `keras.Model`, float raw RGB `[B, H, W, 3]` in 0..255 -> logits `[B, num_classes]`.

    Raises:
        ValueError: a depth not in `CONFIGS`.

    Example:
    >>> model = resnet_classifier(50, num_classes=365)
    >>> model(keras.ops.ones((1, 224, 224, 3))).shape
    TensorShape([1, 365])
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    features = resnet_stages(inputs, depth)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(features["stage4"])
    logits = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, logits, name=name or f"resnet{depth}")
