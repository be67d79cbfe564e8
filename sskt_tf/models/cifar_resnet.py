"""The CIFAR ResNets of He et al. (2016), section 4.2: ResNet-20/32/44/56/110."""

import keras

from sskt_tf.models.backbone import Backbone
from sskt_tf.models.layers import BatchNormalization, ImageNormalization

STAGE_WIDTHS = (16, 32, 64)


@keras.saving.register_keras_serializable(package="sskt_tf")
class OptionAShortcut(keras.layers.Layer):
    """The parameter-free "option A" shortcut: strided identity, zero-padded channels.

    He et al. use it on CIFAR so that ResNet-20 has 0.27M parameters; a 1x1
    projection instead would add parameters and change the published counts.

    Args:
        stride: spatial subsampling of the identity.
        out_channels: channels after zero padding (split evenly on both sides).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        x: float `[B, H, W, C]` with C <= out_channels.

    Returns:
        `[B, ceil(H / stride), ceil(W / stride), out_channels]`, the input's dtype.
    """

    def __init__(self, stride, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.out_channels = int(out_channels)

    def call(self, x):
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.out_channels - x.shape[-1]
        if extra:
            before = extra // 2
            x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [before, extra - before]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.stride)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update({"stride": self.stride, "out_channels": self.out_channels})
        return config


def _conv_bn(x, filters, stride, name, relu=True, sync_bn=False):
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    # PyTorch BatchNorm2d defaults (momentum 0.1, eps 1e-5), as in the reference.
    x = BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


@keras.saving.register_keras_serializable(package="sskt_tf")
class CifarResNet(Backbone):
    """CIFAR ResNet backbone (He et al. 2016, sec. 4.2) with basic blocks and option-A shortcuts.

    Takes raw [0, 255] RGB images, float `[B, H, W, 3]`, and returns a dict with the three
    stage outputs, `{"stage1": [B,H,W,16], "stage2": [B,H/2,W/2,32], "stage3":
    [B,H/4,W/4,64]}` (the transfer module reads all three; the classifier
    pools `stage3`). Depth must be 6n + 2: 20, 32, 44, 56, 110, ...

    Args:
        depth: network depth, 6n + 2.
        input_shape: image shape (H, W, 3) in pixels; H and W may be None.
        normalize: prepend the ImageNet mean/std normalisation of raw images.
        sync_bn: BatchNorm statistics over all replicas of a tf.distribute strategy
            (otherwise each replica normalises with its local batch).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: a depth that is not 6n + 2 (n >= 1).

    Example:
    >>> backbone = CifarResNet(depth=20)
    >>> features = backbone(keras.ops.ones((2, 32, 32, 3)))
    >>> features["stage3"].shape
    TensorShape([2, 8, 8, 64])

    Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for
    Image Recognition", CVPR 2016.
    """

    def __init__(self, depth=20, input_shape=(32, 32, 3), normalize=True, sync_bn=False, **kwargs):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...). Received: depth={depth}"
            )
        blocks = (depth - 2) // 6

        # === Functional Model ===
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        x = ImageNormalization(name="normalize")(inputs) if normalize else inputs
        x = _conv_bn(x, STAGE_WIDTHS[0], 1, "stem", sync_bn=sync_bn)
        outputs = {}
        for s, width in enumerate(STAGE_WIDTHS, start=1):
            for b in range(blocks):
                stride = 2 if (s > 1 and b == 0) else 1
                name = f"stage{s}_block{b}"
                shortcut = x
                if stride != 1 or x.shape[-1] != width:
                    shortcut = OptionAShortcut(stride, width, name=f"{name}_shortcut")(x)
                y = _conv_bn(x, width, stride, f"{name}_1", sync_bn=sync_bn)
                y = _conv_bn(y, width, 1, f"{name}_2", relu=False, sync_bn=sync_bn)
                x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
                x = keras.layers.ReLU(name=f"{name}_out")(x)
            outputs[f"stage{s}"] = x
        super().__init__(inputs, outputs, **kwargs)

        # === Config ===
        self.depth = depth
        self.image_shape = tuple(input_shape)
        self.normalize = normalize
        self.sync_bn = sync_bn

    def get_config(self):
        config = super().get_config()
        config.update(
            {"depth": self.depth, "input_shape": self.image_shape, "normalize": self.normalize, "sync_bn": self.sync_bn}
        )
        return config
