"""The image preprocessing shared by the data pipeline and the exported models.

Training, evaluation and serving resize an image the same way, so an image sent to an exported
SavedModel reaches the network exactly as the same file read by `sskt_tf.data` does.
"""

import tensorflow as tf


def resize_images(images, image_size):
    """Resizes uint8 images to `image_size`: bilinear, then rounded back to uint8 values.

    The resize is `tf.image.resize(method="bilinear")` (half-pixel centres, no antialiasing) on
    float32 values, rounded to the nearest integer and clipped to 0..255, so the result is what a
    resized image saved as PNG would hold. Images already at `image_size` pass unchanged.

    Args:
        images: uint8 `[h, w, 3]` (one image, as `tf.data.Dataset.map` sees it) or
            `[N, h, w, 3]` (a batch of images of one size); any `h`, `w` in pixels.
        image_size: `(H, W)`, the size in pixels to resize to.

    Returns:
        uint8 `[H, W, 3]` or `[N, H, W, 3]`, the rank of `images`.
    """
    images = tf.convert_to_tensor(images)
    size = tf.constant(image_size, tf.int32)

    def resize():
        resized = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(images)[-3:-1], size))
    out = tf.cond(same, lambda: images, resize)
    return tf.ensure_shape(out, (*images.shape[:-3], *image_size, 3))


def decode_images(image_bytes, image_size):
    """Decodes encoded images and resizes each with `resize_images`.

    Args:
        image_bytes: string `[N]`, each an encoded JPEG, PNG, BMP or GIF file (a GIF's first frame is
            used); grey or RGBA images become RGB.
        image_size: `(H, W)` in pixels.

    Returns:
        float32 `[N, H, W, 3]`, integer values in 0..255 (what the models take).

    Raises:
        tf.errors.InvalidArgumentError: when one of the strings is not a decodable image.
    """

    def one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return resize_images(image, image_size)

    images = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec((*image_size, 3), tf.uint8))
    return tf.cast(images, tf.float32)
