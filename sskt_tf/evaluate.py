"""Evaluates a trained target on a dataset's test split: metrics, a per-class table, a confusion matrix.

    python -m sskt_tf.evaluate --model=runs/cifar [--dataset=cifar10] [--data_dir=...] [--output_dir=...]

(`sskt-evaluate` is the same command.)

`--model` is a run directory or a `.keras` file (see `sskt_tf.serving.trained.load_trained`). For a run
directory, `--dataset` and `--data_dir` default to the run's own (config.json) and images are
resized to the size it was trained at (results.json).

Single-label models: top-1 accuracy, top-5 accuracy when there are more than 5 classes (with 5 or
fewer it is always 1), the mean cross-entropy (`loss`), and per class: support (test images),
predicted (images predicted as the class), precision, recall (the accuracy on the class's images)
and F1. Multi-label models (`--multi_label`, default from the run's `--target_loss=bce`): mean
average precision over the classes (`mAP`; classes without a positive image are left out), the
reference code's per-image AP (`map_per_image_reference`, see `sskt_tf.metrics`) and the
average precision per class; single labels are read as one-hot.

Folder datasets: image files that cannot be decoded are refused, or left out with `--skip_bad_images`
(default: the run's own setting when it is evaluated on its own dataset, otherwise off); the left-out
files of the test split are listed in metrics.json (`skipped_images`).

Writes to `--output_dir` (default: `<run dir>/evaluation/<dataset>`): `metrics.json`,
`per_class.csv`, and for single-label models `confusion_matrix.csv` and `confusion_matrix.png`
(rows: true class, columns: predicted class; colour: the row's fraction, numbers: counts).
"""

from absl import flags  # noqa: E402

from sskt_tf.cli import flag_definitions, reject_arguments, run_cli  # noqa: E402
from sskt_tf.evaluation import DEFAULT_BATCH_SIZE, run_evaluation  # noqa: E402


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.evaluate` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Run directory (with target.keras) or .keras file.", required=True, **fv)
    flags.DEFINE_string("dataset", None, "cifar10 | cifar100 | stl10 | voc2007 | tfds:<name> | folder:<dir> | synthetic[:classes] | synthetic_multilabel:<classes> (default: the run's).", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: the run's, for the run's dataset).", **fv)
    flags.DEFINE_string("output_dir", None, "Where to write metrics.json, per_class.csv, confusion_matrix.{csv,png} (default: <run dir>/evaluation/<dataset>).", **fv)
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Evaluation batch size.", **fv)
    flags.DEFINE_bool("multi_label", None, "Score as multi-label (mAP) instead of single-label (default: the run's --target_loss=bce).", **fv)
    flags.DEFINE_bool(
        "skip_bad_images",
        None,
        "folder: datasets: leave out image files that cannot be decoded, listed in metrics.json (skipped_images) "
        "(default: the run's own --skip_bad_images on its own dataset, otherwise stop and name them).",
        **fv,
    )


def main(argv):
    """The absl main of `python -m sskt_tf.evaluate`: `sskt_tf.evaluation.run_evaluation` with the parsed flags."""
    reject_arguments(argv)
    fl = flags.FLAGS
    run_evaluation(
        fl.model,
        fl.dataset,
        data_dir=fl.data_dir,
        output_dir=fl.output_dir,
        batch_size=fl.batch_size,
        multi_label=fl.multi_label,
        skip_bad_images=fl.skip_bad_images,
    )


def run():
    """The `python -m sskt_tf.evaluate` (and `sskt-evaluate`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
