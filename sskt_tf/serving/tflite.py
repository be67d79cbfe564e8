"""Exports a trained target as a TFLite model, with its class names in a labels file beside it.

One signature, `serving_default`: input `images`, uint8 `[N, H, W, 3]` at the training size (the
interpreter's default N is 1; resize the input tensor for larger batches, and resize the images
beforehand with `sskt_tf.serving.preprocessing.resize_images` to match training), outputs `logits`
float32 `[N, C]` and `probabilities` float32 `[N, C]` (softmax, or one sigmoid per label).
`quantize="dynamic_int8"` stores the weights as int8 (dynamic-range quantization; activations
stay float). The class names go to `<name>.labels.txt`, one per line (`labels_path`).
"""

import os
import tempfile

import keras
import tensorflow as tf

from sskt_tf.errors import UserError, writable_file
from sskt_tf.serving.saved_model import quiet_tensorflow_logs, write_class_names

QUANTIZATIONS = ("none", "dynamic_int8")


def labels_path(tflite_path):
    """Where `export_tflite` writes the class names: `model.tflite` -> `model.labels.txt`."""
    return f"{os.path.splitext(tflite_path)[0]}.labels.txt"


def export_tflite(trained, output_path, *, quantize="none", overwrite=False):
    """Writes `trained` as a TFLite model (see the module docstring) and its labels file.

    The converter reads a SavedModel written for the purpose: converting the `tf.function` directly
    kept the variables as TFLite resource variables, which the interpreter left uninitialised (NaN
    outputs) in TF 2.21. The flatbuffer is written to a temporary file and moved into place.

    Args:
        trained: a `sskt_tf.serving.trained.TrainedModel`.
        output_path: the `.tflite` file.
        quantize: "none" (float32 weights) or "dynamic_int8" (int8 weights).
        overwrite: replace an existing `output_path` or labels file.

    Returns:
        `output_path` as an absolute path.

    Raises:
        UserError: an unknown `quantize`; a video model; `output_path` does not end in `.tflite` or is a
            directory; it or its labels file exists without `overwrite` (checked before anything
            is converted); or either cannot be written (a parent is a file, permissions, a
            read-only or full disk).
    """
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize={quantize} is not known; allowed: {', '.join(QUANTIZATIONS)}.")
    if trained.clip_length is not None:
        raise UserError(
            f"--format=tflite exports image models; {trained.model_path} is a video model (clips of "
            f"{trained.clip_length} frames, 3D convolutions): export it with --format=saved_model."
        )
    output_path = os.path.abspath(os.path.expanduser(str(output_path)))
    if not output_path.endswith(".tflite") or os.path.isdir(output_path):
        raise UserError(f"--output={output_path}: a TFLite export must be a file ending in .tflite, e.g. --output=model.tflite.")
    existing = [p for p in (output_path, labels_path(output_path)) if os.path.lexists(p)]
    if existing and not overwrite:
        raise UserError(
            f"--output={output_path}: {' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}"
            f"; pass --overwrite to replace {'it' if len(existing) == 1 else 'them'}, or another --output."
        )
    for path in (output_path, labels_path(output_path)):
        writable_file(path, "--output" if path == output_path else None, what="TFLite export")
    model = trained.model

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        return {"logits": logits, "probabilities": trained.probabilities(logits)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, *trained.image_size, 3], tf.uint8, name="images")]
    )
    with tempfile.TemporaryDirectory() as tmp, quiet_tensorflow_logs():
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        if quantize == "dynamic_int8":
            # No representative dataset: weights become int8, activations stay float (dynamic range).
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with open(f"{output_path}.tmp", "wb") as f:
        f.write(flatbuffer)
    os.replace(f"{output_path}.tmp", output_path)
    write_class_names(labels_path(output_path), trained.class_names)
    return output_path
