"""Exports the trained target for serving: a TensorFlow SavedModel, or a TFLite file.

    python -m sskt_tf.export --model=runs/cifar [--output=runs/cifar/saved_model]
    python -m sskt_tf.export --model=runs/cifar --format=tflite [--quantize=dynamic_int8]

An existing export at the output (a SavedModel directory, a `.tflite` file or its labels file) is
replaced only with `--overwrite`; a non-empty directory that holds no SavedModel never is.

`--model` is a run directory (its `target.keras`, with the class names and image size of its
`results.json`) or a `.keras` file (inside a run directory, e.g. `checkpoints/best.keras`, the
run's `results.json` is used too). Only the target is exported: no auxiliary heads, no sources.

SavedModel signatures, preprocessing inside:

- `serving_default`: `images`, uint8 `[N, H, W, 3]` of any size, resized (bilinear, rounded to
  uint8 as the training pipeline does for image folders) to the training size.
- `serve_image_bytes`: `image_bytes`, string `[N]` of encoded JPEG/PNG/BMP/GIF files (the first
  frame of a GIF), decoded to RGB and resized the same way one by one.

Both return `probabilities` `[N, C]` (softmax, or one sigmoid per label for multi-label models),
`top_k_classes` `[N, k]` int32, `top_k_scores` `[N, k]`, `top_k_names` `[N, k]` string and
`class_names` `[N, C]` string (the same list in every row: TF Serving's row format, `instances`,
needs every output to have the batch dimension). The class names are also stored in the model
(`tf.saved_model.load(dir).class_names[0]`, a string variable) and written to
`assets.extra/class_names.txt`.

TFLite (`--format=tflite`, `--output=...tflite`): one signature `serving_default` with input
`images`, uint8 `[N, H, W, 3]` at the training size (the interpreter's default N is 1; resize the
input tensor for larger batches), outputs `logits` and `probabilities`. `--quantize=dynamic_int8`
stores the weights as int8 (dynamic-range quantization; activations stay float). The class names
are written beside it, `<name>.labels.txt`, one per line.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

import sskt_tf  # noqa: E402,F401  (registers the custom layers that .keras files refer to)
from sskt_tf.errors import UserError, blocking_file, run_cli, writable_dir, writable_file  # noqa: E402

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "dynamic_int8")
DEFAULT_TOP_K = 5
BYTES_SIGNATURE = "serve_image_bytes"
CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained target and what is needed to use it.

    Attributes:
        model: Keras model, float32 raw RGB images `[N, H, W, 3]` in 0..255 -> logits `[N, C]`.
        class_names: one name per output.
        image_size: `(H, W)` the model was trained at.
        multi_label: whether the outputs are independent labels (sigmoid) rather than one class (softmax).
        model_path: the `.keras` file.
        run_dir: the run directory the model comes from, or None.
        config: the run's `config.json` as a dict ({} without a run directory).
    """

    model: keras.Model
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    multi_label: bool
    model_path: str
    run_dir: str | None = None
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)


def is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _run_dir_of(keras_path):
    """The run directory holding `keras_path` (target.keras or checkpoints/*.keras), or None."""
    here = os.path.dirname(os.path.abspath(keras_path))
    for candidate in (here, os.path.dirname(here) if os.path.basename(here) == "checkpoints" else None):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    return None


