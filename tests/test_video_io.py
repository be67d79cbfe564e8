"""Tests of sskt_tf.video_io: decoding (sizes, colours, rotation), frame extraction (names, n_frames,
killed extractions redone), parallel extraction, and the one-line errors of files that are not videos."""

import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image
from videos import write_damaged_video, write_video

from sskt_tf import video_io
from sskt_tf.errors import UserError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 240), (128, 90, 10)]


def flat_frames(colours, height=24, width=32):
    frames = np.empty((len(colours), height, width, 3), np.uint8)
    frames[:] = np.asarray(colours, np.uint8)[:, None, None, :]
    return frames


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_read_video_gives_back_the_frames_written(tmp_path, ext):
    path = write_video(tmp_path / f"clip{ext}", flat_frames(COLOURS))
    video = video_io.read_video(path)
    assert video.dtype == np.uint8 and video.shape == (5, 24, 32, 3)
    # Flat colours survive yuv420p and the codec within a few levels.
    np.testing.assert_allclose(video.mean(axis=(1, 2)), COLOURS, atol=6)
    # Short side 12: half the size, the aspect ratio kept, the same colours; 48 would enlarge it: kept.
    scaled = video_io.read_video(path, short_side=12)
    assert scaled.shape == (5, 12, 16, 3)
    np.testing.assert_allclose(scaled.mean(axis=(1, 2)), COLOURS, atol=6)
    assert video_io.read_video(path, short_side=48).shape == (5, 24, 32, 3)


def test_scaled_size_keeps_the_aspect_ratio_as_ffmpeg_rounds():
    assert video_io.scaled_size(320, 240, 240) == (320, 240)  # UCF101 and HMDB51: unchanged.
    assert video_io.scaled_size(400, 300, 240) == (320, 240)
    assert video_io.scaled_size(240, 320, 240) == (240, 320)  # Portrait: the width is the short side.
    assert video_io.scaled_size(321, 240, 120) == (161, 120)  # 160.5 rounds up, as ffmpeg's av_rescale.
    assert video_io.scaled_size(64, 48, 240) == (64, 48)  # Smaller videos are not enlarged.
    assert video_io.scaled_size(319, 240, 120) == (160, 120)  # 159.5 -> 160.
    assert video_io.scaled_size(100, 100, 50) == (50, 50)
    assert video_io.scaled_size(32, 24, None) == (32, 24)


@pytest.mark.parametrize("rotation, corner", [(-90, "top right"), (90, "bottom left"), (180, "bottom right")])
def test_rotated_videos_come_out_upright(tmp_path, rotation, corner):
    # A phone held upright records landscape frames with a rotation of -90 in the display matrix;
    # ffmpeg's command line turns them 90 degrees clockwise (a top-left mark goes to the top right).
    frames = np.zeros((3, 24, 32, 3), np.uint8)
    frames[:, :8, :8] = 255
    path = write_video(tmp_path / "phone.mp4", frames, rotation=rotation)
    with av.open(path) as container:
        assert next(container.decode(video=0)).rotation % 360 == rotation % 360  # 180 reads back as -180.
    video = video_io.read_video(path)
    assert video.shape == ((3, 24, 32, 3) if rotation == 180 else (3, 32, 24, 3))
    bright = video[0, :, :, 0] > 128
    rows, cols = np.nonzero(bright)
    height, width = bright.shape
    expected = {
        "top right": (rows.max() < 10 and cols.min() > width - 11),
        "bottom left": (rows.min() > height - 11 and cols.max() < 10),
        "bottom right": (rows.min() > height - 11 and cols.min() > width - 11),
    }
    assert expected[corner], (rows.min(), rows.max(), cols.min(), cols.max())
    # extract_frames writes them upright too.
    out = tmp_path / "frames"
    video_io.extract_frames(path, out, short_side=None)
    np.testing.assert_allclose(np.asarray(Image.open(out / "image_00001.jpg")), video[0], atol=40)


def test_extract_frames_writes_numbered_jpegs_and_n_frames_last(tmp_path):
    path = write_video(tmp_path / "clip.avi", flat_frames(COLOURS))
    out = tmp_path / "frames" / "Class" / "clip"
    assert video_io.extract_frames(path, out) == 5
    assert sorted(os.listdir(out)) == [f"image_0000{i}.jpg" for i in range(1, 6)] + ["n_frames"]
    assert (out / "n_frames").read_text() == "5"  # As Hara et al.'s n_frames files: the number alone.
    assert video_io.is_finished(str(out))
    # The default short side, 240 (Hara et al.'s), does not enlarge a smaller video: 24x32 stays.
    first = np.asarray(Image.open(out / "image_00001.jpg"))
    assert first.shape == (24, 32, 3)
    for i, colour in enumerate(COLOURS):
        np.testing.assert_allclose(np.asarray(Image.open(out / video_io.frame_name(i))).mean(axis=(0, 1)), colour, atol=6)
    assert os.listdir(out.parent) == ["clip"]  # No temporary directory left.


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_an_unfinished_extraction_is_redone_and_leftovers_removed(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.avi", flat_frames(COLOURS[:3]))
    out = tmp_path / "frames" / "clip"
    # What a killed extractor by another tool left: frames, no n_frames, and one more frame than the video has.
    out.mkdir(parents=True)
    for i in range(4):
        (out / video_io.frame_name(i)).write_bytes(b"old")
    # What a killed run of this code left: its temporary directory (its process is gone).
    stale = tmp_path / "frames" / f".clip.partial-{_dead_pid()}"
    stale.mkdir()
    (stale / "image_00001.jpg").write_bytes(b"partial")
    # A running process's temporary directory (another extraction of the same video) is left alone.
    running = tmp_path / "frames" / f".clip.partial-{os.getppid()}"
    running.mkdir()
    assert not video_io.is_finished(str(out))
    assert video_io.extract_frames(path, out, short_side=None) == 3
    assert sorted(os.listdir(out)) == ["image_00001.jpg", "image_00002.jpg", "image_00003.jpg", "n_frames"]
    assert not stale.exists() and running.exists()
    assert sorted(os.listdir(tmp_path / "frames")) == [running.name, "clip"]
    # Killed half-way (Ctrl-C after two frames): the finished directory stays as it was, nothing is left behind.
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    saved = []
    real_save = Image.Image.save

    def save_then_stop(self, *args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(args[0])
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        video_io.extract_frames(path, out, short_side=None)
    assert len(saved) == 2 and all(".clip.partial-" in p for p in saved)  # It wrote to its temporary directory.
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path / "frames")) == [running.name, "clip"]


