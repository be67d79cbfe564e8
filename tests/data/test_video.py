"""Tests of sskt_tf.data.video: Hara et al.'s clip sampling, the clip streams, and `load` for video kinds."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import data
from sskt_tf.config import AugmentationConfig
from sskt_tf.data import video, video_index
from sskt_tf.errors import UserError


def _ints(tensor):
    return [int(v) for v in np.asarray(tensor)]


# --------------------------------------------------------------------------- temporal sampling


def test_clip_indices_loop_over_the_window_by_hand():
    # Shorter than a clip: the video's 5 frames, looped.
    assert _ints(video.clip_indices(0, 5, 8)) == [0, 1, 2, 3, 4, 0, 1, 2]
    # Exactly a clip.
    assert _ints(video.clip_indices(0, 4, 4)) == [0, 1, 2, 3]
    # A long video: a plain window.
    assert _ints(video.clip_indices(7, 20, 4)) == [7, 8, 9, 10]
    # Near the end: the window's own 2 frames are looped, not the video's start.
    assert _ints(video.clip_indices(8, 10, 4)) == [8, 9, 8, 9]
    assert _ints(video.clip_indices(9, 10, 3)) == [9, 9, 9]
    # Training starts are uniform in [0, max(0, n - T)].
    assert [int(video.last_train_begin(n, 16)) for n in (1, 10, 16, 17, 40)] == [0, 0, 0, 1, 24]


def _hara_starts(n, sample_duration, n_samples_for_each_video):
    """Hara's make_dataset (datasets/ucf101.py), 1-based frames, turned into 0-based starts here."""
    if n_samples_for_each_video > 1:
        step = max(1, math.ceil((n - 1 - sample_duration) / (n_samples_for_each_video - 1)))
    else:
        step = sample_duration
    return [j - 1 for j in range(1, n, step)]


def test_eval_and_test_starts_are_haras():
    # By hand, T = 16: n = 100: step ceil(83 / 2) = 42; n = 50: step 17; n = 20: step 2;
    # n <= T + 3: step 1 (every frame but the last); one frame: the clip at 0 (Hara makes none).
    assert _ints(video.eval_starts(100, 16)) == [0, 42, 84]
    assert _ints(video.eval_starts(50, 16)) == [0, 17, 34]
    assert _ints(video.eval_starts(20, 16)) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert _ints(video.eval_starts(19, 16)) == list(range(18))
    assert _ints(video.eval_starts(10, 16)) == list(range(9))
    assert _ints(video.eval_starts(2, 16)) == [0]
    assert _ints(video.eval_starts(1, 16)) == [0]
    # Test: non-overlapping windows; one that would hold the last frame alone is not made.
    assert _ints(video.test_starts(33, 16)) == [0, 16]
    assert _ints(video.test_starts(34, 16)) == [0, 16, 32]
    assert _ints(video.test_starts(48, 16)) == [0, 16, 32]
    assert _ints(video.test_starts(16, 16)) == [0]
    assert _ints(video.test_starts(5, 16)) == [0]
    assert _ints(video.test_starts(1, 16)) == [0]
    for t in (1, 4, 16):
        for n in range(2, 120):
            assert _ints(video.eval_starts(n, t)) == _hara_starts(n, t, 3), (n, t)
            assert _ints(video.test_starts(n, t)) == _hara_starts(n, t, 0), (n, t)


# --------------------------------------------------------------------------- spatial crops


