"""Tests of sskt_tf.data.video_index: UCF101 and HMDB51 split lists against hand-written expected lists,
frame counts, keys, every one-line error, and video folders (extracted once, edited videos again)."""

import os
import time

import numpy as np
import pytest
from videos import make_hmdb51_root, make_ucf101_root, write_damaged_video, write_frames, write_video

from sskt_tf.data import video_index
from sskt_tf.data.video_index import VideoList
from sskt_tf.errors import UserError

UCF_CLASSES = ["YoYo", "ApplyEyeMakeup", "Bowling"]  # classInd order, not sorted: labels follow classInd.


def contents(videos: VideoList, root):
    """[(frame dir relative to root, frames, label)]"""
    assert isinstance(videos.num_frames, np.ndarray) and videos.num_frames.dtype == np.int32
    assert isinstance(videos.labels, np.ndarray) and videos.labels.dtype == np.int32
    assert all(os.path.isabs(d) for d in videos.frame_dirs) and videos.size == len(videos.frame_dirs)
    return [(os.path.relpath(d, root), int(n), int(y)) for d, n, y in zip(videos.frame_dirs, videos.num_frames, videos.labels)]


@pytest.fixture
def ucf_root(tmp_path):
    return make_ucf101_root(tmp_path, UCF_CLASSES, videos_per_class=3, num_frames=(4, 5, 6))


