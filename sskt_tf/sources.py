"""Frozen source networks: parse `--sources` specs into networks that map raw images to logits.

A spec is one of
  `<application>:imagenet`        a Keras Application with its ImageNet weights (downloaded once
                                  by Keras and cached in ~/.keras/models),
  `<application>:/path/w.h5`      the same network with weights from a local file (offline),
  `<application>:random[:N]`      random weights, N classes (default 1000): smoke runs and tests,
  `/path/to/model.keras`          any Keras model that takes raw [0, 255] RGB images and returns logits
                                  (or probabilities: see `build_source`, `--source_outputs`),
  `keras_hub:<preset>`            a KerasHub image classifier (`keras_hub.models.ImageClassifier`) with
                                  its preset's preprocessing: a preset name (`keras_hub:resnet_50_imagenet`,
                                  downloaded once from Kaggle and cached in ~/.cache/kagglehub), a
                                  `kaggle://` or `hf://` handle, or a local preset directory
                                  (`keras_hub:/path/to/preset`, written by `classifier.save_to_preset`).

The same specs serve as KD's `--teacher`. Everything a network assumes is checked when it is
built, before training starts (`build_source`): one input of RGB images, one output of rank 2,
at least 2 classes, a fixed input size (used with a printed line when it is not the size the
network would otherwise see), and what its outputs are: a final softmax or sigmoid is removed
in a copy of the network so that its logits are used, with a printed line.
"""

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import socket
import urllib.parse
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf

from sskt_tf.errors import UserError
from sskt_tf.models.layers import AdaptiveAveragePooling2D, class_names_of
from sskt_tf.names import SOURCE_BN_MODES, SOURCE_OUTPUTS, VIDEO_SOURCE_FRAMES

# What a built `Source`'s network returns: logits as they are, or probabilities whose log is taken.
NETWORK_OUTPUTS = ("logits", "probabilities")
# Probabilities that underflowed to 0 get log(tiny) = -87.3 instead of -inf (a NaN in a KL term);
# their softmax weight stays ~0 at any temperature of practical use.
_TINY = float(np.finfo(np.float32).tiny)


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


# The Keras Applications a spec may name (`<name>:imagenet`, `<name>:<weights file>`, `<name>:random[:N]`),
# with the preprocessing their ImageNet weights expect and the input sizes they accept (in pixels).
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

