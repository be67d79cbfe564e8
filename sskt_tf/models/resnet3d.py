"""Hara et al.'s 3D ResNets for video clips: ResNet-10/18/34 (basic blocks), ResNet-50/101/152/200 (bottlenecks).

The layout of kenshohara/3D-ResNets-PyTorch (models/resnet.py), which the SSKT authors' video code
(3D_SSKT/models/resnet.py) uses as its target: every 2D convolution of a ResNet becomes a 3D one
(7x7x7 stem, 3x3x3 blocks), and layers 2-4 stride time as well as space. Layer names follow its
module paths with "." -> "_" (`layer1.0.conv1` -> `layer1_0_conv1`), so that `sskt_tf.convert_torch`
maps its Kinetics checkpoints (`resnet-18-kinetics.pth`, ...) onto these networks name by name.
"""

import keras

from sskt_tf.models.backbone import Backbone
from sskt_tf.models.layers import BatchNormalization, GlobalAveragePooling, ImageNormalization
from sskt_tf.names import RESNET_SHORTCUTS

# depth -> (block kind, blocks per stage), as 3D-ResNets-PyTorch's resnet10 ... resnet200.
CONFIGS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}
# The per-channel mean (0..255 RGB) that 3D-ResNets-PyTorch subtracts by default (mean.py, "activitynet"),
# without dividing by a standard deviation: what its Kinetics models, and the SSKT authors' video
# targets, were trained on.
ACTIVITYNET_MEAN = (114.7748, 107.7354, 99.4750)


def _check(depth, shortcut):
    if depth not in CONFIGS:
        raise ValueError(f"3D ResNet depth must be one of {sorted(CONFIGS)}. Received: depth={depth}")
    if shortcut not in RESNET_SHORTCUTS:
        raise ValueError(f"3D ResNet shortcut must be one of {list(RESNET_SHORTCUTS)}. Received: shortcut={shortcut!r}")


