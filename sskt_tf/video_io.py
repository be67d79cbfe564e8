"""Reading videos with PyAV (FFmpeg's decoders) and writing their frames as JPEG files.

The frame layout is the one of Hara et al.'s 3D-ResNets-PyTorch (CVPR 2018), which the SSKT authors'
video code reads: a directory per video holding `image_00001.jpg`, `image_00002.jpg`, ... (1-based;
`image_00001.jpg` is frame 0) and an `n_frames` text file with the count. Hara et al. extract them with
`ffmpeg -i <video> -vf scale=-1:240 <dir>/image_%05d.jpg` (portrait videos: `scale=240:-1`): the short
side scaled to 240 px, the aspect ratio kept, bicubic (ffmpeg's default). `extract_frames` gives the
same sizes with the same scaler (FFmpeg's swscale, through PyAV), and writes `n_frames` last, in a
temporary directory renamed into place: a directory with `n_frames` is finished, anything else is redone.

`read_video` decodes a whole video into one array; `extract_many` extracts many videos in parallel
processes with a progress bar (`sskt_tf.prepare_video` and `video_folder:` datasets use it).

As ffmpeg's command line does: videos carrying a rotation in their display matrix (phones held
upright) come out upright (its `-autorotate`, on by default; flips in the matrix, rare, are not
applied), and damaged data is skipped (packets that fail to decode; what follows a read error), the
frames that decode kept: a `DecodeReport` counts what was skipped, and the commands name such videos.
A video without a single frame that decodes is an error (`VideoError`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import sys
import time
from typing import Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from sskt_tf.errors import UserError

# What `video_folder:` and `prepare_video` read as videos (lower-case; FFmpeg reads them all).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
# The frame count of a finished video directory, written last (Hara et al.'s file name).
N_FRAMES = "n_frames"
# Hara et al.'s short side: UCF101's and HMDB51's 320x240 videos keep their size.
DEFAULT_SHORT_SIDE = 240
# Pillow's JPEG quality (1-95). ffmpeg's default JPEG encoding (what Hara et al.'s frames have) is
# coarser; 90 keeps the frames close to the decoded video (lower it to save disk).
DEFAULT_JPEG_QUALITY = 90
# The name of the temporary directory of an extraction in progress: .<name>.partial-<pid>.
_PARTIAL = ".partial-"
_REPLACED = ".replaced-"
# Videos named in a line that counts many.
_SHOWN = 3
# The progress bar's shortest redraw interval in seconds (it is redrawn in place; a log file keeps each).
_PROGRESS_INTERVAL_S = 1.0


class VideoError(UserError):
    """A video file that cannot be opened or decoded, or holds no frames.

    Attributes:
        path: the video file.
        reason: why, in a few words (the message is `<path>: <reason>; <fix>`).
    """

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(
            f"{path}: {reason}; the file must be a video FFmpeg can decode ({', '.join(VIDEO_EXTENSIONS)}): "
            "download or copy it again, re-encode it (e.g. ffmpeg -i <file> <new file>.mp4), or remove it."
        )

    def __reduce__(self):  # Pickled back from a worker process with both attributes.
        return type(self), (self.path, self.reason)


def frame_name(index: int) -> str:
    """The file name of frame `index` (0-based): `image_00001.jpg` for 0 (Hara et al.'s 1-based names)."""
    return f"image_{index + 1:05d}.jpg"


def is_video_file(name: str) -> bool:
    """Whether a file name has a video extension (`VIDEO_EXTENSIONS`, any case) and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def is_finished(frame_dir: str) -> bool:
    """Whether `frame_dir` holds a finished extraction: its `n_frames` file exists (it is written last)."""
    return os.path.isfile(os.path.join(frame_dir, N_FRAMES))


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """`(width, height)` with the short side scaled down to `short_side` px and the aspect ratio kept.

    The long side is rounded to the nearest pixel (halves up), as ffmpeg's `scale=-1:<short_side>`
    computes it. A video whose short side is `short_side` or less keeps its size (Hara et al.'s
    ffmpeg script would enlarge it: more pixels on disk, no more detail); `short_side=None` keeps it too.
    """
    if short_side is None or min(width, height) <= short_side:
        return width, height
    if width >= height:
        return max(1, (2 * width * short_side + height) // (2 * height)), short_side
    return short_side, max(1, (2 * height * short_side + width) // (2 * width))


def _reason(error: BaseException) -> str:
    """FFmpeg's or the OS's words for `error`, without the file name PyAV repeats."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(text.split()).rstrip(".").lower()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_short_side(short_side: int | None) -> None:
    if short_side is not None and (not _is_int(short_side) or short_side < 1):
        raise UserError(f"--short_side={short_side} must be a positive number of pixels (Hara et al.'s frames: 240).")


def check_settings(short_side: int | None, quality: int) -> None:
    """Raises a UserError naming --short_side or --jpeg_quality when one is out of range (see `extract_frames`)."""
    _check_short_side(short_side)
    if not _is_int(quality) or not 1 <= quality <= 95:
        raise UserError(f"--jpeg_quality={quality} must be an integer from 1 to 95 (Pillow's JPEG quality; 90 by default).")


@dataclasses.dataclass
class DecodeReport:
    """What a decoding skipped: ffmpeg's way with damaged data, which it reports and passes over.

    Attributes:
        packets: packets of the video stream that failed to decode (their frames are missing).
        reason: FFmpeg's words for the first failure ("" when none failed).
        truncated: whether reading the file stopped at an error before its end (what follows is lost).
    """

    packets: int = 0
    reason: str = ""
    truncated: bool = False

    def __bool__(self) -> bool:
        return bool(self.packets or self.truncated)

    def describe(self) -> str:
        """A few words: `3 packets failed to decode (invalid data found when processing input)`."""
        parts = []
        if self.packets:
            parts.append(f"{self.packets} packet{'s' if self.packets > 1 else ''} failed to decode")
        if self.truncated:
            parts.append("reading stopped at an error before the end")
        return f"{' and '.join(parts)} ({self.reason})"

    def note(self, reason: str) -> None:
        self.reason = self.reason or reason


def _decoded_frames(path: str, short_side: int | None, threads: int, report: DecodeReport) -> Iterator[tuple[av.VideoFrame, float]]:
    """The frames of the first video stream of `path`: `(PyAV frame in RGB (rgb24), its rotation)` each.

    Every frame gets the size of the first one scaled by `scaled_size` (bicubic, swscale's). The
    rotation (PyAV's `VideoFrame.rotation`) is not applied here (see `_upright_turns`). As ffmpeg's
    command line does, a packet that fails to decode is skipped and a read error ends the video;
    both are counted in `report`.

    Raises:
        VideoError: the file cannot be opened, has no video stream, or has no frames that decode.
    """
    path = str(path)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(path, f"cannot be opened as a video ({_reason(e)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise VideoError(path, f"has no video stream (it holds: {', '.join(kinds)})")
        stream = container.streams.video[0]
        # FFmpeg's frame and slice threads, unless the caller runs one process per core.
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        # One reformatter for the video: it keeps its swscale context (VideoFrame.reformat makes one per frame).
        reformatter, size, count = VideoReformatter(), None, 0
        packets = container.demux(stream)  # Ends with an empty packet, which flushes the decoder.
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                report.truncated = True
                report.note(_reason(e))
                packets = iter([None])  # Flush what the decoder holds (decode(None)), then stop.
                continue
            try:
                frames = stream.codec_context.decode(packet)
            except av.FFmpegError as e:
                report.packets += 1
                report.note(_reason(e))
                continue
            for frame in frames:
                if size is None:
                    size = scaled_size(frame.width, frame.height, short_side)
                yield reformatter.reformat(
                    frame, width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC", threads=threads
                ), frame.rotation
                count += 1
        if not count:
            damage = f" ({report.describe()})" if report else ""
            raise VideoError(path, f"has no frames that decode{damage}")


def _upright_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns that show a frame upright, from PyAV's `VideoFrame.rotation`.

    `rotation` is the display matrix's counter-clockwise angle in degrees (-90 for a phone video
    recorded upright); angles that are not multiples of 90 are left alone, as ffmpeg's -autorotate does.
    """
    turns = round(rotation / 90)
    return turns % 4 if abs(rotation - 90 * turns) < 1 else 0


def read_video(path: str, short_side: int | None = None, report: DecodeReport | None = None) -> np.ndarray:
    """Every frame of a video file, in RGB.

    Args:
        path: a video file FFmpeg can decode (`.avi`, `.mp4`, ...); its first video stream is read.
        short_side: scale every frame so that its short side has this many pixels, keeping the
            aspect ratio (bicubic, as ffmpeg's `scale` filter); None keeps the size.
        report: a `DecodeReport` that counts the damaged data skipped (as ffmpeg skips it: the
            packets that fail to decode, and what follows a read error); None: not counted.

    Returns:
        uint8 `[T, H, W, 3]`, all `T >= 1` frames that decode, in decoding order, upright (a
        display-matrix rotation is applied, as ffmpeg does; flips in the matrix, rare, are not).

    Raises:
        VideoError (a UserError): the file cannot be opened, has no video stream, or has no frames
            that decode; the message names the file.
    """
    _check_short_side(short_side)
    frames = []
    for frame, rotation in _decoded_frames(path, short_side, 0, DecodeReport() if report is None else report):
        array = frame.to_ndarray()
        turns = _upright_turns(rotation)
        frames.append(np.rot90(array, turns) if turns else array)
    return np.ascontiguousarray(np.stack(frames))


# --- Extraction ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # Another user's process, or unknowable: leave its files alone.
    return True


def _remove_leftovers(parent: str, name: str) -> None:
    """Removes the temporary directories of `name` that a killed extraction left in `parent`.

    Those of processes still running (another extraction of the same video) are kept.
    """
    for marker in (_PARTIAL, _REPLACED):
        prefix = f".{name}{marker}"
        try:
            with os.scandir(parent) as entries:
                stale = [e.path for e in entries if e.name.startswith(prefix)]
        except OSError:
            return
        for path in stale:
            pid = path.rpartition("-")[2]
            if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _move_into_place(temporary: str, out_dir: str) -> None:
    """Renames the finished `temporary` directory to `out_dir`, replacing what is there."""
    try:
        os.rename(temporary, out_dir)
        return
    except OSError:
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise
    # An older or unfinished extraction is in the way: move it aside first (a directory cannot be
    # renamed over a non-empty one).
    parent, name = os.path.split(out_dir)
    aside = os.path.join(parent, f".{name}{_REPLACED}{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(out_dir, aside)
    except FileNotFoundError:
        pass  # Another process moved it first.
    try:
        os.rename(temporary, out_dir)
    except OSError:
        if not is_finished(out_dir):
            raise
        # Another process extracting the same video finished in between: keep its frames.
        shutil.rmtree(temporary, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def extract_frames(
    video_path: str,
    out_dir: str,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    quality: int = DEFAULT_JPEG_QUALITY,
    *,
    threads: int = 0,
    report: DecodeReport | None = None,
) -> int:
    """Writes the frames of a video as `out_dir/image_00001.jpg`, ... and then `out_dir/n_frames`.

    The frames are written to a temporary directory beside `out_dir` (`.<name>.partial-<pid>`), with
    `n_frames` last, which is then renamed to `out_dir`, replacing what was there: a killed extraction
    never leaves an `out_dir` that looks finished (`is_finished`), and the next extraction of the video
    removes what it left (unless its process still runs). `n_frames` holds the count as text, as Hara
    et al.'s `n_frames_ucf101_hmdb51.py` writes it.

    Args:
        video_path: a video file FFmpeg can decode.
        out_dir: the directory of the frames (its parent is created).
        short_side: the frames' short side in pixels (aspect ratio kept, bicubic); None: the video's size.
            240 (Hara et al.'s UCF101 and HMDB51 frames) keeps their 320x240 videos' size.
        quality: Pillow's JPEG quality, 1 to 95.
        threads: FFmpeg's decoding and scaling threads; 0: as many as it likes, 1 where one
            process runs per core (`extract_many`).
        report: a `DecodeReport` that counts the damaged data skipped, as `read_video`'s.

    Returns:
        The number of frames written, >= 1.

    Raises:
        VideoError (a UserError): the video cannot be opened, has no video stream, or has no frames that decode.
        UserError: the frames cannot be written (the OS's reason: disk full, permissions, ...).
    """
    check_settings(short_side, quality)
    out_dir = os.path.abspath(str(out_dir))
    parent, name = os.path.split(out_dir)
    temporary = os.path.join(parent, f".{name}{_PARTIAL}{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_leftovers(parent, name)
        os.mkdir(temporary)
    except OSError as e:
        raise UserError(f"cannot write the frames of {video_path} to {out_dir} ({_reason(e)}); pass an output directory you can write to.") from None
    try:
        count = 0
        for frame, rotation in _decoded_frames(video_path, short_side, threads, DecodeReport() if report is None else report):
            image = frame.to_image()
            turns = _upright_turns(rotation)
            if turns:
                image = image.rotate(90 * turns, expand=True)  # Counter-clockwise, as the turns.
            image.save(os.path.join(temporary, frame_name(count)), quality=int(quality))
            count += 1
        with open(os.path.join(temporary, N_FRAMES), "w") as f:
            f.write(str(count))  # Last: its presence marks the directory finished.
        _move_into_place(temporary, out_dir)
    except OSError as e:
        shutil.rmtree(temporary, ignore_errors=True)
        raise UserError(
            f"cannot write the frames of {video_path} to {out_dir} ({_reason(e)}); free disk space or pass an "
            "output directory you can write to."
        ) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return count


@dataclasses.dataclass(frozen=True)
class Extracted:
    """What `extract_many` did.

    Attributes:
        frames: `{video path: frames written}` of the videos extracted now.
        failures: `{video path: reason}` of the videos that could not be extracted (in job order).
        damaged: `{video path: DecodeReport.describe()}` of the videos extracted with damaged data
            skipped (in job order).
        seconds: wall-clock time of the extraction.
    """

    frames: dict
    failures: dict
    damaged: dict
    seconds: float

    def damage_note(self, prefix: str = "") -> str | None:
        """One line naming the videos extracted with damaged data skipped (the first few), or None."""
        if not self.damaged:
            return None
        shown = "; ".join(f"{path}: {what}" for path, what in list(self.damaged.items())[:_SHOWN])
        more = f"; and {len(self.damaged) - _SHOWN} more" if len(self.damaged) > _SHOWN else ""
        count = len(self.damaged)
        return (
            f"{prefix}note: {count} video{'s have' if count > 1 else ' has'} damaged data, skipped as ffmpeg skips it (the "
            f"frames that decode are written): {shown}{more}. Replace {'them' if count > 1 else 'it'} for every frame."
        )

    def failures_shown(self) -> str:
        """The first few failures, `<path> (<reason>); ...`, and how many more: for the caller's error line."""
        shown = "; ".join(f"{path} ({reason})" for path, reason in list(self.failures.items())[:_SHOWN])
        return shown + (f"; and {len(self.failures) - _SHOWN} more" if len(self.failures) > _SHOWN else "")

    @property
    def frames_per_second(self) -> float:
        """Frames written per second of wall-clock time."""
        return sum(self.frames.values()) / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    """The CPUs this process may run on (its affinity; all of them where the OS does not say)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _extract_job(video_path, out_dir, short_side, quality, threads):
    """`extract_frames` in a worker: `(frames, None, damage or "")`, or `(None, reason, "")` (bad videos
    are not exceptions here)."""
    report = DecodeReport()
    try:
        count = extract_frames(video_path, out_dir, short_side, quality, threads=threads, report=report)
    except VideoError as e:
        return None, e.reason, ""
    except UserError as e:
        return None, str(e), ""
    return count, None, report.describe() if report else ""


def _pool_context():
    # Fork: the workers start at once with what this process imported. Spawn or forkserver would
    # import sskt_tf, and so TensorFlow, again in every worker (seconds and hundreds of MB each);
    # the workers use FFmpeg, Pillow and numpy only.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def extract_many(
    jobs: Sequence[tuple[str, str]],
    short_side: int | None = DEFAULT_SHORT_SIDE,
    quality: int = DEFAULT_JPEG_QUALITY,
    workers: int | None = None,
    progress: bool = True,
) -> Extracted:
    """`extract_frames` of many videos, in parallel processes, with a progress bar over the videos.

    A video that fails does not stop the others: it is listed in `Extracted.failures` with its reason;
    one extracted with damaged data skipped (`DecodeReport`) is listed in `Extracted.damaged`.
    One process (`workers=1`, or one job) runs here, without a pool.

    Args:
        jobs: `(video path, frame directory)` pairs.
        short_side, quality: as `extract_frames`.
        workers: processes; None: `default_workers()`. Each decodes with one thread when there are several.
        progress: show a progress bar (keras.utils.Progbar, on standard output).

    Returns:
        An `Extracted`.

    Raises:
        UserError: `workers` < 1, or a bad `short_side` / `quality`.
    """
    check_settings(short_side, quality)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers={workers} must be at least 1 (default: the CPUs this process may use, {default_workers()}).")
    workers = min(workers, max(1, len(jobs)))
    threads = 1 if workers > 1 else 0
    frames, failures, damaged, outcomes = {}, {}, {}, {}
    bar = None
    if progress and jobs:
        import keras  # Only for the bar.

        bar = keras.utils.Progbar(len(jobs), unit_name="video", interval=_PROGRESS_INTERVAL_S)
    start = time.perf_counter()

    def record(video, result):
        outcomes[video] = result
        if bar is not None:
            bar.update(len(outcomes))

    if workers == 1:
        for video, out_dir in jobs:
            record(video, _extract_job(video, out_dir, short_side, quality, threads))
    else:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            futures = {pool.submit(_extract_job, v, d, short_side, quality, threads): v for v, d in jobs}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        result = future.result()
                    except concurrent.futures.process.BrokenProcessPool:
                        result = (None, "a worker process died while extracting (killed, out of memory, or a decoder crash); --workers=1 shows which video", "")
                    record(futures[future], result)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    for video, _ in jobs:
        count, reason, damage = outcomes[video]
        if reason is None:
            frames[video] = count
        else:
            failures[video] = reason
        if damage:
            damaged[video] = damage
    return Extracted(frames=frames, failures=failures, damaged=damaged, seconds=time.perf_counter() - start)
