"""Tests of python -m sskt_tf.prepare_video: the frame folders it writes, resuming, bad videos (the others
go on; one error line; a re-run retries only those), the one-line refusals of bad input, and --help.

The command's main runs in process on flags parsed into a FlagValues of its own (absl's global FLAGS
may hold another command's --dataset in this process); one slow test runs the real command."""

import inspect
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import assert_one_error_line, run_commands
from videos import write_damaged_video, write_video

from sskt_tf import prepare_video, video_io
from sskt_tf.errors import UserError, one_line


def run_main(monkeypatch, *args):
    """prepare_video.main on `args`, as the command parses them."""
    flag_values = flags.FlagValues()
    prepare_video.define_flags(flag_values)
    flag_values(["sskt_tf.prepare_video", *args])
    monkeypatch.setattr(flags, "FLAGS", flag_values)
    prepare_video.main(["sskt_tf.prepare_video"])


def make_videos(root, counts):
    """`root/<class>/<name>.avi` of flat frames; `counts` is {"<class>/<name>": frames}."""
    paths = {}
    for i, (name, count) in enumerate(counts.items()):
        frames = np.full((count, 24, 32, 3), 30 + 40 * i, np.uint8)
        paths[name] = write_video(os.path.join(root, f"{name}.avi"), frames)
    return paths


def frame_tree(output):
    """{"<class>/<video>": sorted file names} of the finished frame folders under `output`."""
    tree = {}
    for where, dirs, files in os.walk(output):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if files:
            tree[os.path.relpath(where, output)] = sorted(files)
    return tree


def printed_lines(capsys):
    """The lines printed so far (the progress bar, redrawn with carriage returns, is one line)."""
    return capsys.readouterr().out.rstrip("\n").split("\n")


def jpegs(count):
    return [video_io.frame_name(i) for i in range(count)] + ["n_frames"]


def test_writes_the_frame_folders_resumes_and_retries_only_the_failed_videos(tmp_path, monkeypatch, capsys):
    videos = tmp_path / "UCF-101"
    make_videos(videos, {"Archery/v_Archery_g01_c01": 3, "Archery/v_Archery_g02_c01": 2, "Bowling/v_Bowling_g01_c01": 4})
    bad = videos / "Bowling" / "v_Bowling_g02_c01.avi"
    bad.write_bytes(b"RIFF, then nothing a decoder can use")
    output = tmp_path / "ucf101" / "frames"
    # What a killed extractor of another tool left: a folder without n_frames is done again.
    (output / "Archery" / "v_Archery_g02_c01").mkdir(parents=True)
    (output / "Archery" / "v_Archery_g02_c01" / "image_00001.jpg").write_bytes(b"old")
    args = [f"--videos={videos}", f"--output={output}", "--dataset=ucf101", "--short_side=12", "--workers=2"]
    with pytest.raises(UserError) as error:
        run_main(monkeypatch, *args)
    message = one_line(error.value)
    assert message == str(error.value)  # One line already.
    assert message.startswith(f"1 of 4 videos could not be extracted: {bad} (cannot be opened as a video (invalid data found when processing input)). ")
    assert f"The others are in {output}; " in message and "run the same command again: it extracts only what is missing." in message
    printed = printed_lines(capsys)
    assert printed[0] == (
        f"note: --videos={videos} has 2 class folders with videos; ucf101 has 101. If the extraction of the archive is "
        "incomplete, finish it and run this command again (it resumes)."
    )
    assert printed[1] == (
        f"4 videos in 2 class folders under {videos}: 0 already extracted (skipped), 4 to extract into {output} with 2 "
        "processes (short side 12 px, JPEG quality 90)."
    )
    assert "4/4" in printed[2]  # The progress bar.
    assert printed[-1].startswith("extracted 3 videos (9 frames) in ") and printed[-1].endswith(" frames/s.")
    expected = {
        "Archery/v_Archery_g01_c01": jpegs(3),
        "Archery/v_Archery_g02_c01": jpegs(2),
        "Bowling/v_Bowling_g01_c01": jpegs(4),
    }
    assert frame_tree(output) == expected
    assert (output / "Bowling" / "v_Bowling_g01_c01" / "n_frames").read_text() == "4"
    # The 24x32 videos scaled to a short side of 12 px.
    assert np.asarray(video_io.read_video(str(videos / "Bowling" / "v_Bowling_g01_c01.avi"), 12)).shape == (4, 12, 16, 3)
    assert tf.io.decode_jpeg(tf.io.read_file(str(output / "Bowling" / "v_Bowling_g01_c01" / "image_00001.jpg"))).shape == (12, 16, 3)

    # Run again: the finished ones are skipped, the bad one is tried again and fails again.
    stamps = {p: os.stat(output / p / "n_frames").st_mtime_ns for p in expected}
    with pytest.raises(UserError, match=r"^1 of 4 videos could not be extracted"):
        run_main(monkeypatch, *args)
    assert printed_lines(capsys)[1].startswith(f"4 videos in 2 class folders under {videos}: 3 already extracted (skipped), 1 to extract")
    # Replaced by a good video: only it is extracted.
    write_video(bad, np.zeros((5, 24, 32, 3), np.uint8))
    run_main(monkeypatch, *args)
    printed = printed_lines(capsys)
    assert printed[1].startswith(f"4 videos in 2 class folders under {videos}: 3 already extracted (skipped), 1 to extract into {output} with 1 process ")
    assert printed[-2].startswith("extracted 1 videos (5 frames)")
    root = tmp_path / "ucf101"
    assert printed[-1] == f"next: python -m sskt_tf.train --dataset=ucf101 --data_dir={root} once the official split lists are in {root}/ucfTrainTestlist/ (see --help)"
    assert frame_tree(output) == {**expected, "Bowling/v_Bowling_g02_c01": jpegs(5)}
    assert {p: os.stat(output / p / "n_frames").st_mtime_ns for p in expected} == stamps  # Not written again.
    # Everything finished: nothing to do.
    (root / "ucfTrainTestlist").mkdir()
    run_main(monkeypatch, *args)
    printed = printed_lines(capsys)
    assert printed[1] == f"4 videos in 2 class folders under {videos}: 4 already extracted (skipped), 0 to extract into {output}."
    assert printed[2:] == [f"next: python -m sskt_tf.train --dataset=ucf101 --data_dir={root}"]


