"""Exports the trained target for serving: a TensorFlow SavedModel, or a TFLite file.

    python -m sskt_tf.export --model=runs/cifar [--output=runs/cifar/saved_model]
    python -m sskt_tf.export --model=runs/cifar --format=tflite [--quantize=dynamic_int8]

(`sskt-export` is the same command.)

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

from absl import flags  # noqa: E402

from sskt_tf.cli import flag_definitions, reject_arguments, run_cli  # noqa: E402
from sskt_tf.serving.export import FORMATS, export  # noqa: E402
from sskt_tf.serving.saved_model import DEFAULT_TOP_K  # noqa: E402
from sskt_tf.serving.tflite import QUANTIZATIONS  # noqa: E402


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
    """The absl main of `python -m sskt_tf.export`: `sskt_tf.serving.export.export` with the parsed flags, then one line."""
    reject_arguments(argv)
    fl = flags.FLAGS
    path = export(
        fl.model, fl.output, fmt=fl.format, quantize=fl.quantize, top_k=fl.top_k, multi_label=fl.multi_label, overwrite=fl.overwrite
    )
    quantized = {"none": "float32 weights", "dynamic_int8": "int8 weights"}.get(fl.quantize, fl.quantize)
    print(f"exported {fl.model} ({fl.format}{', ' + quantized if fl.format == 'tflite' else ''}) to {path}")


def run():
    """The `python -m sskt_tf.export` (and `sskt-export`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
