"""The evaluation of a trained target on a dataset's test split, and the files it writes.

`run_evaluation` is what `python -m sskt_tf.evaluate` does (the defaults taken from the run, then
`evaluate`); notebooks call it too. `evaluate` reads the test split (`sskt_tf.data.load`), checks
that it is the model's task, predicts it once (`predict_logits`) and scores it with
`sskt_tf.metrics`: single-label models by accuracy, top-5 accuracy, cross-entropy, a confusion
matrix and a per-class table; multi-label models by average precision (mAP over classes, the
reference code's per-image AP, AP per class).

Written to the output directory:

- `metrics.json`: the metrics, the per-class table, the class names, the test images counted and
  the image files of the test split that were left out (`skipped_images`);
- `per_class.csv`: one row per class;
- single-label only: `confusion_matrix.csv` (rows: true class, columns: predicted class) and
  `confusion_matrix.png` (`plot_confusion_matrix`; needs matplotlib).

The picture is drawn here rather than in `sskt_tf.report`: that module reports the comparison of
finished runs, while this one is the only place a confusion matrix exists.
"""

import csv
import json
import os
import re

import keras
import numpy as np
import tensorflow as tf

from sskt_tf import data as data_lib
from sskt_tf import metrics as metrics_lib  # Shared with training.
from sskt_tf.data import folder as folder_data
from sskt_tf.data import video as video_data
from sskt_tf.config import is_video_dataset
from sskt_tf.data.load import kind_of
from sskt_tf.errors import UserError, blocking_file, writable_dir
from sskt_tf.serving.trained import load_trained

DEFAULT_BATCH_SIZE = 256


