"""VGGs: VGG-16 with BatchNorm for 32 px CIFAR images (the target of the paper's MAXL comparison)
and torchvision's ImageNet VGGs (the paper's VGG-16 source, ported by `sskt_tf.convert_torch`)."""

import keras

from sskt_tf.models.backbone import Backbone
from sskt_tf.models.layers import AdaptiveAveragePooling2D, BatchNormalization, ImageNormalization

# Conv widths per block; every block ends with a 2x2 max-pool. The common CIFAR variant
# (kuangliu/pytorch-cifar's VGG('VGG16')); MAXL's VGG-16 (lorenmt/maxl) has the same 13 conv
# layers but a Linear(512, 512) + ReLU hidden layer before its classifier.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@keras.saving.register_keras_serializable(package="sskt_tf")
class VGG16BN(Backbone):
    """CIFAR VGG-16 with BatchNorm: 13 conv3x3 + BN + ReLU layers in five max-pooled blocks.

    Takes raw [0, 255] RGB images and returns a dict with the output of each
    block after its max-pool, `{"stage1": [B,H/2,W/2,64], "stage2":
    [B,H/4,W/4,128], "stage3": [B,H/8,W/8,256], "stage4": [B,H/16,W/16,512],
    "stage5": [B,H/32,W/32,512]}`. At 32 px `stage5` is 1x1x512, so the
    classifier's global pooling of `stage5` followed by `Dense(classes)` is the
    usual CIFAR VGG's flatten + `Linear(512, classes)`. The transfer module
    gets a branch per block (its stride-2 3x3 conv maps the 1x1 `stage5` to
    1x1). Convolutions keep their bias, as in the PyTorch CIFAR VGGs. With a
    10-class `Dense` classifier the network has 14,728,266 trainable
    parameters, the "14.7M" usually quoted for CIFAR VGG-16; MAXL's VGG-16
    adds a Linear(512, 512) hidden layer: 14,990,922, its "15.0M".

    Args:
        input_shape: image shape (H, W, 3) in pixels; H and W may be None.
        normalize: prepend the ImageNet mean/std normalisation of raw images.
        sync_bn: BatchNorm statistics over all replicas of a tf.distribute strategy.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:
    >>> backbone = VGG16BN()
    >>> features = backbone(keras.ops.ones((2, 32, 32, 3)))
    >>> features["stage5"].shape
    TensorShape([2, 1, 1, 512])

    Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for
    Large-Scale Image Recognition", ICLR 2015; S. Liu, A. Davison, E. Johns,
    "Self-Supervised Generalisation with Meta Auxiliary Learning", NeurIPS 2019.
    """

    def __init__(self, input_shape=(32, 32, 3), normalize=True, sync_bn=False, **kwargs):
        # === Functional Model ===
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        x = ImageNormalization(name="normalize")(inputs) if normalize else inputs
        outputs = {}
        for s, widths in enumerate(BLOCKS, start=1):
            for c, width in enumerate(widths, start=1):
                name = f"block{s}_conv{c}"
                x = keras.layers.Conv2D(
                    width, 3, padding="same", kernel_initializer="he_normal", name=name
                )(x)
                # PyTorch BatchNorm2d defaults (momentum 0.1, eps 1e-5).
                x = BatchNormalization(
                    momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=f"{name}_bn"
                )(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{s}_pool")(x)
            outputs[f"stage{s}"] = x
        super().__init__(inputs, outputs, **kwargs)

        # === Config ===
        self.image_shape = tuple(input_shape)
        self.normalize = normalize
        self.sync_bn = sync_bn

    def get_config(self):
        config = super().get_config()
        config.update({"input_shape": self.image_shape, "normalize": self.normalize, "sync_bn": self.sync_bn})
        return config


# torchvision's VGG configurations (Simonyan & Zisserman's A, B, D, E): conv widths, "M" a 2x2 max-pool.
TORCHVISION_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
# torchvision pools the last feature map to 7x7 whatever the input size (224 px gives 7x7 already).
POOLED_SIZE = 7


def features_layout(depth, batch_norm=False):
    """torchvision's `features` Sequential of VGG-`depth`: a list of (index, kind, width).

    `kind` is "conv", "bn", "relu" or "pool"; the index is the module's position in
    `features`, i.e. the N of the state-dict keys `features.N.weight`.

    Args:
        depth: 11, 13, 16 or 19.
        batch_norm: the `_bn` variants (BatchNorm after every conv).

    Returns:
        A list of `(index, kind, width)`: width the conv's (and its BatchNorm's) output channels,
        None for pools.

    Raises:
        ValueError: a depth not in `TORCHVISION_CONFIGS`.
    """
    if depth not in TORCHVISION_CONFIGS:
        raise ValueError(f"VGG depth must be one of {sorted(TORCHVISION_CONFIGS)}. Received: depth={depth}")
    layout, index = [], 0
    for entry in TORCHVISION_CONFIGS[depth]:
        kinds = ("pool",) if entry == "M" else ("conv", "bn", "relu") if batch_norm else ("conv", "relu")
        for kind in kinds:
            layout.append((index, kind, None if entry == "M" else entry))
            index += 1
    return layout


def vgg_classifier(
    depth,
    batch_norm=False,
    num_classes=1000,
    input_shape=(None, None, 3),
    widths=None,
    hidden=4096,
    random_init=True,
    name=None,
):
    """torchvision's ImageNet VGG as one plain functional model: raw images -> logits.

    `features` (3x3 convs with bias, [BatchNorm,] ReLU, 2x2 max-pools), adaptive
    average pooling to 7x7 with PyTorch's bins (`AdaptiveAveragePooling2D`), so
    that any input of at least 32 px works as in torchvision, then Flatten and
    `classifier` (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear). Layer
    names are torchvision's module paths with "." -> "_" (`features.0` ->
    `features_0`, `classifier.6` -> `classifier_6`), so that
    `sskt_tf.convert_torch` maps a state dict onto it by name. The Flatten is
    Keras' (H, W, C) order, not PyTorch's (C, H, W): converted `classifier.0`
    weights must be reordered (the converter does).

    Args:
        depth: 11, 13, 16 or 19.
        batch_norm: the `_bn` variants (BatchNorm after every conv).
        num_classes: classifier width (1000 for ImageNet).
        input_shape: image shape; free H and W let a source follow `--source_scale`.
        widths: conv widths, one per conv; default torchvision's (64 ... 512).
        hidden: width of the two hidden Linear layers (torchvision: 4096).
        random_init: torchvision's random initialisation; False starts from zeros, for callers
            that set every weight (drawing VGG-16's 138M random numbers takes seconds).
        name: model name; default `vgg{depth}` (+ `_bn`).

    Returns:
        A `keras.Model`, float raw RGB `[B, H, W, 3]` in 0..255 (H, W >= 32) -> logits
        `[B, num_classes]`.

    Raises:
        ValueError: a depth not in `TORCHVISION_CONFIGS`, or not one width per convolution.

    Example:
    >>> model = vgg_classifier(16)
    >>> model(keras.ops.ones((1, 74, 74, 3))).shape
    TensorShape([1, 1000])
    """
    layout = features_layout(depth, batch_norm)
    convs = [index for index, kind, _ in layout if kind == "conv"]
    widths = tuple(int(w) for w in (widths or [w for _, kind, w in layout if kind == "conv"]))
    if len(widths) != len(convs):
        raise ValueError(f"VGG-{depth} has {len(convs)} convolutions. Received: {len(widths)} widths")
    width_of = dict(zip(convs, widths))
    # torchvision's VGG initialisation: Kaiming normal (fan_out) convolutions, N(0, 0.01) Linear layers.
    conv_init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal") if random_init else "zeros"
    dense_init = keras.initializers.RandomNormal(stddev=0.01) if random_init else "zeros"

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = ImageNormalization(name="normalize")(inputs)
    for index, kind, _ in layout:
        layer_name = f"features_{index}"
        if kind == "conv":
            x = keras.layers.Conv2D(
                width_of[index], 3, padding="same", kernel_initializer=conv_init, name=layer_name
            )(x)
        elif kind == "bn":
            x = BatchNormalization(momentum=0.9, epsilon=1e-5, name=layer_name)(x)
        elif kind == "relu":
            x = keras.layers.ReLU(name=layer_name)(x)
        else:
            x = keras.layers.MaxPooling2D(2, name=layer_name)(x)
    x = AdaptiveAveragePooling2D(POOLED_SIZE, name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in ((0, hidden), (3, hidden)):
        x = keras.layers.Dense(units, kernel_initializer=dense_init, name=f"classifier_{index}")(x)
        x = keras.layers.ReLU(name=f"classifier_{index + 1}")(x)
        x = keras.layers.Dropout(0.5, name=f"classifier_{index + 2}")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=dense_init, name="classifier_6")(x)
    return keras.Model(inputs, logits, name=name or f"vgg{depth}{'_bn' if batch_norm else ''}")
