"""The videos of a video dataset: the UCF101 and HMDB51 frame layouts with their official split lists,
and folders of users' videos (`video_folder:`).

Every video is a directory of frames `image_00001.jpg`, `image_00002.jpg`, ... (1-based, Hara et al.'s
3D-ResNets-PyTorch layout, which the SSKT authors' video code reads), written by
`python -m sskt_tf.prepare_video` (or Hara et al.'s ffmpeg scripts). Its frame count is the number in
its `n_frames` file, else the number of its `image_*.jpg` files. Listing 13k videos takes a directory
read or a small file read per video: no image is opened here.

Layouts (`--data_dir=<root>`):
    ucf101   <root>/frames/<class>/<video>/image_00001.jpg and <root>/ucfTrainTestlist/ (classInd.txt,
             trainlist01.txt..03, testlist01.txt..03, from UCF101TrainTestSplits-RecognitionTask.zip)
    hmdb51   <root>/frames/<class>/<video>/image_00001.jpg and <root>/testTrainMulti_7030_splits/
             <class>_test_split{1,2,3}.txt (from test_train_splits.rar)
    video_folder:<path>   <path>/train/<class>/<video file or frame folder>, <path>/test/..., optionally
             <path>/val/...; video files are extracted once into a frames directory.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re

import numpy as np

from sskt_tf import video_io
from sskt_tf.errors import UserError, writable_dir


@dataclasses.dataclass(frozen=True)
class VideoList:
    """The videos of one split, each a directory of frames `image_00001.jpg`, `image_00002.jpg`, ...

    Attributes:
        frame_dirs: the absolute directory of each video's frames (1-based `image_%05d.jpg`).
        num_frames: int32 `[N]`, frames per video, each >= 1.
        labels: int32 `[N]`, class indices.
        key: identifies the contents (paths, frame counts, split), for caches and resumption.
    """

    frame_dirs: tuple[str, ...]
    num_frames: np.ndarray
    labels: np.ndarray
    key: str = ""

    @property
    def size(self) -> int:
        """Number of videos."""
        return len(self.frame_dirs)


UCF101_PAGE = "https://www.crcv.ucf.edu/data/UCF101.php"
HMDB51_PAGE = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
UCF101_SPLITS = "ucfTrainTestlist"
HMDB51_SPLITS = "testTrainMulti_7030_splits"
FRAMES = "frames"
SPLITS = (1, 2, 3)
VIDEO_FOLDER_PREFIX = "video_folder:"

_FRAME_FILE = re.compile(r"image_(\d{5,})\.jpg")
_HMDB51_SPLIT_FILE = re.compile(r"(.+)_test_split([123])\.txt")
# HMDB51's split ids: 1 = training, 2 = testing, 0 = in neither.
_HMDB51_IDS = {"0": None, "1": "train", "2": "test"}
_HOW_TO_GET = {
    "ucf101": (
        f"download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from {UCF101_PAGE}, unrar x UCF101.rar, unzip the "
        "split lists into <root> (ucfTrainTestlist/), then python -m sskt_tf.prepare_video --dataset=ucf101 --videos=UCF-101 "
        "--output=<root>/frames"
    ),
    "hmdb51": (
        f"download hmdb51_org.rar and test_train_splits.rar from {HMDB51_PAGE}, extract hmdb51_org.rar and the per-class .rar "
        "files in it (unrar x), unrar x test_train_splits.rar in <root> (testTrainMulti_7030_splits/), then python -m "
        "sskt_tf.prepare_video --dataset=hmdb51 --videos=<folder of the class folders> --output=<root>/frames"
    ),
}
_VIDEO_FOLDER_LAYOUT = (
    "<path>/train/<class>/<video file or frame folder>, <path>/test/<class>/... (optionally <path>/val/<class>/...)"
)


# --- Frame counts ------------------------------------------------------------------------------------


def count_frames(frame_dir: str) -> int | None:
    """The frame count of a video directory: its `n_frames` file, else its number of `image_*.jpg` files.

    Args:
        frame_dir: a video's frame directory.

    Returns:
        The count (0 for a directory without frames), or None where `frame_dir` is not a directory.

    Raises:
        UserError: an `n_frames` file that does not hold a whole number or another count than the
            folder's `image_*.jpg` files, or `image_*.jpg` files whose numbers have gaps (the loader
            reads `image_00001.jpg` to `image_<count>.jpg`).
    """
    n_frames = os.path.join(frame_dir, video_io.N_FRAMES)
    try:
        with open(n_frames, encoding="utf-8", errors="replace") as f:
            text = f.read(64).strip()
    except (FileNotFoundError, NotADirectoryError):
        pass
    except IsADirectoryError:
        raise UserError(f"{n_frames} is a directory; it must be the text file of the video's frame count (remove it).") from None
    else:
        if not text.isdigit():
            raise UserError(
                f"{n_frames} holds {text[:20]!r}, not a frame count; delete the file (the frames are then counted) or "
                "extract the video again."
            )
        # The loader reads image_00001.jpg to image_<n>.jpg: a frame deleted or added since shows in the count
        # (one listing of the folder, no image opened).
        with os.scandir(frame_dir) as entries:
            files = sum(1 for e in entries if e.name.startswith("image_") and e.name.endswith(".jpg"))
        if files != int(text):
            raise UserError(
                f"{frame_dir} has {files} image_*.jpg frames but its n_frames file says {int(text)}: frames are missing or "
                "were added. Extract the video again (python -m sskt_tf.prepare_video; delete this folder first)."
            )
        return int(text)
    try:
        with os.scandir(frame_dir) as entries:
            numbers = [int(m.group(1)) for e in entries if (m := _FRAME_FILE.fullmatch(e.name))]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if numbers and max(numbers) != len(numbers):
        raise UserError(
            f"{frame_dir} has {len(numbers)} image_*.jpg frames but the last is image_{max(numbers):05d}.jpg: frames are "
            "missing. Extract the video again (python -m sskt_tf.prepare_video; delete this folder first)."
        )
    return len(numbers)


def _key(*parts) -> str:
    """A short sha256 of `parts` (JSON): other contents, another key."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _video_list(kind: str, split: str, frame_dirs, counts, labels) -> VideoList:
    frame_dirs = tuple(frame_dirs)
    counts = [int(c) for c in counts]
    return VideoList(
        frame_dirs=frame_dirs,
        num_frames=np.asarray(counts, np.int32).reshape(-1),
        labels=np.asarray(labels, np.int32).reshape(-1),
        key=_key(kind, split, frame_dirs, counts),
    )


