"""Tests of sskt_tf.serving.preprocessing: the resize of training and serving, eagerly and inside tf.data.map
(as big_vision's `pp/ops_image_test.py`), and the decoding of encoded images."""

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf.serving.preprocessing import decode_images, resize_images


def random_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def expected_resize(image, size):
    """Bilinear with half-pixel centres, rounded and clipped: computed here by tf.image.resize in float32."""
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear").numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, size", [((45, 61, 3), (32, 32)), ((20, 48, 3), (74, 74)), ((300, 200, 3), (96, 64))])
def test_resize_is_bilinear_rounded_to_uint8_for_one_image_and_a_batch(shape, size):
    images = random_images((2, *shape), seed=1)
    one = resize_images(images[0], size)
    assert one.dtype == tf.uint8 and one.shape == (*size, 3)
    np.testing.assert_array_equal(one.numpy(), expected_resize(images[0], size))
    batch = resize_images(images, size)
    assert batch.dtype == tf.uint8 and batch.shape == (2, *size, 3)
    np.testing.assert_array_equal(batch.numpy()[1], resize_images(images[1], size).numpy())


def test_an_image_at_the_size_passes_unchanged():
    image = random_images((32, 32, 3), seed=2)
    np.testing.assert_array_equal(resize_images(image, (32, 32)).numpy(), image)
    np.testing.assert_array_equal(resize_images(image[None], (32, 32)).numpy()[0], image)


def test_inside_tf_data_map_equals_eager():
    images = [random_images((h, w, 3), seed=h) for h, w in ((45, 61), (32, 32), (7, 90))]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(lambda image: resize_images(image, (32, 32)))
    assert dataset.element_spec.shape == (32, 32, 3)
    for mapped, image in zip(dataset, images):
        np.testing.assert_array_equal(mapped.numpy(), resize_images(image, (32, 32)).numpy())


def test_decode_images_decodes_png_jpeg_and_grey_then_resizes():
    colour, grey = random_images((20, 48, 3), seed=3), random_images((16, 16, 1), seed=4)
    png, jpeg, grey_png = (tf.io.encode_png(colour), tf.io.encode_jpeg(colour, quality=90), tf.io.encode_png(grey))
    out = decode_images(tf.stack([png, jpeg, grey_png]), (32, 32))
    assert out.dtype == tf.float32 and out.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(out.numpy()[0], expected_resize(colour, (32, 32)))
    np.testing.assert_array_equal(out.numpy()[1], expected_resize(tf.io.decode_jpeg(jpeg).numpy(), (32, 32)))
    np.testing.assert_array_equal(out.numpy()[2], expected_resize(np.repeat(grey, 3, axis=-1), (32, 32)))
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_images(tf.constant([b"not an image"]), (32, 32))