@keras.saving.register_keras_serializable(package="sskt_tf")
class ZeroPadShortcut(keras.layers.Layer):
    """Hara et al.'s parameter-free shortcut "A": strided identity, zero channels appended.

    3D-ResNets-PyTorch's `downsample_basic_block`: `avg_pool3d(x, kernel_size=1, stride)` (which
    keeps every `stride`-th frame, row and column) followed by zero channels concatenated after the
    input's. Unlike the CIFAR option A (`cifar_resnet.OptionAShortcut`) the zeros all come last,
    and it also widens without striding (64 -> 256 channels in layer1 of a bottleneck network).

    Args:
        stride: subsampling of time, height and width.
        out_channels: channels after the zeros are appended.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        x: float `[B, T, H, W, C]` with C <= out_channels.

    Returns:
        `[B, ceil(T / stride), ceil(H / stride), ceil(W / stride), out_channels]`, the input's dtype.

    Raises:
        ValueError: an input with more than `out_channels` channels.
    """

    def __init__(self, stride, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.out_channels = int(out_channels)
        self.input_spec = keras.layers.InputSpec(ndim=5)

    def build(self, input_shape):
        if input_shape[-1] is None or input_shape[-1] > self.out_channels:
            raise ValueError(
                f"ZeroPadShortcut widens to {self.out_channels} channels. Received: input_shape={input_shape}"
            )

    def call(self, x):
        s = self.stride
        if s > 1:
            x = x[:, ::s, ::s, ::s, :]
        extra = self.out_channels - x.shape[-1]
        if extra:
            x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.stride)

        return (input_shape[0], *(sub(n) for n in input_shape[1:4]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update({"stride": self.stride, "out_channels": self.out_channels})
        return config


def _conv(x, filters, size, strides, name):
    strides = (strides,) * 3 if isinstance(strides, int) else tuple(strides)
    # PyTorch pads k // 2 on every side; Keras "same" pads (0, 1) for even inputs at stride 2,
    # which shifts the sampling grid. Explicit padding + "valid" gives torch's numbers exactly.
    if size > 1 and max(strides) > 1:
        x = keras.layers.ZeroPadding3D(size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"  # Identical to torch's padding at stride 1 with odd kernels (and 1x1x1 at any stride).
    return keras.layers.Conv3D(
        filters,
        size,
        strides=strides,
        padding=padding,
        use_bias=False,
        # Hara et al.'s kaiming_normal(mode="fan_out").
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        name=name,
    )(x)


def _bn(x, name, sync_bn):
    # PyTorch BatchNorm3d defaults (momentum 0.1, eps 1e-5), as 3D-ResNets-PyTorch.
    return BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=name)(x)


def _block(x, kind, width, stride, shortcut, name, sync_bn):
    out_channels = width * _EXPANSION[kind]
    residual = x
    if stride != 1 or x.shape[-1] != out_channels:
        if shortcut == "A":
            residual = ZeroPadShortcut(stride, out_channels, name=f"{name}_downsample")(x)
        else:
            residual = _conv(x, out_channels, 1, stride, f"{name}_downsample_0")
            residual = _bn(residual, f"{name}_downsample_1", sync_bn)
    if kind == "basic":
        y = _conv(x, width, 3, stride, f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", sync_bn))
        y = _bn(_conv(y, width, 3, 1, f"{name}_conv2"), f"{name}_bn2", sync_bn)
    else:
        # As torchvision's v1.5, the stride sits on the 3x3x3 conv.
        y = _conv(x, width, 1, 1, f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1", sync_bn))
        y = _conv(y, width, 3, stride, f"{name}_conv2")
        y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(y, f"{name}_bn2", sync_bn))
        y = _bn(_conv(y, out_channels, 1, 1, f"{name}_conv3"), f"{name}_bn3", sync_bn)
    x = keras.layers.Add(name=f"{name}_add")([residual, y])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def resnet3d_stages(clips, depth, shortcut="B", normalize=True, sync_bn=False):
    """Applies Hara et al.'s 3D ResNet up to `layer4` to the Keras tensor `clips`.

    Args:
        clips: raw [0, 255] RGB clips, a Keras tensor `[B, T, H, W, 3]`.
        depth: 10, 18, 34, 50, 101, 152 or 200.
        shortcut: "A" (zero-padded identity, no parameters) or "B" (1x1x1 convolution + BN) where
            a block changes the shape.
        normalize: prepend the subtraction of `ACTIVITYNET_MEAN` (3D-ResNets-PyTorch's default).
        sync_bn: BatchNorm statistics over all replicas.

    Returns:
        `{"stage1": layer1 output, ..., "stage4": layer4 output}`, Keras tensors
        `[B, T/2, H/4, W/4, C1]`, `[B, T/4, H/8, W/8, C2]`, `[B, T/8, H/16, W/16, C3]`,
        `[B, T/16, H/32, W/32, C4]` (sizes rounded up; C = 64/128/256/512, x4 for bottlenecks).

    Raises:
        ValueError: a depth not in `CONFIGS`, or a shortcut other than "A" or "B".
    """
    _check(depth, shortcut)
    kind, blocks = CONFIGS[depth]
    if normalize:
        # (x / 255 - m / 255) / (1 / 255) = x - m: raw values minus the mean, standard deviation 1.
        x = ImageNormalization(mean=[m / 255.0 for m in ACTIVITYNET_MEAN], std=[1 / 255.0] * 3, name="normalize")(clips)
    else:
        x = clips
    x = _conv(x, 64, 7, (1, 2, 2), "conv1")  # Time keeps its resolution in the stem conv.
    x = keras.layers.ReLU(name="relu")(_bn(x, "bn1", sync_bn))
    # Zero padding equals torch's -inf padding here: the inputs are ReLU outputs, >= 0. The pool
    # strides time too.
    x = keras.layers.ZeroPadding3D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling3D(3, strides=2, padding="valid", name="maxpool")(x)
    outputs = {}
    for s, (width, n) in enumerate(zip(STAGE_WIDTHS, blocks), start=1):
        for b in range(n):
            stride = 2 if (s > 1 and b == 0) else 1
            x = _block(x, kind, width, stride, shortcut, f"layer{s}_{b}", sync_bn)
        outputs[f"stage{s}"] = x
    return outputs


@keras.saving.register_keras_serializable(package="sskt_tf")
class ResNet3D(Backbone):
    """Hara et al.'s 3D ResNet backbone for video clips (the SSKT video targets).

    7x7x7 stem conv (stride 1 in time, 2 in space) + BN + ReLU + 3x3x3/2 max-pool, then four
    stages of basic (ResNet-10/18/34: two 3x3x3 convs) or bottleneck (ResNet-50 and deeper:
    1x1x1, 3x3x3 with the stride, 1x1x1 at 4x the width) blocks; the first block of layers 2-4
    strides time, height and width by 2. Where a block changes the shape, shortcut "A" appends
    zero channels to a subsampled identity (no parameters; Hara et al.'s Kinetics ResNet-18/34)
    and "B" projects with a 1x1x1 conv + BN (their ResNet-50 and deeper). Takes raw [0, 255]
    RGB clips `[B, T, H, W, 3]` and returns `{"stage1": [B,T/2,H/4,W/4,C1], "stage2":
    [B,T/4,H/8,W/8,C2], "stage3": [B,T/8,H/16,W/16,C3], "stage4": [B,T/16,H/32,W/32,C4]}`
    (sizes rounded up) with C = 64/128/256/512 (x4 for bottlenecks); a 16-frame 112-px clip
    ends as a 1x4x4 map. The classifier pools `stage4`, the transfer module reads all four.
    Padding, BatchNorm epsilon, the input normalisation (the ActivityNet mean subtracted from
    raw values, no division) and layer names match 3D-ResNets-PyTorch, so converted Kinetics
    checkpoints give torch's numbers (see `sskt_tf.convert_torch`).

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200.
        input_shape: clip shape (T, H, W, 3) in frames and pixels; T, H and W may be None.
        shortcut: "A" or "B" (`sskt_tf.names.RESNET_SHORTCUTS`).
        normalize: prepend the subtraction of `ACTIVITYNET_MEAN` from raw clips.
        sync_bn: BatchNorm statistics over all replicas of a tf.distribute strategy.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: a depth not in `CONFIGS`, a shortcut other than "A" or "B", or an
            `input_shape` that is not (T, H, W, 3).

    Example:
    >>> backbone = ResNet3D(depth=18, input_shape=(16, 112, 112, 3), shortcut="A")
    >>> features = backbone(keras.ops.ones((2, 16, 112, 112, 3)))
    >>> features["stage4"].shape
    TensorShape([2, 1, 4, 4, 512])

    Reference: K. Hara, H. Kataoka, Y. Satoh, "Can Spatiotemporal 3D CNNs Retrace the History of
    2D CNNs and ImageNet?", CVPR 2018; kenshohara/3D-ResNets-PyTorch, models/resnet.py.
    """

    def __init__(self, depth=18, input_shape=(16, 112, 112, 3), shortcut="B", normalize=True, sync_bn=False, **kwargs):
        _check(depth, shortcut)
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] != 3:
            raise ValueError(f"input_shape must be a clip's (T, H, W, 3). Received: input_shape={input_shape}")

        # === Functional Model ===
        inputs = keras.Input(shape=input_shape, name="clips")
        outputs = resnet3d_stages(inputs, depth, shortcut=shortcut, normalize=normalize, sync_bn=sync_bn)
        super().__init__(inputs, outputs, **kwargs)

        # === Config ===
        self.depth = depth
        self.clip_shape = input_shape
        self.shortcut = shortcut
        self.normalize = normalize
        self.sync_bn = sync_bn
        # The reference's video transfer module has 1000-wide branches (3D_SSKT/models/resnet.py,
        # aggregation_feature), not the last stage's width.
        self.transfer_width = 1000

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "input_shape": self.clip_shape,
                "shortcut": self.shortcut,
                "normalize": self.normalize,
                "sync_bn": self.sync_bn,
            }
        )
        return config


