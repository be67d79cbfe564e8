"""Inference on image or video files: the top classes of each, from a run, a `.keras` file or a SavedModel.

`predict` is what `python -m sskt_tf.predict` does, without printing (`format_predictions` gives
its text); notebooks call it too. `Predictor` scores encoded images (JPEG, PNG, BMP, GIF, WebP)
of any size: an exported SavedModel (`sskt_tf.serving.saved_model`) decodes and resizes them in
its `serve_image_bytes` signature; a run directory or `.keras` file (`sskt_tf.serving.trained`)
goes through the same decoding and resizing (`sskt_tf.serving.preprocessing.decode_images`).
Scores are softmax probabilities, or one sigmoid per label for multi-label models.

A video target scores video files (`.mp4`, `.avi`, ... decoded with PyAV, `sskt_tf.video_io`): their
frames scaled to a short side of 240 px as `python -m sskt_tf.prepare_video` stores them, every
non-overlapping clip of the training length (`sskt_tf.data.video.test_starts`, loop-padded), each
cropped and resized as the test set's clips, and the video's score the mean of its clips'
probabilities (the video accuracy's score).
"""

import os
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from sskt_tf import video_io
from sskt_tf.errors import UserError
from sskt_tf.serving.preprocessing import decode_images
from sskt_tf.serving.saved_model import BYTES_SIGNATURE, is_saved_model
from sskt_tf.serving.trained import load_trained

DEFAULT_TOP_K = 5
# Images per model call: bounds the memory of many files (they are decoded and resized batch by batch).
DEFAULT_BATCH_SIZE = 64


def read_image(path):
    """The bytes of an image file, checked to decode.

    Args:
        path: the image file (JPEG, PNG, BMP, GIF or WebP).

    Returns:
        bytes, the file's content, which `tf.io.decode_image` decodes.

    Raises:
        UserError: `<path>: ...`: the file is missing, a directory, unreadable, empty, or not an
            image TensorFlow decodes.
    """
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
        raise UserError(
            f"{path}: not a readable image ({reason}); pass JPEG, PNG, BMP, GIF or WebP files (or, to a video model, "
            f"video files: {', '.join(video_io.VIDEO_EXTENSIONS)})."
        ) from None
    return data


