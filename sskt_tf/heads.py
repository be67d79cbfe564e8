"""Auxiliary heads: map the target's stage outputs to one source's label space."""

import keras

from sskt_tf.errors import UserError
from sskt_tf.models.layers import BatchNormalization, GlobalAveragePooling
from sskt_tf.names import HEAD_NAMES

# spatial_dims -> the transfer module's convolution: images' feature maps, clips'.
_CONVS = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}


@keras.saving.register_keras_serializable(package="sskt_tf")
class LinearHead(keras.layers.Layer):
    """Dense layer on the globally pooled last stage: the reference's `Linear(features, classes)`.

    Args:
        num_classes: size of the source's label space.
        feature_key: which stage output to pool.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        features: dict of stage outputs `[B, H, W, C]` (a 3D target's `[B, T, H, W, C]`), as the
            backbones return.

    Returns:
        float32 logits `[B, num_classes]` (also under mixed precision).

    Reference: S. Hong, J. Yoon, J. Kim, M.-K. Choi, "Self-Supervised Knowledge Transfer via Loosely
    Supervised Auxiliary Tasks", WACV 2022 (the authors' linear auxiliary head).
    """

    def __init__(self, num_classes, feature_key="stage3", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.feature_key = feature_key

        # === Layers ===
        # Any rank: images' and clips' feature maps. It has no weights, so checkpoints saved with
        # GlobalAveragePooling2D here load as before.
        self.pool = GlobalAveragePooling(name="pool")
        # The logits of an auxiliary head are compared with source logits in float32.
        self.dense = keras.layers.Dense(self.num_classes, dtype="float32", name="logits")

    def build(self, features_shape):
        shape = features_shape[self.feature_key]
        self.pool.build(shape)
        self.dense.build((shape[0], shape[-1]))

    def call(self, features):
        return self.dense(self.pool(features[self.feature_key]))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "feature_key": self.feature_key})
        return config