def test_videos_with_damaged_data_are_extracted_and_named_in_a_note(tmp_path, monkeypatch, capsys):
    videos = tmp_path / "videos"
    damaged = write_damaged_video(videos / "a" / "damaged.avi")
    run_main(monkeypatch, f"--videos={videos}", f"--output={tmp_path / 'frames'}", "--short_side=24")
    assert (tmp_path / "frames" / "a" / "damaged" / "n_frames").read_text() == "11"
    assert printed_lines(capsys)[-1] == (
        f"note: 1 video has damaged data, skipped as ffmpeg skips it (the frames that decode are written): {damaged}: "
        "1 packet failed to decode (invalid data found when processing input). Replace it for every frame."
    )


def test_folder_mode_keeps_the_relative_paths_and_ucf101_mode_reads_class_folders_only(tmp_path, monkeypatch, capsys):
    videos = tmp_path / "mine"
    make_videos(videos, {"train/cat/a": 2, "train/dog/b": 3, "test/cat/c": 2})
    write_video(videos / "top.mp4", np.zeros((2, 24, 32, 3), np.uint8))
    (videos / "train" / "cat" / "notes.txt").write_text("not a video")
    (videos / ".hidden").mkdir()
    write_video(videos / ".hidden" / "d.avi", np.zeros((2, 24, 32, 3), np.uint8))
    output = tmp_path / "frames"
    run_main(monkeypatch, f"--videos={videos}", f"--output={output}", "--short_side=24", "--workers=1")
    assert frame_tree(output) == {"train/cat/a": jpegs(2), "train/dog/b": jpegs(3), "test/cat/c": jpegs(2), "top": jpegs(2)}
    printed = printed_lines(capsys)
    assert printed[0] == f"4 videos under {videos}: 0 already extracted (skipped), 4 to extract into {output} with 1 process (short side 24 px, JPEG quality 90)."
    assert not any(line.startswith(("next:", "note:")) for line in printed)
    # --dataset=hmdb51 reads <videos>/<class>/<video> only: the others are counted in a note.
    output2 = tmp_path / "hmdb51" / "frames"
    run_main(monkeypatch, f"--videos={videos / 'train'}", f"--output={output2}", "--dataset=hmdb51", "--short_side=24")
    assert frame_tree(output2) == {"cat/a": jpegs(2), "dog/b": jpegs(3)}
    capsys.readouterr()
    make_videos(videos, {"train/cat/deeper/e": 2})
    run_main(monkeypatch, f"--videos={videos / 'train'}", f"--output={output2}", "--dataset=hmdb51", "--short_side=24")
    printed = printed_lines(capsys)
    assert printed[0] == (
        f"note: 1 video files not directly in a class folder of --videos={videos / 'train'} are not used (e.g. "
        f"{videos / 'train' / 'cat' / 'deeper' / 'e.avi'}); --dataset=hmdb51 reads <videos>/<class>/<video>."
    )
    assert printed[1].startswith(f"note: --videos={videos / 'train'} has 2 class folders with videos; hmdb51 has 51.")
    assert printed[2] == f"2 videos in 2 class folders under {videos / 'train'}: 2 already extracted (skipped), 0 to extract into {output2}."
    assert printed[3:] == [f"next: python -m sskt_tf.train --dataset=hmdb51 --data_dir={output2.parent} once the official split lists are in {output2.parent}/testTrainMulti_7030_splits/ (see --help)"]
    assert frame_tree(output2) == {"cat/a": jpegs(2), "dog/b": jpegs(3)}


