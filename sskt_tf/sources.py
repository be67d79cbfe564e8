"""Frozen source networks: parse `--sources` specs into networks that map raw images to logits.

A spec is one of
  `<application>:imagenet`        a Keras Application with its ImageNet weights (downloaded once
                                  by Keras and cached in ~/.keras/models),
  `<application>:/path/w.h5`      the same network with weights from a local file (offline),
  `<application>:random[:N]`      random weights, N classes (default 1000): smoke runs and tests,
  `/path/to/model.keras`          any Keras model that takes raw [0, 255] RGB images and returns logits.
"""

import dataclasses
import math
import os

import keras
import tensorflow as tf

from sskt_tf.errors import UserError
from sskt_tf.models.layers import AdaptiveAveragePooling2D

SOURCE_BN_MODES = ("inference", "batch")


@dataclasses.dataclass(frozen=True)
class _Application:
    constructor: str  # attribute of keras.applications
    preprocessing: str  # see SourcePreprocess
    # Applications whose classifier follows a Flatten have weights tied to this input size.
    fixed_size: int | None = None
    min_size: int = 32
    # VGG: a Flatten of a 7x7 map. torchvision's VGG pools any map to 7x7 first (adaptive average
    # pooling), which lets the same classifier run at any size; these get that pooling too.
    adaptive_pool: int | None = None


