"""Small layers shared by the target networks."""

import keras
import tensorflow as tf

# torchvision's ImageNet statistics, which the reference code uses for every dataset.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="sskt_tf")
class ImageNormalization(keras.layers.Layer):
    """Maps raw [0, 255] RGB images to `(x / 255 - mean) / std`.

    Every network in this project takes raw images, so the normalisation the
    target was trained with travels inside the model (and into exports).

    Args:
        mean: per-channel mean of [0, 1] images.
        std: per-channel standard deviation of [0, 1] images.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        images: `[B, H, W, 3]` (or clips `[B, T, H, W, 3]`, any rank with RGB last) of any real
            dtype, raw values in 0..255.

    Returns:
        The normalised images, same shape, in the layer's compute dtype.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Folded into one multiply-add: x * scale + offset.
        self._scale = [1.0 / (255.0 * s) for s in self.std]
        self._offset = [-m / s for m, s in zip(self.mean, self.std)]

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        scale = keras.ops.convert_to_tensor(self._scale, self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self._offset, self.compute_dtype)
        return images * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": self.mean, "std": self.std})
        return config


def adaptive_pool_bins(in_size, out_size):
    """PyTorch's adaptive-pooling bins: output cell i averages inputs [floor(i*in/out), ceil((i+1)*in/out)).

    Works on Python ints and on scalar integer tensors (a size known only when the graph runs).
    Bins overlap when `in_size` does not divide evenly, and repeat inputs when `in_size < out_size`.

    Args:
        in_size: input length along one axis (an int or a scalar integer tensor).
        out_size: output length along that axis, a Python int >= 1.

    Returns:
        A list of `out_size` pairs `(start, end)`, the half-open input window of each output cell.
    """
    # -((-a) // b) is ceil(a / b) in integer arithmetic, exact where float division is not.
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]


@keras.saving.register_keras_serializable(package="sskt_tf")
class GlobalAveragePooling(keras.layers.Layer):
    """The mean over every axis but the batch and the channels: images' and clips' feature maps alike.

    `keras.layers.GlobalAveragePooling2D` for `[B, H, W, C]`, `GlobalAveragePooling3D` for clips'
    `[B, T, H, W, C]`, in one layer without weights, so that the heads and classifiers that pool a
    stage serve 2D and 3D targets unchanged.

    Args:
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float `[B, ..., C]`, channels last, rank 3 or more.

    Returns:
        `[B, C]`, the mean over the axes between, in the layer's compute dtype.

    Example:
    >>> GlobalAveragePooling()(keras.ops.ones((2, 4, 7, 7, 512))).shape
    TensorShape([2, 512])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(min_ndim=3)

    def call(self, inputs):
        return keras.ops.mean(inputs, axis=tuple(range(1, len(inputs.shape) - 1)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="sskt_tf")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed output size with PyTorch's bins (`nn.AdaptiveAvgPool2d`).

    torchvision's VGG pools its last feature map to 7x7 this way before the classifier, which
    is what lets its 224-px classifier weights run at other sizes (the SSKT reference feeds
    its sources 74-px images, where VGG's feature map is 2x2). Output cell (i, j) is the mean
    of the input window `adaptive_pool_bins` gives for i along H and j along W. When the input
    already has the output size the layer is the identity, bit for bit.

    Args:
        output_size: (height, width) of the output, or one int for both.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Call arguments:
        inputs: [batch, H, W, channels] (channels last); H and W may be unknown until the call.

    Returns:
        `[batch, height, width, channels]`, the input's dtype.

    Raises:
        ValueError: an `output_size` that is not one or two positive ints.

    Example:
    >>> pool = AdaptiveAveragePooling2D((7, 7))
    >>> pool(keras.ops.ones((2, 2, 2, 512))).shape
    TensorShape([2, 7, 7, 512])
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be two positive ints. Received: output_size={output_size}")
        self.output_size = output_size
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _pool_axis(self, x, axis, out_size):
        in_size = x.shape[axis]
        if in_size is None:
            in_size = keras.ops.shape(x)[axis]
        elif in_size == out_size:
            return x
        cells = []
        for start, end in adaptive_pool_bins(in_size, out_size):
            window = x[:, start:end] if axis == 1 else x[:, :, start:end]
            cells.append(keras.ops.mean(window, axis=axis, keepdims=True))
        return keras.ops.concatenate(cells, axis=axis)

    def call(self, inputs):
        # Separable: the mean over a window is the mean over its columns of the means over its rows.
        x = self._pool_axis(inputs, 1, self.output_size[0])
        return self._pool_axis(x, 2, self.output_size[1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": self.output_size})
        return config


@keras.saving.register_keras_serializable(package="sskt_tf")
class Classifier(keras.layers.Dense):
    """A Dense layer that also carries the names of its output classes in its config.

    The targets' classifier (`TargetModel.classifier`): the names then travel inside every
    `.keras` file of a target (target.keras, checkpoints), so a target used later as a
    `--teacher`, or exported without its run directory, still says which class each output
    is. It computes exactly what `Dense` computes, with the same weights and weight paths;
    the saved target keeps its layers (`images`, the backbone, `pool`, `classifier`).

    Args:
        units: number of classes.
        class_names: one name per output (str), or None where they are not known.
        **kwargs: `keras.layers.Dense` arguments.

    Call arguments:
        inputs: float `[batch, features]`.

    Returns:
        `[batch, units]` logits (with the default linear activation).

    Example:
    >>> layer = Classifier(2, class_names=("cat", "dog"), name="classifier")
    >>> layer(keras.ops.ones((4, 8))).shape
    TensorShape([4, 2])
    """

    def __init__(self, units, class_names=None, **kwargs):
        super().__init__(units, **kwargs)
        if class_names is not None:
            class_names = tuple(str(n) for n in class_names)
            if len(class_names) != units:
                raise ValueError(
                    f"class_names must name each of the {units} outputs. Received: {len(class_names)} names "
                    f"({list(class_names)[:5]}...)."
                )
        self.class_names = class_names

    def get_config(self):
        config = super().get_config()
        config.update({"class_names": None if self.class_names is None else list(self.class_names)})
        return config


def class_names_of(model):
    """The class names a model carries in its final `Classifier` layer, or None.

    Looks at the operation producing the model's single output, and into a nested functional or
    Sequential model that produces it.

    Args:
        model: a Keras model (or layer).

    Returns:
        A tuple of str, one per output column, or None when the model carries no names
        (models not trained by this project, subclassed models, several outputs).
    """
    if isinstance(model, Classifier):
        return model.class_names
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):  # An unbuilt Sequential or a subclassed model.
        return None
    if not outputs or len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    if history is None:
        return None
    op = history.operation
    if isinstance(op, Classifier):
        return op.class_names
    if isinstance(op, keras.Model) and op is not model:
        return class_names_of(op)
    return None


# Input rank -> the fused kernel's channels-last layout. TensorFlow's kernel folds a clip's 5-D map
# into a 4-D one (N, T * H, W, C) on every device; the statistics per channel are the same.
_FUSED_FORMATS = {4: "NHWC", 5: "NDHWC"}


@keras.saving.register_keras_serializable(package="sskt_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TensorFlow's fused kernel.

    Keras 3 computes a training step's batch statistics and normalisation with separate ops
    (`ops.moments`, then `ops.batch_normalization`), and their gradient with as many more. One
    `FusedBatchNormV3` (forward) and its `FusedBatchNormGradV3` do the same work: on the 2-core
    CPU this made the ResNet-20 training step about a quarter faster (`benchmarks/step_profile.py`).
    The results are Keras': the batch is normalised with its biased variance and the moving
    statistics follow `moving = momentum * moving + (1 - momentum) * batch`, with the biased batch
    variance as Keras uses it (the fused kernel returns the unbiased one, rescaled here by (n - 1) / n).
    Outputs, moving statistics and gradients equal Keras' within float32 rounding.

    The fused kernel serves training steps of trainable layers on float32 images' `[B, H, W, C]`
    and clips' `[B, T, H, W, C]` feature maps normalised over the last axis, with scale and center,
    no mask, no renorm and no synchronisation across replicas; every other call (inference,
    `synchronized=True`, mixed precision, other ranks) is Keras' own. Weights and config are
    Keras' (same variable names).

    Args:
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def _fused(self, inputs, training, mask):
        return (
            training
            and self.trainable
            and mask is None
            and not getattr(self, "renorm", False)
            and not self.synchronized
            and self.scale
            and self.center
            and len(inputs.shape) in _FUSED_FORMATS
            and self.axis in (-1, len(inputs.shape) - 1)
            and inputs.dtype == tf.float32
            and self.compute_dtype == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        rank = len(inputs.shape)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, data_format=_FUSED_FORMATS[rank], is_training=True
        )
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[: rank - 1]), tf.float32)  # Values per channel.
        variance = variance * ((count - 1.0) / count)  # The kernel's is Bessel-corrected; Keras' is not.
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs
