"""Tiny videos and video datasets for the tests (imported as `from videos import ...`, like conftest's helpers).

    write_video(path, frames, fps=8)                  a video file (.avi: MPEG-4 Part 2; .mp4: H.264), via PyAV
    write_damaged_video(path)                         a 12-frame .avi with one damaged packet (11 frames decode)
    write_frames(directory, frames)                   image_00001.jpg, ... and n_frames, as prepare_video writes them
    make_ucf101_root(tmp_path, classes, videos_per_class, num_frames=4)   a miniature UCF101 --data_dir
    make_hmdb51_root(tmp_path, classes, videos_per_class, num_frames=4)   a miniature HMDB51 --data_dir
    frame_colour(label, video, frame)                 the flat RGB colour of a frame of those datasets

The miniature datasets hold frame folders of 24x32 flat-colour JPEG frames: frame `t` of video `v` of
class `c` is `frame_colour(c, v, t)` everywhere, so a test can tell from a decoded clip which class,
video and frames it came from (JPEG keeps flat colours within a few levels). The split lists are in
the official formats (UCF101's with CRLF line ends, as in the download).
"""

from __future__ import annotations

import os
import struct

import av
import numpy as np
from PIL import Image

FRAME_SIZE = (24, 32)  # (height, width) of the miniature datasets' frames
_CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264"}