APPLICATIONS = {
    "resnet50": _Application("ResNet50", "caffe"),
    "resnet101": _Application("ResNet101", "caffe"),
    "resnet152": _Application("ResNet152", "caffe"),
    "resnet50_v2": _Application("ResNet50V2", "tf"),
    "resnet101_v2": _Application("ResNet101V2", "tf"),
    "resnet152_v2": _Application("ResNet152V2", "tf"),
    "mobilenet_v2": _Application("MobileNetV2", "tf"),
    "mobilenet_v3_small": _Application("MobileNetV3Small", "none"),
    "mobilenet_v3_large": _Application("MobileNetV3Large", "none"),
    "efficientnet_b0": _Application("EfficientNetB0", "none"),
    "efficientnet_b1": _Application("EfficientNetB1", "none"),
    "efficientnet_b2": _Application("EfficientNetB2", "none"),
    "efficientnet_b3": _Application("EfficientNetB3", "none"),
    "efficientnet_v2_b0": _Application("EfficientNetV2B0", "none"),
    "efficientnet_v2_s": _Application("EfficientNetV2S", "none"),
    "densenet121": _Application("DenseNet121", "torch"),
    "densenet169": _Application("DenseNet169", "torch"),
    "densenet201": _Application("DenseNet201", "torch"),
    "convnext_tiny": _Application("ConvNeXtTiny", "none"),
    "convnext_small": _Application("ConvNeXtSmall", "none"),
    "inception_v3": _Application("InceptionV3", "tf", min_size=75),
    "xception": _Application("Xception", "tf", min_size=71),
    "vgg16": _Application("VGG16", "caffe", adaptive_pool=7),
    "vgg19": _Application("VGG19", "caffe", adaptive_pool=7),
    "nasnet_mobile": _Application("NASNetMobile", "tf", fixed_size=224),
}

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="sskt_tf")
class SourcePreprocess(keras.layers.Layer):
    """A Keras Application's `preprocess_input`, as a serialisable layer on raw [0, 255] RGB.

    Args:
        mode: "caffe" (RGB->BGR, minus the ImageNet BGR mean), "tf" (to [-1, 1]),
            "torch" (to [0, 1], then ImageNet mean/std), or "none" (the
            application preprocesses inside).
    """

    MODES = ("caffe", "tf", "torch", "none")

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            return x[..., ::-1] - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="sskt_tf")
class BatchStatsNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalises with the batch's statistics and never updates.

    `--source_bn=batch` reproduces the reference code, which runs its frozen
    sources in PyTorch's train() mode (reference-notes, item 1): batch
    statistics, while the source stays frozen. Unlike PyTorch, the moving
    statistics here never drift, so evaluation with them remains meaningful.
    """

    def call(self, inputs, training=None, mask=None):
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = keras.ops.cast(inputs, compute_dtype)
        mean, variance = self._moments(inputs, mask)
        outputs = keras.ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=None if self.beta is None else keras.ops.cast(self.beta, compute_dtype),
            scale=None if self.gamma is None else keras.ops.cast(self.gamma, compute_dtype),
            epsilon=self.epsilon,
        )
        return keras.ops.cast(outputs, self.compute_dtype)


def _all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def _converted(model, batch_statistics=False, dtype_policy=None):
    """A copy of `model` with BatchStatsNormalization for BatchNormalization and/or another dtype policy."""

    def clone(layer):
        config = layer.get_config()
        if dtype_policy is not None and "dtype" in config:
            config["dtype"] = dtype_policy
        if batch_statistics and type(layer) is keras.layers.BatchNormalization:
            return BatchStatsNormalization.from_config(config)
        return layer.__class__.from_config(config)

    flag = "--source_bn=batch" if batch_statistics else "--source_precision"
    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except Exception as e:  # Subclassed models cannot be cloned layer by layer.
        raise UserError(
            f"{flag} needs a functional or Sequential source; {model.name!r} cannot be "
            f"cloned ({type(e).__name__}: {str(e).splitlines()[0]}). Leave {flag.split('=')[0]} at its default."
        ) from None
    copy.set_weights(model.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="sskt_tf")
class Source(keras.layers.Layer):
    """A frozen source network S_k with its input resizing: `s_k = S_k(resize(x))`.

    The images are resized bilinearly (as the reference's F.interpolate with
    align_corners=False, i.e. half-pixel centres) to `image_size`, and the
    network is always called with `training=False` behind a stop-gradient.
    The layer is never trainable.

    Args:
        network: Keras model from raw [0, 255] RGB images of `image_size` to logits.
        image_size: (H, W) the network sees.
        spec: the `--sources` entry it came from, kept for logs and configs.
        source_bn: "inference" (moving statistics) or "batch" (batch statistics,
            the reference code's behaviour; statistics never updated).
        network_dtype: a dtype policy name ("float16", "bfloat16", "mixed_float16",
            ...) to run the network in; None keeps the network's own. The logits are
            float32 either way.
    """

    def __init__(self, network, image_size, spec="", source_bn="inference", network_dtype=None, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        if source_bn not in SOURCE_BN_MODES:
            raise UserError(f"--source_bn={source_bn} is not allowed. Allowed: {', '.join(SOURCE_BN_MODES)}.")
        self.image_size = tuple(int(s) for s in image_size)
        self.spec = spec
        self.source_bn = source_bn
        # A reloaded source already holds BatchStatsNormalization layers: no second conversion.
        batch_statistics = source_bn == "batch" and any(
            type(layer) is keras.layers.BatchNormalization for layer in _all_layers(network)
        )
        if network_dtype is not None and {
            layer.dtype_policy.name for layer in _all_layers(network) if layer.weights
        } == {network_dtype}:
            network_dtype = None
        if batch_statistics or network_dtype is not None:
            network = _converted(network, batch_statistics, network_dtype)
        self.network = network
        self.network.trainable = False
        self.num_classes = int(self.network.output_shape[-1])

    def build(self, input_shape):
        self.network.build((None, *self.image_size, 3))

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        if tuple(images.shape[1:3]) != self.image_size:
            images = tf.image.resize(images, self.image_size, method="bilinear")
        logits = self.network(images, training=False)
        return tf.stop_gradient(tf.cast(logits, tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "image_size": self.image_size,
                "spec": self.spec,
                "source_bn": self.source_bn,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def scaled_size(image_size, scale):
    """The source input size for target images of `image_size`: floor(side * scale), as F.interpolate."""
    # The epsilon keeps e.g. 96 * 7/3 = 224 from flooring to 223 through rounding error.
    return tuple(int(math.floor(side * scale + 1e-6)) for side in image_size)


def source_name(spec):
    """A short metric-friendly name for a spec: `resnet50:imagenet` -> `resnet50_imagenet`."""
    if spec.endswith(".keras"):
        stem = os.path.splitext(os.path.basename(spec))[0]
    else:
        app, _, weights = spec.partition(":")
        if weights in ("imagenet",) or weights.startswith("random"):
            stem = f"{app}_{weights.replace(':', '')}"
        else:
            stem = f"{app}_{os.path.splitext(os.path.basename(weights))[0]}"
    return "".join(c if c.isalnum() else "_" for c in stem).strip("_").lower() or "source"


def _adaptively_pooled(application, shape, pool_size):
    """`application` (a Flatten-topped Keras Application) for inputs of `shape`, as torchvision's VGG.

    The convolutional layers run at any size; `AdaptiveAveragePooling2D` brings their output to
    the `pool_size` x `pool_size` map the Flatten and the classifier were built for (at 74 px,
    VGG's 2x2 map is spread over 7x7 with PyTorch's bins). The layers, and so the weights, are
    the application's own; at the application's size the pooling is the identity and the
    network computes exactly what the application does.
    """
    inputs = keras.Input(shape, name="images")
    x = inputs
    for layer in application.layers[1:]:  # [0] is the application's InputLayer
        if isinstance(layer, keras.layers.Flatten):
            x = AdaptiveAveragePooling2D(pool_size, name="avgpool")(x)
        x = layer(x)
    return keras.Model(inputs, x, name=application.name)


def _application_network(spec, image_size):
    app_name, _, weights = spec.partition(":")
    if app_name not in APPLICATIONS:
        raise UserError(
            f"--sources: {spec!r} names no known source. Use <application>:imagenet, "
            f"<application>:/path/weights.h5, <application>:random or /path/model.keras; "
            f"applications: {', '.join(APPLICATIONS)}."
        )
    app = APPLICATIONS[app_name]
    if app.fixed_size:
        image_size = (app.fixed_size, app.fixed_size)
    if min(image_size) < app.min_size:
        raise UserError(
            f"--sources={spec}: {app_name} needs inputs of at least {app.min_size} px, received "
            f"{image_size[0]}x{image_size[1]}; raise --source_scale."
        )
    constructor = getattr(keras.applications, app.constructor)
    shape = (*image_size, 3)
    # Adaptive-pooling applications are built at the size their classifier demands (224 px, the
    # default with the top), weights and all, then rebuilt for `shape` from the same layers.
    build_shape = None if app.adaptive_pool else shape
    common = dict(include_top=True, classifier_activation=None)
    if weights.startswith("random"):
        _, _, classes = weights.partition(":")
        try:
            classes = int(classes or 1000)
        except ValueError:
            raise UserError(f"--sources={spec}: use {app_name}:random or {app_name}:random:<classes>.") from None
        net = constructor(weights=None, input_shape=build_shape, classes=classes, **common)
    elif weights == "imagenet":
        try:
            pretrained = constructor(weights="imagenet", **common)
        except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...").
            raise UserError(
                f"--sources={spec}: could not download the ImageNet weights of {app_name} "
                f"({str(e).splitlines()[0][:160]}). Offline, fetch the weights file where there is "
                f"network and pass --sources={app_name}:/path/to/weights.h5 (Keras caches downloads "
                f"in ~/.keras/models)."
            ) from None
        if app.adaptive_pool or shape == tuple(pretrained.input_shape[1:]):
            net = pretrained
        else:
            # With the top, ImageNet weights only load at 224 px; every layer but the
            # classifier is convolutional and follows global pooling, so they transfer as is.
            net = constructor(weights=None, input_shape=shape, **common)
            net.set_weights(pretrained.get_weights())
    else:
        if not os.path.isfile(weights):
            raise UserError(f"--sources={spec}: weights file {weights!r} does not exist.")
        try:
            net = constructor(weights=weights, input_shape=build_shape, **common)
        except Exception as e:
            raise UserError(
                f"--sources={spec}: could not load {weights!r} into {app_name} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})."
            ) from None
    if app.adaptive_pool:
        net = _adaptively_pooled(net, shape, app.adaptive_pool)

    inputs = keras.Input(shape, name="images")
    x = SourcePreprocess(app.preprocessing, name="preprocess")(inputs)
    outputs = net(x)
    return keras.Model(inputs, outputs, name=source_name(spec)), image_size


def _keras_file_network(path, image_size):
    if not os.path.isfile(path):
        raise UserError(f"--sources: model file {path!r} does not exist.")
    try:
        net = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise UserError(
            f"--sources: could not load {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It must be a .keras file saved by Keras 3; custom layers must be importable."
        ) from None
    shape = net.input_shape
    if isinstance(shape, list) or len(shape) != 4 or len(net.outputs) != 1 or len(net.output_shape) != 2:
        raise UserError(
            f"--sources: {path!r} must map one image batch [N, H, W, 3] to logits [N, classes]; "
            f"it has inputs {shape} and outputs {net.output_shape}."
        )
    fixed = shape[1:3]
    if all(side is not None for side in fixed):
        image_size = tuple(fixed)
    return net, image_size


def build_source(spec, image_size, source_scale=7 / 3, source_bn="inference", name=None, dtype_policy=None):
    """Builds the frozen `Source` for one `--sources` entry.

    Args:
        spec: the source spec (see the module docstring).
        image_size: (H, W) of the target's training images.
        source_scale: the source sees `floor(side * source_scale)` pixels per side, unless its
            network has a fixed input size (then it sees that size; VGG has none, see
            `_adaptively_pooled`).
        source_bn: "inference" or "batch" (see `Source`).
        name: layer name; default `source_<source_name(spec)>`.
        dtype_policy: precision of the source's network (see `Source`); None: the global policy
            for applications, the file's own for `.keras` sources.
    """
    size = scaled_size(image_size, source_scale)
    if spec.endswith(".keras"):
        network, size = _keras_file_network(spec, size)
    else:
        network, size = _application_network(spec, size)
    return Source(
        network,
        size,
        spec=spec,
        source_bn=source_bn,
        network_dtype=dtype_policy,
        name=name or f"source_{source_name(spec)}",
    )
