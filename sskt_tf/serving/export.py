"""Exporting a trained target: the choice between a SavedModel and a TFLite file, and where it goes.

`export` is what `python -m sskt_tf.export` does (notebooks call it too): it checks the options,
loads the model (`sskt_tf.serving.trained.load_trained`) and hands it to
`sskt_tf.serving.saved_model.export_saved_model` or `sskt_tf.serving.tflite.export_tflite`, which
describe what they write. Without an output path it writes beside the model (`default_output`).
"""

import os

from sskt_tf.errors import UserError
from sskt_tf.serving.saved_model import DEFAULT_TOP_K, check_top_k, export_saved_model
from sskt_tf.serving.tflite import export_tflite
from sskt_tf.serving.trained import load_trained

FORMATS = ("saved_model", "tflite")


def default_output(trained, fmt, quantize="none"):
    """Where `export` writes without `--output`.

    Args:
        trained: a `sskt_tf.serving.trained.TrainedModel`.
        fmt: "saved_model" or "tflite".
        quantize: for "tflite": "none" or "dynamic_int8".

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