def test_files_that_are_not_videos_are_one_line_errors_naming_the_file(tmp_path):
    missing = tmp_path / "missing.avi"
    text = tmp_path / "notes.avi"
    text.write_text("not a video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio = tmp_path / "sound.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    no_frames = tmp_path / "no_frames.avi"
    with av.open(str(no_frames), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height = 32, 24
        container.start_encoding()  # The header, and not one frame.
    cases = {
        missing: "cannot be opened as a video (no such file or directory)",
        text: "cannot be opened as a video (invalid data found when processing input)",
        empty: "cannot be opened as a video",
        audio: "has no video stream (it holds: audio)",
        no_frames: "has no frames that decode",
    }
    for path, reason in cases.items():
        with pytest.raises(video_io.VideoError) as error:
            video_io.read_video(str(path))
        message = str(error.value)
        assert message.startswith(f"{path}: {reason}") and "\n" not in message, message
        assert "re-encode it" in message and error.value.path == str(path)
        out = tmp_path / "out" / path.stem
        with pytest.raises(video_io.VideoError, match="^" + str(path)):
            video_io.extract_frames(str(path), out)
        assert not out.exists() and os.listdir(tmp_path / "out") == []  # Nothing left behind.
    with pytest.raises(UserError, match=r"--short_side=0 must be a positive number of pixels"):
        video_io.read_video(str(text), short_side=0)
    with pytest.raises(UserError, match=r"--jpeg_quality=100 must be an integer from 1 to 95"):
        video_io.extract_frames(str(text), tmp_path / "x", quality=100)


def test_damaged_data_is_skipped_as_ffmpeg_skips_it_and_reported(tmp_path):
    path = write_damaged_video(tmp_path / "damaged.avi")
    report = video_io.DecodeReport()
    video = video_io.read_video(path, report=report)
    assert len(video) == 11 and report.packets == 1 and not report.truncated  # One packet, one frame.
    assert report.describe() == "1 packet failed to decode (invalid data found when processing input)"
    clean = video_io.DecodeReport()
    video_io.read_video(write_video(tmp_path / "clean.avi", flat_frames(COLOURS)), report=clean)
    assert not clean and clean == video_io.DecodeReport()


def test_extract_many_goes_on_past_a_bad_video_in_parallel_processes(tmp_path, capsys):
    good = [write_video(tmp_path / f"v{i}.avi", flat_frames(COLOURS[: i + 2])) for i in range(3)]
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\0" * 100)
    damaged = write_damaged_video(tmp_path / "v3.avi")
    jobs = [(v, str(tmp_path / "frames" / os.path.basename(v)[:-4])) for v in [good[0], str(bad), *good[1:], damaged]]
    extracted = video_io.extract_many(jobs, short_side=None, workers=2)
    assert extracted.frames == {good[0]: 2, good[1]: 3, good[2]: 4, damaged: 11}
    assert list(extracted.failures) == [str(bad)] and "cannot be opened as a video" in extracted.failures[str(bad)]
    assert extracted.damaged == {damaged: "1 packet failed to decode (invalid data found when processing input)"}
    assert extracted.damage_note("x: ") == (
        f"x: note: 1 video has damaged data, skipped as ffmpeg skips it (the frames that decode are written): {damaged}: "
        "1 packet failed to decode (invalid data found when processing input). Replace it for every frame."
    )
    assert extracted.frames_per_second > 0
    assert sorted(os.listdir(tmp_path / "frames")) == ["v0", "v1", "v2", "v3"]
    for video, out in jobs:
        assert video_io.is_finished(out) == (video != str(bad))
    assert "5/5" in capsys.readouterr().out  # The progress bar, over the videos.
    # One process, without a pool, and no bar.
    again = video_io.extract_many(jobs[:1], short_side=None, workers=1, progress=False)
    assert again.frames == {good[0]: 2} and again.damaged == {} and again.damage_note() is None
    assert capsys.readouterr().out == ""
    with pytest.raises(UserError, match=r"--workers=0 must be at least 1"):
        video_io.extract_many(jobs, workers=0)
