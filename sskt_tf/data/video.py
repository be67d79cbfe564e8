"""Video datasets: clip sampling and the clip streams (`ucf101`, `hmdb51`, `video_folder:<path>`, `synthetic_video`).

The clips are sampled as Hara et al.'s 3D-ResNets-PyTorch (CVPR 2018) samples them, the code the
SSKT authors' 3D experiments use:

- temporal: a clip of T frames starting at frame `begin` takes frames `begin + (j mod L)`,
  j = 0..T-1, L = min(T, n - begin): the window's own frames, looped when fewer than T are left
  (Hara's `LoopPadding`). Training draws `begin` at random (`TemporalRandomCrop`); the per-epoch
  evaluation takes three clips per video (`eval_starts`, Hara's `n_val_samples=3`); the final test
  takes every non-overlapping clip (`test_starts`, his test set), whose softmax outputs are then
  averaged per video (`VideoClips.video_ids`).
- spatial, training: a square crop of side `min(H, W) * scale`, scale one of `SCALES`, at the centre
  or a corner (`CORNERS`), resized to `image_size`, then a horizontal flip with probability 1/2
  (`MultiScaleCornerCrop` + `RandomHorizontalFlip`); one crop and flip for all the frames of a clip.
  Evaluation: the centre square of side `min(H, W)`, resized (`Scale` + `CenterCrop`).

Clips leave the pipeline as float32 `[B, T, H, W, 3]` in 0..255 (bilinear resize with
antialiasing, as PIL's, rounded to integers as PIL's 8-bit frames are), labels as int32 `[B]`.
Frames are read per clip from `image_%05d.jpg` files (1-based), decoding only the crop window
of each JPEG (`tf.image.decode_and_crop_jpeg`); decoded clips are never cached (a decoded UCF101 is
hundreds of GB). Every random draw of a training clip comes from `[seed, position in the stream]`
(stateless), so the stream is a function of `seed` and the position alone and a resumed run
(`Datasets.train_from`) sees exactly the clips an uninterrupted one sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re

import numpy as np
import tensorflow as tf

from sskt_tf.config import AugmentationConfig
from sskt_tf.data import pipeline, video_index
from sskt_tf.errors import UserError
from sskt_tf.names import AUGMENTS

# The module, not the function `sskt_tf.data.load` that the package exposes under the same name.
load_lib = importlib.import_module("sskt_tf.data.load")

AUTOTUNE = tf.data.AUTOTUNE

# Hara's defaults: --initial_scale 1, --n_scales 5, --scale_step 0.84089641525 (2^-1/4).
SCALES = tuple(2.0 ** (-k / 4) for k in range(5))
CORNERS = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")
# Clips per video of the per-epoch evaluation (Hara's --n_val_samples).
EVAL_CLIPS_PER_VIDEO = 3
SPLITS = (1, 2, 3)
# Crop size of real videos (Hara's --sample_size) and of `synthetic_video`.
DEFAULT_IMAGE_SIZE = 112
SYNTHETIC_IMAGE_SIZE = 32

# synthetic_video: small enough to generate in a blink and keep in memory (about 15 MB).
SYNTHETIC_TRAIN = 96
SYNTHETIC_TEST = 32
SYNTHETIC_FRAMES = (20, 28)  # Frames per video, inclusive range.
SYNTHETIC_FRAME_SIZE = 40  # Pixels, square.
SYNTHETIC_CLASSES = 4
# The test split has 32 videos with balanced labels: at least 2 per class.
SYNTHETIC_MAX_CLASSES = 16

# Independent stateless streams drawn from one clip's seed [seed, position].
_BEGIN, _SCALE, _CORNER, _FLIP = range(4)


# --------------------------------------------------------------------------- clip sampling


def clip_indices(begin, num_frames, clip_length: int) -> tf.Tensor:
    """The frames of the clip of `clip_length` frames that starts at `begin` (Hara's `LoopPadding`).

    Frame `begin + (j mod L)` for j = 0..T-1, with L = min(T, n - begin): the window's own frames,
    repeated from its start when fewer than T frames are left.

    Args:
        begin: int scalar, 0-based first frame, in [0, num_frames).
        num_frames: int scalar n >= 1, the video's frames.
        clip_length: T >= 1, frames per clip.

    Returns:
        int32 `[T]`, 0-based frame indices.
    """
    begin = tf.cast(begin, tf.int32)
    window = tf.minimum(clip_length, tf.cast(num_frames, tf.int32) - begin)
    return begin + tf.math.floormod(tf.range(clip_length, dtype=tf.int32), window)


def last_train_begin(num_frames, clip_length: int):
    """The last start a training clip may take: `max(0, n - T)` (starts are uniform in [0, that]).

    Hara's `TemporalRandomCrop` draws from [0, max(0, n - T - 1)], which never picks the start whose
    window ends on the last frame; the full range is used here, so every frame can be seen.
    """
    return tf.maximum(0, tf.cast(num_frames, tf.int32) - clip_length)


def eval_starts(num_frames: int, clip_length: int) -> np.ndarray:
    """The starts of the per-epoch evaluation clips of one video (Hara's `n_val_samples = 3`).

    Hara's 1-based `for j in range(1, n, step)`, `step = max(1, ceil((n - 1 - T) / (3 - 1)))`, in
    0-based frames: starts `range(0, n - 1, step)` (the last frame never starts a clip). A video of
    one frame, for which his code makes no clip, gets the clip at 0. Videos much longer than T get
    3 clips, shorter ones more: with n <= T + 3 frames, step 1 and n - 1 clips.

    Args:
        num_frames: n >= 1.
        clip_length: T >= 1.

    Returns:
        int32 `[K]`, 0-based starts, each clip read by `clip_indices`.
    """
    n, t = int(num_frames), int(clip_length)
    spans = EVAL_CLIPS_PER_VIDEO - 1
    step = max(1, -(-(n - 1 - t) // spans))  # ceil((n - 1 - T) / spans) in integers.
    return np.arange(0, max(1, n - 1), step, dtype=np.int32)


def test_starts(num_frames: int, clip_length: int) -> np.ndarray:
    """The starts of the final test's clips of one video: every non-overlapping window of T frames.

    Hara's test set (`n_samples_for_each_video=0`: 1-based `range(1, n, T)`), in 0-based frames:
    starts 0, T, 2T, ... < n - 1, each window loop-padded by `clip_indices`. As in his code, a
    window that would hold the last frame alone is not made (it would be one frame looped T
    times); a video of one frame gets its clip at 0.

    Args:
        num_frames: n >= 1.
        clip_length: T >= 1.

    Returns:
        int32 `[K]`, 0-based starts.
    """
    return np.arange(0, max(1, int(num_frames) - 1), int(clip_length), dtype=np.int32)


def crop_box(height, width, scale_index, corner_index) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Hara's multi-scale corner crop: a square of side `int(min(H, W) * SCALES[scale_index])`.

    Positions (`CORNERS`): centre, top-left, top-right, bottom-left, bottom-right. The centre
    square's top-left corner is `(H // 2 - side // 2, W // 2 - side // 2)`, Hara's (his centre box
    is `2 * (side // 2)` wide, one pixel narrower for odd sides; this one is `side`).

    Args:
        height, width: int scalars, the frame size in pixels.
        scale_index: int scalar in [0, 5), into `SCALES`.
        corner_index: int scalar in [0, 5), into `CORNERS`.

    Returns:
        `(y, x, side)`: int32 scalars, the crop's top row, left column and side in pixels.
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    shortest = tf.cast(tf.minimum(height, width), tf.float64)  # float64, as Python's int(x * scale).
    scale = tf.gather(tf.constant(SCALES, tf.float64), scale_index)
    side = tf.maximum(1, tf.cast(tf.floor(shortest * scale), tf.int32))
    low_y, low_x = height - side, width - side
    ys = tf.stack([height // 2 - side // 2, 0, 0, low_y, low_y])
    xs = tf.stack([width // 2 - side // 2, 0, low_x, 0, low_x])
    return tf.gather(ys, corner_index), tf.gather(xs, corner_index), side


def centre_box(height, width) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The evaluation crop: the centre square of side `min(H, W)` (Hara's `Scale` + `CenterCrop`).

    Returns:
        `(y, x, side)` as `crop_box` (its scale 1 at the centre).
    """
    return crop_box(height, width, 0, 0)


def clip_draws(seed, num_frames, clip_length: int):
    """The random draws of one training clip, from its stateless seed.

    Args:
        seed: int `[2]`, `[seed, position of the clip in the stream]`.
        num_frames: int scalar, the video's frames.
        clip_length: T.

    Returns:
        `(begin, scale_index, corner_index, flip)`: int32 scalars uniform in [0, max(0, n - T)],
        [0, 5) and [0, 5), and a bool scalar, True with probability 1/2.
    """
    # int32 and int64 seeds drive different Philox streams; one dtype makes a seed mean one thing.
    keys = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)

    def integer(stream, high):
        return tf.random.stateless_uniform([], keys[stream], minval=0, maxval=high, dtype=tf.int32)

    begin = integer(_BEGIN, last_train_begin(num_frames, clip_length) + 1)
    flip = tf.random.stateless_uniform([], keys[_FLIP]) < 0.5
    return begin, integer(_SCALE, len(SCALES)), integer(_CORNER, len(CORNERS)), flip


def finish_clip(clip, image_size: tuple[int, int], flip=False) -> tf.Tensor:
    """A cropped clip resized to `image_size` and, when `flip`, mirrored left to right.

    Args:
        clip: uint8 `[T, h, w, 3]`, the crop of every frame.
        image_size: `(H, W)` in pixels (a square crop goes to a square unless H != W).
        flip: bool scalar.

    Returns:
        float32 `[T, H, W, 3]`, integer values in 0..255: bilinear with antialiasing (like PIL's
        `BILINEAR` resize, which Hara's transforms use), rounded as 8-bit frames are.
    """
    # Antialiased, as PIL's resize: a plain bilinear resize of a 240 px crop to 112 px skips pixels
    # (aliasing), which the reference's models never saw. It costs: on one CPU core, 43 clips/s of 16
    # frames from 320x240 JPEG files with it, 84 without (benchmarks/video_pipeline.py's data).
    clip = tf.image.resize(clip, image_size, method="bilinear", antialias=True)
    clip = tf.clip_by_value(tf.round(clip), 0.0, 255.0)
    return tf.cond(tf.convert_to_tensor(flip), lambda: tf.reverse(clip, axis=[2]), lambda: clip)


def centre_clips(clips, image_size: tuple[int, int]) -> tf.Tensor:
    """The evaluation crop of a batch of clips: what the test streams do to each clip's frames.

    Serving (the exported clip signature, `python -m sskt_tf.predict` on video files) uses it, so a
    clip reaches the network as a clip of the test set does: the centre square of side min(H, W)
    (`centre_box`), resized and rounded by `finish_clip`.

    Args:
        clips: uint8 (or float, 0..255) `[N, T, H, W, 3]`, every frame of one size, any size.
        image_size: `(h, w)` in pixels.

    Returns:
        float32 `[N, T, h, w, 3]`, integer values in 0..255.
    """
    clips = tf.convert_to_tensor(clips)
    shape = tf.shape(clips)
    y, x, side = centre_box(shape[2], shape[3])
    frames = tf.reshape(clips[:, :, y : y + side, x : x + side], tf.concat([[-1], [side, side, 3]], 0))
    out = finish_clip(frames, image_size)
    return tf.reshape(out, tf.concat([shape[:2], [*image_size, 3]], 0))


def frame_paths(frame_dir, indices) -> tf.Tensor:
    """The files of frames `indices` (0-based) of a video: `<frame_dir>/image_%05d.jpg`, 1-based."""
    number = tf.strings.as_string(tf.cast(indices, tf.int32) + 1, width=5, fill="0")
    return tf.strings.join([frame_dir, "/image_", number, ".jpg"])


def read_jpeg_clip(frame_dir, indices, box, clip_length: int) -> tf.Tensor:
    """Reads the frames `indices` of a frame folder, decoding only their crop window.

    Args:
        frame_dir: string scalar, the video's directory.
        indices: int32 `[T]`, 0-based frames.
        box: `box(height, width) -> (y, x, side)`, the crop in the frames' own size, read from the
            first frame's JPEG header (every frame of a video is assumed to have its size).
        clip_length: T (static: the frames are read and decoded as T parallel operations).

    Returns:
        uint8 `[T, side, side, 3]`.
    """
    paths = frame_paths(frame_dir, indices)
    files = [tf.io.read_file(paths[j]) for j in range(clip_length)]
    # TensorFlow's decoder names no file when a frame is no JPEG: this check does (see `read_error`).
    checks = [tf.debugging.Assert(tf.io.is_jpeg(f), [NOT_A_JPEG, paths[j]]) for j, f in enumerate(files)]
    with tf.control_dependencies(checks):
        shape = tf.image.extract_jpeg_shape(files[0])
    y, x, side = box(shape[0], shape[1])
    window = tf.stack([y, x, side, side])
    return tf.stack([tf.image.decode_and_crop_jpeg(f, window, channels=3) for f in files])


# The first words of the check's message in `read_jpeg_clip`, which `read_error` recognises.
NOT_A_JPEG = "sskt_tf: not a JPEG frame:"


def read_error(error) -> str | None:
    """What a TensorFlow error raised while clips were read says about a frame file, or None.

    Frame folders are listed and counted up front (`video_index.count_frames`), not opened: a frame
    deleted or damaged later surfaces when its clip is read, inside TensorFlow.

    Args:
        error: a `tf.errors.OpError` raised by a training, evaluation or prediction pass.

    Returns:
        `"<frame file>: <what is wrong>"`, or None when the error is about something else.
    """
    message = str(getattr(error, "message", error))
    if isinstance(error, tf.errors.NotFoundError):
        found = re.search(r"(\S+/image_\d+\.jpg); No such file or directory", message)
        return f"{found.group(1)}: no such frame file" if found else None
    if isinstance(error, tf.errors.InvalidArgumentError) and NOT_A_JPEG in message:
        # tf.debugging.Assert prints its data as "[<marker>] [<path>]".
        found = re.search(re.escape(NOT_A_JPEG) + r"\]?\s*\[?([^\]\s]+?\.jpg)", message)
        return f"{found.group(1) if found else 'a frame file'}: not a JPEG image"
    return None


# --------------------------------------------------------------------------- videos of a split


@dataclasses.dataclass(frozen=True)
class _Videos:
    """One split's videos and where their frames are: frame folders, or frames held in memory.

    Attributes:
        num_frames: int32 `[N]`, frames per video.
        labels: int32 `[N]`, class indices.
        key: identifies the contents (`VideoList.key`, or the generator's arguments).
        frame_dirs: each video's folder of `image_%05d.jpg` files, or None for in-memory frames.
        first_frame: in memory: int32 `[N]`, each video's first frame in `frames`.
        frames: in memory: uint8 `[F, H, W, 3]`, every frame of every video (shared by the splits).
    """

    num_frames: np.ndarray
    labels: np.ndarray
    key: str
    frame_dirs: tuple[str, ...] | None = None
    first_frame: np.ndarray | None = None
    frames: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of(cls, videos: video_index.VideoList) -> _Videos:
        return cls(
            num_frames=np.asarray(videos.num_frames, np.int32),
            labels=np.asarray(videos.labels, np.int32),
            key=videos.key,
            frame_dirs=tuple(videos.frame_dirs),
        )

    @property
    def size(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> _Videos:
        """The videos where `keep` (bool `[N]`) is set, in their order."""
        return dataclasses.replace(
            self,
            num_frames=self.num_frames[keep],
            labels=self.labels[keep],
            frame_dirs=None if self.frame_dirs is None else tuple(np.asarray(self.frame_dirs, dtype=object)[keep]),
            first_frame=None if self.first_frame is None else self.first_frame[keep],
        )

    def locations(self) -> np.ndarray:
        """What `read` takes to find each video: its folder (string) or its first frame (int32)."""
        if self.frame_dirs is not None:
            return np.array(self.frame_dirs, dtype=object)
        return self.first_frame

    def reader(self, clip_length: int):
        """`read(location, indices, box) -> uint8 [T, side, side, 3]`, the crop of the clip's frames."""
        if self.frame_dirs is not None:
            return lambda where, indices, box: read_jpeg_clip(where, indices, box, clip_length)
        frames = tf.constant(self.frames)
        height, width = self.frames.shape[1:3]

        def read(first, indices, box):
            y, x, side = box(height, width)
            return tf.gather(frames, first + indices)[:, y : y + side, x : x + side]

        return read


# --------------------------------------------------------------------------- streams


@dataclasses.dataclass(frozen=True)
class VideoClips:
    """The final test of a video dataset: every non-overlapping clip of every test video.

    Video accuracy averages the softmax outputs of a video's clips (Hara's `test.py`), grouping the
    clips by `video_ids`.

    Attributes:
        clips: one pass of `(clips float32 [B, T, H, W, 3] in 0..255, labels int32 [B])`, batched
            with the evaluation batch size (partial last batch kept), never augmented; the clips of
            each video one after the other, the videos in the order of the test list.
        video_ids: int32 `[num_clips]`, the test video of each clip, in stream order.
        labels: int32 `[num_videos]`, each test video's class.
        num_clips: clips in `clips`.
    """

    clips: tf.data.Dataset
    video_ids: np.ndarray
    labels: np.ndarray
    num_clips: int


@dataclasses.dataclass(frozen=True)
class ClipStream:
    """The recipe of the training stream of a video dataset, which `batches` builds from any position.

    One clip per video per pass (Hara's epoch): the videos are shuffled (the whole list, anew each
    pass), and the clip at position p of the stream is drawn with seed `[seed, p]`.

    Attributes:
        videos: the training videos (after the validation hold-out and the subset).
        batch_size: clips per batch; the partial batch at the end of a pass is dropped.
        seed: seeds the shuffle order and every clip's draws.
        clip_length: T, frames per clip.
        image_size: `(H, W)` of every frame of a clip.
        augment: multi-scale corner crop and flip; False: the evaluation crop (the start of the
            clip is drawn at random either way: it is how a training clip is sampled).
        key: what the training videos are (`Datasets.content_key`).
    """

    videos: _Videos
    batch_size: int
    seed: int
    clip_length: int
    image_size: tuple[int, int]
    augment: bool
    key: str

    def batches(self, start_batch: int = 0) -> tf.data.Dataset:
        """The infinite, shuffled, batched stream of training clips from its `start_batch`-th batch on.

        Skipping is cheap (nothing is read before the skip), so a resumed run starts at once.

        Returns:
            Batches `(clips float32 [B, T, H, W, 3] in 0..255, labels int32 [B])`.
        """
        videos, t, size = self.videos, self.clip_length, self.image_size
        read = videos.reader(t)
        start = int(start_batch) * self.batch_size
        elements = tf.data.Dataset.from_tensor_slices((videos.locations(), videos.num_frames, videos.labels))
        ds = elements.shuffle(videos.size, seed=self.seed, reshuffle_each_iteration=True).repeat().skip(start)
        # The position of each clip in the stream: its draws depend on nothing else.
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter(start=start, dtype=tf.int64)))
        seed64 = tf.constant(self.seed, tf.int64)
        augment = self.augment

        def clip(video, position):
            where, num_frames, label = video
            begin, scale, corner, flip = clip_draws(tf.stack([seed64, position]), num_frames, t)

            def box(height, width):
                return crop_box(height, width, scale, corner) if augment else centre_box(height, width)

            frames = read(where, clip_indices(begin, num_frames, t), box)
            flip = flip if augment else False
            return tf.ensure_shape(finish_clip(frames, size, flip), (t, *size, 3)), label

        ds = ds.map(clip, num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.batch(self.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def clip_stream(videos: _Videos, starts, clip_length: int, image_size, batch_size: int):
    """One un-augmented pass over fixed clips of `videos` (evaluation).

    Args:
        videos: the videos.
        starts: `starts(num_frames, clip_length) -> int32 [K]`, the clips of one video
            (`eval_starts` or `test_starts`).
        clip_length: T.
        image_size: `(H, W)`.
        batch_size: clips per batch; the partial last batch is kept.

    Returns:
        `(dataset, video_ids)`: batches `(clips float32 [B, T, H, W, 3] in 0..255, labels int32
        [B])` of the clips of each video in turn, with a known length; int32 `[num_clips]`, the
        video of each clip.
    """
    begins = [starts(n, clip_length) for n in videos.num_frames]
    counts = np.array([len(b) for b in begins], np.int64)
    video_ids = np.repeat(np.arange(videos.size, dtype=np.int32), counts)
    begins = np.concatenate(begins).astype(np.int32) if begins else np.zeros(0, np.int32)
    read = videos.reader(clip_length)

    def clip(where, num_frames, label, begin):
        frames = read(where, clip_indices(begin, num_frames, clip_length), centre_box)
        return tf.ensure_shape(finish_clip(frames, image_size), (clip_length, *image_size, 3)), label

    ds = tf.data.Dataset.from_tensor_slices(
        (videos.locations()[video_ids], videos.num_frames[video_ids], videos.labels[video_ids], begins)
    )
    ds = ds.map(clip, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(video_ids)))
    return ds.batch(batch_size).prefetch(AUTOTUNE), video_ids


# --------------------------------------------------------------------------- sources


def _synthetic(dataset: str, seed: int) -> tuple[_Videos, _Videos, tuple[str, ...]]:
    """`synthetic_video[:<classes>]`: a bright square moving over noise, one direction per class.

    Class c of C moves at angle `-90 + 180 * c / (C - 1)` degrees from the horizontal (from straight
    up to straight down), to the left or the right at random, 1.5 to 2.5 pixels per frame, from a
    random start, wrapping around the frame's edges. Every frame looks alike whatever the class (a
    square at a random place on a noisy background), so only the motion tells the class; and a
    horizontal flip keeps it (it swaps left and right, which every class has), as does a crop's
    zoom (it changes the speed, not the direction).

    Returns:
        `(train, test, class_names)`, the frames in memory, `SYNTHETIC_TRAIN` and `SYNTHETIC_TEST`
        videos with balanced labels, of `SYNTHETIC_FRAMES` frames of `SYNTHETIC_FRAME_SIZE` pixels.
    """
    num_classes = SYNTHETIC_CLASSES
    if dataset != "synthetic_video":
        text = dataset.split(":", 1)[1]
        if not text.isdigit() or not 2 <= int(text) <= SYNTHETIC_MAX_CLASSES:
            raise UserError(
                f"--dataset={dataset}: the number of classes must be an integer from 2 to "
                f"{SYNTHETIC_MAX_CLASSES}, got {text!r}; pass e.g. --dataset=synthetic_video:4."
            )
        num_classes = int(text)
    rng = np.random.default_rng(seed)
    size, square = SYNTHETIC_FRAME_SIZE, 8
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(num_classes) / (num_classes - 1))
    counts = {"train": SYNTHETIC_TRAIN, "test": SYNTHETIC_TEST}
    lengths = {name: rng.integers(SYNTHETIC_FRAMES[0], SYNTHETIC_FRAMES[1] + 1, size=n) for name, n in counts.items()}
    frames = np.empty((sum(int(v.sum()) for v in lengths.values()), size, size, 3), np.uint8)
    splits, at = {}, 0
    for name, n in counts.items():
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        first = np.zeros(n, np.int32)
        for i in range(n):
            length = int(lengths[name][i])
            first[i] = at
            angle, speed = angles[labels[i]], rng.uniform(1.5, 2.5)
            velocity = speed * np.array([np.sin(angle), np.cos(angle) * rng.choice([-1.0, 1.0])])
            start = rng.uniform(0, size, size=2)
            background = rng.uniform(30.0, 90.0, size=3)
            colour = rng.uniform(170.0, 255.0, size=3)
            video = background + 20.0 * rng.standard_normal((length, size, size, 3), dtype=np.float32)
            for t in range(length):
                y, x = np.round(start + t * velocity).astype(int)
                rows, cols = (y + np.arange(square)) % size, (x + np.arange(square)) % size
                video[t][np.ix_(rows, cols)] = colour
            frames[at : at + length] = np.clip(np.round(video), 0, 255)
            at += length
        splits[name] = _Videos(
            num_frames=lengths[name].astype(np.int32),
            labels=labels,
            key=json.dumps([dataset, seed, name, n, size]),
            first_frame=first,
            frames=frames,
        )
    return splits["train"], splits["test"], tuple(f"class_{c}" for c in range(num_classes))


