"""Classifies image files with a trained target: the top classes with their names and scores.

    python -m sskt_tf.predict --model=runs/cifar cat.jpg ship.png [--top_k=5]

`--model` is a run directory, a `.keras` file, or a SavedModel written by `sskt_tf.export` (then
its `serve_image_bytes` signature does the decoding and resizing). Images are JPEG, PNG, BMP or GIF
(the first frame), of any size: they are resized (bilinear) to the size the model was trained at.
Scores are softmax probabilities, or one sigmoid per label for multi-label models.

A missing or unreadable file stops the command before any prediction with `error: <path>: ...`
and exit status 2.
"""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from sskt_tf.cli import flag_definitions, run_cli  # noqa: E402
from sskt_tf.errors import UserError  # noqa: E402
from sskt_tf.serving.preprocessing import decode_images  # noqa: E402
from sskt_tf.serving.saved_model import BYTES_SIGNATURE, is_saved_model  # noqa: E402
from sskt_tf.serving.trained import load_trained  # noqa: E402

DEFAULT_TOP_K = 5


def read_image(path):
    """The bytes of an image file, checked to decode; UserError `<path>: ...` otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass paths of image files.") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; pass image files.") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}).") from None
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        # TensorFlow wraps the reason in "{{function_node ...}} ... [Op:DecodeImage]".
        reason = "empty file" if not data else re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", e.message.splitlines()[0]).strip()
        raise UserError(f"{path}: not a readable image ({reason}); pass JPEG, PNG, BMP, GIF or WebP files.") from None
    return data


class Predictor:
    """Probabilities of encoded images from a run directory, a `.keras` file or an exported SavedModel."""

    def __init__(self, model_path, multi_label=None):
        model_path = os.path.expanduser(str(model_path))
        if os.path.isdir(model_path) and is_saved_model(model_path):
            loaded = tf.saved_model.load(model_path)
            if BYTES_SIGNATURE not in loaded.signatures:
                raise UserError(
                    f"--model={model_path} is a SavedModel without a {BYTES_SIGNATURE} signature; "
                    "pass a SavedModel written by python -m sskt_tf.export, or the run directory."
                )
            self._serve = loaded.signatures[BYTES_SIGNATURE]
            self.class_names = tuple(n.decode() for n in loaded.class_names[0].numpy())
            self._keras = None
        else:
            trained = load_trained(model_path, multi_label=multi_label)
            self._keras = trained
            self.class_names = trained.class_names

    def probabilities(self, encoded_images):
        """float32 `[N, classes]` for a list of encoded images."""
        batch = tf.constant(list(encoded_images), tf.string)
        if self._keras is None:
            return self._serve(image_bytes=batch)["probabilities"].numpy()
        trained = self._keras
        images = decode_images(batch, tuple(trained.image_size))
        logits = trained.model(images, training=False)
        return trained.probabilities(logits).numpy()


def top_k(probabilities, class_names, k):
    """Per row, the `k` best `(class name, score)` pairs, best first (ties: lower index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(class_names[i], float(row[i])) for i in idx] for row, idx in zip(probabilities, order)]


def predict(model, paths, *, k=DEFAULT_TOP_K, multi_label=None):
    """What `python -m sskt_tf.predict` does, without printing: `[(path, [(name, score), ...]), ...]`."""
    if not paths:
        raise UserError("no image given; pass one or more image files after the flags, e.g. cat.jpg ship.png.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"--top_k must be a positive integer. Received: {k!r}.")
    encoded = [read_image(p) for p in paths]  # Every file is checked before the model loads.
    predictor = Predictor(model, multi_label=multi_label)
    probs = predictor.probabilities(encoded)
    return list(zip(paths, top_k(probs, predictor.class_names, min(k, len(predictor.class_names)))))


def format_predictions(predictions):
    lines = []
    for path, best in predictions:
        lines.append(path)
        width = max(len(name) for name, _ in best)
        lines += [f"  {rank}. {name:<{width}}  {score:.4f}" for rank, (name, score) in enumerate(best, 1)]
    return "\n".join(lines)


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.predict` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Run directory, .keras file, or SavedModel directory from sskt_tf.export.", required=True, **fv)
    flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Classes shown per image.", **fv)
    flags.DEFINE_bool("multi_label", None, "For a run or .keras model: sigmoid per label instead of softmax (default: the run's --target_loss=bce).", **fv)


def main(argv):
    """The absl main of `python -m sskt_tf.predict`: the image files are the arguments after the flags."""
    fl = flags.FLAGS
    print(format_predictions(predict(fl.model, argv[1:], k=fl.top_k, multi_label=fl.multi_label)))


def run():
    """The `python -m sskt_tf.predict` (and `sskt-predict`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