def resnet3d_classifier(depth, num_classes=400, shortcut="B", input_shape=(None, None, None, 3), name=None):
    """A whole 3D ResNet as one plain functional model: raw clips -> logits (`convert_torch`'s output).

    The layers of `ResNet3D` (same names), global average pooling `avgpool` and `Dense(num_classes)`
    named `fc`, all in one flat graph (no nested model). 3D-ResNets-PyTorch pools with a fixed
    window, the last map of a 16-frame 112-px clip (1x4x4); the global mean here is the same
    there and also works at other clip sizes.

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200.
        num_classes: classifier width (400 for Kinetics-400).
        shortcut: "A" or "B" (see `ResNet3D`).
        input_shape: clip shape (T, H, W, 3); free sizes by default.
        name: model name; default `resnet{depth}_3d`.

    Returns:
        A `keras.Model`, float raw RGB clips `[B, T, H, W, 3]` in 0..255 -> logits `[B, num_classes]`.

    Raises:
        ValueError: a depth not in `CONFIGS`, or a shortcut other than "A" or "B".

    Example:
    >>> model = resnet3d_classifier(18, shortcut="A")
    >>> model(keras.ops.ones((1, 16, 112, 112, 3))).shape
    TensorShape([1, 400])
    """
    inputs = keras.Input(shape=tuple(input_shape), name="clips")
    features = resnet3d_stages(inputs, depth, shortcut=shortcut)
    x = GlobalAveragePooling(name="avgpool")(features["stage4"])
    logits = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, logits, name=name or f"resnet{depth}_3d")