@keras.saving.register_keras_serializable(package="sskt_tf")
class TransferModule(keras.layers.Layer):
    """The SSKT transfer module: a bottleneck branch per stage, pooled, averaged, then Dense.

    Each branch is conv1x1 -> BN -> ReLU -> conv3x3 (stride 2) -> BN -> ReLU ->
    conv1x1 -> BN -> ReLU, with `middle_channels` then `out_channels` filters;
    the branches are globally average-pooled, their mean goes to a Dense layer.
    For CIFAR ResNets (stage widths 16/32/64) this is middle 32, out 64, as in
    the reference code (models/small_resnet.py, lines 39-80). For video targets
    (`spatial_dims=3`) the convolutions are 1x1x1, 3x3x3 (stride 2 in time, height
    and width) and 1x1x1, as the reference's 3D_SSKT/models/resnet.py.

    The convolutions have no bias (each is followed by BatchNorm, whose shift subsumes it;
    the reference's have one) and pad "same": on even sizes Keras pads a stride-2 3x3 window
    (0, 1) where torch pads (1, 1), so the windows start one step later, in a randomly
    initialised branch that is pooled right after; the 2D and 3D modules do alike.

    Args:
        num_classes: size of the source's label space.
        out_channels: width of every branch's output (the last stage's width).
        middle_channels: bottleneck width; default `out_channels // 2`.
        stage_keys: the stage outputs that get a branch.
        sync_bn: BatchNorm statistics over all replicas.
        spatial_dims: 2 for images' stage outputs `[B, H, W, C]` (2D convolutions), 3 for video
            clips' `[B, T, H, W, C]` (3D convolutions).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        features: dict of stage outputs `[B, H, W, C]` (`[B, T, H, W, C]` with `spatial_dims=3`),
            as the backbones return.
        training: BatchNorm in training mode (batch statistics).

    Returns:
        float32 logits `[B, num_classes]` (also under mixed precision).

    Raises:
        ValueError: `spatial_dims` other than 2 or 3.

    Reference: S. Hong, J. Yoon, J. Kim, M.-K. Choi, "Self-Supervised Knowledge
    Transfer via Loosely Supervised Auxiliary Tasks", WACV 2022.
    """

    def __init__(
        self,
        num_classes,
        out_channels,
        middle_channels=None,
        stage_keys=("stage1", "stage2", "stage3"),
        sync_bn=False,
        spatial_dims=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if spatial_dims not in _CONVS:
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (clips). Received: spatial_dims={spatial_dims}")
        self.num_classes = int(num_classes)
        self.out_channels = int(out_channels)
        self.middle_channels = int(middle_channels or out_channels // 2)
        self.stage_keys = tuple(stage_keys)
        self.sync_bn = bool(sync_bn)
        self.spatial_dims = int(spatial_dims)

        # === Layers ===
        self.branches = [self._branch(key) for key in self.stage_keys]
        self.pool = GlobalAveragePooling(name="pool")
        self.dense = keras.layers.Dense(self.num_classes, dtype="float32", name="logits")

    def _branch(self, key):
        layers = []
        for i, (filters, size, stride) in enumerate(
            [(self.middle_channels, 1, 1), (self.middle_channels, 3, 2), (self.out_channels, 1, 1)]
        ):
            layers += [
                _CONVS[self.spatial_dims](
                    filters,
                    size,
                    strides=stride,
                    padding="same",
                    use_bias=False,
                    kernel_initializer="he_normal",
                    name=f"{key}_conv{i}",
                ),
                BatchNormalization(
                    momentum=0.9, epsilon=1e-5, synchronized=self.sync_bn, name=f"{key}_bn{i}"
                ),
                keras.layers.ReLU(name=f"{key}_relu{i}"),
            ]
        return keras.Sequential(layers, name=f"{key}_branch")

    def build(self, features_shape):
        for key, branch in zip(self.stage_keys, self.branches):
            branch.build(features_shape[key])
        self.dense.build((None, self.out_channels))

    def call(self, features, training=None):
        pooled = [
            self.pool(branch(features[key], training=training))
            for key, branch in zip(self.stage_keys, self.branches)
        ]
        return self.dense(keras.ops.mean(keras.ops.stack(pooled, axis=0), axis=0))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "out_channels": self.out_channels,
                "middle_channels": self.middle_channels,
                "stage_keys": self.stage_keys,
                "sync_bn": self.sync_bn,
                "spatial_dims": self.spatial_dims,
            }
        )
        return config


def build_head(kind, num_classes, stage_channels, name=None, sync_bn=False, width=None, spatial_dims=2):
    """Builds the auxiliary head `kind` (the `--aux_head` flag) for a backbone with `stage_channels`.

    Args:
        kind: "linear" or "transfer_module" (`sskt_tf.names.HEAD_NAMES`).
        num_classes: size of the source's label space.
        stage_channels: the backbone's `{"stage1": channels, ...}`, in stage order: the linear head
            pools the last stage; the transfer module gives every stage a branch.
        name: layer name.
        sync_bn: BatchNorm statistics over all replicas (the transfer module's).
        width: output width of the transfer module's branches (middle: half of it); default the
            last stage's width, as the reference for CIFAR ResNets. The reference's ImageNet-style
            targets use 1000 (their backbones' `transfer_width`).
        spatial_dims: 2 for image targets, 3 for video targets (the transfer module's 3D
            convolutions; the linear head pools any rank).

    Returns:
        An unbuilt `LinearHead` or `TransferModule`: dict of stage outputs -> float32 logits
        `[B, num_classes]`.

    Raises:
        UserError: an unknown `kind`; the message lists the allowed ones.
    """
    if kind == "linear":
        last = list(stage_channels)[-1]
        return LinearHead(num_classes, feature_key=last, name=name)
    if kind == "transfer_module":
        keys = tuple(stage_channels)
        return TransferModule(
            num_classes,
            out_channels=width or stage_channels[keys[-1]],
            stage_keys=keys,
            sync_bn=sync_bn,
            spatial_dims=spatial_dims,
            name=name,
        )
    raise UserError(f"--aux_head={kind} is not a known head. Allowed: {', '.join(HEAD_NAMES)}.")