def _frame_counts(frame_dirs, listed_in: str, fix: str) -> list[int]:
    """The frame counts of `frame_dirs` (videos listed in the file `listed_in`).

    Raises:
        UserError: videos without frame directories (their count, the first, and `fix`), or with 0 frames.
    """
    counts = [count_frames(d) for d in frame_dirs]
    missing = [d for d, c in zip(frame_dirs, counts) if c is None]
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(frame_dirs)} videos listed in {listed_in} have no frame folder (first: {missing[0]}); "
            f"{fix}."
        )
    empty = [d for d, c in zip(frame_dirs, counts) if c == 0]
    if empty:
        raise UserError(
            f"{len(empty)} video folder{'s have' if len(empty) > 1 else ' has'} 0 frames (first: {empty[0]}); delete "
            f"{'them' if len(empty) > 1 else 'it'} and {fix}."
        )
    return counts


# --- UCF101 and HMDB51 --------------------------------------------------------------------------------


def _check_root(root, dataset: str, split: int, split_dir_name: str) -> tuple[str, str, str]:
    """`(root, frames dir, split-list dir)`, absolute; UserError naming the flag where one is wrong."""
    how = _HOW_TO_GET[dataset]
    if isinstance(split, bool) or split not in SPLITS:
        raise UserError(f"--video_split={split}: {dataset} has the official splits 1, 2 and 3; pass one of them.")
    if not root:
        raise UserError(f"--dataset={dataset} needs --data_dir=<root> holding frames/ and {split_dir_name}/; to make it, {how}.")
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        what = "is a file, not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"--data_dir={root} {what}; --dataset={dataset} reads frames/ and {split_dir_name}/ there. To make it, {how}.")
    split_dir = os.path.join(root, split_dir_name)
    if not os.path.isdir(split_dir):
        page = UCF101_PAGE if dataset == "ucf101" else HMDB51_PAGE
        archive = "UCF101TrainTestSplits-RecognitionTask.zip" if dataset == "ucf101" else "test_train_splits.rar"
        raise UserError(
            f"--data_dir={root} has no {split_dir_name}/ (the official split lists of {dataset}); download {archive} from "
            f"{page} and extract it in {root}."
        )
    frames = os.path.join(root, FRAMES)
    if not os.path.isdir(frames):
        raise UserError(
            f"--data_dir={root} has no frames/ folder; write it with python -m sskt_tf.prepare_video --dataset={dataset} "
            f"--videos=<folder of the class folders of .avi files> --output={frames}."
        )
    return root, frames, split_dir