def write_video(path, frames, fps: int = 8, rotation: int = 0) -> str:
    """Writes uint8 `frames` `[T, H, W, 3]` (RGB, H and W even) as a video file; returns the path.

    The codec follows the extension: MPEG-4 Part 2 in .avi (UCF101's and HMDB51's kind), H.264 in
    .mp4/.mkv/.mov, each yuv420p, so flat colours come back within a few levels.

    Args:
        path: the file to write (its directory is created).
        frames: uint8 `[T, H, W, 3]`.
        fps: frames per second.
        rotation: .mp4 only: the display matrix's rotation, as `av.VideoFrame.rotation` reads it
            back (-90: a phone recording held upright, shown turned 90 degrees clockwise).
    """
    path = str(path)
    frames = np.asarray(frames, np.uint8)
    ext = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(_CODECS[ext], rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if ext != ".avi":
            stream.options = {"crf": "10"}  # Near-lossless: flat colours stay within a level or two.
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if rotation:
        assert ext == ".mp4", "rotation needs an .mp4 (the tkhd box's matrix)"
        _set_mp4_rotation(path, rotation)
    return path


def _set_mp4_rotation(path: str, rotation: int) -> None:
    """Writes the display matrix of `rotation` (counter-clockwise degrees, a multiple of 90) into the
    first track header of an .mp4 (PyAV 18 cannot set it; FFmpeg reads it back as frame side data)."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"tkhd")
    version = data[at + 4]
    # tkhd: version and flags, times and track id (version 0: 4-byte fields), reserved, layer, group, volume.
    matrix_at = at + 4 + 4 + (20 if version == 0 else 32) + 8 + 8
    turns = (rotation // 90) % 4
    cos, sin = [(1, 0), (0, 1), (-1, 0), (0, -1)][turns]
    # FFmpeg's av_display_rotation_set: [cos, -sin, 0; sin, cos, 0; 0, 0, 1] in 16.16 (2.30 for the last column).
    one = 1 << 16
    data[matrix_at:matrix_at + 36] = struct.pack(">9i", cos * one, -sin * one, 0, sin * one, cos * one, 0, 0, 0, 1 << 30)
    open(path, "wb").write(data)


def write_damaged_video(path) -> str:
    """Writes a 12-frame .avi (24x32 noise) whose second packet is damaged; returns the path.

    The packet's data starts with a start code and then garbage: FFmpeg's MPEG-4 decoder refuses that
    packet ("invalid data found when processing input") and decodes the other 11 frames.
    """
    path = str(path)
    write_video(path, np.random.default_rng(0).integers(0, 256, (12, 24, 32, 3), np.uint8))
    with open(path, "rb") as f:
        data = bytearray(f.read())
    first = data.index(b"00dc", data.index(b"movi"))  # AVI: chunks "00dc" <size> <data> in the "movi" list.
    second = data.index(b"00dc", first + 1) + 8
    garbage = b"\x00\x00\x01\x00\x00\x00\x01\x20\xff\xff\xff\xff"
    data[second:second + len(garbage)] = garbage
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_frames(directory, frames, n_frames_file: bool = True) -> str:
    """Writes uint8 `frames` `[T, H, W, 3]` as `directory/image_00001.jpg`, ... (JPEG quality 95) and `n_frames`.

    Args:
        directory: the video's frame folder (created).
        frames: uint8 `[T, H, W, 3]`.
        n_frames_file: write the `n_frames` file (False: frames only, as Hara et al.'s ffmpeg script leaves them).

    Returns:
        The directory.
    """
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    for t, frame in enumerate(np.asarray(frames, np.uint8)):
        Image.fromarray(frame).save(os.path.join(directory, f"image_{t + 1:05d}.jpg"), quality=95)
    if n_frames_file:
        with open(os.path.join(directory, "n_frames"), "w") as f:
            f.write(str(len(frames)))
    return directory


def frame_colour(label: int, video: int, frame: int) -> tuple[int, int, int]:
    """The RGB colour of frame `frame` of video `video` (0-based within its class) of class `label`."""
    return (20 + 40 * label) % 256, (20 + 50 * video) % 256, (4 + 12 * frame) % 256


def _flat_frames(label: int, video: int, count: int) -> np.ndarray:
    frames = np.empty((count, *FRAME_SIZE, 3), np.uint8)
    for t in range(count):
        frames[t] = frame_colour(label, video, t)
    return frames


def _count(num_frames, video: int) -> int:
    return num_frames if isinstance(num_frames, int) else num_frames[video % len(num_frames)]


def ucf101_video_name(class_name: str, video: int) -> str:
    """The name (without .avi) of video `video` of a class in `make_ucf101_root`: group `video + 1`, clip 1."""
    return f"v_{class_name}_g{video + 1:02d}_c01"


def make_ucf101_root(tmp_path, classes, videos_per_class: int, num_frames=4) -> str:
    """A miniature UCF101 `--data_dir`: `frames/<class>/<video>/` and `ucfTrainTestlist/`.

    Video `v` of each class is `v_<class>_g<v+1>_c01` (`ucf101_video_name`). As UCF101 splits by
    group, split `s` tests the videos with `v % 3 == s - 1` and trains on the others.

    Args:
        tmp_path: where the root is made (as `<tmp_path>/ucf101`).
        classes: class names, in classInd.txt's order (indices 1, 2, ...).
        videos_per_class: videos of each class.
        num_frames: frames per video, or a sequence cycled over each class's videos.

    Returns:
        The root's path.
    """
    root = os.path.join(str(tmp_path), "ucf101")
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "classInd.txt"), "w", newline="") as f:
        f.writelines(f"{i} {name}\r\n" for i, name in enumerate(classes, 1))
    for split in (1, 2, 3):
        train, test = [], []
        for i, name in enumerate(classes, 1):
            for v in range(videos_per_class):
                listed = f"{name}/{ucf101_video_name(name, v)}.avi"
                (test.append(f"{listed}\r\n") if v % 3 == split - 1 else train.append(f"{listed} {i}\r\n"))
        with open(os.path.join(lists, f"trainlist{split:02d}.txt"), "w", newline="") as f:
            f.writelines(train)
        with open(os.path.join(lists, f"testlist{split:02d}.txt"), "w", newline="") as f:
            f.writelines(test)
    for label, name in enumerate(classes):
        for v in range(videos_per_class):
            write_frames(os.path.join(root, "frames", name, ucf101_video_name(name, v)), _flat_frames(label, v, _count(num_frames, v)))
    return root


def hmdb51_video_name(class_name: str, video: int) -> str:
    """The name (without .avi) of video `video` of a class in `make_hmdb51_root`, in HMDB51's style."""
    return f"Clip_{video}_{class_name}_f_cm_np1_fr_med_{video}"


def hmdb51_split_id(video: int, split: int) -> int:
    """The id of video `video` of each class in split `split` of `make_hmdb51_root`: 1 train, 2 test, 0 unused.

    The ids cycle over 1, 1, 2, 0 (a video's place in the cycle shifts by one per split).
    """
    return (1, 1, 2, 0)[(video + split - 1) % 4]


def make_hmdb51_root(tmp_path, classes, videos_per_class: int, num_frames=4) -> str:
    """A miniature HMDB51 `--data_dir`: `frames/<class>/<video>/` and `testTrainMulti_7030_splits/`.

    Video `v` of a class is `hmdb51_video_name(class, v)`, with id `hmdb51_split_id(v, split)` in
    `<class>_test_split<split>.txt` (lines `<video>.avi <id> `, HMDB51's trailing space included).
    Every video has frames, the unused ones too (prepare_video extracts every video).

    Args:
        tmp_path: where the root is made (as `<tmp_path>/hmdb51`).
        classes: class names (labels follow their sorted order).
        videos_per_class: videos of each class.
        num_frames: frames per video, or a sequence cycled over each class's videos.

    Returns:
        The root's path.
    """
    root = os.path.join(str(tmp_path), "hmdb51")
    lists = os.path.join(root, "testTrainMulti_7030_splits")
    os.makedirs(lists, exist_ok=True)
    for name in classes:
        for split in (1, 2, 3):
            with open(os.path.join(lists, f"{name}_test_split{split}.txt"), "w") as f:
                f.writelines(f"{hmdb51_video_name(name, v)}.avi {hmdb51_split_id(v, split)} \n" for v in range(videos_per_class))
    for label, name in enumerate(sorted(classes)):
        for v in range(videos_per_class):
            write_frames(os.path.join(root, "frames", name, hmdb51_video_name(name, v)), _flat_frames(label, v, _count(num_frames, v)))
    return root