# `keras_hub:<preset>`: a KerasHub image classifier (`keras_hub.models.ImageClassifier.from_preset`).
KERAS_HUB_PREFIX = "keras_hub:"

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="sskt_tf")
class SourcePreprocess(keras.layers.Layer):
    """A Keras Application's `preprocess_input`, as a serialisable layer on raw [0, 255] RGB.

    The same arithmetic as `keras.applications.imagenet_utils.preprocess_input` in its three
    modes, inside the model, so that a saved source needs no preprocessing outside it.

    Args:
        mode: "caffe" (RGB->BGR, minus the ImageNet BGR mean), "tf" (to [-1, 1]),
            "torch" (to [0, 1], then ImageNet mean/std), or "none" (the
            application preprocesses inside).

    Call arguments:
        images: `[N, H, W, 3]` RGB in 0..255, any dtype.

    Returns:
        `[N, H, W, 3]` in the layer's compute dtype.

    Raises:
        ValueError: an unknown `mode`.
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
    sources in PyTorch's train() mode (docs/reference-code.md item 1): batch
    statistics, while the source stays frozen. Unlike PyTorch, the moving
    statistics here never drift, so evaluation with them remains meaningful.

    Takes the arguments of `keras.layers.BatchNormalization` (`Source` converts a network's
    layers with their own configs). Call: `[..., C]` inputs -> the same shape, in the layer's
    compute dtype (the moments are computed in at least float32).
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


def _is_plain_batch_norm(layer):
    """A BatchNormalization that `--source_bn=batch` replaces: Keras' or a subclass (this project's fused
    one, in converted PyTorch networks), not one already replaced."""
    return isinstance(layer, keras.layers.BatchNormalization) and not isinstance(layer, BatchStatsNormalization)


def _converted(model, batch_statistics=False, dtype_policy=None):
    """A copy of `model` with BatchStatsNormalization for BatchNormalization and/or another dtype policy."""

    def clone(layer):
        config = layer.get_config()
        if dtype_policy is not None and "dtype" in config:
            config["dtype"] = dtype_policy
        if batch_statistics and _is_plain_batch_norm(layer):
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
    The layer is never trainable. Build one with `build_source`, which checks the network first.

    Reference: S. Hong, S. Moon, S. Cho, J. Lee, "Self-Supervised Knowledge Transfer via Loosely
    Supervised Auxiliary Tasks", WACV 2022 (the source networks S_k of SSKT).

    Args:
        network: Keras model from raw [0, 255] RGB images of `image_size` to logits.
        image_size: (H, W) in pixels that the network sees.
        spec: the `--sources` entry it came from, kept for logs and configs.
        source_bn: "inference" (moving statistics) or "batch" (batch statistics,
            the reference code's behaviour; statistics never updated).
        network_dtype: a dtype policy name ("float16", "bfloat16", "mixed_float16",
            ...) to run the network in; None keeps the network's own. The logits are
            float32 either way.
        network_outputs: "logits" (the network's outputs are used as they are) or
            "probabilities" (each row is a probability distribution p, whose `log p` is
            used: `log p = z - logsumexp(z)` is a per-row shift of the logits z, which
            every softmax, at every temperature, ignores).
        stripped_activation: None, or "softmax"/"sigmoid" when `build_source` removed the
            network's final activation (a record for configs and the soft-label cache key;
            the network given is already the stripped copy).
        video_frames: what an image network sees of a clip `[N, T, H, W, 3]`: "middle" (frame
            `T // 2`, the SSKT authors' 3D code), or "mean" (the mean of the logits of
            `video_num_frames` evenly spaced frames, the centres of equal segments of the clip).
        video_num_frames: frames of "mean" (at most T are used, each once).
        clip_input: the network itself takes clips `[N, T, H, W, 3]` (a video KD teacher): it
            sees the clip, resized frame by frame to `image_size`.

    Call arguments:
        images: float `[N, H, W, 3]`, raw RGB in 0..255 (any size; resized to `image_size`), or
            clips `[N, T, H, W, 3]` (see `video_frames`).

    Returns:
        float32 logits `[N, num_classes]`, without gradient.

    Raises:
        UserError: `source_bn` is not one of `sskt_tf.names.SOURCE_BN_MODES`, or a conversion
            (`--source_bn=batch`, another `network_dtype`) of a network that cannot be cloned.
        ValueError: `network_outputs` is not one of `NETWORK_OUTPUTS`.
    """

    def __init__(
        self,
        network,
        image_size,
        spec="",
        source_bn="inference",
        network_dtype=None,
        network_outputs="logits",
        stripped_activation=None,
        video_frames="middle",
        video_num_frames=4,
        clip_input=False,
        **kwargs,
    ):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        if source_bn not in SOURCE_BN_MODES:
            raise UserError(f"--source_bn={source_bn} is not allowed. Allowed: {', '.join(SOURCE_BN_MODES)}.")
        if network_outputs not in NETWORK_OUTPUTS:
            raise ValueError(f"network_outputs must be one of {NETWORK_OUTPUTS}. Received: {network_outputs!r}")
        self.image_size = tuple(int(s) for s in image_size)
        self.spec = spec
        self.source_bn = source_bn
        self.network_outputs = network_outputs
        self.stripped_activation = stripped_activation
        if video_frames not in VIDEO_SOURCE_FRAMES:
            raise UserError(f"--video_source_frames={video_frames} is not known. Allowed: {', '.join(VIDEO_SOURCE_FRAMES)}.")
        self.video_frames = video_frames
        self.video_num_frames = int(video_num_frames)
        self.clip_input = bool(clip_input)
        # A reloaded source already holds BatchStatsNormalization layers: no second conversion.
        batch_statistics = source_bn == "batch" and any(_is_plain_batch_norm(layer) for layer in _all_layers(network))
        # The layers that compute: a nested model's own policy (a KerasHub task keeps its saved one
        # while its layers take the requested one) computes nothing.
        if network_dtype is not None and {
            layer.dtype_policy.name
            for layer in _all_layers(network)
            if layer.weights and not isinstance(layer, keras.Model)
        } == {network_dtype}:
            network_dtype = None
        if batch_statistics or network_dtype is not None:
            network = _converted(network, batch_statistics, network_dtype)
        self.network = network
        self.network.trainable = False
        self.num_classes = int(self.network.output_shape[-1])

    def build(self, input_shape):
        if not self.clip_input:
            self.network.build((None, *self.image_size, 3))

    def frame_indices(self, clip_length):
        """The frames of a clip of `clip_length` frames that an image network sees (`video_frames`).

        Returns:
            list of int, 0-based: `[T // 2]` for "middle"; for "mean" with k = min(video_num_frames, T),
            `floor((2 i + 1) T / (2 k))` for i < k, the centre frame of each of k equal segments.
        """
        if self.video_frames == "middle":
            return [clip_length // 2]
        k = min(self.video_num_frames, clip_length)
        return [(2 * i + 1) * clip_length // (2 * k) for i in range(k)]

    def _resized(self, images):
        if tuple(images.shape[-3:-1]) == self.image_size:
            return images
        if images.shape.rank == 5:  # A clip teacher's clips: every frame resized alike.
            frames = tf.reshape(images, [-1, *images.shape[2:]])
            frames = tf.image.resize(frames, self.image_size, method="bilinear")
            return tf.reshape(frames, [-1, images.shape[1], *self.image_size, 3])
        return tf.image.resize(images, self.image_size, method="bilinear")

    def _logits(self, images):
        outputs = tf.cast(self.network(self._resized(images), training=False), tf.float32)
        if self.network_outputs == "probabilities":
            outputs = tf.math.log(tf.maximum(outputs, _TINY))
        return outputs

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        if images.shape.rank == 5 and not self.clip_input:
            # An image network on a clip: its chosen frames, one batch of images, logits averaged per clip.
            index = self.frame_indices(images.shape[1])
            frames = tf.gather(images, index, axis=1)
            logits = self._logits(tf.reshape(frames, [-1, *images.shape[2:]]))
            return tf.stop_gradient(tf.reduce_mean(tf.reshape(logits, [-1, len(index), self.num_classes]), axis=1))
        return tf.stop_gradient(self._logits(images))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    @property
    def class_names(self):
        """The class names the network stores (a target trained by this project), or None."""
        return class_names_of(self.network)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "image_size": self.image_size,
                "spec": self.spec,
                "source_bn": self.source_bn,
                "network_outputs": self.network_outputs,
                "stripped_activation": self.stripped_activation,
                "video_frames": self.video_frames,
                "video_num_frames": self.video_num_frames,
                "clip_input": self.clip_input,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def scaled_size(image_size, scale):
    """The source input size for target images of `image_size`: floor(side * scale), as F.interpolate.

    Args:
        image_size: (H, W) of the target's images, in pixels.
        scale: `--source_scale`, a float > 0 (the paper's 7/3: 32 -> 74 px, 96 -> 224 px).

    Returns:
        (H, W) tuple of int, in pixels.
    """
    # The epsilon keeps e.g. 96 * 7/3 = 224 from flooring to 223 through rounding error.
    return tuple(int(math.floor(side * scale + 1e-6)) for side in image_size)


# The files a training run writes: `<run>/target.keras`, `<run>/checkpoints/{best,last}.keras`, and
# DML's other peers `<run>/peer_<k>.keras`. Their stems say nothing; the run directory's name does.
_RUN_FILE_STEMS = re.compile(r"target|best|last|peer_\d+")


def _keras_file_name(path):
    """The name of a `.keras` spec: the run directory's for a file a run wrote, else the file's stem."""
    path = os.path.abspath(os.path.expanduser(path))
    directory, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    if not _RUN_FILE_STEMS.fullmatch(stem):
        return stem
    run = os.path.dirname(directory) if os.path.basename(directory) == "checkpoints" else directory
    run_name = os.path.basename(run)
    if not run_name:  # A file at the file system's root.
        return stem
    # target.keras is the run's result; another file of the run is named after both.
    return run_name if stem == "target" else f"{run_name}_{stem}"


def _preset_name(preset):
    """The name of a KerasHub preset: its own (`resnet_50_imagenet`), a directory's basename, or the
    last part of a handle that is not a version (`kaggle://keras/resnetv1/keras/resnet_50_imagenet/3`)."""
    parts = [p for p in preset.split("://")[-1].replace(os.sep, "/").split("/") if p]
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return parts[-1] if parts else ""


def source_name(spec):
    """A short metric-friendly name for a spec, after what the user gave.

    `resnet50:imagenet` -> `resnet50_imagenet`; `/data/places365.keras` -> `places365`;
    `runs/c10_r32/target.keras` -> `c10_r32` (a run's `target.keras` is named after its run
    directory, as are `runs/c10_r32/checkpoints/best.keras` -> `c10_r32_best` and DML's
    `runs/d/peer_1.keras` -> `d_peer_1`); `keras_hub:resnet_50_imagenet` -> `resnet_50_imagenet`
    and `keras_hub:/presets/my_r50/` -> `my_r50`. Two specs may share a name (two files of one
    stem): `sskt_tf.methods` numbers the later ones.

    Args:
        spec: a source spec (see the module docstring).

    Returns:
        str of lowercase letters, digits and `_`; "source" when nothing of the spec is left.
    """
    if spec.endswith(".keras"):
        stem = _keras_file_name(spec)
    elif spec.startswith(KERAS_HUB_PREFIX):
        stem = _preset_name(spec.removeprefix(KERAS_HUB_PREFIX))
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


def _application_network(spec, image_size, flag="--sources"):
    """A Keras Application spec -> `(network, image_size)`: raw RGB `[N, H, W, 3]` -> logits `[N, classes]`.

    Built with `classifier_activation=None`, so these networks return logits whatever
    `--source_outputs` says. A fixed-size application (NASNet) sees its own size, with one
    printed line when that differs from `image_size` (see `_fixed_size`).

    Raises:
        UserError: an unknown application, a bad `random:<classes>`, a failed download or
            weights file, or an input size below the application's minimum.
    """
    app_name, _, weights = spec.partition(":")
    if app_name not in APPLICATIONS:
        raise UserError(
            f"{flag}: {spec!r} names no known source. Use <application>:imagenet, "
            f"<application>:/path/weights.h5, <application>:random, /path/model.keras or "
            f"{KERAS_HUB_PREFIX}<preset> (a KerasHub image classifier); "
            f"applications: {', '.join(APPLICATIONS)}."
        )
    app = APPLICATIONS[app_name]
    if app.fixed_size:
        image_size = _fixed_size(flag, spec, (app.fixed_size, app.fixed_size), image_size)
    if min(image_size) < app.min_size:
        raise UserError(
            f"{flag}={spec}: {app_name} needs inputs of at least {app.min_size} px, received "
            f"{image_size[0]}x{image_size[1]}; "
            + ("raise --source_scale." if flag == "--sources" else "a teacher sees the target's size: pick another network.")
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
            raise UserError(f"{flag}={spec}: use {app_name}:random or {app_name}:random:<classes>.") from None
        _check_classes(flag, spec, classes)  # Before Keras builds a Dense of 0 or -5 units.
        net = constructor(weights=None, input_shape=build_shape, classes=classes, **common)
    elif weights == "imagenet":
        try:
            pretrained = constructor(weights="imagenet", **common)
        except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...").
            raise UserError(
                f"{flag}={spec}: could not download the ImageNet weights of {app_name} "
                f"({str(e).splitlines()[0][:160]}). Offline, fetch the weights file where there is "
                f"network and pass {flag}={app_name}:/path/to/weights.h5 (Keras caches downloads "
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
            raise UserError(f"{flag}={spec}: weights file {weights!r} does not exist.")
        try:
            net = constructor(weights=weights, input_shape=build_shape, **common)
        except Exception as e:
            raise UserError(
                f"{flag}={spec}: could not load {weights!r} into {app_name} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})."
            ) from None
    if app.adaptive_pool:
        net = _adaptively_pooled(net, shape, app.adaptive_pool)

    inputs = keras.Input(shape, name="images")
    x = SourcePreprocess(app.preprocessing, name="preprocess")(inputs)
    outputs = net(x)
    return keras.Model(inputs, outputs, name=source_name(spec)), image_size


def _fixed_size(flag, spec, fixed, size):
    """The input size of a network whose input shape fixes `fixed` (a side may be None: free).

    Such a network cannot run at any other size, so it sees the images resized to its own
    size (bilinear, as any source) instead of `size`, the size it would otherwise receive
    (`floor(side * --source_scale)` for a source, the target's size for a teacher). This is
    what a user of such a network wants (a 224-px source sees the target's images upsampled
    to 224 px, as it was trained), but it overrides `--source_scale`, or makes a teacher see
    its training size rather than the target's: never silently, one printed line says so.
    Refusing instead would leave no flag to make such a network usable.

    Returns:
        (H, W) the network sees.
    """
    used = tuple(int(f) if f is not None else int(s) for f, s in zip(fixed, size))
    if used != tuple(size):
        why = "--source_scale does not apply to it" if flag == "--sources" else "not the target's size"
        print(
            f"{flag}={spec}: the network has a fixed input size of {used[0]}x{used[1]}, so it sees the "
            f"images resized to {used[0]}x{used[1]} instead of {size[0]}x{size[1]} ({why})."
        )
    return used


@keras.saving.register_keras_serializable(package="sskt_tf")
class ImageRescaling(keras.layers.Layer):
    """`images * scale + offset` on raw [0, 255] RGB: a KerasHub `ImageConverter` without its resizing.

    The arithmetic of `keras_hub.layers.ImageConverter` (scale, then offset, each one number or one
    per channel), inside the source's network; the `Source` resizes (to the `--source_scale`d size,
    as every source), so the converter's own resizing to the preset's training size is left out.
    It computes in float32; the classifier casts to its own compute dtype.

    Args:
        scale: None (no scaling), a float, or 3 floats (R, G, B).
        offset: None (no offset), a float, or 3 floats (R, G, B).

    Call arguments:
        images: `[N, H, W, 3]` RGB in 0..255, any dtype.

    Returns:
        float32 `[N, H, W, 3]`.
    """

    def __init__(self, scale=None, offset=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scale = _floats(scale)
        self.offset = _floats(offset)

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        if self.scale is not None:
            x = x * keras.ops.convert_to_tensor(self.scale, "float32")
        if self.offset is not None:
            x = x + keras.ops.convert_to_tensor(self.offset, "float32")
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _floats(value):
    """None, a float, or a list of floats (a converter's per-channel values), as plain Python."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in np.ravel(value)]
    return float(value)


def _is_network_failure(error):
    """Whether `error`, or an error behind it, is a failed connection (no internet, DNS, a timeout)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        # requests', urllib3's and huggingface_hub's own kinds (requests.ConnectionError is no builtin one).
        kind = type(error).__name__
        if type(error).__module__.split(".")[0] in ("requests", "urllib3", "huggingface_hub", "kagglehub") and any(
            word in kind for word in ("Connection", "Timeout", "NameResolution", "MaxRetry", "Offline", "LocalEntryNotFound")
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def _preset_directory_problem(directory):
    """What keeps `directory` from being a KerasHub image-classifier preset, or None.

    Checks the files `classifier.save_to_preset(directory)` writes (config.json of the backbone,
    task.json of the classifier, task.weights.h5 of its head). A directory in another format
    that KerasHub reads (a Hugging Face / timm snapshot: no `registered_name` in config.json) is
    left to KerasHub.
    """
    import keras_hub

    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        return "the directory is no KerasHub preset (it has no config.json)"
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        return f"its config.json cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if not isinstance(config, dict) or "registered_name" not in config:
        return None
    backbone = str(config["registered_name"]).split(">")[-1]
    task_path = os.path.join(directory, "task.json")
    if not os.path.isfile(task_path):
        return f"the preset holds a {backbone} alone, no classifier (no task.json)"
    try:
        with open(task_path, encoding="utf-8") as f:
            task = str(json.load(f).get("registered_name", ""))
    except (OSError, ValueError, AttributeError) as e:
        return f"its task.json cannot be read ({type(e).__name__})"
    cls = keras.saving.get_registered_object(task)
    if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.ImageClassifier)):
        return f"the preset holds a {task.split('>')[-1] or 'model'}, not an image classifier"
    if not os.path.isfile(os.path.join(directory, "task.weights.h5")):
        return "the preset has no classifier weights (no task.weights.h5)"
    return None


def _reachable(url, timeout=3.0):
    """Whether a TCP connection to `url`'s host (port 443) opens within `timeout` seconds."""
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except (OSError, TypeError):
        return False


@contextlib.contextmanager
def _huggingface_offline():
    """huggingface_hub's offline mode (`HF_HUB_OFFLINE`, read at each request): its cache, no requests."""
    import huggingface_hub.constants

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = before


def _keras_hub_classifier(flag, spec, dtype_policy):
    """The KerasHub image classifier a `keras_hub:<preset>` spec names, and its image converter.

    A preset is a built-in name (`keras_hub.models.ImageClassifier.presets`; downloaded from
    Kaggle by kagglehub, which fails within seconds offline), a `kaggle://` or `hf://` handle, or
    a local directory; an existing directory is always taken as one. Offline, a `hf://` handle
    is loaded in huggingface_hub's offline mode (its cache only) rather than through its retries.

    Returns:
        `(classifier, converter)`: the graph of the preset's `keras_hub.models.ImageClassifier`
        as a functional model (images after the converter's scaling -> `[N, classes]`), and the
        preset's `keras_hub.layers.ImageConverter`.

    Raises:
        UserError: in one line each: KerasHub missing; an empty preset; a preset name that KerasHub
            does not know, or knows for another kind of model; a path that is no preset directory;
            a preset without a classifier or of another task; a download that failed (offline);
            a classifier without an image converter, or one whose preprocessing is its own code.
    """
    preset = spec.removeprefix(KERAS_HUB_PREFIX)
    local_dir = f"a local preset directory, {flag}={KERAS_HUB_PREFIX}/path/to/preset (written by classifier.save_to_preset(path))"
    try:
        import keras_hub
    except ImportError:
        raise _refuse(flag, spec, "KerasHub is not installed", "pip install 'keras-hub>=0.32'") from None
    if not preset:
        raise _refuse(flag, spec, "no preset given", f"name one, e.g. {KERAS_HUB_PREFIX}resnet_50_imagenet, or pass {local_dir}")
    local = os.path.expanduser(preset)
    if os.path.isdir(local):
        problem = _preset_directory_problem(local)
        if problem:
            raise _refuse(flag, spec, problem, f"pass {local_dir}")
        preset = local
    elif os.path.exists(local):
        raise _refuse(flag, spec, f"{preset!r} is a file, not a preset directory", f"pass {local_dir}")
    elif "://" not in preset:
        classifiers = keras_hub.models.ImageClassifier.presets
        if "/" in preset or preset.startswith(("~", ".")):
            raise _refuse(flag, spec, f"the preset directory {preset!r} does not exist", f"pass {local_dir}")
        if preset in keras_hub.models.Backbone.presets and preset not in classifiers:
            raise _refuse(
                flag, spec, f"{preset!r} is a KerasHub preset of another kind of model, not an image classifier",
                "pass an image classifier preset (keras_hub.models.ImageClassifier.presets lists them)",
            )
        if preset not in classifiers:
            close = difflib.get_close_matches(preset, list(classifiers), n=3)
            raise _refuse(
                flag, spec, f"{preset!r} names no KerasHub preset" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                f"pass one of keras_hub.models.ImageClassifier.presets, a kaggle:// or hf:// handle, or {local_dir}",
            )
    unreachable = False
    if preset.lower().startswith("hf://"):
        import huggingface_hub.constants

        # huggingface_hub retries a failed connection 5 times over about 25 s before it gives up.
        unreachable = not _reachable(huggingface_hub.constants.ENDPOINT)
    offline = _huggingface_offline() if unreachable else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), offline:
            # The task's saved optimizer state, which a source never uses, does not fit a mixed policy's optimizer.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            classifier = keras_hub.models.ImageClassifier.from_preset(preset, dtype=dtype_policy)
    except Exception as e:
        if unreachable or _is_network_failure(e):
            host = re.search(r"host='([^']+)'", str(e))
            host = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname if unreachable else (host and host.group(1))
            raise _refuse(
                flag, spec, "cannot download the preset (no internet?" + (f" cannot reach {host})" if host else ")"),
                f"pass a local preset directory, {flag}={KERAS_HUB_PREFIX}/path/to/preset, saved where there is network "
                f"by keras_hub.models.ImageClassifier.from_preset({preset!r}).save_to_preset('/path/to/preset') (a "
                "download is also cached, in ~/.cache/kagglehub or ~/.cache/huggingface, and then found offline)",
            ) from None
        if isinstance(e, TypeError) and "num_classes" in str(e):
            problem = "the preset holds a backbone alone, no classifier"
        elif "Unable to find a subclass of ImageClassifier" in str(e):
            problem = "the preset is not of an image classifier"
        else:
            problem = f"KerasHub cannot load the preset ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
        raise _refuse(flag, spec, problem, f"pass an image classifier preset, e.g. {KERAS_HUB_PREFIX}resnet_50_imagenet") from None
    if not isinstance(classifier, keras_hub.models.ImageClassifier):  # What a future loader might return.
        raise _refuse(flag, spec, f"the preset holds a {type(classifier).__name__}, not an image classifier", f"pass {local_dir}")
    preprocessor = classifier.preprocessor
    converter = getattr(preprocessor, "image_converter", None)
    if converter is None:
        raise _refuse(
            flag, spec, "the preset has no image converter, so the pixel range its network expects is unknown",
            "save the classifier with its preprocessor (an ImageClassifierPreprocessor with an ImageConverter)",
        )
    # The source computes the converter's arithmetic itself (ImageRescaling); a subclass with code of
    # its own would be computed wrongly, without a word.
    if type(converter).call is not keras_hub.layers.ImageConverter.call or (
        type(preprocessor).call is not keras_hub.models.ImageClassifierPreprocessor.call
    ):
        raise _refuse(
            flag, spec, f"the preset's preprocessing ({type(preprocessor).__name__}, {type(converter).__name__}) "
            "is code of its own, not the ImageConverter's scale and offset that a source reproduces",
            "save it as a .keras model of raw [0, 255] images to logits and pass that file",
        )
    if converter.data_format != "channels_last":
        raise _refuse(flag, spec, "the preset takes channels-first images", "load it with keras.config.image_data_format() 'channels_last'")
    # The classifier's graph alone, as a plain functional model: the task's preprocessor (its
    # arithmetic is ImageRescaling's) and its compiled optimizer are no part of a frozen source.
    return keras.Model(classifier.inputs, classifier.outputs, name=classifier.name), converter


def _keras_hub_network(flag, spec, image_size, dtype_policy):
    """A `keras_hub:<preset>` spec -> `(network, image_size)`: raw RGB `[N, H, W, 3]` -> `[N, classes]`.

    The network is the preset's `ImageClassifier` after its converter's scale and offset
    (`ImageRescaling`); it sees `image_size` (the `--source_scale`d size, as every source, not
    the preset's training size) unless its input size is fixed (ViTs), then that size with one
    printed line (`_fixed_size`). `dtype_policy` (None: the global policy) is passed to
    `from_preset`, which casts the weights.

    Raises:
        UserError: see `_keras_hub_classifier`; an input that is not RGB images.
    """
    classifier, converter = _keras_hub_classifier(flag, spec, dtype_policy)
    in_shape = tuple(classifier.input_shape)
    if len(in_shape) != 4 or in_shape[-1] not in (3, None):
        raise _refuse(flag, spec, f"the classifier takes inputs of shape {in_shape}", "pass an RGB image classifier")
    image_size = _fixed_size(flag, spec, in_shape[1:3], image_size)
    inputs = keras.Input((*image_size, 3), name="images")
    x = ImageRescaling(converter.scale, converter.offset, name="preprocess")(inputs)
    return keras.Model(inputs, classifier(x), name=source_name(spec)), image_size


def _refuse(flag, spec, problem, fix):
    return UserError(f"{flag}={spec}: {problem}; {fix}.")


def _loaded_keras_file(flag, path, clips=False):
    """Loads `path`, checking it maps one RGB image batch `[N, H, W, 3]` (or, with `clips`, one clip
    batch `[N, T, H, W, 3]`) to one `[N, classes]` output.

    Raises:
        UserError: a missing or unloadable file; several inputs; inputs that are not 4-D
            (5-D) channels-last RGB images (clips); several outputs; outputs that are not `[N, classes]`.
    """
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise UserError(f"{flag}: model file {path!r} {what}; pass the path of a .keras file.")
    # Keras says "File not found" of a file that is there but is no .keras archive.
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{flag}: {path!r} is not a .keras file (a .keras file is a zip archive written by Keras 3's "
            "model.save); pass a model saved that way."
        )
    try:
        net = keras.saving.load_model(path, compile=False)
    except Exception as e:
        if "Lambda" in str(e) and "safe_mode" in str(e):
            raise UserError(
                f"{flag}: could not load {path!r}: it holds a Lambda layer of Python code, which Keras does not "
                "load by default (it could run arbitrary code); re-save the network with a registered custom "
                "layer (keras.saving.register_keras_serializable) in place of the Lambda, importable here."
            ) from None
        raise UserError(
            f"{flag}: could not load {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It must be a .keras file saved by Keras 3; custom layers must be importable."
        ) from None
    form = (
        "one clip batch [N, T, H, W, 3] (raw RGB, 0..255) to logits [N, classes], a video target such as the target.keras of a video run"
        if clips
        else "one image batch [N, H, W, 3] (raw RGB, 0..255) to logits [N, classes]"
    )
    try:
        inputs, outputs = net.inputs, net.outputs
        in_shape, out_shape = net.input_shape, net.output_shape
    except (AttributeError, ValueError):  # An unbuilt Sequential, a subclassed model never called.
        raise _refuse(
            flag, path, f"the model has no defined input and output shapes (a {type(net).__name__} never built)",
            "save it built, starting from keras.Input((H, W, 3)) (or after calling it once)",
        ) from None
    if not inputs or len(inputs) != 1:
        raise _refuse(
            flag, path, f"the model takes {len(inputs or [])} inputs {in_shape}; a source or teacher takes "
            f"{form}", "pass a model with one image input",
        )
    if len(in_shape) != (5 if clips else 4):
        raise _refuse(
            flag, path, f"the model takes inputs of shape {in_shape}, not {'clip' if clips else 'image'} batches; it must map {form}",
            "pass a model whose input is keras.Input((T, H, W, 3))" if clips else "pass a model whose input is keras.Input((H, W, 3))",
        )
    # (N, 3, H, W) with free H and W ends in None: that is channels first, not "any channels".
    channels_first = in_shape[1] == 3 and in_shape[-1] != 3
    if in_shape[-1] not in (3, None) or channels_first:
        layout = " (channels first)" if channels_first else ""
        channels = 3 if channels_first else in_shape[-1]
        raise _refuse(
            flag, path, f"the model takes {channels}-channel images, input shape {in_shape}{layout}; it "
            f"receives RGB images [N, H, W, 3], channels last",
            "pass a model built for 3-channel channels-last inputs, e.g. keras.Input((None, None, 3))",
        )
    if not outputs or len(outputs) != 1:
        raise _refuse(
            flag, path, f"the model has {len(outputs or [])} outputs {out_shape}; a source or teacher has one, "
            "logits [N, classes]", "save a model with only the classifier's output",
        )
    if len(out_shape) != 2:
        raise _refuse(
            flag, path, f"the model returns outputs of shape {out_shape}; a source or teacher returns "
            "logits [N, classes]", "end the model in its classifier (e.g. global pooling and a Dense layer)",
        )
    _check_classes(flag, path, out_shape[-1])
    return net


def _check_classes(flag, spec, classes):
    if classes is None or classes < 2:
        raise _refuse(
            flag, spec, f"the network predicts {classes} class{'' if classes == 1 else 'es'}; a softmax over "
            "fewer than 2 classes is constant, so there is nothing to learn from it",
            "pass a classifier of at least 2 classes",
        )


# Layers that pass their input through unchanged at inference (after a final softmax they hide it).
_TRANSPARENT_LAYERS = (
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


def _is_transparent(op):
    if isinstance(op, _TRANSPARENT_LAYERS):
        return True
    return isinstance(op, keras.layers.Activation) and op.activation is keras.activations.linear


def _activation_kind(op):
    """Returns "softmax" or "sigmoid" where `op` ends in one over the classes, else None.

    Sees a `Softmax` layer or `keras.ops.softmax`/`keras.activations.softmax` operation (and the
    sigmoid ones) of a functional graph, and a layer's `activation` (Dense, Conv, Activation,
    ...) given as a Keras or TensorFlow function or its name. A log_softmax is logits up to a
    per-row shift: nothing to do.
    """
    cls = type(op)
    if cls.__module__.startswith("keras") and cls.__name__ in ("Softmax", "Sigmoid"):
        axis = getattr(op, "axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        # The output is [N, classes]: axis -1 or 1 is the classes; another axis is no class softmax.
        return cls.__name__.lower() if all(a in (-1, 1) for a in axes) else None
    fn = getattr(op, "activation", None)
    if fn is None or not callable(fn):
        return None
    if fn is keras.activations.softmax or fn is keras.activations.sigmoid:
        return fn.__name__
    name, module = getattr(fn, "__name__", ""), getattr(fn, "__module__", "") or ""
    if module.startswith(("keras", "tensorflow")) and name in ("softmax", "softmax_v2", "sigmoid"):
        return "sigmoid" if name == "sigmoid" else "softmax"
    return None


@dataclasses.dataclass
class _FinalActivation:
    """A softmax/sigmoid that produces a model's output, and the path from the output to it."""

    kind: str  # "softmax" or "sigmoid"
    where: str  # for messages: "layer 'predictions' (Dense)", "... inside 'head'"
    # (operation, node) from the output back to the activation's operation; the ones before it
    # are transparent layers, the last one the activation (or the nested model holding it).
    path: list
    inner: "_FinalActivation | None" = None  # when the last operation is a nested model


def _final_activation(model):
    """The `_FinalActivation` of a functional or Sequential `model`, or None where none is visible.

    Follows the single output back through transparent layers (identity at inference) and into
    nested functional/Sequential models. What a Lambda, a subclassed model or a custom layer
    computes is not visible: None (`build_source`'s probe covers those).
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1:
        return None
    tensor, path = outputs[0], []
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        op = history.operation
        node = op._inbound_nodes[history.node_index]
        kind = _activation_kind(op)
        if kind is not None:
            return _FinalActivation(kind, f"{type(op).__name__} {op.name!r}", path + [(op, node)])
        if isinstance(op, keras.Model):
            inner = _final_activation(op)
            if inner is None:
                return None
            return _FinalActivation(inner.kind, f"{inner.where} inside {op.name!r}", path + [(op, node)], inner)
        if _is_transparent(op) and len(node.input_tensors) == 1:
            path.append((op, node))
            tensor = node.input_tensors[0]
            continue
        return None


def _without_final_activation(model, found):
    """A functional model computing `model` without `found`'s activation: its pre-activation logits.

    Every layer is `model`'s own (same weights, not copied) except the one whose activation
    is removed, rebuilt from its config with a linear activation and given its weights; a
    nested model holding the activation is rebuilt the same way. `model` itself is unchanged.

    Raises:
        Exception (any): where a layer cannot be rebuilt so; the caller falls back.
    """
    *through, (op, node) = found.path
    if len(node.input_tensors) != 1:
        raise ValueError(f"{op.name!r} has {len(node.input_tensors)} inputs")
    x = node.input_tensors[0]
    if found.inner is not None:
        y = _without_final_activation(op, found.inner)(x)
    elif isinstance(op, keras.layers.Layer) and not isinstance(op, (keras.layers.Activation, keras.layers.Softmax)):
        # A layer with an `activation` (Dense, Conv, ...): the same layer, linear.
        config = op.get_config()
        if "activation" not in config:
            raise ValueError(f"{op.name!r} has no activation in its config")
        config["activation"] = "linear"
        replacement = type(op).from_config(config)
        y = replacement(x)
        replacement.set_weights(op.get_weights())
    else:  # A Softmax/Sigmoid layer or operation, an Activation layer: the tensor it receives.
        y = x
    for transparent, _ in reversed(through):
        y = transparent(y)
    return keras.Model(model.inputs[0], y, name=model.name)


def _probe_batch(size):
    # Its own generator: the probe must not draw from the seeded global one that training uses.
    # `size` is (H, W), or (T, H, W) for a network of clips.
    return np.random.default_rng(0).uniform(0.0, 255.0, (4, *size, 3)).astype(np.float32)


def _run(flag, spec, network, images):
    try:
        out = network(images, training=False)
    except Exception as e:
        raise _refuse(
            flag, spec, f"the network does not run on images of {images.shape[1]}x{images.shape[2]} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
            "it must accept raw RGB images [N, H, W, 3] of that size"
            + (" (raise --source_scale for a network that needs larger images)" if flag == "--sources" else ""),
        ) from None
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), np.float64)


def _are_probabilities(out):
    """Every row in [0, 1] and summing to 1: the outputs of a softmax, which logits never are.

    On 4 random images and at least 2 classes, logits (unbounded scores) satisfy this only by
    construction, i.e. when the model normalises them. The tolerance allows float16 softmaxes.
    """
    return (
        out.shape[-1] >= 2
        and out.min() >= -1e-6
        and out.max() <= 1.0 + 1e-6
        and bool(np.all(np.abs(out.sum(axis=-1) - 1.0) <= 5e-3))
    )


def _describe(out):
    sums = out.sum(axis=-1)
    return f"values {out.min():.3g}..{out.max():.3g}, row sums {sums.min():.3g}..{sums.max():.3g}"


def _adapted_keras_file(flag, path, net, size, outputs):
    """What `net`'s outputs are, and the network and mode that turn them into logits.

    Decision, per `outputs` (`--source_outputs`):

    - A final softmax visible in the structure (`_final_activation`): with "auto" or
      "probabilities", removed in a copy (`_without_final_activation`), which is checked on a
      random batch to give the same probabilities through a softmax; where it cannot be removed,
      the log of the probabilities is used (the same logits up to a per-row shift). With
      "logits": refused, the outputs are probabilities.
    - A final sigmoid (independent per-label probabilities, a multi-label network): with "auto",
      its pre-sigmoid logits, which the auxiliary loss softens with one softmax over the labels
      as any source's logits. "logits" and "probabilities" (one distribution per row) refused.
    - None visible (a Lambda, a custom layer, a subclassed model): the outputs of 4 random images
      decide where they are certain. Rows that are probability distributions (`_are_probabilities`)
      are probabilities: "auto" and "probabilities" take their log, "logits" is refused. Otherwise
      "probabilities" is refused (these are no softmax outputs), and "auto"/"logits" use them as
      logits; "auto" prints one line where every value lies in [0, 1], as a hidden sigmoid's would.

    Every adaptation prints one line. Non-finite outputs on the random batch are refused.

    Returns:
        `(network, network_outputs, stripped_activation)` for `Source`.

    Raises:
        UserError: the refusals above, or a network that does not run at `size`.
    """
    images = _probe_batch(size)
    out = _run(flag, path, net, images)
    if not np.all(np.isfinite(out)):
        raise _refuse(
            flag, path, "the network returns NaN or infinite values on random images", "check the file (diverged weights?)"
        )
    found = _final_activation(net)
    name = repr(net.name)
    if found is not None and outputs == "logits":
        raise _refuse(
            flag, path, f"--source_outputs=logits, but the network ends in a {found.kind} ({found.where}): its "
            f"outputs are probabilities", f"use --source_outputs=auto, which uses its pre-{found.kind} logits",
        )
    if found is not None and found.kind == "sigmoid" and outputs == "probabilities":
        raise _refuse(
            flag, path, f"--source_outputs=probabilities, but the network ends in a sigmoid ({found.where}): "
            "independent per-label probabilities, not one distribution per row",
            "use --source_outputs=auto, which uses its pre-sigmoid logits",
        )
    if found is not None:
        # The copy must give back the very outputs through the activation, else it is not used.
        try:
            stripped = _without_final_activation(net, found)
            z = _run(flag, path, stripped, images)
            again = keras.ops.convert_to_numpy(getattr(keras.activations, found.kind)(z))
            ok = z.shape == out.shape and np.allclose(again, out, rtol=1e-3, atol=1e-3)
        except Exception:  # Any layer that cannot be rebuilt: fall back below.
            ok = False
        if ok:
            print(
                f"{flag}={path}: using the pre-{found.kind} logits of {name} (its final {found.kind}, "
                f"{found.where}, is removed in a copy"
                + ("; a multi-label network: its labels' logits are softened by one softmax, as any source's)."
                   if found.kind == "sigmoid" else ").")
            )
            return stripped, "logits", found.kind
        if found.kind == "sigmoid":
            raise _refuse(
                flag, path, f"the network ends in a sigmoid ({found.where}) that cannot be removed in a copy, "
                "and sigmoid probabilities are no logits", "save the network without its final sigmoid",
            )
        print(
            f"{flag}={path}: using the log of the probabilities of {name} as its logits (its final softmax, "
            f"{found.where}, cannot be removed in a copy; the log differs from the logits by one value per row)."
        )
        return net, "probabilities", None

    if _are_probabilities(out):
        if outputs == "logits":
            raise _refuse(
                flag, path, f"--source_outputs=logits, but the outputs on random images are probability rows "
                f"({_describe(out)})", "use --source_outputs=probabilities (their log is used) or auto",
            )
        print(
            f"{flag}={path}: using the log of the outputs of {name} as its logits: on random images every row "
            "lies in [0, 1] and sums to 1, probabilities of a softmax hidden in a layer that cannot be inspected"
            + (" (--source_outputs=probabilities)." if outputs == "probabilities" else " (--source_outputs=auto).")
        )
        return net, "probabilities", None
    if outputs == "probabilities":
        raise _refuse(
            flag, path, f"--source_outputs=probabilities, but the outputs on random images are no probability rows "
            f"({_describe(out)})", "use --source_outputs=auto or logits for a network that returns logits",
        )
    if outputs == "auto" and out.min() >= 0.0 and out.max() <= 1.0:
        print(
            f"{flag}={path}: warning: every output of {name} on random images lies in [0, 1] ({_describe(out)}), "
            "as a hidden sigmoid's would; they are used as logits. Save the network without a final sigmoid if it has one."
        )
    return net, "logits", None


def logits_model(flag, path, model, image_size):
    """`model` (a classifier loaded from `path`) as a model of raw images to logits `[N, classes]`.

    The commands that score or serve a `.keras` classifier (`evaluate`, `predict`, `export`)
    apply their own softmax or sigmoid; a model that already ends in one would be softened
    twice. The decision is `--source_outputs=auto`'s (`_adapted_keras_file`): a visible final
    softmax or sigmoid is removed in a copy, a hidden softmax is recognised from its outputs
    and its log taken, each with one printed line. A target trained here returns logits and
    passes unchanged.

    Args:
        flag: the flag named in messages (e.g. "--model").
        path: the `.keras` file `model` was loaded from, named in messages.
        model: the loaded Keras classifier, raw RGB `[N, H, W, 3]` in 0..255 -> `[N, classes]`.
        image_size: (H, W) in pixels it will run at (the probe that detects probabilities).

    Returns:
        `(model, activation)`: the logits model (float32 logits `[N, classes]`), and
        "softmax"/"sigmoid" when the outputs were probabilities of that kind (else None).

    Raises:
        UserError: a model that does not run on `image_size` images, returns NaN or infinite
            values, or ends in a sigmoid that cannot be removed in a copy.
    """
    network, outputs, stripped = _adapted_keras_file(flag, path, model, tuple(image_size), "auto")
    if outputs == "probabilities":
        inputs = keras.Input(model.input_shape[1:], name="images")
        log_p = keras.ops.log(keras.ops.maximum(keras.ops.cast(network(inputs), "float32"), _TINY))
        return keras.Model(inputs, log_p, name=model.name), "softmax"
    return network, stripped


def build_source(
    spec,
    image_size,
    source_scale=7 / 3,
    source_bn="inference",
    name=None,
    dtype_policy=None,
    outputs="auto",
    flag="--sources",
    video_frames="middle",
    video_num_frames=4,
    clip_length=None,
):
    """Builds the frozen `Source` for one `--sources` (or `--teacher`) entry, checking it first.

    Checks, each a one-line `UserError` naming the entry, what it received, what is allowed and
    the fix: a file that loads as a Keras 3 model; one input of 4-D RGB images (3 channels,
    channels last); one output of rank 2, logits `[N, classes]`; at least 2 classes (a softmax
    over one class is constant: nothing to transfer); a network that runs at the size it will
    see and returns finite values. A fixed input size that differs from the size the network
    would receive is used, with one printed line (`_fixed_size`). What the outputs of a `.keras`
    file or a KerasHub classifier are is decided by `outputs` (`_adapted_keras_file`): a final
    softmax or sigmoid is removed in a copy of the network, with one printed line. Keras
    Applications named by a spec are built without their softmax and always return logits.

    The networks are Keras Applications (`keras.applications`, `APPLICATIONS`), Keras 3 `.keras`
    files, or KerasHub image classifiers (`keras_hub.models.ImageClassifier.from_preset`, with
    the preset's scale and offset in the network: `_keras_hub_network`); the paper's sources are
    ImageNet and Places365 ResNets (Hong et al., WACV 2022).

    Args:
        spec: the source spec (see the module docstring).
        image_size: (H, W) in pixels of the target's training images.
        source_scale: the source sees `floor(side * source_scale)` pixels per side, unless its
            network has a fixed input size (then it sees that size; VGG has none, see
            `_adaptively_pooled`). A float > 0; the teacher uses 1.0.
        source_bn: "inference" or "batch" (see `Source`).
        name: layer name; default `source_<source_name(spec)>`.
        dtype_policy: precision of the source's network (see `Source`); None: the global policy
            for applications and KerasHub presets, the file's own for `.keras` sources.
        outputs: `--source_outputs`: "auto", "logits" or "probabilities".
        flag: the flag named in messages, "--sources" or "--teacher".
        video_frames: on video data, the frames of each clip an image network sees, "middle" or
            "mean" (`--video_source_frames`, see `Source`).
        video_num_frames: the frames of "mean" (`--video_source_num_frames`).
        clip_length: a network of clips: the `.keras` file of a video target, `[N, T, H, W, 3]`
            -> logits, with T = `clip_length` (a video run's KD teacher). None: an image network.

    Returns:
        A built, frozen `Source`: raw RGB images `[N, H, W, 3]` in 0..255 (any size) -> float32
        logits `[N, classes]`.

    Raises:
        UserError: a spec or network that cannot serve (see above), in one line naming `flag`:
            an unknown `outputs` or `source_bn`, an unknown application or a bad `random:<N>`, a
            missing or unreadable weights file or `.keras` file, ImageNet weights or a KerasHub
            preset that cannot be downloaded (offline), a KerasHub preset that is unknown, no
            preset directory or no image classifier (`_keras_hub_classifier`), an input that is not `[N, H, W, 3]` or smaller than the
            application's minimum, an output that is not `[N, classes]` with classes >= 2, a
            network that does not run at its size or returns values that are not finite, or an
            `outputs` that contradicts the network's final activation or its outputs.
    """
    if outputs not in SOURCE_OUTPUTS:
        raise UserError(f"--source_outputs={outputs} is not known. Allowed: {', '.join(SOURCE_OUTPUTS)}.")
    size = scaled_size(image_size, source_scale)
    network_outputs, stripped = "logits", None
    if clip_length is not None:
        return _clip_teacher(flag, spec, image_size, clip_length, source_bn, name, outputs)
    if spec.startswith(KERAS_HUB_PREFIX):
        network, size = _keras_hub_network(flag, spec, size, dtype_policy)
        network, network_outputs, stripped = _adapted_keras_file(flag, spec, network, size, outputs)
    elif spec.endswith(".keras"):
        network = _loaded_keras_file(flag, spec)
        size = _fixed_size(flag, spec, network.input_shape[1:3], size)
        network, network_outputs, stripped = _adapted_keras_file(flag, spec, network, size, outputs)
    else:
        network, size = _application_network(spec, size, flag)
    _check_classes(flag, spec, network.output_shape[-1])
    return Source(
        network,
        size,
        spec=spec,
        source_bn=source_bn,
        network_dtype=dtype_policy,
        network_outputs=network_outputs,
        stripped_activation=stripped,
        video_frames=video_frames,
        video_num_frames=video_num_frames,
        name=name or f"source_{source_name(spec)}",
    )


def _clip_teacher(flag, spec, image_size, clip_length, source_bn, name, outputs):
    """The `Source` of a `.keras` network of clips (a video KD teacher); see `build_source`."""
    if not spec.endswith(".keras"):
        raise UserError(
            f"{flag}={spec}: on video data the teacher is a network of clips [N, T, H, W, 3], the .keras file of "
            "a video target (e.g. <run>/target.keras of a video run on the same data); image networks serve as --sources."
        )
    network = _loaded_keras_file(flag, spec, clips=True)
    wanted = (clip_length, *image_size)
    fixed = tuple(network.input_shape[1:4])
    if any(f is not None and f != w for f, w in zip(fixed, wanted)):
        raise _refuse(
            flag, spec, f"the network takes clips of {'x'.join(str(f) for f in fixed)} frames x pixels, the data gives "
            f"{'x'.join(map(str, wanted))}", "pass --clip_length and --image_size as the teacher was trained, or another teacher",
        )
    network, network_outputs, stripped = _adapted_keras_file(flag, spec, network, wanted, outputs)
    return Source(
        network,
        image_size,
        spec=spec,
        source_bn=source_bn,
        network_outputs=network_outputs,
        stripped_activation=stripped,
        clip_input=True,
        name=name or f"source_{source_name(spec)}",
    )
