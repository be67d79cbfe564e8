"""Turns video files into the frame folders that --dataset=ucf101 and --dataset=hmdb51 read.

    python -m sskt_tf.prepare_video --dataset=ucf101 --videos=UCF-101 --output=data/ucf101/frames
    python -m sskt_tf.prepare_video --dataset=hmdb51 --videos=hmdb51_org --output=data/hmdb51/frames

(`sskt-prepare-video` is the same command.) Each video `<videos>/<class>/<name>.avi` becomes the
folder `<output>/<class>/<name>/` of `image_00001.jpg`, `image_00002.jpg`, ... and an `n_frames`
file, the layout of Hara et al.'s 3D-ResNets-PyTorch: the short side scaled down to --short_side (240,
as their `ffmpeg -vf scale=-1:240`; UCF101's and HMDB51's 320x240 videos keep their size, and so does
any smaller video, which their script would enlarge), decoded
with FFmpeg through PyAV (no ffmpeg program needed). `--dataset=folder` takes video files at any
depth below --videos and writes each to the same relative folder under --output.

The videos are decoded in parallel processes (--workers) with a progress bar. The command can be
stopped and run again: a video whose folder has its `n_frames` file (written last) is skipped, and
the first line counts them; a video stopped half-way is done again. A video that cannot be decoded
does not stop the others: the command ends with one `error:` line naming the failed files and exit
status 2, and running it again retries only those.

The datasets come as RAR archives; extract them first (`unrar x`, from the unrar package):
  UCF101: UCF101.rar and the split lists UCF101TrainTestSplits-RecognitionTask.zip from
    https://www.crcv.ucf.edu/data/UCF101.php. `unrar x UCF101.rar` gives UCF-101/<class>/*.avi
    (--videos=UCF-101); unzip the split lists into the dataset's root (ucfTrainTestlist/, beside
    frames/).
  HMDB51: hmdb51_org.rar and the split lists test_train_splits.rar from
    https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/. hmdb51_org.rar
    holds one .rar per class: `mkdir hmdb51_org && cd hmdb51_org && unrar x ../hmdb51_org.rar &&
    for f in *.rar; do unrar x "$f"; done` gives <class>/*.avi; `unrar x test_train_splits.rar` in the
    dataset's root gives testTrainMulti_7030_splits/, beside frames/.
Then train with --dataset=ucf101 (or hmdb51) --data_dir=<root>, the folder that holds frames/.
"""

import os
import sys

from absl import flags

from sskt_tf import video_io
from sskt_tf.cli import flag_definitions, reject_arguments, run_cli
from sskt_tf.errors import UserError, writable_dir

DATASETS = ("folder", "ucf101", "hmdb51")
# What each dataset's class folders number, and where its split lists go (beside frames/).
_CLASSES = {"ucf101": 101, "hmdb51": 51}
_SPLIT_LISTS = {"ucf101": "ucfTrainTestlist", "hmdb51": "testTrainMulti_7030_splits"}


