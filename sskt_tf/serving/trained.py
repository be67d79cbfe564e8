"""A trained target, loaded from a run directory or a `.keras` file, with what serving it needs.

`python -m sskt_tf.export`, `sskt_tf.evaluate` and `sskt_tf.predict` all start from `load_trained`.
"""

import dataclasses
import os
import re
import zipfile

import keras
import tensorflow as tf

# The modules whose Keras classes a saved target refers to, imported here rather than through the
# package's __init__: that one may not run (a directory named sskt_tf in the working directory, such
# as the repository's clone, shadows the installed package as a namespace package).
from sskt_tf import models  # noqa: F401  (registers CifarResNet, ResNet, VGG16BN, Classifier, ...)
from sskt_tf import run_dir as run_dir_lib
from sskt_tf.errors import UserError
from sskt_tf.serving.saved_model import is_saved_model


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained target and what is needed to use it.

    Attributes:
        model: Keras model, float32 raw RGB images `[N, H, W, 3]` in 0..255 (a video target: clips
            `[N, T, H, W, 3]`) -> float32 logits `[N, C]`.
        class_names: one name per output, `C` strings.
        image_size: `(H, W)` in pixels, the size the model was trained at (a video target: of
            each frame of a clip).
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
    clip_length: int | None = None  # Frames per clip T of a video target; None for images.

    @property
    def num_classes(self):
        """`C`, the number of outputs (classes or labels)."""
        return len(self.class_names)

    def probabilities(self, logits):
        """The scores the commands and exports report for `logits` of this model.

        Args:
            logits: float32 `[N, C]`, outputs of `model`.

        Returns:
            float32 `[N, C]`: a softmax over the classes, or one sigmoid per label when
            `multi_label` (the scores then do not sum to 1).
        """
        return tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits, axis=-1)


def load_trained(path, *, multi_label=None, flag="--model", allowed="a run directory (with target.keras) or a .keras file"):
    """Loads a run directory or a `.keras` file as a `TrainedModel`.

    A run directory gives its `target.keras` with the class names and image size of its
    `results.json` and the settings of its `config.json`; a `.keras` file inside a run directory
    (`checkpoints/best.keras`) takes them from there too. A lone `.keras` file gives the class
    names its `Classifier` layer stores (else `class_0`, `class_1`, ...) and its fixed input size.
    A classifier that ends in its own softmax or sigmoid is scored by its logits
    (`sskt_tf.sources.logits_model`), so its probabilities are not softened twice.

    Args:
        path: a run directory (with `target.keras`) or a `.keras` file saved by Keras 3.
        multi_label: True/False, or None for the run's choice (`target_loss == "bce"` in its
            config.json; without one, whether the model ended in a sigmoid).
        flag: the flag named in error messages.
        allowed: what the command accepts, as its error messages say it (predict adds SavedModels).

    Returns:
        A `TrainedModel`.

    Raises:
        UserError: a missing path, a SavedModel or another file where a Keras model is needed, a
            run directory without `target.keras`, a file Keras cannot load, a model that does not
            map one image batch `[N, H, W, 3]` to logits `[N, C]`, class names (stored in the
            model or listed in results.json) that do not match it or each other, or a model of
            any input size without a results.json to give its training size, or a run whose
            results.json or config.json is not valid JSON.
    """
    path = os.path.expanduser(str(path))
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
        keras_path, run_dir = path, run_dir_lib.run_dir_of(path)
    elif path.endswith(".tflite"):
        raise UserError(
            f"{flag}={path} is a TFLite model, which this command does not read (run it with "
            f"tf.lite.Interpreter, see sskt_tf.serving.tflite); pass {allowed}."
        )
    else:
        raise UserError(f"{flag}={path} is not a .keras file; pass {allowed}.")
    # Keras says "File not found" of a file that is there but is no .keras archive.
    if not zipfile.is_zipfile(keras_path):
        raise UserError(
            f"{flag}: {keras_path} is not a .keras file (a .keras file is a zip archive written by Keras 3's "
            "model.save; this one is truncated or of another format); pass a model saved that way."
        )

    try:
        model = keras.saving.load_model(keras_path, compile=False)
    except Exception as e:  # Keras raises many types for a broken or foreign file.
        detail = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e).strip() else type(e).__name__
        # Keras' first line about an unknown class is generic; the class it could not find is further down.
        unknown = re.search(r"Could not locate class '([^']+)'", str(e))
        if unknown:
            detail = f"it uses the class {unknown.group(1)!r}, which no imported module registers"
        raise UserError(
            f"{flag}: could not load {keras_path} ({detail}); it must be a .keras file saved by Keras 3."
        ) from None
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) not in (4, 5) or shape[-1] != 3 or len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise UserError(
            f"{flag}: {keras_path} must map one image batch [N, H, W, 3] (or clip batch [N, T, H, W, 3]) to logits "
            f"[N, classes]; it has inputs {shape} and outputs {model.output_shape}."
        )
    video = len(shape) == 5
    spatial = shape[2:4] if video else shape[1:3]
    num_outputs = model.output_shape[-1]

    results = run_dir_lib.run_json(run_dir, "results.json") if run_dir else {}
    config = run_dir_lib.run_json(run_dir, "config.json") if run_dir else {}
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
    elif None not in spatial:
        image_size = tuple(int(s) for s in spatial)
    else:
        raise UserError(
            f"{flag}: {keras_path} accepts any image size and has no results.json beside it to say which "
            "size it was trained at; pass the run directory instead."
        )
    clip_length = None
    if video:
        clip_length = results.get("clip_length") or config.get("clip_length") or shape[1]
        if clip_length is None:
            raise UserError(
                f"{flag}: {keras_path} takes clips of any length and has no results.json beside it to say which "
                "length it was trained at; pass the run directory instead."
            )
        clip_length = int(clip_length)
    # A classifier that ends in its own softmax or sigmoid would be softened twice: its logits.
    from sskt_tf.sources import logits_model

    probe_size = image_size if clip_length is None else (clip_length, *image_size)
    model, activation = logits_model(flag, keras_path, model, probe_size)
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
        clip_length=clip_length,
    )