def load_trained(path, *, multi_label=None, flag="--model"):
    """Loads a run directory or a `.keras` file as a `TrainedModel`.

    Args:
        path: a run directory (with `target.keras`) or a `.keras` file.
        multi_label: True/False, or None for the run's choice (`target_loss == "bce"` in its
            config.json; False without one).
        flag: the flag named in error messages.

    Raises:
        UserError: a missing path, a SavedModel or another file where a Keras model is needed, a
            model that does not map images to logits, or class names that do not match it.
    """
    path = os.path.expanduser(str(path))
    allowed = "a run directory (with target.keras) or a .keras file"
    if not os.path.exists(path):
        raise UserError(f"{flag}={path}: no such file or directory; pass {allowed}.")
    if os.path.isdir(path):
        if is_saved_model(path):
            raise UserError(
                f"{flag}={path} is an exported SavedModel; this command needs the Keras model: pass {allowed}."
            )
        keras_path = os.path.join(path, "target.keras")
        if not os.path.isfile(keras_path):
            hint = " (the run has not finished: checkpoints/last.keras holds its latest epoch)" if os.path.isfile(
                os.path.join(path, "checkpoints", "last.keras")
            ) else ""
            raise UserError(f"{flag}={path}: the directory has no target.keras{hint}; pass {allowed}.")
        run_dir = path
    elif path.endswith(".keras"):
        keras_path, run_dir = path, _run_dir_of(path)
    else:
        raise UserError(f"{flag}={path} is not a .keras file; pass {allowed}.")

    try:
        model = keras.saving.load_model(keras_path, compile=False)
    except Exception as e:  # Keras raises many types for a broken or foreign file.
        raise UserError(
            f"{flag}: could not load {keras_path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it must be a .keras file saved by Keras 3."
        ) from None
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3 or len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise UserError(
            f"{flag}: {keras_path} must map one image batch [N, H, W, 3] to logits [N, classes]; it has "
            f"inputs {shape} and outputs {model.output_shape}."
        )
    num_outputs = model.output_shape[-1]

    results = _read_json(os.path.join(run_dir, "results.json")) if run_dir else {}
    config = _read_json(os.path.join(run_dir, "config.json")) if run_dir else {}
    # A target saved by this project stores its class names (in its Classifier layer); the run's
    # results.json names them too. Either serves alone; where both do, they must agree.
    from sskt_tf.models.layers import class_names_of

    stored = class_names_of(model)
    listed = tuple(results["class_names"]) if results.get("class_names") else None
    if stored is not None and listed is not None and stored != listed:
        raise UserError(
            f"{flag}: {keras_path} stores the class names {list(stored)[:4]}... but {run_dir}/results.json "
            f"names {list(listed)[:4]}...; the file is not that run's model: pass the model of that run."
        )
    class_names = listed or stored or tuple(f"class_{i}" for i in range(num_outputs))
    if len(class_names) != num_outputs:
        raise UserError(
            f"{flag}: {keras_path} has {num_outputs} outputs but {run_dir}/results.json names "
            f"{len(class_names)} classes; pass the model of that run."
        )
    if results.get("image_size"):
        image_size = tuple(int(s) for s in results["image_size"])
    elif None not in shape[1:3]:
        image_size = tuple(int(s) for s in shape[1:3])
    else:
        raise UserError(
            f"{flag}: {keras_path} accepts any image size and has no results.json beside it to say which "
            "size it was trained at; pass the run directory instead."
        )
    # A classifier that ends in its own softmax or sigmoid would be softened twice: its logits.
    from sskt_tf.sources import logits_model

    model, activation = logits_model(flag, keras_path, model, image_size)
    if multi_label is None:
        multi_label = config.get("target_loss") == "bce" if config else activation == "sigmoid"
    return TrainedModel(
        model=model,
        class_names=class_names,
        image_size=image_size,
        multi_label=bool(multi_label),
        model_path=keras_path,
        run_dir=run_dir,
        config=config,
    )


# --------------------------------------------------------------------------- preprocessing


def resize_images(images, image_size):
    """uint8 `[N, h, w, 3]` -> float32 `[N, H, W, 3]` in 0..255 at `image_size`.

    Bilinear, then rounded to uint8 values, exactly as `sskt_tf.data` resizes image folders, so a
    served image goes through the model as it would in `sskt_tf.evaluate`. Images already at
    `image_size` pass unchanged.
    """
    images = tf.convert_to_tensor(images)
    size = tf.constant(image_size, tf.int32)

    def resize():
        resized = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear")
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)

    same = tf.reduce_all(tf.equal(tf.shape(images)[1:3], size))
    out = tf.cond(same, lambda: tf.cast(images, tf.float32), resize)
    return tf.ensure_shape(out, (None, *image_size, 3))


def decode_images(image_bytes, image_size):
    """Encoded images, string `[N]` -> float32 `[N, H, W, 3]` in 0..255 (see `resize_images`)."""

    def one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return tf.cast(resize_images(image[None], image_size)[0], tf.uint8)

    images = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec((*image_size, 3), tf.uint8))
    return tf.cast(images, tf.float32)


def probabilities(logits, multi_label):
    """Softmax over the classes, or one sigmoid per label for multi-label models."""
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits, axis=-1)


# ------------------------------------------------------------------------------ SavedModel


def _check_top_k(top_k):
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

    An earlier export in `output_dir` is replaced only with `overwrite` (UserError otherwise); the
    new one is written beside it first, so a failure leaves the old one in place. A non-empty
    directory that holds no SavedModel is never written into. Returns `output_dir`.
    """
    top_k = min(_check_top_k(top_k), trained.num_classes)
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    _prepare_output_dir(output_dir, overwrite)
    model, image_size, multi_label = trained.model, tuple(trained.image_size), trained.multi_label
    class_names = tf.Variable(list(trained.class_names), trainable=False, dtype=tf.string, name="class_names")

    def outputs(images):
        probs = probabilities(model(images, training=False), multi_label)
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
    archive.add_endpoint(
        "serving_default",
        lambda images: outputs(resize_images(images, image_size)),
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
    try:
        with _quiet_tensorflow_logs():
            archive.write_out(staging, verbose=False)
        _write_lines(os.path.join(staging, CLASS_NAMES_FILE), trained.class_names)
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


@contextlib.contextmanager
def _quiet_tensorflow_logs():
    """Hides TensorFlow's INFO lines while saving ("Assets written to ...", renamed inputs, fingerprints).

    TensorFlow logs them through its own Python logger and through absl's.
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