def _lines(path: str, source: str):
    """`(line number, whitespace-split fields)` of the non-blank lines of a split list (CRLF or LF)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path} is missing; extract {source} again (it holds every split list).") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({(e.strerror or str(e)).lower()}); check its permissions.") from None
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _prepare_fix(dataset: str, frames: str) -> str:
    return (
        f"run python -m sskt_tf.prepare_video --dataset={dataset} --videos=<folder of the class folders of .avi files> "
        f"--output={frames} (it extracts only what is missing)"
    )


def ucf101(root: str | None, split: int) -> tuple[VideoList, VideoList, tuple[str, ...]]:
    """UCF101 (Soomro et al., 2012) from Hara et al.'s frame layout and the official split lists.

    `<root>/ucfTrainTestlist/classInd.txt` lists the classes (`1 ApplyEyeMakeup`, 1-based);
    `trainlist0<split>.txt` the training videos (`ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`),
    `testlist0<split>.txt` the test videos (`ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`). A video's
    frames are in `<root>/frames/<class>/<video name without .avi>/`.

    Args:
        root: the dataset's root (`--data_dir`).
        split: 1, 2 or 3 (`--video_split`).

    Returns:
        `(train, test, class_names)`: VideoLists in the lists' order, labels 0-based in classInd.txt's
        order (its index - 1), and the class names in that order.

    Raises:
        UserError: a missing or unset root (with how to get the data), a missing split folder or file,
            a split outside 1..3, a malformed line, a class not in classInd.txt, listed videos without
            frames, or videos with 0 frames; one line each, naming the file.
    """
    root, frames, split_dir = _check_root(root, "ucf101", split, UCF101_SPLITS)
    source = f"UCF101TrainTestSplits-RecognitionTask.zip (from {UCF101_PAGE})"
    class_file = os.path.join(split_dir, "classInd.txt")
    indices = {}
    for number, fields in _lines(class_file, source):
        if len(fields) != 2 or not fields[0].isdigit():
            raise UserError(f"{class_file} line {number}: expected '<index> <class>', got {' '.join(fields)!r}; extract {source} again.")
        if int(fields[0]) in indices.values() or fields[1] in indices:
            raise UserError(f"{class_file} line {number}: {' '.join(fields)!r} repeats a class index or name; extract {source} again.")
        indices[fields[1]] = int(fields[0])
    if not indices:
        raise UserError(f"{class_file} lists no classes; extract {source} again.")
    class_names = tuple(sorted(indices, key=indices.get))
    labels_of = {name: label for label, name in enumerate(class_names)}

    def read(name: str, labelled: bool) -> VideoList:
        path = os.path.join(split_dir, name)
        frame_dirs, labels = [], []
        for number, fields in _lines(path, source):
            form = "'<class>/<video>.avi <class index>'" if labelled else "'<class>/<video>.avi'"
            if len(fields) not in ((1, 2) if labelled else (1,)) or "/" not in fields[0]:
                raise UserError(f"{path} line {number}: expected {form}, got {' '.join(fields)!r}; extract {source} again.")
            class_name, _, video = fields[0].partition("/")
            if class_name not in labels_of:
                raise UserError(
                    f"{path} line {number}: class {class_name!r} is not in {class_file}; the split lists must come from the same "
                    f"download, extract {source} again."
                )
            if len(fields) == 2 and fields[1] != str(indices[class_name]):
                raise UserError(
                    f"{path} line {number}: class index {fields[1]} for {class_name}, but {class_file} gives it "
                    f"{indices[class_name]}; extract {source} again."
                )
            frame_dirs.append(os.path.join(frames, class_name, os.path.splitext(video)[0]))
            labels.append(labels_of[class_name])
        counts = _frame_counts(frame_dirs, path, _prepare_fix("ucf101", frames))
        return _video_list("ucf101", name, frame_dirs, counts, labels)

    train = read(f"trainlist{split:02d}.txt", labelled=True)
    test = read(f"testlist{split:02d}.txt", labelled=False)
    return train, test, class_names


def hmdb51(root: str | None, split: int) -> tuple[VideoList, VideoList, tuple[str, ...]]:
    """HMDB51 (Kuehne et al., 2011) from Hara et al.'s frame layout and the official split lists.

    `<root>/testTrainMulti_7030_splits/<class>_test_split<split>.txt` lists each class's videos as
    `<video>.avi <id>`: 1 training, 2 test, 0 in neither. A video's frames are in
    `<root>/frames/<class>/<video name without .avi>/`.

    Args:
        root: the dataset's root (`--data_dir`).
        split: 1, 2 or 3 (`--video_split`).

    Returns:
        `(train, test, class_names)`: VideoLists in class order, then the lists' order; the classes
        are the sorted class names of the split files (as Hara et al.'s `hmdb51_json.py`).

    Raises:
        UserError: a missing or unset root (with how to get the data), a missing split folder or file,
            a split outside 1..3, a malformed line or id, listed videos without frames, or videos with
            0 frames; one line each, naming the file.
    """
    root, frames, split_dir = _check_root(root, "hmdb51", split, HMDB51_SPLITS)
    source = f"test_train_splits.rar (from {HMDB51_PAGE})"
    with os.scandir(split_dir) as entries:
        found = [m.groups() for e in entries if (m := _HMDB51_SPLIT_FILE.fullmatch(e.name))]
    class_names = tuple(sorted({name for name, _ in found}))
    if not class_names:
        raise UserError(f"{split_dir} holds no <class>_test_split<1|2|3>.txt files; extract {source} again.")
    lists = {"train": ([], []), "test": ([], [])}
    for label, class_name in enumerate(class_names):
        path = os.path.join(split_dir, f"{class_name}_test_split{split}.txt")
        for number, fields in _lines(path, source):
            if len(fields) != 2 or fields[1] not in _HMDB51_IDS:
                raise UserError(
                    f"{path} line {number}: expected '<video>.avi <0|1|2>' (0 unused, 1 training, 2 test), got "
                    f"{' '.join(fields)!r}; extract {source} again."
                )
            which = _HMDB51_IDS[fields[1]]
            if which is not None:
                lists[which][0].append(os.path.join(frames, class_name, os.path.splitext(fields[0])[0]))
                lists[which][1].append(label)
    listed_in = os.path.join(split_dir, f"<class>_test_split{split}.txt")
    fix = _prepare_fix("hmdb51", frames)
    train, test = (
        _video_list("hmdb51", f"{which}{split}", dirs, _frame_counts(dirs, listed_in, fix), labels)
        for which, (dirs, labels) in lists.items()
    )
    return train, test, class_names


# --- Video folders ------------------------------------------------------------------------------------


def _folder_classes(root: str, split: str, flag: str) -> list[str]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise UserError(f"{flag}: {split_dir} is missing; lay the folder out as {_VIDEO_FOLDER_LAYOUT}.")
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{flag}: {split_dir} has no class folders; put each class's videos in {split_dir}/<class>/ ({_VIDEO_FOLDER_LAYOUT}).")
    return classes


def _extracted_dir(frames_dir: str, split: str, class_name: str, video: str, short_side, quality) -> str:
    """Where a video's frames go: named after the video, keyed by its path, size and modification time
    (an edited video gets another folder) and the extraction's settings."""
    stat = os.stat(video)
    key = _key(os.path.abspath(video), stat.st_size, stat.st_mtime_ns, short_side, quality)[:12]
    stem = os.path.splitext(os.path.basename(video))[0]
    return os.path.join(frames_dir, split, class_name, f"{stem}-{key}")


def video_folder(
    path: str,
    frames_dir: str,
    short_side: int | None = video_io.DEFAULT_SHORT_SIDE,
    quality: int = video_io.DEFAULT_JPEG_QUALITY,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[VideoList, VideoList, VideoList | None, tuple[str, ...]]:
    """A folder of users' videos: `<path>/train/<class>/*`, `<path>/test/<class>/*`, optionally `<path>/val/<class>/*`.

    In a class folder, each video file (`video_io.VIDEO_EXTENSIONS`, any case) is a video, and so is
    each folder of frames (`image_00001.jpg`, ..., as `prepare_video` writes them), used as it is.
    Video files are extracted once into `frames_dir/<split>/<class>/<video name>-<key>/` (short side
    `short_side`, in parallel processes, with a progress bar), the key made of the video's path, size
    and modification time and the settings: an edited video is extracted again, and an extraction
    that was stopped resumes with the videos not yet finished. Folders of older versions stay in
    `frames_dir` until it is deleted. Hidden files and folders are skipped; other files are counted
    in one printed line. Labels follow the sorted class folder names of train/.

    Args:
        path: the folder (`--dataset=video_folder:<path>`); `~` is expanded.
        frames_dir: where the videos' frames are extracted (created when needed).
        short_side, quality: as `video_io.extract_frames`.
        workers: extraction processes; None: the CPUs this process may use.
        progress: show the progress bar of the extraction.

    Returns:
        `(train, test, validation or None, class_names)`, VideoLists in class, then file name order.

    Raises:
        UserError: an empty path, a missing directory or split, class folders that differ between
            splits, a class without videos, a frame folder with 0 frames, or videos that cannot be
            decoded (their count and the first few), each naming the path.
    """
    flag = f"--dataset={VIDEO_FOLDER_PREFIX}{path}"
    if not path:
        raise UserError(
            f"--dataset={VIDEO_FOLDER_PREFIX} needs a directory after '{VIDEO_FOLDER_PREFIX}', got an empty path; pass "
            f"--dataset={VIDEO_FOLDER_PREFIX}/path/to/videos laid out as {_VIDEO_FOLDER_LAYOUT}."
        )
    video_io.check_settings(short_side, quality)
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(root):
        what = "is a file, not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"{flag}: {root} {what}; pass a directory laid out as {_VIDEO_FOLDER_LAYOUT}.")
    splits = ["train", "test"] + (["val"] if os.path.isdir(os.path.join(root, "val")) else [])
    classes = {split: _folder_classes(root, split, flag) for split in splits}
    for split in splits[1:]:
        if classes[split] != classes["train"]:
            only_train = sorted(set(classes["train"]) - set(classes[split]))
            only_other = sorted(set(classes[split]) - set(classes["train"]))
            raise UserError(
                f"{flag}: {os.path.join(root, split)} must have the same class folders as {os.path.join(root, 'train')}; "
                f"only in train: {only_train or 'none'}, only in {split}: {only_other or 'none'}. Add or remove class "
                "folders so that both match."
            )
    class_names = tuple(classes["train"])
    frames_dir = os.path.abspath(os.path.expanduser(str(frames_dir)))

    # Each split's videos as [(frame dir, label, video file or None)], and the files not read.
    listed, unused = {split: [] for split in splits}, []
    for split in splits:
        split_dir = os.path.join(root, split)
        with os.scandir(split_dir) as entries:
            unused += [e.path for e in entries if not e.is_dir() and not e.name.startswith(".")]
        for label, class_name in enumerate(class_names):
            class_dir = os.path.join(split_dir, class_name)
            with os.scandir(class_dir) as entries:
                for e in sorted(entries, key=lambda e: e.name):
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        listed[split].append((e.path, label, None))
                    elif e.is_file() and video_io.is_video_file(e.name):
                        out = _extracted_dir(frames_dir, split, class_name, e.path, short_side, quality)
                        listed[split].append((out, label, e.path))
                    else:
                        unused.append(e.path)
            if not any(y == label for _, y, _ in listed[split]):
                raise UserError(
                    f"{flag}: class folder {class_dir} has no videos ({', '.join(video_io.VIDEO_EXTENSIONS)} files or frame "
                    f"folders); add some or remove the class from {', '.join(s + '/' for s in splits)}."
                )
    if unused:
        by_ext = collections.Counter(os.path.splitext(p)[1].lower() or "no extension" for p in unused)
        exts = ", ".join(f"{ext}: {n}" for ext, n in by_ext.most_common())
        print(
            f"{flag}: {len(unused)} file{'s are' if len(unused) > 1 else ' is'} not used ({exts}; e.g. {unused[0]}); read are "
            f"video files ({', '.join(video_io.VIDEO_EXTENSIONS)}) and frame folders directly in <split>/<class>/.",
            flush=True,
        )

    videos = [(video, out) for split in splits for out, _, video in listed[split] if video is not None]
    todo = [(video, out) for video, out in videos if not video_io.is_finished(out)]
    if todo:
        writable_dir(frames_dir, None, what="directory of the videos' frames")
        print(
            f"{flag}: extracting the frames of {len(todo)} of {len(videos)} videos into {frames_dir} (once; short side "
            f"{short_side} px)",
            flush=True,
        )
        extracted = video_io.extract_many(todo, short_side=short_side, quality=quality, workers=workers, progress=progress)
        note = extracted.damage_note(prefix=f"{flag}: ")
        if note:
            print(note, flush=True)
        if extracted.failures:
            raise UserError(
                f"{flag}: {len(extracted.failures)} of {len(videos)} video files could not be decoded: "
                f"{extracted.failures_shown()}. Replace or "
                "re-encode them (or remove them); the next run extracts only what is missing."
            )

    def make(split: str) -> VideoList:
        frame_dirs = [out for out, _, _ in listed[split]]
        counts = [count_frames(d) for d in frame_dirs]
        empty = [d for d, c in zip(frame_dirs, counts) if not c]
        if empty:
            raise UserError(
                f"{flag}: {len(empty)} frame folder{'s have' if len(empty) > 1 else ' has'} 0 frames (first: {empty[0]}); "
                "a frame folder holds image_00001.jpg, image_00002.jpg, ... (python -m sskt_tf.prepare_video writes them): "
                "fill or remove it."
            )
        return _video_list(VIDEO_FOLDER_PREFIX, split, frame_dirs, counts, [y for _, y, _ in listed[split]])

    lists = {split: make(split) for split in splits}
    return lists["train"], lists["test"], lists.get("val"), class_names
