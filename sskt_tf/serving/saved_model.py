"""Exports a trained target as a TensorFlow SavedModel with its preprocessing inside.

Signatures (TF Model Garden's `serving/` export: the SavedModel takes what a client has, not
what the network takes):

- `serving_default`: `images`, uint8 `[N, H, W, 3]` of any size, resized to the training size by
  `sskt_tf.serving.preprocessing.resize_images` (as `sskt_tf.data` resizes).
- `serve_image_bytes` (`BYTES_SIGNATURE`): `image_bytes`, string `[N]` of encoded JPEG/PNG/BMP/GIF
  files (the first frame of a GIF), decoded to RGB and resized the same way one by one.

A video target has one signature instead, `serving_default`: `clips`, uint8 `[N, T, H, W, 3]` with
T the training clip length and frames of any size, each cropped and resized as the test set's
(`sskt_tf.data.video.centre_clips`: the centre square, resized to the training size). A video's
score is the mean of its clips' probabilities (as `python -m sskt_tf.predict` does).

Both return `probabilities` float32 `[N, C]` (softmax, or one sigmoid per label for multi-label
models), `top_k_classes` `[N, k]` int32, `top_k_scores` `[N, k]` float32, `top_k_names` `[N, k]`
string and `class_names` `[N, C]` string (the same list in every row: TF Serving's row format,
`instances`, needs every output to have the batch dimension). The class names are also stored in
the model (`tf.saved_model.load(dir).class_names[0]`, a string variable) and written to
`assets.extra/class_names.txt` (`CLASS_NAMES_FILE`).
"""

import contextlib
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

from sskt_tf.errors import UserError, blocking_file, writable_dir
from sskt_tf.serving.preprocessing import decode_images, resize_images

DEFAULT_TOP_K = 5
BYTES_SIGNATURE = "serve_image_bytes"
CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")


def is_saved_model(path):
    """Whether the directory `path` holds a SavedModel (a `saved_model.pb`)."""
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def check_top_k(top_k):
    """`top_k` as an int.

    Raises:
        UserError: `top_k` is not a positive integer (a bool is not one).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise UserError(f"--top_k must be a positive integer. Received: {top_k!r}; pass e.g. --top_k=5.")
    return int(top_k)


def _prepare_output_dir(output_dir, overwrite):
    """Refuses a file, a non-empty directory that is not an earlier export, an earlier export without
    `overwrite`, and a place that cannot be written; creates the parent directories."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output={output_dir} is a file; pass a directory (new or empty) for the SavedModel.")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not is_saved_model(output_dir):
            raise UserError(
                f"--output={output_dir} is a non-empty directory that holds no SavedModel; pass a new or empty "
                "directory."
            )
        if not overwrite:
            raise UserError(
                f"--output={output_dir} holds an earlier export (a SavedModel); pass --overwrite to replace it, "
                "or another --output."
            )
    # The new export is written beside the old one first: the parent must be writable.
    blocking = blocking_file(os.path.dirname(output_dir))
    if blocking is not None:
        raise UserError(f"--output={output_dir}: cannot create the SavedModel directory there, {blocking} is a file; pass another path.")
    writable_dir(os.path.dirname(output_dir), None, what=f"parent directory of --output={output_dir}")


def export_saved_model(trained, output_dir, *, top_k=DEFAULT_TOP_K, overwrite=False):
    """Writes `trained` as a SavedModel with the signatures of the module docstring.

    The new export is written beside `output_dir` first and moved into place at the end, so a
    failure leaves an earlier export as it was.

    Args:
        trained: a `sskt_tf.serving.trained.TrainedModel`.
        output_dir: the SavedModel directory; new, empty, or an earlier export (with `overwrite`).
        top_k: classes in the `top_k_*` outputs (at most the number of classes).
        overwrite: replace an earlier export in `output_dir`.

    Returns:
        `output_dir` as an absolute path.

    Raises:
        UserError: `top_k` is not a positive integer; `output_dir` is a file, a non-empty directory
            that holds no SavedModel (never written into), an earlier export without
            `overwrite`, or a place that cannot be written (a parent is a file, permissions, a
            read-only or full disk).
    """
    top_k = min(check_top_k(top_k), trained.num_classes)
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    _prepare_output_dir(output_dir, overwrite)
    model, image_size = trained.model, tuple(trained.image_size)
    class_names = tf.Variable(list(trained.class_names), trainable=False, dtype=tf.string, name="class_names")

    def outputs(images):
        probs = trained.probabilities(model(images, training=False))
        scores, classes = tf.math.top_k(probs, k=top_k)
        return {
            "probabilities": probs,
            "top_k_classes": classes,
            "top_k_scores": scores,
            "top_k_names": tf.gather(class_names, classes),
            "class_names": tf.tile(class_names[None], [tf.shape(probs)[0], 1]),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    if trained.clip_length is not None:
        from sskt_tf.data.video import centre_clips

        archive.add_endpoint(
            "serving_default",
            lambda clips: outputs(centre_clips(clips, image_size)),
            input_signature=[tf.TensorSpec([None, trained.clip_length, None, None, 3], tf.uint8, name="clips")],
        )
    else:
        archive.add_endpoint(
            "serving_default",
            lambda images: outputs(tf.cast(resize_images(images, image_size), tf.float32)),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        )
        archive.add_endpoint(
            BYTES_SIGNATURE,
            lambda image_bytes: outputs(decode_images(image_bytes, image_size)),
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
    archive.add_variable_collection("class_names", [class_names])

    parent = os.path.dirname(output_dir)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", dir=parent)
    # mkdtemp makes the directory private (0700); the export gets the mode of any new directory,
    # so that a model server running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        with quiet_tensorflow_logs():
            archive.write_out(staging, verbose=False)
        write_class_names(os.path.join(staging, CLASS_NAMES_FILE), trained.class_names)
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


@contextlib.contextmanager
def quiet_tensorflow_logs():
    """Hides TensorFlow's INFO lines while a SavedModel is written.

    "Assets written to ...", renamed inputs and fingerprints say nothing to the user of an export
    command. TensorFlow logs them through its own Python logger and through absl's; both levels
    are put back afterwards.
    """
    logger = tf.get_logger()
    level, verbosity = logger.level, absl_logging.get_verbosity()
    logger.setLevel("WARNING")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def write_class_names(path, class_names):
    """Writes `class_names` to the text file `path` (UTF-8), one per line; creates its directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{line}\n" for line in class_names)