def plot_confusion_matrix(matrix, class_names, path, title=""):
    """Writes the confusion matrix as a PNG: colour = fraction of the row, numbers = counts.

    Class names label both axes; with many classes the figure grows (up to 30 inches at 150 dpi),
    the labels shrink to 6 points and the counts are left out (above 30 classes), so CIFAR-100's 100
    classes stay legible. Drawn with matplotlib's Agg canvas (no display needed).

    Args:
        matrix: int `[C, C]` counts, row = true class, column = predicted class
            (`sskt_tf.metrics.confusion_matrix`).
        class_names: `C` strings, in the matrix's order.
        path: the PNG file to write (replaced if it exists).
        title: the figure's title; "" for none.

    Returns:
        `path`.

    Raises:
        ImportError: matplotlib (a dependency of sskt_tf) is not installed.
        OSError: `path` cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(max(5.0, 0.45 * n + 2.5), 30.0)
    label_size = 9 if n <= 20 else max(6.0, 9 - n / 30)
    text_size = 10 if n <= 30 else 16  # Axis titles of the large figures stay readable when scaled down.
    fig = Figure(figsize=(side + 1.2, side), dpi=120 if n <= 30 else 150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class", fontsize=text_size)
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=label_size)
    ax.set_yticks(range(n), labels=class_names, fontsize=label_size)
    ax.set_xlabel("predicted class", fontsize=text_size)
    ax.set_ylabel("true class", fontsize=text_size)
    if title:
        ax.set_title(title, fontsize=text_size)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=max(5.0, label_size - 1),
                            color="white" if fractions[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def predict_logits(model, dataset, count=None, verbose=0, unit_name="image"):
    """Logits and labels of one pass over a `(images, labels)` dataset, as numpy arrays.

    Args:
        model: a Keras model of float32 images `[B, H, W, 3]` -> float32 logits `[B, C]`, called
            with `training=False` inside one `tf.function`.
        dataset: a finite `tf.data.Dataset` of `(images, labels)` batches, e.g. `Datasets.test`.
        count: the images in `dataset`, for the progress bar's total and time left; None: unknown.
        verbose: 1: a progress bar over the images (`keras.utils.Progbar`, on stdout); 2: one line
            at the end; 0: none.
        unit_name: what the progress bar counts ("image", "clip").

    Returns:
        `(logits, labels)`: float32 `[N, C]`, and the labels concatenated as they come (int32
        `[N]`, or float32 multi-hot `[N, C]`).
    """
    logits, labels = [], []
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    progress, seen = keras.utils.Progbar(count, verbose=verbose, unit_name=unit_name), 0
    for images, batch_labels in dataset:
        logits.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
        seen += len(labels[-1])
        progress.update(seen, finalize=False)
    progress.update(seen, finalize=True)  # Also where `count` was unknown or wrong.
    return np.concatenate(logits), np.concatenate(labels)


def check_output_dir(path, flag="--output_dir"):
    """Refuses an output directory that could not be created or written, without creating anything.

    The same causes and messages as `errors.writable_dir` (a file in the way, no permission on the
    nearest existing directory), checked before the data is read; the directory itself is created
    only once the data and the model have passed every check.

    Args:
        path: the output directory; `~` is expanded.
        flag: the flag named in error messages.

    Returns:
        `path`, with `~` expanded.

    Raises:
        UserError: `path` is a file, a file is in the way of one of its parents, or the nearest
            existing directory cannot be written.
    """
    path = os.path.expanduser(str(path))
    shown = f"{flag}={path}"
    blocking = blocking_file(path)
    if blocking is not None and os.path.abspath(blocking) == os.path.abspath(path):
        raise UserError(f"{shown} is a file, not a directory; pass the path of a directory for the outputs (created if missing).")
    if blocking is not None:
        raise UserError(f"{shown}: cannot create the directory there, {blocking} is a file; pass another path.")
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{shown}: cannot write the directory there (permission denied on {existing}); pass a directory you can write to."
        )
    return path


def _load_test_data(dataset, *, data_dir, image_size, batch_size, skip_bad_images, clip_length=None, video_split=1):
    return data_lib.load(
        dataset,
        batch_size=1,  # The training stream is not used; 1 fits any dataset.
        eval_batch_size=batch_size,
        data_dir=data_dir,
        image_size=image_size,
        augment="none",
        cache="none",  # One pass over the test set: nothing to keep.
        skip_bad_images=skip_bad_images,
        **({"clip_length": clip_length, "video_split": video_split} if clip_length else {}),
    )


def _test_split_files(dataset, files):
    """The files of `files` (left-out bad images) that are in the test split of a folder dataset."""
    if kind_of(dataset) != "folder" or not files:
        return []
    root = os.path.abspath(os.path.expanduser(dataset[len(folder_data.PREFIX):]))
    test_dir = os.path.join(root, "test") + os.sep
    return sorted(f for f in files if os.path.abspath(f).startswith(test_dir))


def evaluate(trained, dataset, *, data_dir=None, output_dir, batch_size=DEFAULT_BATCH_SIZE, verbose=True, skip_bad_images=False):
    """Evaluates `trained` on the test split of `dataset` and writes the outputs to `output_dir`.

    Writes `metrics.json`, `per_class.csv`, and for single-label models `confusion_matrix.csv` and
    `confusion_matrix.png` (see the module docstring). `output_dir` is checked first and created
    only after the data and the model have passed every check: a refused evaluation writes nothing.
    Single-label metrics are computed from the logits in float64
    (`sskt_tf.metrics.single_label_metrics`); multi-label ones from per-label sigmoids
    (`sskt_tf.metrics`: mAP over classes, and the reference code's per-image AP).

    Args:
        trained: a `sskt_tf.serving.trained.TrainedModel`; the test images are resized to its
            `image_size` (pixels).
        dataset: a `--dataset` spec (`sskt_tf.data.load`), e.g. "cifar10" or "folder:<dir>".
        data_dir: the TFDS data directory, or None for TFDS's default.
        output_dir: the directory for the outputs (created with its parents).
        batch_size: images per evaluation batch.
        verbose: show a progress bar with the time left while the test set is predicted, then
            print the metrics and the per-class table (`format_report`); all on stdout.
        skip_bad_images: folder datasets: leave out image files that cannot be decoded (listed in
            `skipped_images`) instead of refusing.

    Returns:
        The dict written to `metrics.json`: `test` (the metrics), `per_class`, `num_test`,
        `class_names`, `skipped_images`, ...

    Raises:
        UserError: `output_dir` cannot be created or written; the dataset cannot be loaded
            (`sskt_tf.data.load`: an unknown spec, a missing download, undecodable images without
            `skip_bad_images`); or its class count or class names are not the model's.
        ImportError: a single-label model and no matplotlib for `confusion_matrix.png`.
    """
    check_output_dir(output_dir)  # Before the test set is read; creates nothing.
    if bool(trained.clip_length) != is_video_dataset(dataset):
        model_kind, data_kind = ("a video", "images") if trained.clip_length else ("an image", "videos")
        raise UserError(f"--model is {model_kind} model but --dataset={dataset} holds {data_kind}; pass the kind of dataset the model was trained on.")
    data = _load_test_data(
        dataset,
        data_dir=data_dir,
        image_size=tuple(trained.image_size),
        batch_size=batch_size,
        skip_bad_images=skip_bad_images,
        clip_length=trained.clip_length,
        video_split=int(trained.config.get("video_split") or 1),
    )
    if data.num_classes != trained.num_classes:
        raise UserError(
            f"--dataset={dataset} has {data.num_classes} class{'' if data.num_classes == 1 else 'es'} but the model has {trained.num_classes} "
            "outputs; pass the dataset the model was trained on."
        )
    known_names = not all(name == f"class_{i}" for i, name in enumerate(trained.class_names))
    if known_names and tuple(data.class_names) != tuple(trained.class_names):
        raise UserError(
            f"--dataset={dataset} names its classes {list(data.class_names)[:5]}... but the model was trained on "
            f"{list(trained.class_names)[:5]}...; pass the dataset the model was trained on."
        )
    class_names = list(data.class_names)
    videos = data.test_videos
    if videos is not None:
        # Video: every non-overlapping clip, scored per video (the mean of its clips' softmax).
        try:
            clip_logits, _ = predict_logits(
                trained.model, videos.clips, count=videos.num_clips, verbose=1 if verbose else 0, unit_name="clip"
            )
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
            problem = video_data.read_error(e)
            if problem is None:
                raise
            raise UserError(f"{problem}; extract that video again (python -m sskt_tf.prepare_video, after deleting its folder).") from None
        labels = np.asarray(videos.labels)
        logits = np.log(np.maximum(metrics_lib.video_scores(clip_logits, videos.video_ids, len(labels)), 1e-300))
    else:
        logits, labels = predict_logits(trained.model, data.test, count=data.num_test, verbose=1 if verbose else 0)
    writable_dir(output_dir, "--output_dir")  # Everything passed: now the directory is created.
    results = {
        "model": trained.model_path,
        "dataset": dataset,
        "num_test": int(len(labels)),
        "skipped_images": _test_split_files(dataset, data.bad_files),
        "num_classes": len(class_names),
        "class_names": class_names,
        "image_size": list(trained.image_size),
        "multi_label": trained.multi_label,
    }
    if trained.multi_label:
        targets = labels if labels.ndim == 2 else np.eye(len(class_names))[labels]
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        ap = metrics_lib.per_class_average_precision(targets, probs)
        results["test"] = {
            "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
            "map_per_image_reference": metrics_lib.per_image_average_precision(targets, probs),
        }
        table = {"support": targets.sum(axis=0).astype(np.int64), "average_precision": ap}
    else:
        matrix = metrics_lib.confusion_matrix(labels, np.argmax(logits, axis=1), len(class_names))
        results["test"] = (
            metrics_lib.video_metrics(clip_logits, videos.video_ids, labels)
            if videos is not None
            else metrics_lib.single_label_metrics(labels, logits)
        )
        table = metrics_lib.per_class_table(matrix)
        _write_csv(
            os.path.join(output_dir, "confusion_matrix.csv"),
            ["true \\ predicted", *class_names],
            [[name, *row] for name, row in zip(class_names, matrix.tolist())],
        )
        title = f"{os.path.basename(os.path.dirname(trained.model_path)) or trained.model_path} on {dataset}: " + (
            f"accuracy {results['test']['accuracy']:.4f}"
        )
        results["confusion_matrix_png"] = plot_confusion_matrix(
            matrix, class_names, os.path.join(output_dir, "confusion_matrix.png"), title=title
        )
    columns = list(table)
    rows = [[name, *(_cell(table[c][i]) for c in columns)] for i, name in enumerate(class_names)]
    _write_csv(os.path.join(output_dir, "per_class.csv"), ["class", *columns], rows)
    results["per_class"] = {name: {c: _cell(table[c][i]) for c in columns} for i, name in enumerate(class_names)}
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    if verbose:
        print(format_report(results, columns, rows, output_dir))
    return results


def _cell(value):
    return int(value) if isinstance(value, (np.integer, int)) else round(float(value), 6)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def format_report(results, columns, rows, output_dir):
    """The printed summary of an evaluation: the metrics, then the per-class table.

    Args:
        results: the dict `evaluate` returns (reads `model`, `dataset`, `num_test`, `test` and
            `skipped_images`).
        columns: the per-class table's column names, e.g. `["support", "predicted", ...]`.
        rows: one row per class, `[class name, *values]` with ints (counts) or floats.
        output_dir: the directory the outputs were written to; its files are listed.

    Returns:
        The text, lines joined by newlines (no trailing newline).

    Raises:
        OSError: `output_dir` cannot be listed.
    """
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in results["test"].items())
    skipped = len(results.get("skipped_images") or [])
    left_out = f", {skipped} left out that cannot be decoded" if skipped else ""
    unit = "videos" if "video_accuracy" in results["test"] else "images"
    lines = [f"{results['model']} on {results['dataset']} ({results['num_test']} test {unit}{left_out}): {metrics}", ""]
    width = max(len("class"), *(len(r[0]) for r in rows))
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{c:>{max(9, len(c))}}" for c in columns))
    for row in rows:
        cells = [
            f"{v:>{max(9, len(c))}}" if isinstance(v, int) else f"{v:>{max(9, len(c))}.4f}" for c, v in zip(columns, row[1:])
        ]
        lines.append(f"{row[0]:<{width}}  " + "  ".join(cells))
    lines += ["", f"written to {output_dir}: " + ", ".join(sorted(os.listdir(output_dir)))]
    return "\n".join(lines)


def run_evaluation(
    model, dataset=None, *, data_dir=None, output_dir=None, batch_size=DEFAULT_BATCH_SIZE, multi_label=None, skip_bad_images=None
):
    """What `python -m sskt_tf.evaluate` does: defaults from the run, then `evaluate`.

    Args:
        model: a run directory or a `.keras` file (`sskt_tf.serving.trained.load_trained`).
        dataset: a `--dataset` spec; None: the run's own (config.json).
        data_dir: the TFDS data directory; None: the run's own when on its own dataset.
        output_dir: None: `<run dir>/evaluation/<dataset>` (beside a lone `.keras` file).
        batch_size: images per evaluation batch.
        multi_label: score as multi-label; None: the run's `--target_loss=bce`.
        skip_bad_images: None: the run's own `--skip_bad_images` (config.json) on the run's own
            dataset, False on other data or for a `.keras` file outside a run directory.

    Returns:
        The dict written to `metrics.json` (see `evaluate`).

    Raises:
        UserError: no `dataset` and no run's config.json to take it from, a `batch_size` below 1,
            and what `load_trained` and `evaluate` refuse.
    """
    trained = load_trained(model, multi_label=multi_label)
    dataset = dataset or trained.config.get("dataset")
    if not dataset:
        raise UserError(f"--dataset is needed: --model={model} is not in a run directory with a config.json to take it from.")
    own_dataset = dataset == trained.config.get("dataset")
    if data_dir is None and own_dataset:
        data_dir = trained.config.get("data_dir")
    if skip_bad_images is None:
        skip_bad_images = bool(trained.config.get("skip_bad_images", False)) if own_dataset else False
    if output_dir is None:
        base = trained.run_dir or os.path.dirname(os.path.abspath(trained.model_path))
        output_dir = os.path.join(base, "evaluation", _slug(dataset))
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1. Received: {batch_size}; pass e.g. --batch_size={DEFAULT_BATCH_SIZE}.")
    return evaluate(
        trained, dataset, data_dir=data_dir, output_dir=output_dir, batch_size=batch_size, skip_bad_images=skip_bad_images
    )