def test_crop_boxes_by_hand():
    # 320x240 frames (UCF101's): sides int(240 * 2^(-k/4)) = 240, 201, 169, 142, 120.
    sides = [int(video.crop_box(240, 320, k, 1)[2]) for k in range(5)]
    assert sides == [240, 201, 169, 142, 120]
    boxes = {video.CORNERS[c]: tuple(int(v) for v in video.crop_box(240, 320, 1, c)) for c in range(5)}
    assert boxes == {
        "centre": (120 - 100, 160 - 100, 201),
        "top_left": (0, 0, 201),
        "top_right": (0, 320 - 201, 201),
        "bottom_left": (240 - 201, 0, 201),
        "bottom_right": (240 - 201, 320 - 201, 201),
    }
    assert tuple(int(v) for v in video.crop_box(240, 320, 4, 0)) == (60, 100, 120)
    # Portrait frames: the width is the short side.
    assert tuple(int(v) for v in video.crop_box(320, 240, 2, 4)) == (320 - 169, 240 - 169, 169)
    # Evaluation: the centre square of side min(H, W).
    assert tuple(int(v) for v in video.centre_box(240, 320)) == (0, 40, 240)
    assert tuple(int(v) for v in video.centre_box(320, 240)) == (40, 0, 240)
    assert tuple(int(v) for v in video.centre_box(7, 7)) == (0, 0, 7)