@flag_definitions
def define_flags(flag_values):
    """Defines the flags of `python -m sskt_tf.prepare_video` on `flag_values` (see `sskt_tf.cli`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("videos", None, "Directory of the video files: <class>/<video>.avi (UCF-101/ of UCF101.rar, the extracted per-class archives of HMDB51).", required=True, **fv)
    flags.DEFINE_string("output", None, "Directory of the frame folders, <output>/<class>/<video>/image_00001.jpg; for --dataset=ucf101 or hmdb51, <data_dir>/frames.", required=True, **fv)
    flags.DEFINE_enum("dataset", "folder", DATASETS, "ucf101, hmdb51: videos directly in <videos>/<class>/ (the class folders are counted against the dataset's); folder: video files at any depth below --videos.", **fv)
    flags.DEFINE_integer("short_side", video_io.DEFAULT_SHORT_SIDE, "The frames' short side in pixels, at most (the aspect ratio is kept; smaller videos keep their size; Hara et al.: 240).", **fv)
    flags.DEFINE_integer("jpeg_quality", video_io.DEFAULT_JPEG_QUALITY, "JPEG quality of the frames, 1 to 95.", **fv)
    flags.DEFINE_integer("workers", None, "Videos decoded at once, one process each (default: the CPUs this process may use).", **fv)


def _walk_videos(root):
    """Every video file below `root` (not hidden, nor in hidden folders), sorted, and the .rar files seen."""
    videos, archives = [], []
    for where, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if video_io.is_video_file(name):
                videos.append(os.path.join(where, name))
            elif name.lower().endswith(".rar"):
                archives.append(os.path.join(where, name))
    return videos, archives


def _no_videos(root, dataset, archives, deeper):
    where = "directly in its class folders (<videos>/<class>/<video>)" if dataset != "folder" else "below it"
    hint = ""
    if archives:
        hint = (
            f" It holds {len(archives)} .rar archive{'s' if len(archives) > 1 else ''} ({archives[0]}, ...): extract "
            "them first (unrar x <file>.rar; HMDB51's hmdb51_org.rar holds one .rar per class, extract those too)."
        )
    elif deeper:
        hint = f" There are video files deeper down ({deeper[0]}): pass --videos=<the folder that holds the class folders>."
    return UserError(
        f"--videos={root} has no video files {where} (read are {', '.join(video_io.VIDEO_EXTENSIONS)}, any case).{hint}"
    )


def find_videos(root, dataset):
    """The videos to extract: `[(video path, path relative to the output without the extension)]`.

    Args:
        root: the --videos directory.
        dataset: `folder` (every video file below `root`), or `ucf101` / `hmdb51` (the video files
            directly in `root/<class>/`; others are counted in a printed note).

    Raises:
        UserError: no video files (naming the extensions read, and the .rar archives to extract
            first where there are some), or two videos that would share a frame folder.
    """
    videos, archives = _walk_videos(root)
    if dataset == "folder":
        chosen = videos
    else:
        chosen = [v for v in videos if os.path.dirname(os.path.dirname(v)) == root]
    if not chosen:
        raise _no_videos(root, dataset, archives, videos)
    if len(chosen) < len(videos):
        others = [v for v in videos if os.path.dirname(os.path.dirname(v)) != root]
        print(
            f"note: {len(others)} video files not directly in a class folder of --videos={root} are not used "
            f"(e.g. {others[0]}); --dataset={dataset} reads <videos>/<class>/<video>.",
            flush=True,
        )
    targets, seen = [], {}
    for video in chosen:
        relative = os.path.splitext(os.path.relpath(video, root))[0]
        if relative in seen:
            raise UserError(
                f"--videos={root}: {seen[relative]} and {video} would both be written to {relative}/ (a video's frame "
                "folder is its name without the extension); rename or remove one of them."
            )
        seen[relative] = video
        targets.append((video, relative))
    return targets


def _check_paths(videos, output):
    videos = os.path.abspath(os.path.expanduser(videos))
    output = os.path.abspath(os.path.expanduser(output))
    if not os.path.isdir(videos):
        what = "is a file, not a directory" if os.path.exists(videos) else "does not exist"
        raise UserError(f"--videos={videos} {what}; pass the directory that holds the videos as <class>/<video>.avi.")
    real_videos, real_output = os.path.realpath(videos), os.path.realpath(output)
    if os.path.commonpath([real_videos, real_output]) == real_videos:
        raise UserError(
            f"--output={output} is inside --videos={videos}; pass an output directory outside the videos' "
            "directory (e.g. <dataset root>/frames beside it)."
        )
    return videos, output


def _class_note(dataset, targets, videos):
    classes = {os.path.dirname(relative) for _, relative in targets}
    expected = _CLASSES.get(dataset)
    if expected and len(classes) != expected:
        print(
            f"note: --videos={videos} has {len(classes)} class folders with videos; {dataset} has {expected}. If the "
            "extraction of the archive is incomplete, finish it and run this command again (it resumes).",
            flush=True,
        )
    return classes


def _next_step(dataset, output):
    """What to run next, for ucf101 and hmdb51."""
    if dataset not in _SPLIT_LISTS:
        return
    root = os.path.dirname(output)
    if os.path.basename(output) != "frames":
        print(
            f"note: --dataset={dataset} reads the frames from <data_dir>/frames/; move {output} to "
            f"<data_dir>/frames, or use --output=<data_dir>/frames next time.",
            flush=True,
        )
        return
    lists = os.path.join(root, _SPLIT_LISTS[dataset])
    missing = "" if os.path.isdir(lists) else f" once the official split lists are in {lists}/ (see --help)"
    print(f"next: python -m sskt_tf.train --dataset={dataset} --data_dir={root}{missing}", flush=True)


def prepare(videos, output, dataset="folder", short_side=video_io.DEFAULT_SHORT_SIDE, quality=video_io.DEFAULT_JPEG_QUALITY, workers=None, progress=True):
    """Extracts the frames of every video below `videos` into `output`, skipping finished ones.

    Args:
        videos: the directory of the video files (`<class>/<video>.avi`).
        output: the directory of the frame folders (created).
        dataset: `folder`, `ucf101` or `hmdb51` (see `find_videos`).
        short_side, quality, workers: as `sskt_tf.video_io.extract_many`.
        progress: show the progress bar.

    Returns:
        The `video_io.Extracted` of the videos extracted now.

    Raises:
        UserError: bad paths or values (one line naming the flag), or videos that failed to decode
            (after the others were extracted: their count, the first few with the reason, and the fix).
    """
    if dataset not in DATASETS:
        raise UserError(f"--dataset={dataset} is not one of {', '.join(DATASETS)}.")
    video_io.check_settings(short_side, quality)
    workers = video_io.default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers={workers} must be at least 1 (default: the CPUs this process may use, {video_io.default_workers()}).")
    videos, output = _check_paths(videos, output)
    targets = find_videos(videos, dataset)
    classes = _class_note(dataset, targets, videos)
    writable_dir(output, "--output")
    jobs = [(video, os.path.join(output, relative)) for video, relative in targets]
    todo = [(video, out_dir) for video, out_dir in jobs if not video_io.is_finished(out_dir)]
    done = len(jobs) - len(todo)
    in_classes = f" in {len(classes)} class folders" if dataset != "folder" else ""
    processes = min(workers, max(1, len(todo)))
    print(
        f"{len(jobs)} videos{in_classes} under {videos}: {done} already extracted (skipped), {len(todo)} to extract into "
        f"{output}" + (f" with {processes} process{'es' if processes > 1 else ''} (short side {short_side} px, JPEG quality {quality})." if todo else "."),
        flush=True,
    )
    extracted = video_io.extract_many(todo, short_side=short_side, quality=quality, workers=workers, progress=progress)
    if todo:
        frames = sum(extracted.frames.values())
        print(
            f"extracted {len(extracted.frames)} videos ({frames} frames) in {extracted.seconds:.1f} s, "
            f"{extracted.frames_per_second:.0f} frames/s.",
            flush=True,
        )
    note = extracted.damage_note()
    if note:
        print(note, flush=True)
    if extracted.failures:
        raise UserError(
            f"{len(extracted.failures)} of {len(jobs)} videos could not be extracted: {extracted.failures_shown()}. "
            f"The others are in {output}; "
            "download or re-encode these files (or remove them) and run the same command again: it extracts only "
            "what is missing."
        )
    _next_step(dataset, output)
    return extracted


def main(argv):
    """The absl main of `python -m sskt_tf.prepare_video`: `prepare` with the flags."""
    reject_arguments(argv)
    fl = flags.FLAGS
    try:
        prepare(fl.videos, fl.output, fl.dataset, fl.short_side, fl.jpeg_quality, fl.workers)
    except KeyboardInterrupt:
        print(
            "\ninterrupted; the finished videos are kept, and the same command extracts the rest.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)


def run():
    """The `python -m sskt_tf.prepare_video` (and `sskt-prepare-video`) command."""
    run_cli(main, define_flags)


if __name__ == "__main__":
    run()