class Predictor:
    """Probabilities of encoded images from a run directory, a `.keras` file or an exported SavedModel.

    Args:
        model_path: a SavedModel directory written by `python -m sskt_tf.export` (its
            `serve_image_bytes` signature and stored class names are used), or a run directory or
            `.keras` file (`sskt_tf.serving.trained.load_trained`); `~` is expanded.
        multi_label: for a run or `.keras` file: sigmoid per label instead of softmax; None: the
            run's `--target_loss=bce`. A SavedModel keeps the scores it was exported with.

    Attributes:
        class_names: the model's `C` class names, a tuple of str.

    Raises:
        UserError: a SavedModel without the `serve_image_bytes` signature, or what
            `load_trained` refuses (a missing path, a file Keras cannot load, ...).
    """

    def __init__(self, model_path, multi_label=None):
        model_path = os.path.expanduser(str(model_path))
        self.clip_length = None  # Frames per clip of a video model (`video_probabilities`); None for images.
        if os.path.isdir(model_path) and is_saved_model(model_path):
            loaded = tf.saved_model.load(model_path)
            default = loaded.signatures.get("serving_default")
            clips = default is not None and "clips" in default.structured_input_signature[1]
            if clips:  # A video target's export: one signature of uint8 clips.
                self._serve_clips = default
                self.clip_length = int(default.structured_input_signature[1]["clips"].shape[1])
                self.class_names = tuple(n.decode() for n in loaded.class_names[0].numpy())
                self._keras = None
                return
            if BYTES_SIGNATURE not in loaded.signatures:
                raise UserError(
                    f"--model={model_path} is a SavedModel without a {BYTES_SIGNATURE} signature; "
                    "pass a SavedModel written by python -m sskt_tf.export, or the run directory."
                )
            self._serve = loaded.signatures[BYTES_SIGNATURE]
            self.class_names = tuple(n.decode() for n in loaded.class_names[0].numpy())
            self._keras = None
        else:
            trained = load_trained(
                model_path,
                multi_label=multi_label,
                allowed="a run directory (with target.keras), a .keras file or a SavedModel written by sskt_tf.export",
            )
            self._keras = trained
            self.class_names = trained.class_names
            self.clip_length = trained.clip_length

    def probabilities(self, encoded_images):
        """The scores of encoded images, each resized (bilinear) to the model's training size.

        Args:
            encoded_images: a list of `N` bytes, each an encoded image (see `read_image`).

        Returns:
            float32 `[N, C]`: softmax probabilities, or one sigmoid per label for multi-label models.

        Raises:
            tf.errors.InvalidArgumentError: one of the images does not decode (`read_image`
                checks them first).
        """
        batch = tf.constant(list(encoded_images), tf.string)
        if self._keras is None:
            return self._serve(image_bytes=batch)["probabilities"].numpy()
        trained = self._keras
        images = decode_images(batch, tuple(trained.image_size))
        logits = trained.model(images, training=False)
        return trained.probabilities(logits).numpy()


    def video_probabilities(self, frames, batch_size=DEFAULT_BATCH_SIZE):
        """The score of one video: the mean of the probabilities of its non-overlapping clips.

        Args:
            frames: uint8 `[F, H, W, 3]`, every frame of the video.
            batch_size: clips per model call.

        Returns:
            float32 `[C]`.
        """
        from sskt_tf.data.video import centre_clips, clip_indices, test_starts

        t = self.clip_length
        # The test set's clips: the same starts and loop padding as `sskt_tf.data.video` reads them.
        index = np.stack([clip_indices(b, len(frames), t).numpy() for b in test_starts(len(frames), t)])
        probs = []
        for first in range(0, len(index), batch_size):
            clips = tf.constant(frames[index[first : first + batch_size]])
            if self._keras is None:
                probs.append(self._serve_clips(clips=clips)["probabilities"].numpy())
            else:
                trained = self._keras
                probs.append(trained.probabilities(trained.model(centre_clips(clips, tuple(trained.image_size)), training=False)).numpy())
        return np.concatenate(probs).mean(axis=0)