def frames_dir(path: str) -> str:
    """Where `video_folder:<path>`'s frames are extracted: `$XDG_CACHE_HOME/sskt_tf/video_frames/<16 hex>`.

    The digits are the start of the SHA-256 of the folder's absolute path; `$XDG_CACHE_HOME`
    defaults to `~/.cache`.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = hashlib.sha256(os.path.abspath(os.path.expanduser(path)).encode()).hexdigest()[:16]
    return os.path.join(base, "sskt_tf", "video_frames", name)


def _source(dataset: str, data_dir: str | None, seed: int, video_split: int):
    """`(train, test, validation or None, class_names)` of a video dataset."""
    if dataset == "synthetic_video" or dataset.startswith("synthetic_video:"):
        train, test, class_names = _synthetic(dataset, seed)
        return train, test, None, class_names
    if dataset.startswith("video_folder:"):
        path = dataset.split(":", 1)[1]
        train, test, validation, class_names = video_index.video_folder(path, frames_dir(path))
        return _Videos.of(train), _Videos.of(test), None if validation is None else _Videos.of(validation), class_names
    # video_index says what is missing (--data_dir, the frames, the split lists) and how to get it.
    read = video_index.ucf101 if dataset == "ucf101" else video_index.hmdb51
    train, test, class_names = read(data_dir, video_split)
    return _Videos.of(train), _Videos.of(test), None, tuple(class_names)


# --------------------------------------------------------------------------- load


def load(
    dataset: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    data_dir: str | None,
    image_size: tuple[int, int] | None,
    seed: int,
    train_subset: int | None,
    augment: AugmentationConfig | str,
    cache: str,
    validation_split: float,
    skip_bad_images: bool,
    clip_length: int,
    video_split: int,
) -> load_lib.Datasets:
    """The clip streams of a video dataset; `sskt_tf.data.load` hands video kinds over to it.

    `load` has checked the batch sizes, `image_size`, `seed`, `cache` and `validation_split`; the
    arguments mean what they mean there, for videos instead of images (see `load` for the forms
    of `dataset`).

    Returns:
        A `Datasets` with `clip_length` and `test_videos` set: `train` one random clip per video per
        pass, `test` (and `validation`) `EVAL_CLIPS_PER_VIDEO` clips per video (`eval_starts`),
        `test_videos` every non-overlapping clip (`test_starts`). `num_train`, `num_test` and
        `num_validation` count videos.

    Raises:
        UserError: what does not apply to videos (RandAugment, MixUp, CutMix, `cache` memory or
            disk, `skip_bad_images`), a bad `clip_length` or `video_split`, missing or malformed data,
            sizes that do not fit the data.
    """
    if not load_lib._is_int(clip_length) or clip_length < 1:
        raise UserError(
            f"--clip_length must be a positive integer (frames per clip), got {clip_length!r}; pass e.g. --clip_length=16."
        )
    clip_length = int(clip_length)
    if not load_lib._is_int(video_split) or video_split not in SPLITS:
        raise UserError(
            f"--video_split must be 1, 2 or 3 (the official train/test splits of UCF101 and HMDB51), got {video_split!r}; "
            "pass e.g. --video_split=1."
        )
    if isinstance(augment, str):
        augment = AugmentationConfig(kind=augment)
    if not isinstance(augment, AugmentationConfig):
        raise UserError(f"augment must be an AugmentationConfig or one of {', '.join(AUGMENTS)}; got {augment!r}.")
    if augment.kind == "randaugment":
        raise UserError(
            f"--augment=randaugment does not apply to video datasets ({dataset}); use --augment=standard "
            "(multi-scale corner crop and flip of the whole clip) or --augment=none."
        )
    if augment.mixes:
        raise UserError(f"--mixup and --cutmix do not apply to video datasets ({dataset}); pass --mixup=0 --cutmix=0.")
    if cache not in ("auto", "none"):
        raise UserError(
            f"--cache={cache} does not apply to video datasets ({dataset}): clips are read and decoded at every "
            "step (decoded videos would not fit); use --cache=auto or --cache=none."
        )
    if skip_bad_images:
        raise UserError(
            f"--skip_bad_images does not apply to video datasets ({dataset}): a video that does not decode is named when "
            "its frames are extracted, and a frame folder that does not match its n_frames file when the data is "
            "listed; remove the flag."
        )
    if image_size is None:
        side = SYNTHETIC_IMAGE_SIZE if dataset.startswith("synthetic_video") else DEFAULT_IMAGE_SIZE
        image_size = (side, side)

    train, test, validation, class_names = _source(dataset, data_dir, seed, video_split)
    if len(class_names) < 2:
        raise UserError(
            f"--dataset={dataset} has {len(class_names)} class ({', '.join(class_names)}); a classifier needs at "
            "least 2: add a folder of videos per class."
        )
    if train.size == 0 or test.size == 0:
        raise UserError(f"--dataset={dataset} has {train.size} training and {test.size} test videos; both splits need videos.")
    for name, split in (("training", train), ("test", test), ("validation", validation)):
        short = 0 if split is None else int((split.num_frames < clip_length).sum())
        if short:
            pipeline.info(
                f"{dataset}: {short} of the {split.size} {name} videos have fewer than --clip_length={clip_length} frames; "
                "their clips repeat their frames (loop padding, as the reference's)."
            )
    validation_from = None
    if validation is not None:
        if validation_split > 0:
            raise UserError(
                f"--validation_split={validation_split} contradicts {dataset}, which has a val/ folder (its "
                "validation set); pass --validation_split=0 to validate on val/, or remove val/ to hold out "
                "part of train/."
            )
        validation_from = "val/"
    elif validation_split > 0:
        held = pipeline.hold_out_mask(
            dataset, train.labels, validation_split, seed, class_names, False, unit="videos", items="videos"
        )
        train, validation = train.select(~held), train.select(held)
        validation_from = "validation_split"
    if train_subset is not None:
        load_lib._check_train_subset(dataset, train_subset, train.size, batch_size)
        train = train.select(pipeline.subset_mask(train.size, int(train_subset), seed))
    if batch_size > train.size:
        raise UserError(
            f"--batch_size={batch_size} is larger than the {train.size} training videos of "
            f"--dataset={dataset} (one clip per video per epoch); use --batch_size <= {train.size}."
        )

    key = json.dumps([train.key, [seed, validation_split, train_subset]])
    stream = ClipStream(train, batch_size, seed, clip_length, image_size, augment.kind == "standard", key)
    test_stream, _ = clip_stream(test, eval_starts, clip_length, image_size, eval_batch_size)
    final, final_ids = clip_stream(test, test_starts, clip_length, image_size, eval_batch_size)
    validation_stream = None
    if validation is not None:
        validation_stream, _ = clip_stream(validation, eval_starts, clip_length, image_size, eval_batch_size)
    return load_lib.Datasets(
        train=stream.batches(0),
        test=test_stream,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        image_size=tuple(image_size),
        num_train=train.size,
        num_test=test.size,
        steps_per_epoch=train.size // batch_size,
        validation=validation_stream,
        num_validation=validation.size if validation is not None else 0,
        validation_from=validation_from,
        clip_length=clip_length,
        test_videos=VideoClips(clips=final, video_ids=final_ids, labels=test.labels, num_clips=len(final_ids)),
        _train_stream=stream,
    )