def test_bad_input_is_refused_in_one_line(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    make_videos(videos, {"a/x": 2})
    output = tmp_path / "frames"

    def refused(*args, match):
        with pytest.raises(UserError) as error:
            run_main(monkeypatch, *args)
        assert "\n" not in str(error.value)
        assert match in str(error.value), str(error.value)

    refused(f"--videos={tmp_path / 'none'}", f"--output={output}", match=f"--videos={tmp_path / 'none'} does not exist; pass the directory")
    refused(f"--videos={videos / 'a' / 'x.avi'}", f"--output={output}", match="x.avi is a file, not a directory")
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "clip.gif").write_bytes(b"GIF89a")
    refused(f"--videos={empty}", f"--output={output}", match=f"--videos={empty} has no video files below it (read are .avi, .mp4, .mkv, .mov, .webm, .m4v, .mpg, .mpeg, any case).")
    # HMDB51's archive holds one .rar per class: extract them first.
    archives = tmp_path / "hmdb51_org"
    archives.mkdir()
    (archives / "brush_hair.rar").write_bytes(b"Rar!")
    refused(f"--videos={archives}", f"--output={output}", "--dataset=hmdb51", match=f"It holds 1 .rar archive ({archives / 'brush_hair.rar'}, ...): extract them first (unrar x")
    # Videos one level too deep for --dataset=ucf101 (the folder above UCF-101/).
    deep = tmp_path / "download"
    make_videos(deep / "UCF-101", {"Archery/v": 2})
    refused(f"--videos={deep}", f"--output={output}", "--dataset=ucf101", match="directly in its class folders (<videos>/<class>/<video>) (read are .avi,")
    refused(f"--videos={deep}", f"--output={output}", "--dataset=ucf101", match=f"There are video files deeper down ({deep / 'UCF-101' / 'Archery' / 'v.avi'})")
    refused(f"--videos={videos}", f"--output={videos / 'frames'}", match=f"--output={videos / 'frames'} is inside --videos={videos}; pass an output directory outside")
    refused(f"--videos={videos}", f"--output={videos}", match="is inside --videos")
    (tmp_path / "file").write_text("")
    refused(f"--videos={videos}", f"--output={tmp_path / 'file'}", match=f"--output={tmp_path / 'file'} is a file, not a directory")
    refused(f"--videos={videos}", f"--output={output}", "--workers=0", match="--workers=0 must be at least 1")
    refused(f"--videos={videos}", f"--output={output}", "--short_side=0", match="--short_side=0 must be a positive number of pixels")
    refused(f"--videos={videos}", f"--output={output}", "--jpeg_quality=0", match="--jpeg_quality=0 must be an integer from 1 to 95")
    write_video(videos / "a" / "x.mp4", np.zeros((2, 24, 32, 3), np.uint8))
    refused(f"--videos={videos}", f"--output={output}", match=f"{videos / 'a' / 'x.avi'} and {videos / 'a' / 'x.mp4'} would both be written to a/x/")
    assert not output.exists()  # Nothing was written for bad input.


def test_help_opens_with_the_docstring_and_lists_the_flags(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sskt-prepare-video", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        prepare_video.run()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(inspect.cleandoc(prepare_video.__doc__) + "\n\n")
    for flag in ("--videos=<text>  (required)", "--output=<text>  (required)", "--dataset=folder|ucf101|hmdb51  (default: folder)",
                 "--short_side=<int>  (default: 240)", "--jpeg_quality=<int>  (default: 90)", "--workers=<int>\n"):
        assert f"\n  {flag}" in out, flag
    for page in ("https://www.crcv.ucf.edu/data/UCF101.php", "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"):
        assert page in out


@pytest.mark.slow
def test_the_command_ends_a_failed_video_and_bad_flags_in_one_error_line(tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos, {"a/good": 2})
    (videos / "a" / "bad.avi").write_bytes(b"not a video")
    command = [sys.executable, "-m", "sskt_tf.prepare_video", f"--videos={videos}", f"--output={tmp_path / 'frames'}"]
    failed, unknown = run_commands([command, [*command, "--short_sides=3"]])
    assert_one_error_line(failed, f"error: 1 of 2 videos could not be extracted: {videos / 'a' / 'bad.avi'} (cannot be opened as a video")
    assert "2 videos under" in failed[1] and "extracted 1 videos (2 frames)" in failed[1]
    assert sorted(os.listdir(tmp_path / "frames" / "a" / "good")) == jpegs(2)
    assert_one_error_line(unknown, "unknown flag --short_sides", "did you mean --short_side?")