def test_the_resize_is_pils_bilinear():
    """Hara's transforms resize with PIL's BILINEAR, which antialiases: ours gives its pixels within 1."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for side in (240, 169, 120, 60):
        coarse = rng.integers(0, 256, size=(side // 8, side // 8, 3), dtype=np.uint8)
        frame = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
        pil = np.asarray(Image.fromarray(frame).resize((112, 112), Image.BILINEAR), np.float32)
        ours = video.finish_clip(frame[None], (112, 112)).numpy()[0]
        assert np.abs(ours - pil).max() <= 1, side
        np.testing.assert_array_equal(video.finish_clip(frame[None], (112, 112), flip=True).numpy()[0], ours[:, ::-1])


def _coded_videos(lengths, size=(20, 24), labels=None):
    """In-memory videos whose pixels say where they come from: red = 10 * row, green = 10 * column,
    blue = 10 * frame index (within the video)."""
    height, width = size
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frames, first = [], []
    for n in lengths:
        first.append(sum(len(f) for f in frames))
        frame = np.stack([10 * rows, 10 * cols, np.zeros_like(rows)], axis=-1)
        clip = np.repeat(frame[None], n, axis=0)
        clip[..., 2] = 10 * np.arange(n)[:, None, None]
        frames.append(clip.astype(np.uint8))
    labels = np.arange(len(lengths), dtype=np.int32) if labels is None else np.asarray(labels, np.int32)
    return video._Videos(
        num_frames=np.asarray(lengths, np.int32),
        labels=labels,
        key="coded",
        first_frame=np.asarray(first, np.int32),
        frames=np.concatenate(frames),
    )


def test_training_clips_share_one_crop_and_flip_and_follow_the_temporal_rule():
    lengths = [6, 16, 25]  # Shorter than, as long as, and longer than a clip.
    videos = _coded_videos(lengths)
    stream = video.ClipStream(videos, batch_size=3, seed=1, clip_length=16, image_size=(12, 12), augment=True, key="k")
    flipped = set()
    for clips, labels in stream.batches(0).take(12):
        for clip, label in zip(clips.numpy(), labels.numpy()):
            n = lengths[label]
            # Every frame got the same crop, resize and flip: the same red and green everywhere.
            np.testing.assert_array_equal(clip[..., :2], np.broadcast_to(clip[:1, ..., :2], clip[..., :2].shape))
            # Blue is flat per frame (10 * frame index): the frames read are a loop-padded window.
            frames = clip[..., 2].reshape(16, -1)
            assert (frames == frames[:, :1]).all()
            got = [int(round(v / 10)) for v in frames[:, 0]]
            begin = got[0]
            assert 0 <= begin <= max(0, n - 16)
            assert got == _ints(video.clip_indices(begin, n, 16))
            # Columns grow left to right (green), unless the clip was flipped.
            green = clip[0, 0, :, 1]
            assert (np.diff(green) >= 0).all() or (np.diff(green) <= 0).all()
            flipped.add(bool(green[0] > green[-1]))
    assert flipped == {True, False}


def test_augment_none_and_evaluation_give_the_centre_crop_unflipped():
    videos = _coded_videos([30], size=(20, 24))
    stream = video.ClipStream(videos, batch_size=1, seed=0, clip_length=4, image_size=(20, 20), augment=False, key="k")
    evaluation, _ = video.clip_stream(videos, video.eval_starts, 4, (20, 20), 1)
    for clips, _ in [*stream.batches(0).take(5), *evaluation]:
        # The centre 20x20 square of a 20x24 frame: columns 2..21, at its own size (no resize).
        np.testing.assert_array_equal(clips.numpy()[0, 0, :, :, 1], np.tile(10.0 * np.arange(2, 22), (20, 1)))
        np.testing.assert_array_equal(clips.numpy()[0, 0, :, :, 0], np.tile(10.0 * np.arange(20)[:, None], (1, 20)))


def test_the_crop_of_each_draw_is_the_box_it_names():
    """The stream cuts the box `crop_box` gives for the clip's own draws (at the crop's own size)."""
    videos = _coded_videos([25], size=(16, 16))
    stream = video.ClipStream(videos, batch_size=1, seed=7, clip_length=2, image_size=(8, 8), augment=True, key="k")
    # Only scale 1/2 crops come out at 8x8 without resizing; find them by their draws.
    checked = 0
    for position, (clips, _) in enumerate(stream.batches(0).take(60)):
        begin, scale, corner, flip = video.clip_draws(tf.constant([7, position], tf.int64), 25, 2)
        if int(scale) != 4:
            continue
        y, x, side = (int(v) for v in video.crop_box(16, 16, scale, corner))
        assert side == 8
        red, green = 10.0 * np.arange(y, y + 8), 10.0 * np.arange(x, x + 8)
        if bool(flip):
            green = green[::-1]
        np.testing.assert_array_equal(clips.numpy()[0, 0, :, 0, 0], red)
        np.testing.assert_array_equal(clips.numpy()[0, 0, 0, :, 1], green)
        assert clips.numpy()[0, 0, 0, 0, 2] == 10 * int(begin)
        checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- frame folders


def _write_frames(directory, frames, n_frames_file=True):
    os.makedirs(directory, exist_ok=True)
    for i, frame in enumerate(frames):
        jpeg = tf.io.encode_jpeg(frame, quality=100, chroma_downsampling=False)
        tf.io.write_file(os.path.join(directory, f"image_{i + 1:05d}.jpg"), jpeg)
    if n_frames_file:
        with open(os.path.join(directory, "n_frames"), "w") as f:
            f.write(str(len(frames)))
    return str(directory)


def _flat_colour(t):
    return np.array([6 * t, 250 - 6 * t, 128], np.float32)  # t < 42


def _flat_videos(root, lengths, size=(24, 32)):
    """Frame folders of flat frames whose colour codes the frame index (`_flat_colour`)."""
    dirs = []
    for v, n in enumerate(lengths):
        frames = [np.broadcast_to(_flat_colour(t), (*size, 3)).astype(np.uint8) for t in range(n)]
        dirs.append(_write_frames(os.path.join(root, f"video_{v}"), frames))
    return video_index.VideoList(
        frame_dirs=tuple(dirs),
        num_frames=np.asarray(lengths, np.int32),
        labels=np.arange(len(lengths), dtype=np.int32) % 2,
        key=f"flat {root}",
    )


@pytest.fixture
def fake_ucf101(monkeypatch, tmp_path):
    """`--dataset=ucf101` reading frame folders under tmp_path: test videos of 5, 16, 33 and 40 frames."""
    train = _flat_videos(tmp_path / "train", [20, 18, 24, 30, 17, 22])
    test = _flat_videos(tmp_path / "test", [5, 16, 33, 40])
    calls = []

    def ucf101(root, split):
        calls.append((root, split))
        return train, test, ("a", "b")

    monkeypatch.setattr(video_index, "ucf101", ucf101, raising=False)
    return calls


def test_test_videos_are_every_clip_of_every_video_in_order(fake_ucf101):
    datasets = data.load("ucf101", batch_size=2, eval_batch_size=3, data_dir="/data/ucf", video_split=2, clip_length=16)
    assert fake_ucf101 == [("/data/ucf", 2)]
    assert datasets.is_video and datasets.clip_length == 16 and datasets.image_size == (112, 112)
    final = datasets.test_videos
    # test_starts: 5 -> [0], 16 -> [0], 33 -> [0, 16], 40 -> [0, 16, 32].
    np.testing.assert_array_equal(final.video_ids, [0, 1, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(final.labels, [0, 1, 0, 1])
    assert final.num_clips == 7
    clips, labels = zip(*[(x.numpy(), y.numpy()) for x, y in final.clips])
    assert [len(y) for y in labels] == [3, 3, 1]
    clips, labels = np.concatenate(clips), np.concatenate(labels)
    assert clips.shape == (7, 16, 112, 112, 3) and clips.dtype == np.float32
    np.testing.assert_array_equal(labels, final.labels[final.video_ids])
    # The frames read are the stored ones (flat colours, within JPEG error), frame by frame.
    lengths, starts = [5, 16, 33, 40], [0, 0, 0, 16, 0, 16, 32]
    for clip, vid, begin in zip(clips, final.video_ids, starts):
        expected = np.stack([_flat_colour(t) for t in _ints(video.clip_indices(begin, lengths[vid], 16))])
        np.testing.assert_allclose(clip, np.broadcast_to(expected[:, None, None], clip.shape), atol=3)
    # The per-epoch test: Hara's three-clip rule (5 frames -> starts 0..3, 16 -> 0..14, 33 -> step 8:
    # 0, 8, 16, 24; 40 -> step 12: 0, 12, 24, 36).
    assert datasets.num_test == 4
    assert 4 + 15 + 4 + 4 == sum(len(y) for _, y in datasets.test)


def test_jpeg_folders_read_as_the_same_frames_in_memory(tmp_path):
    """The file pipeline (decode only the crop window of each JPEG) gives the clips of the in-memory one."""
    rng = np.random.default_rng(0)
    lengths = [9, 14, 20]
    # Flat 8x8 blocks (JPEG's own blocks) keep the compression error small.
    blocks = rng.integers(0, 256, size=(sum(lengths), 6, 8, 3)).astype(np.uint8)
    frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)  # 48x64
    dirs, at = [], 0
    for v, n in enumerate(lengths):
        dirs.append(_write_frames(tmp_path / f"v{v}", frames[at : at + n], n_frames_file=False))
        at += n
    decoded = np.concatenate(
        [np.stack([tf.io.decode_jpeg(tf.io.read_file(os.path.join(d, f"image_{i + 1:05d}.jpg"))).numpy() for i in range(n)])
         for d, n in zip(dirs, lengths)]
    )
    np.testing.assert_allclose(decoded, frames, atol=3)  # The stored pixels, within JPEG error.
    labels = np.array([0, 1, 0], np.int32)
    files = video._Videos(num_frames=np.array(lengths, np.int32), labels=labels, key="f", frame_dirs=tuple(dirs))
    memory = video._Videos(num_frames=np.array(lengths, np.int32), labels=labels, key="m",
                           first_frame=np.array([0, 9, 23], np.int32), frames=decoded)
    for augment in (True, False):
        a, b = (video.ClipStream(v, 2, 5, 8, (24, 24), augment, "k").batches(3).take(6) for v in (files, memory))
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
            np.testing.assert_allclose(xa.numpy(), xb.numpy(), atol=1.0)
    for starts in (video.eval_starts, video.test_starts):
        (a, ids_a), (b, ids_b) = (video.clip_stream(v, starts, 8, (24, 24), 4) for v in (files, memory))
        np.testing.assert_array_equal(ids_a, ids_b)
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
            np.testing.assert_allclose(xa.numpy(), xb.numpy(), atol=1.0)


def test_video_folder_of_frame_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "clips"
    for split, count in (("train", 3), ("test", 1)):
        for c, name in enumerate(("jump", "run")):
            for v in range(count):
                frames = [np.full((16, 16, 3), 40 * c + 5 * t, np.uint8) for t in range(6)]
                _write_frames(root / split / name / f"v{v}", frames)
    datasets = data.load(f"video_folder:{root}", batch_size=2, eval_batch_size=4, clip_length=4, image_size=(8, 8))
    assert datasets.class_names == ("jump", "run") and datasets.num_train == 6
    assert datasets.test_videos.num_clips == 4  # 6 frames, T = 4: starts 0 and 4 of each video.
    clips, labels = next(iter(datasets.test_videos.clips))
    np.testing.assert_array_equal(labels.numpy(), [0, 0, 1, 1])
    expected = [[0, 5, 10, 15], [20, 25, 20, 25], [40, 45, 50, 55], [60, 65, 60, 65]]  # Frames 0-3, then 4, 5, 4, 5.
    np.testing.assert_allclose(clips.numpy()[:, :, 0, 0, 0], expected, atol=2)
    assert video.frames_dir(str(root)).startswith(str(tmp_path / "cache" / "sskt_tf" / "video_frames"))


# --------------------------------------------------------------------------- streams and load


def test_training_stream_is_seeded_and_resumable():
    tf.random.set_seed(5)  # As train.py does (keras.utils.set_random_seed): the global seed joins in.
    datasets = data.load("synthetic_video", batch_size=32, seed=3, clip_length=4)  # 96 videos: 3 batches a pass
    assert datasets.steps_per_epoch == 3
    full = [(x.numpy(), y.numpy()) for x, y in datasets.train.take(8)]
    for start in (2, 5):
        for (x1, y1), (x2, y2) in zip(full[start:], datasets.train_from(start).take(3)):
            np.testing.assert_array_equal(x1, x2.numpy())
            np.testing.assert_array_equal(y1, y2.numpy())
    for (x1, y1), (x2, y2) in zip(full, datasets.train_from(0).take(3)):
        np.testing.assert_array_equal(x1, x2.numpy())
    # Every video once per pass, in another order each pass.
    passes = [np.concatenate([y for _, y in full[i : i + 3]]) for i in (0, 3)]
    assert all(np.bincount(p).tolist() == [24] * 4 for p in passes)
    assert not np.array_equal(passes[0], passes[1])
    other = data.load("synthetic_video", batch_size=32, seed=4, clip_length=4)
    assert not np.array_equal(next(iter(other.train))[0].numpy(), full[0][0])


def test_synthetic_video_moves_each_class_its_own_way():
    train, test, names = video._synthetic("synthetic_video:3", seed=0)
    assert names == ("class_0", "class_1", "class_2")
    assert (train.size, test.size) == (video.SYNTHETIC_TRAIN, video.SYNTHETIC_TEST)
    assert np.bincount(train.labels).tolist() == [32] * 3
    assert all(video.SYNTHETIC_FRAMES[0] <= n <= video.SYNTHETIC_FRAMES[1] for n in train.num_frames)
    # Class 0 moves up, class 2 down, class 1 sideways: the bright square's step between two frames.
    steps = {0: set(), 1: set(), 2: set()}
    for v in range(train.size):
        pair = train.frames[train.first_frame[v] : train.first_frame[v] + 2].astype(float).sum(-1)
        rows = [np.unique(np.argwhere(f >= 3 * 170)[:, 0]) for f in pair]
        if all(len(r) == 8 and r[-1] - r[0] == 7 for r in rows):  # Not wrapping around the edge.
            steps[int(train.labels[v])].add(int(np.sign(rows[1][0] - rows[0][0])))
    assert steps == {0: {-1}, 1: {0}, 2: {1}}
    again, _, _ = video._synthetic("synthetic_video:3", seed=0)
    np.testing.assert_array_equal(again.frames, train.frames)
    assert not np.array_equal(video._synthetic("synthetic_video:3", seed=1)[0].frames[:100], train.frames[:100])


def test_validation_split_and_subset_select_videos(capsys):
    datasets = data.load("synthetic_video", batch_size=8, seed=0, validation_split=0.25, train_subset=40, clip_length=4)
    assert "validation set of 24 of the 96 training videos" in capsys.readouterr().out
    assert datasets.num_train == 40 and datasets.steps_per_epoch == 5 and datasets.validation_from == "validation_split"
    labels = np.concatenate([y.numpy() for _, y in datasets.validation])
    assert datasets.num_validation == 24 and len(labels) > 24  # Several clips per validation video.
    held = data.load("synthetic_video", batch_size=8, seed=0, validation_split=0.25, clip_length=4)
    assert held.num_train == 72
    assert held.content_key != datasets.content_key != data.load("synthetic_video", batch_size=8, clip_length=4).content_key
    small = data.load("synthetic_video:5", batch_size=8, image_size=(16, 16), clip_length=3)
    assert small.num_classes == 5 and small.train.element_spec[0].shape.as_list() == [8, 3, 16, 16, 3]


def test_what_does_not_apply_to_videos(user_error):
    def load(**kwargs):
        return lambda: data.load(kwargs.pop("dataset", "synthetic_video"), **{"batch_size": 8, **kwargs})

    assert "--augment=randaugment does not apply to video datasets" in user_error(load(augment="randaugment"))
    assert "--mixup=0 --cutmix=0" in user_error(load(augment=AugmentationConfig(mixup=0.2)))
    assert "--mixup=0 --cutmix=0" in user_error(load(augment=AugmentationConfig(cutmix=1.0)))
    assert "--cache=memory does not apply" in user_error(load(cache="memory"))
    assert "--cache=disk does not apply" in user_error(load(cache="disk", cache_dir="/tmp/x"))
    assert "--skip_bad_images does not apply" in user_error(load(skip_bad_images=True))
    assert "--clip_length must be a positive integer" in user_error(load(clip_length=0))
    assert "--video_split must be 1, 2 or 3" in user_error(load(video_split=4))
    for bad in ("1", "17", "x"):
        assert "from 2 to 16" in user_error(load(dataset=f"synthetic_video:{bad}"))
    assert "--batch_size=97 is larger than the 96 training videos" in user_error(load(batch_size=97))
    datasets = data.load("synthetic_video", batch_size=8, clip_length=2)
    for call in (lambda: datasets.train_from(0, extras=(np.zeros(96),)), lambda: datasets.train_from(0, replay=object()),
                 lambda: datasets.train_ordered(8)):
        assert user_error(call).startswith("--soft_label_cache does not apply to video datasets")
    for message in (user_error(load(augment="randaugment")), user_error(load(cache="memory"))):
        assert "\n" not in message


def test_a_frame_deleted_or_damaged_after_indexing_is_named(tmp_path):
    """Frames are counted up front, not opened: a frame file missing or not a JPEG when its clip is read
    becomes an error naming the file (`video.read_error`), not TensorFlow's nameless one."""
    listed = _flat_videos(tmp_path, [6])
    videos = video._Videos.of(listed)
    frames = os.path.join(listed.frame_dirs[0], "image_00003.jpg")

    def first_error():
        stream, _ = video.clip_stream(videos, video.test_starts, 4, (16, 16), 1)
        try:
            list(stream)
        except tf.errors.OpError as e:
            return e
        return None

    with open(frames, "wb") as f:
        f.write(b"junk")
    error = first_error()
    assert video.read_error(error) == f"{frames}: not a JPEG image"
    os.remove(frames)
    error = first_error()
    assert video.read_error(error) == f"{frames}: no such frame file"
    assert video.read_error(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")) is None
    # Up front, the folder's count disagrees with its n_frames file: one line before anything is read.
    with pytest.raises(UserError, match="has 5 image_\\*.jpg frames but its n_frames file says 6"):
        video_index.count_frames(listed.frame_dirs[0])
