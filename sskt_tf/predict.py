"""Classifies image files with a trained target: the top classes with their names and scores.

    python -m sskt_tf.predict --model=runs/cifar cat.jpg ship.png [--top_k=5]

(`sskt-predict` is the same command.)

`--model` is a run directory, a `.keras` file, or a SavedModel written by `sskt_tf.export` (then
its `serve_image_bytes` signature does the decoding and resizing). Images are JPEG, PNG, BMP, GIF
(the first frame), of any size: they are resized (bilinear) to the size the model was trained at.
Scores are softmax probabilities, or one sigmoid per label for multi-label models.

A missing or unreadable file stops the command before any prediction with `error: <path>: ...`
and exit status 2.
"""

from absl import flags  # noqa: E402

from sskt_tf.cli import flag_definitions, run_cli  # noqa: E402
from sskt_tf.serving.predictor import DEFAULT_TOP_K, format_predictions, predict  # noqa: E402


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.predict` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Run directory, .keras file, or SavedModel directory from sskt_tf.export.", required=True, **fv)
    flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Classes shown per image.", **fv)
    flags.DEFINE_bool("multi_label", None, "For a run or .keras model: sigmoid per label instead of softmax (default: the run's --target_loss=bce).", **fv)


def main(argv):
    """The absl main of `python -m sskt_tf.predict`: `sskt_tf.serving.predictor.predict` of the image files
    (the arguments after the flags), printed."""
    fl = flags.FLAGS
    print(format_predictions(predict(fl.model, argv[1:], k=fl.top_k, multi_label=fl.multi_label)))


def run():
    """The `python -m sskt_tf.predict` (and `sskt-predict`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