def test_ucf101_splits_follow_the_official_lists(ucf_root):
    train, test, classes = video_index.ucf101(ucf_root, 1)
    assert classes == ("YoYo", "ApplyEyeMakeup", "Bowling")
    assert contents(train, ucf_root) == [
        ("frames/YoYo/v_YoYo_g02_c01", 5, 0),
        ("frames/YoYo/v_YoYo_g03_c01", 6, 0),
        ("frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01", 5, 1),
        ("frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01", 6, 1),
        ("frames/Bowling/v_Bowling_g02_c01", 5, 2),
        ("frames/Bowling/v_Bowling_g03_c01", 6, 2),
    ]
    assert contents(test, ucf_root) == [
        ("frames/YoYo/v_YoYo_g01_c01", 4, 0),
        ("frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 4, 1),
        ("frames/Bowling/v_Bowling_g01_c01", 4, 2),
    ]
    train2, test2, _ = video_index.ucf101(ucf_root, 2)
    assert contents(test2, ucf_root) == [
        ("frames/YoYo/v_YoYo_g02_c01", 5, 0),
        ("frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01", 5, 1),
        ("frames/Bowling/v_Bowling_g02_c01", 5, 2),
    ]
    assert [name for name, _, _ in contents(train2, ucf_root)][:2] == ["frames/YoYo/v_YoYo_g01_c01", "frames/YoYo/v_YoYo_g03_c01"]
    # Keys: another split or other frame counts, another key; the same contents, the same key.
    keys = {train.key, test.key, train2.key, test2.key}
    assert len(keys) == 4 and all(len(k) == 16 for k in keys)
    assert video_index.ucf101(ucf_root, 1)[0].key == train.key
    write_frames(os.path.join(ucf_root, "frames", "YoYo", "v_YoYo_g02_c01"), np.zeros((7, 24, 32, 3), np.uint8))
    again = video_index.ucf101(ucf_root, 1)[0]
    assert again.num_frames[0] == 7 and again.key != train.key


def test_hmdb51_splits_follow_the_official_lists(tmp_path):
    root = make_hmdb51_root(tmp_path, ["wave", "brush_hair", "clap"], videos_per_class=4, num_frames=(3, 4, 5, 6))
    train, test, classes = video_index.hmdb51(root, 1)
    assert classes == ("brush_hair", "clap", "wave")  # Sorted, as Hara et al.'s hmdb51_json.py.
    # Split 1: ids 1, 1, 2, 0 for videos 0..3 of each class.
    assert contents(train, root) == [
        ("frames/brush_hair/Clip_0_brush_hair_f_cm_np1_fr_med_0", 3, 0),
        ("frames/brush_hair/Clip_1_brush_hair_f_cm_np1_fr_med_1", 4, 0),
        ("frames/clap/Clip_0_clap_f_cm_np1_fr_med_0", 3, 1),
        ("frames/clap/Clip_1_clap_f_cm_np1_fr_med_1", 4, 1),
        ("frames/wave/Clip_0_wave_f_cm_np1_fr_med_0", 3, 2),
        ("frames/wave/Clip_1_wave_f_cm_np1_fr_med_1", 4, 2),
    ]
    assert contents(test, root) == [
        ("frames/brush_hair/Clip_2_brush_hair_f_cm_np1_fr_med_2", 5, 0),
        ("frames/clap/Clip_2_clap_f_cm_np1_fr_med_2", 5, 1),
        ("frames/wave/Clip_2_wave_f_cm_np1_fr_med_2", 5, 2),
    ]
    # Split 2: ids 1, 2, 0, 1.
    train2, test2, _ = video_index.hmdb51(root, 2)
    assert contents(train2, root)[:2] == [
        ("frames/brush_hair/Clip_0_brush_hair_f_cm_np1_fr_med_0", 3, 0),
        ("frames/brush_hair/Clip_3_brush_hair_f_cm_np1_fr_med_3", 6, 0),
    ]
    assert [n for n, _, _ in contents(test2, root)] == [f"frames/{c}/Clip_1_{c}_f_cm_np1_fr_med_1" for c in classes]
    assert len({train.key, test.key, train2.key, test2.key}) == 4


def test_frames_are_counted_without_n_frames_and_gaps_are_refused(ucf_root):
    video = os.path.join(ucf_root, "frames", "YoYo", "v_YoYo_g02_c01")
    os.remove(os.path.join(video, "n_frames"))  # As Hara et al.'s ffmpeg script leaves the folders.
    open(os.path.join(video, "notes.txt"), "w").close()
    assert video_index.count_frames(video) == 5
    assert video_index.ucf101(ucf_root, 1)[0].num_frames[0] == 5
    assert video_index.count_frames(os.path.join(ucf_root, "nowhere")) is None
    os.remove(os.path.join(video, "image_00003.jpg"))
    with pytest.raises(UserError, match=rf"^{video} has 4 image_\*\.jpg frames but the last is image_00005\.jpg: frames are missing\."):
        video_index.ucf101(ucf_root, 1)
    with open(os.path.join(video, "n_frames"), "w") as f:
        f.write("five")
    with pytest.raises(UserError, match=rf"^{video}/n_frames holds 'five', not a frame count"):
        video_index.count_frames(video)


def refused(call, *needles):
    with pytest.raises(UserError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_ucf101_errors_name_the_file_and_the_fix(ucf_root, tmp_path):
    lists = os.path.join(ucf_root, "ucfTrainTestlist")
    refused(lambda: video_index.ucf101(None, 1), "--dataset=ucf101 needs --data_dir=<root> holding frames/ and ucfTrainTestlist/",
            "https://www.crcv.ucf.edu/data/UCF101.php", "python -m sskt_tf.prepare_video --dataset=ucf101")
    refused(lambda: video_index.ucf101(str(tmp_path / "none"), 1), f"--data_dir={tmp_path / 'none'} does not exist", "UCF101.rar")
    refused(lambda: video_index.ucf101(ucf_root, 4), "--video_split=4: ucf101 has the official splits 1, 2 and 3")
    refused(lambda: video_index.ucf101(ucf_root, 0), "--video_split=0")
    os.remove(os.path.join(lists, "trainlist02.txt"))
    refused(lambda: video_index.ucf101(ucf_root, 2), f"{lists}/trainlist02.txt is missing; extract UCF101TrainTestSplits-RecognitionTask.zip")
    video_index.ucf101(ucf_root, 1)  # The other splits still load.
    for video in ("v_Bowling_g02_c01", "v_Bowling_g03_c01"):
        os.rename(os.path.join(ucf_root, "frames", "Bowling", video), os.path.join(ucf_root, "frames", "Bowling", "." + video))
    refused(lambda: video_index.ucf101(ucf_root, 1),
            f"2 of the 6 videos listed in {lists}/trainlist01.txt have no frame folder (first: {ucf_root}/frames/Bowling/v_Bowling_g02_c01)",
            f"run python -m sskt_tf.prepare_video --dataset=ucf101 --videos=<folder of the class folders of .avi files> --output={ucf_root}/frames")
    for video in ("v_Bowling_g02_c01", "v_Bowling_g03_c01"):
        os.rename(os.path.join(ucf_root, "frames", "Bowling", "." + video), os.path.join(ucf_root, "frames", "Bowling", video))
    emptied = os.path.join(ucf_root, "frames", "Bowling", "v_Bowling_g01_c01")
    for name in os.listdir(emptied):
        os.remove(os.path.join(emptied, name))
    with open(os.path.join(emptied, "n_frames"), "w") as f:
        f.write("0")
    refused(lambda: video_index.ucf101(ucf_root, 1), f"1 video folder has 0 frames (first: {ucf_root}/frames/Bowling/v_Bowling_g01_c01)")
    with open(os.path.join(lists, "testlist01.txt"), "a", newline="") as f:
        f.write("Surfing/v_Surfing_g01_c01.avi\r\n")
    refused(lambda: video_index.ucf101(ucf_root, 1), f"{lists}/testlist01.txt line 4: class 'Surfing' is not in {lists}/classInd.txt")
    with open(os.path.join(lists, "trainlist03.txt"), "a", newline="") as f:
        f.write("YoYo/v_YoYo_g01_c01.avi 3\r\n")
    refused(lambda: video_index.ucf101(ucf_root, 3), f"{lists}/trainlist03.txt line 7: class index 3 for YoYo, but {lists}/classInd.txt gives it 1")
    with open(os.path.join(lists, "classInd.txt"), "a") as f:
        f.write("4\n")
    refused(lambda: video_index.ucf101(ucf_root, 3), f"{lists}/classInd.txt line 4: expected '<index> <class>', got '4'")
    os.rename(lists, lists + ".old")
    refused(lambda: video_index.ucf101(ucf_root, 1), f"--data_dir={ucf_root} has no ucfTrainTestlist/", "UCF101TrainTestSplits-RecognitionTask.zip")
    os.rename(lists + ".old", lists)
    os.rename(os.path.join(ucf_root, "frames"), os.path.join(ucf_root, "videos"))
    refused(lambda: video_index.ucf101(ucf_root, 1), f"--data_dir={ucf_root} has no frames/ folder", f"--output={ucf_root}/frames")


def test_hmdb51_errors_name_the_file_and_the_fix(tmp_path):
    root = make_hmdb51_root(tmp_path, ["wave", "clap"], videos_per_class=4)
    lists = os.path.join(root, "testTrainMulti_7030_splits")
    refused(lambda: video_index.hmdb51(None, 1), "--dataset=hmdb51 needs --data_dir=<root>",
            "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/", "hmdb51_org.rar")
    refused(lambda: video_index.hmdb51(root, 5), "--video_split=5: hmdb51 has the official splits 1, 2 and 3")
    os.remove(os.path.join(lists, "wave_test_split3.txt"))
    refused(lambda: video_index.hmdb51(root, 3), f"{lists}/wave_test_split3.txt is missing; extract test_train_splits.rar")
    with open(os.path.join(lists, "clap_test_split2.txt"), "a") as f:
        f.write("extra.avi 3 \n")
    refused(lambda: video_index.hmdb51(root, 2), f"{lists}/clap_test_split2.txt line 5: expected '<video>.avi <0|1|2>'", "got 'extra.avi 3'")
    with open(os.path.join(lists, "clap_test_split1.txt"), "a") as f:
        f.write("missing_video.avi 2 \n")
    refused(lambda: video_index.hmdb51(root, 1), f"1 of the 3 videos listed in {lists}/<class>_test_split1.txt have no frame folder (first: {root}/frames/clap/missing_video)",
            "--dataset=hmdb51")
    for name in os.listdir(lists):
        os.remove(os.path.join(lists, name))
    refused(lambda: video_index.hmdb51(root, 1), f"{lists} holds no <class>_test_split<1|2|3>.txt files")
    os.rmdir(lists)
    refused(lambda: video_index.hmdb51(root, 1), f"--data_dir={root} has no testTrainMulti_7030_splits/", "test_train_splits.rar")


def colour_video(path, count, value):
    return write_video(path, np.full((count, 24, 32, 3), value, np.uint8))


def test_video_folder_extracts_once_and_again_after_an_edit(tmp_path, capsys):
    folder = tmp_path / "mine"
    colour_video(folder / "train" / "dog" / "b.mp4", 3, 200)
    colour_video(folder / "train" / "cat" / "a.avi", 2, 40)
    write_frames(folder / "train" / "cat" / "already_frames", np.zeros((4, 24, 32, 3), np.uint8), n_frames_file=False)
    colour_video(folder / "test" / "cat" / "c.AVI", 5, 90)
    colour_video(folder / "test" / "dog" / "d.avi", 2, 90)
    colour_video(folder / "val" / "cat" / "e.avi", 2, 90)
    damaged = write_damaged_video(folder / "val" / "dog" / "f.avi")
    (folder / "train" / "dog" / "notes.txt").write_text("")
    (folder / "train" / "dog" / ".hidden.avi").write_text("")
    frames_dir = tmp_path / "cache" / "frames"
    train, test, val, classes = video_index.video_folder(str(folder), str(frames_dir), short_side=24, workers=2)
    assert classes == ("cat", "dog")
    names = lambda videos: [os.path.basename(d).rpartition("-")[0] or os.path.basename(d) for d in videos.frame_dirs]
    assert names(train) == ["a", "already_frames", "b"] and train.labels.tolist() == [0, 0, 1] and train.num_frames.tolist() == [2, 4, 3]
    assert names(test) == ["c", "d"] and test.labels.tolist() == [0, 1] and test.num_frames.tolist() == [5, 2]
    assert names(val) == ["e", "f"] and val.labels.tolist() == [0, 1] and val.num_frames.tolist() == [2, 11]
    assert train.frame_dirs[1] == str(folder / "train" / "cat" / "already_frames")  # Used where it is.
    assert os.path.dirname(train.frame_dirs[0]) == str(frames_dir / "train" / "cat")
    assert sorted(os.listdir(train.frame_dirs[0])) == ["image_00001.jpg", "image_00002.jpg", "n_frames"]
    printed = capsys.readouterr().out
    flag = f"--dataset=video_folder:{folder}"
    assert f"{flag}: 1 file is not used (.txt: 1; e.g. {folder / 'train' / 'dog' / 'notes.txt'}); read are video files" in printed
    assert f"{flag}: extracting the frames of 6 of 6 videos into {frames_dir} (once; short side 24 px)" in printed and "6/6" in printed
    assert f"{flag}: note: 1 video has damaged data, skipped as ffmpeg skips it (the frames that decode are written): {damaged}: 1 packet" in printed
    assert len({train.key, test.key, val.key}) == 3
    # Again: nothing to extract, the same lists and keys.
    stamp = os.stat(os.path.join(train.frame_dirs[0], "n_frames")).st_mtime_ns
    again = video_index.video_folder(str(folder), str(frames_dir), short_side=24, workers=2)
    assert "extracting" not in capsys.readouterr().out
    assert again[0].frame_dirs == train.frame_dirs and again[0].key == train.key and again[1].key == test.key
    assert os.stat(os.path.join(train.frame_dirs[0], "n_frames")).st_mtime_ns == stamp
    # An edited video (new size and time) is extracted again, into a folder of its own; its key changes.
    time.sleep(0.01)
    colour_video(folder / "train" / "cat" / "a.avi", 6, 40)
    edited = video_index.video_folder(str(folder), str(frames_dir), short_side=24, workers=2)[0]
    assert "extracting the frames of 1 of 6 videos" in capsys.readouterr().out
    assert edited.num_frames.tolist() == [6, 4, 3] and edited.frame_dirs[0] != train.frame_dirs[0]
    assert edited.key != train.key and edited.frame_dirs[1:] == train.frame_dirs[1:]
    # No val/: no validation split.
    for name in os.listdir(folder / "val"):
        for video in os.listdir(folder / "val" / name):
            os.remove(folder / "val" / name / video)
        os.rmdir(folder / "val" / name)
    os.rmdir(folder / "val")
    assert video_index.video_folder(str(folder), str(frames_dir), short_side=24)[2] is None


def test_video_folder_errors_are_one_line(tmp_path):
    folder = tmp_path / "mine"
    frames_dir = str(tmp_path / "frames")
    refused(lambda: video_index.video_folder("", frames_dir), "--dataset=video_folder: needs a directory after 'video_folder:', got an empty path")
    refused(lambda: video_index.video_folder(str(folder), frames_dir), f"--dataset=video_folder:{folder}: {folder} does not exist")
    colour_video(folder / "train" / "cat" / "a.avi", 2, 40)
    colour_video(folder / "train" / "dog" / "b.avi", 2, 40)
    refused(lambda: video_index.video_folder(str(folder), frames_dir), f"{folder / 'test'} is missing; lay the folder out as <path>/train/<class>/")
    colour_video(folder / "test" / "cat" / "c.avi", 2, 40)
    colour_video(folder / "test" / "bird" / "d.avi", 2, 40)
    refused(lambda: video_index.video_folder(str(folder), frames_dir),
            f"{folder / 'test'} must have the same class folders as {folder / 'train'}; only in train: ['dog'], only in test: ['bird']")
    os.rename(folder / "test" / "bird", folder / "test" / "dog")
    os.remove(folder / "train" / "dog" / "b.avi")
    (folder / "train" / "dog" / "b.txt").write_text("")
    refused(lambda: video_index.video_folder(str(folder), frames_dir), f"class folder {folder / 'train' / 'dog'} has no videos")
    (folder / "train" / "dog" / "b.avi").write_bytes(b"not a video")
    (folder / "train" / "dog" / "e.avi").write_bytes(b"")
    refused(lambda: video_index.video_folder(str(folder), frames_dir, short_side=24),
            f"--dataset=video_folder:{folder}: 2 of 5 video files could not be decoded: {folder / 'train' / 'dog' / 'b.avi'} (cannot be opened as a video",
            "the next run extracts only what is missing")
    colour_video(folder / "train" / "dog" / "b.avi", 2, 40)
    os.remove(folder / "train" / "dog" / "e.avi")
    (folder / "train" / "dog" / "empty_frames").mkdir()
    refused(lambda: video_index.video_folder(str(folder), frames_dir, short_side=24),
            f"1 frame folder has 0 frames (first: {folder / 'train' / 'dog' / 'empty_frames'})")
