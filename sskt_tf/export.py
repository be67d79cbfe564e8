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

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from sskt_tf.cli import flag_definitions, reject_arguments, run_cli  # noqa: E402
from sskt_tf.errors import UserError  # noqa: E402
from sskt_tf.serving.saved_model import DEFAULT_TOP_K, check_top_k, export_saved_model  # noqa: E402
from sskt_tf.serving.tflite import QUANTIZATIONS, export_tflite  # noqa: E402
from sskt_tf.serving.trained import load_trained  # noqa: E402

FORMATS = ("saved_model", "tflite")


def default_output(trained, fmt, quantize="none"):
    """Where `export` writes without `--output`.

    Returns:
        `<run dir>/saved_model`, `<run dir>/model.tflite` or `<run dir>/model_int8.tflite` (with
        `quantize="dynamic_int8"`); for a `.keras` file outside a run directory, beside the file.
    """
    base = trained.run_dir or os.path.dirname(os.path.abspath(trained.model_path))
    if fmt == "saved_model":
        return os.path.join(base, "saved_model")
    return os.path.join(base, "model_int8.tflite" if quantize == "dynamic_int8" else "model.tflite")


def export(model, output=None, *, fmt="saved_model", quantize="none", top_k=DEFAULT_TOP_K, multi_label=None, overwrite=False):
    """What `python -m sskt_tf.export` does: loads the model, writes a SavedModel or a TFLite file.

    Args:
        model: a run directory or a `.keras` file (`sskt_tf.serving.trained.load_trained`).
        output: the SavedModel directory or `.tflite` file; default `default_output`.
        fmt: "saved_model" (`sskt_tf.serving.saved_model`) or "tflite" (`sskt_tf.serving.tflite`).
        quantize: for "tflite": "none" or "dynamic_int8".
        top_k: for "saved_model": classes in the `top_k_*` outputs.
        multi_label: sigmoid per label instead of softmax; None: the run's `--target_loss=bce`.
        overwrite: replace an earlier export at the output (refused without it).

    Returns:
        The path written (absolute).

    Raises:
        UserError: an unknown `fmt`, `quantize` with the SavedModel format, a `.tflite` output
            for a SavedModel, a `top_k` that is not a positive integer (all checked before the
            model loads), and whatever `load_trained`, `export_saved_model` or `export_tflite`
            refuse (an unusable model or output, an earlier export without `overwrite`).
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
    check_top_k(top_k)
    trained = load_trained(model, multi_label=multi_label)
    output = output or default_output(trained, fmt, quantize)
    if fmt == "tflite":
        return export_tflite(trained, output, quantize=quantize, overwrite=overwrite)
    return export_saved_model(trained, output, top_k=top_k, overwrite=overwrite)


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.export` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Run directory (with target.keras) or .keras file.", required=True, **fv)
    flags.DEFINE_string("output", None, "SavedModel directory, or .tflite file (default: <run dir>/saved_model or <run dir>/model.tflite).", **fv)
    flags.DEFINE_enum("format", "saved_model", FORMATS, "saved_model (TF Serving, tf.saved_model.load) or tflite.", **fv)
    flags.DEFINE_enum("quantize", "none", QUANTIZATIONS, "For --format=tflite: none (float32) or dynamic_int8 (int8 weights).", **fv)
    flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Classes in the top_k_* outputs of the SavedModel.", **fv)
    flags.DEFINE_bool("multi_label", None, "Sigmoid per label instead of softmax (default: the run's --target_loss=bce).", **fv)
    flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --output (refused without it).", **fv)


def main(argv):
    """The absl main of `python -m sskt_tf.export`: `export` with the parsed flags, then one line."""
    reject_arguments(argv)
    fl = flags.FLAGS
    path = export(
        fl.model, fl.output, fmt=fl.format, quantize=fl.quantize, top_k=fl.top_k, multi_label=fl.multi_label, overwrite=fl.overwrite
    )
    print(f"exported {fl.model} ({fl.format}{', ' + fl.quantize if fl.format == 'tflite' else ''}) to {path}")


def run():
    """The `python -m sskt_tf.export` (and `sskt-export`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
