"""Small layers shared by the target networks."""

import keras

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