def read_video(path):
    """The frames of a video file, as the data pipeline stores them (short side 240 px).

    Raises:
        UserError: `<path>: ...`: a missing file or a directory, or a file PyAV cannot decode.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; pass paths of video files.")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; pass video files.")
    report = video_io.DecodeReport()
    frames = video_io.read_video(path, short_side=video_io.DEFAULT_SHORT_SIDE, report=report)
    if report:  # As training names such videos: the frames that decode are scored.
        print(f"note: {path}: damaged data skipped as ffmpeg skips it, {report.describe()}; the frames that decode are scored.", file=sys.stderr)
    return frames


def top_k(probabilities, class_names, k):
    """The `k` best classes of each row, best first (ties: lower index first).

    Args:
        probabilities: float `[N, C]` scores.
        class_names: `C` names.
        k: classes per row, at most `C`.

    Returns:
        A list of `N` lists of `k` `(class name, score)` pairs, scores as float.
    """
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(class_names[i], float(row[i])) for i in idx] for row, idx in zip(probabilities, order)]


def predict(model, paths, *, k=DEFAULT_TOP_K, multi_label=None, batch_size=DEFAULT_BATCH_SIZE, verbose=None):
    """What `python -m sskt_tf.predict` does, without printing its result: the top classes of image files.

    Every file is read and checked to decode before the model loads, so a bad file costs no
    model loading. The model then scores `batch_size` files at a time.

    Args:
        model: a run directory, a `.keras` file or an exported SavedModel (see `Predictor`).
        paths: image file paths (JPEG, PNG, BMP, GIF or WebP), of any size.
        k: classes per image; more than the model has gives all of them.
        multi_label: for a run or `.keras` file: sigmoid per label instead of softmax; None: the
            run's `--target_loss=bce`.
        batch_size: files per model call.
        verbose: 1: a progress bar over the files with the time left (`keras.utils.Progbar`, on
            stdout); 0: none; None: the bar when stdout is a terminal and there is more than one
            batch (the printed predictions, stdout's content, stay clean in a file or a pipe).

    Returns:
        `[(path, [(class name, score), ...]), ...]`, one entry per path in order, each with its
        `min(k, C)` best classes, best first.

    Raises:
        UserError: no path, a `k` that is not a positive integer, a file that cannot be read or
            decoded (`read_image`), or a model `Predictor` refuses.
    """
    if not paths:
        raise UserError("no image given; pass one or more image files after the flags, e.g. cat.jpg ship.png.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"--top_k must be a positive integer. Received: {k!r}.")
    videos = [p for p in paths if video_io.is_video_file(os.path.basename(p))]
    if videos:
        return _predict_videos(model, paths, videos, k, multi_label)
    encoded = [read_image(p) for p in paths]  # Every file is checked before the model loads.
    predictor = Predictor(model, multi_label=multi_label)
    if predictor.clip_length is not None:
        raise UserError(
            f"--model={model} is a video model (clips of {predictor.clip_length} frames); pass video files "
            f"({', '.join(video_io.VIDEO_EXTENSIONS)}), not images such as {paths[0]}."
        )
    if verbose is None:
        verbose = int(len(encoded) > batch_size and getattr(sys.stdout, "isatty", lambda: False)())
    progress = keras.utils.Progbar(len(encoded), verbose=verbose, unit_name="image")
    probs = []
    for start in range(0, len(encoded), batch_size):
        probs.append(predictor.probabilities(encoded[start : start + batch_size]))
        progress.update(start + len(probs[-1]))
    probs = np.concatenate(probs)
    return list(zip(paths, top_k(probs, predictor.class_names, min(k, len(predictor.class_names)))))


def _predict_videos(model, paths, videos, k, multi_label):
    """`predict` of video files: every file decoded first, then one score per video."""
    if len(videos) != len(paths):
        image = next(p for p in paths if p not in videos)
        raise UserError(
            f"{image}: a video model scores video files and an image model images; pass one kind per command "
            f"(videos: {', '.join(video_io.VIDEO_EXTENSIONS)})."
        )
    frames = [read_video(p) for p in paths]  # Every file is checked before the model loads.
    predictor = Predictor(model, multi_label=multi_label)
    if predictor.clip_length is None:
        raise UserError(f"--model={model} is an image model; video files such as {paths[0]} need a video model (a run on a video dataset).")
    for path, f in zip(paths, frames):
        if len(f) < predictor.clip_length:
            print(
                f"note: {path} has {len(f)} frame{'s' if len(f) > 1 else ''}, fewer than the model's clips of "
                f"{predictor.clip_length}: its one clip repeats its frames (loop padding, as in training).",
                file=sys.stderr,
            )
    probs = np.stack([predictor.video_probabilities(f) for f in frames])
    return list(zip(paths, top_k(probs, predictor.class_names, min(k, len(predictor.class_names)))))


def format_predictions(predictions):
    """The text `python -m sskt_tf.predict` prints: each path, then its ranked classes and scores.

    Args:
        predictions: what `predict` returns.

    Returns:
        The lines joined by newlines (no trailing newline): the path, then per class
        `  <rank>. <name>  <score, 4 decimals>`, names padded to one width per image.
    """
    lines = []
    for path, best in predictions:
        lines.append(path)
        width = max(len(name) for name, _ in best)
        lines += [f"  {rank}. {name:<{width}}  {score:.4f}" for rank, (name, score) in enumerate(best, 1)]
    return "\n".join(lines)