def _write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{line}\n" for line in lines)


# ---------------------------------------------------------------------------------- TFLite


def labels_path(tflite_path):
    """Where `export_tflite` writes the class names: `model.tflite` -> `model.labels.txt`."""
    return f"{os.path.splitext(tflite_path)[0]}.labels.txt"


def export_tflite(trained, output_path, *, quantize="none", overwrite=False):
    """Writes `trained` as a TFLite model (see the module docstring) and its labels file.

    An existing file at `output_path` or its labels file is replaced only with `overwrite`
    (UserError otherwise, before anything is converted).

    The converter reads a SavedModel written for the purpose: converting the `tf.function` directly
    kept the variables as TFLite resource variables, which the interpreter left uninitialised (NaN
    outputs) in TF 2.21. Returns `output_path`.
    """
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize={quantize} is not known; allowed: {', '.join(QUANTIZATIONS)}.")
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
    model, multi_label = trained.model, trained.multi_label

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        return {"logits": logits, "probabilities": probabilities(logits, multi_label)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, *trained.image_size, 3], tf.uint8, name="images")]
    )
    with tempfile.TemporaryDirectory() as tmp, _quiet_tensorflow_logs():
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        if quantize == "dynamic_int8":
            # No representative dataset: weights become int8, activations stay float (dynamic range).
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with open(f"{output_path}.tmp", "wb") as f:
        f.write(flatbuffer)
    os.replace(f"{output_path}.tmp", output_path)
    _write_lines(labels_path(output_path), trained.class_names)
    return output_path


# ------------------------------------------------------------------------------------- CLI


def default_output(trained, fmt, quantize="none"):
    """`<run dir>/saved_model`, `<run dir>/model.tflite`, `model_int8.tflite`; beside a lone .keras file."""
    base = trained.run_dir or os.path.dirname(os.path.abspath(trained.model_path))
    if fmt == "saved_model":
        return os.path.join(base, "saved_model")
    return os.path.join(base, "model_int8.tflite" if quantize == "dynamic_int8" else "model.tflite")


def export(model, output=None, *, fmt="saved_model", quantize="none", top_k=DEFAULT_TOP_K, multi_label=None, overwrite=False):
    """What `python -m sskt_tf.export` does; returns the path written.

    An earlier export at the output is replaced only with `overwrite` (`--overwrite`).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format={fmt} is not known; allowed: {', '.join(FORMATS)}.")
    if fmt == "saved_model" and quantize != "none":
        raise UserError(f"--quantize={quantize} applies to --format=tflite only; drop it or pass --format=tflite.")
    if fmt == "saved_model" and output and str(output).endswith(".tflite"):
        raise UserError(
            f"--output={output} names a .tflite file, but --format=saved_model writes a directory; pass "
            "--format=tflite, or an --output directory for the SavedModel."
        )
    _check_top_k(top_k)
    trained = load_trained(model, multi_label=multi_label)
    output = output or default_output(trained, fmt, quantize)
    if fmt == "tflite":
        return export_tflite(trained, output, quantize=quantize, overwrite=overwrite)
    return export_saved_model(trained, output, top_k=top_k, overwrite=overwrite)


def define_flags():
    if "quantize" in flags.FLAGS:
        return
    flags.DEFINE_string("model", None, "Run directory (with target.keras) or .keras file.", required=True)
    flags.DEFINE_string("output", None, "SavedModel directory, or .tflite file (default: <run dir>/saved_model or <run dir>/model.tflite).")
    flags.DEFINE_enum("format", "saved_model", FORMATS, "saved_model (TF Serving, tf.saved_model.load) or tflite.")
    flags.DEFINE_enum("quantize", "none", QUANTIZATIONS, "For --format=tflite: none (float32) or dynamic_int8 (int8 weights).")
    flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Classes in the top_k_* outputs of the SavedModel.")
    flags.DEFINE_bool("multi_label", None, "Sigmoid per label instead of softmax (default: the run's --target_loss=bce).")
    flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --output (refused without it).")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull).")
    fl = flags.FLAGS
    path = export(
        fl.model, fl.output, fmt=fl.format, quantize=fl.quantize, top_k=fl.top_k, multi_label=fl.multi_label, overwrite=fl.overwrite
    )
    print(f"exported {fl.model} ({fl.format}{', ' + fl.quantize if fl.format == 'tflite' else ''}) to {path}")


def run():
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
