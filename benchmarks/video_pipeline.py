"""Clips per second of the video training stream alone, beside the PyTorch way (Hara et al.'s loader).

    python benchmarks/video_pipeline.py [--videos=64] [--frames=40] [--batch_size=32] [--clip_length=16]
        [--image_size=112] [--batches=10] [--warmup=3] [--repeats=3] [--workers=0] [--data_dir=<dir>] [--torch=true]

Data: `--videos` frame folders of `--frames` JPEG frames of 320x240 pixels (UCF101's size; a smooth
random scene panning across the frames, about the file size of real frames), written once into
`--data_dir` (default: a temporary directory, removed at the end) as
`<dir>/train/<class>/<video>/image_00001.jpg`, with one small test video per class.

sskt_tf: `sskt_tf.data.load("video_folder:<dir>")` and its `train` stream: per clip, the frames'
file names, the first frame's JPEG header, each frame decoded only inside the clip's crop window
(`tf.image.decode_and_crop_jpeg`), one resize of the clip, a flip; in a parallel, deterministic
tf.data map. The PyTorch way, as Hara et al.'s 3D-ResNets-PyTorch (which the SSKT authors' 3D code
uses) loads clips: a `torch.utils.data.Dataset` that opens each frame with PIL, converts it to RGB,
crops it (multi-scale corner crop), resizes it (bilinear) and flips it, then stacks the frames; in a
`DataLoader` with `--workers` processes (0: one per CPU core), shuffled, batched. Both draw the same
augmentation (random start, scale among 1, 2^-1/4, ... 1/2, centre or corner, flip) and yield
float32 clips of the same shape, `[B, T, H, W, 3]` here and `[B, 3, T, H, W]` there.

Each side runs in a process of its own (this script again, with `--side=<name>`), so that neither
inherits the other's threads: `--warmup` untimed batches, then `--repeats` timed blocks of
`--batches` batches; the report gives the median clips/s over the blocks and the ratio (above 1:
sskt_tf is faster).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("videos", 64, "Training videos (frame folders) to generate.", lower_bound=2)
flags.DEFINE_integer("frames", 40, "Frames per video.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Clips per batch.", lower_bound=1)
flags.DEFINE_integer("clip_length", 16, "Frames per clip.", lower_bound=1)
flags.DEFINE_integer("image_size", 112, "Crop size in pixels (square).", lower_bound=1)
flags.DEFINE_integer("batches", 10, "Timed batches per block.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed batches before the first block (start-up, tracing, workers).", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed blocks; the report gives their median.", lower_bound=1)
flags.DEFINE_integer("workers", 0, "DataLoader worker processes of the PyTorch way (0: one per CPU core).", lower_bound=0)
flags.DEFINE_string("data_dir", None, "Where the frames are written (kept); default: a temporary directory, removed at the end.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch way.")
flags.DEFINE_enum("side", None, ["sskt_tf", "torch"], "Internal: time this side in this process and print its JSON line.")
FLAGS = flags.FLAGS

WIDTH, HEIGHT = 320, 240
CLASSES = ("class_a", "class_b")
# Hara et al.'s --initial_scale 1, --n_scales 5, --scale_step 2^-1/4.
SCALES = tuple(2.0 ** (-k / 4) for k in range(5))


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- data


def write_frames(root):
    """Writes the frame folders under `root` (skipped when `root/done` exists); returns the training videos."""
    import numpy as np
    from PIL import Image

    videos = []
    for split, count, frames in (("train", FLAGS.videos, FLAGS.frames), ("test", len(CLASSES), 2)):
        for v in range(count):
            label = v % len(CLASSES)
            directory = os.path.join(root, split, CLASSES[label], f"v_{v:04d}")
            if split == "train":
                videos.append((directory, frames, label))
            if os.path.exists(os.path.join(root, "done")):
                continue
            os.makedirs(directory, exist_ok=True)
            rng = np.random.default_rng(v if split == "train" else 10_000 + v)
            # A smooth scene twice the frame's width (coarse noise, upsampled), panned across the frames,
            # with a little fine noise: JPEG files of about the size of real 320x240 frames.
            coarse = rng.integers(0, 256, size=(HEIGHT // 16, 2 * WIDTH // 16, 3), dtype=np.uint8)
            scene = np.asarray(Image.fromarray(coarse).resize((2 * WIDTH, HEIGHT), Image.BICUBIC), np.int16)
            for t in range(frames):
                x = (t * 4) % WIDTH
                frame = scene[:, x : x + WIDTH] + rng.integers(-6, 7, size=(HEIGHT, WIDTH, 3))
                image = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
                image.save(os.path.join(directory, f"image_{t + 1:05d}.jpg"), quality=90)
            with open(os.path.join(directory, "n_frames"), "w") as f:
                f.write(str(frames))
    with open(os.path.join(root, "done"), "w") as f:
        f.write("frames written\n")
    return videos


# --------------------------------------------------------------------------- the two sides


def _blocks(next_batch):
    """Warm-up, then `repeats` timed blocks; clips/s of each block."""
    for _ in range(FLAGS.warmup):
        next_batch()
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            next_batch()
        rates.append(FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start))
    return rates


def _sskt_tf(root):
    import contextlib
    import io

    from sskt_tf import data

    with contextlib.redirect_stdout(io.StringIO()):  # video_folder's note on what it found.
        datasets = data.load(
            f"video_folder:{root}", batch_size=FLAGS.batch_size, clip_length=FLAGS.clip_length,
            image_size=(FLAGS.image_size, FLAGS.image_size),
        )
    it = iter(datasets.train)
    shape = None

    def next_batch():
        nonlocal shape
        clips, _ = next(it)
        shape = clips.shape.as_list()

    rates = _blocks(next_batch)
    return {"side": "sskt_tf", "clips_per_s": rates, "shape": shape, "workers": None}


class HaraClips:
    """A torch Dataset of training clips read as Hara et al.'s 3D-ResNets-PyTorch reads them.

    `TemporalRandomCrop` (a start in [0, max(0, n - T - 1)], the window loop-padded), `pil_loader`
    per frame, then per frame `MultiScaleCornerCrop` (one scale and corner per clip) and
    `RandomHorizontalFlip` (one flip per clip), `ToTensor` without scaling (0..255), stacked.
    """

    def __init__(self, videos, clip_length, size):
        self.videos, self.clip_length, self.size = videos, clip_length, size

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        import random

        import numpy as np
        import torch
        from PIL import Image

        directory, n, label = self.videos[index]
        begin = random.randint(0, max(0, n - self.clip_length - 1))
        window = list(range(begin, min(begin + self.clip_length, n)))
        frames = [window[j % len(window)] for j in range(self.clip_length)]
        scale, corner, flip = random.choice(SCALES), random.randrange(5), random.random() < 0.5
        clip = []
        for i in frames:
            with open(os.path.join(directory, f"image_{i + 1:05d}.jpg"), "rb") as f:
                with Image.open(f) as image:
                    image = image.convert("RGB")
            width, height = image.size
            side = int(min(width, height) * scale)
            x, y = [(width // 2 - side // 2, height // 2 - side // 2), (0, 0), (width - side, 0), (0, height - side),
                    (width - side, height - side)][corner]
            image = image.crop((x, y, x + side, y + side)).resize((self.size, self.size), Image.BILINEAR)
            if flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            clip.append(torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1))
        return torch.stack(clip, 0).permute(1, 0, 2, 3), label


def _torch(root):
    import torch

    videos = write_frames(root)  # The list only: the frames are there.
    workers = FLAGS.workers or _cores()
    total = (FLAGS.warmup + FLAGS.repeats * FLAGS.batches) * FLAGS.batch_size
    dataset = HaraClips(videos, FLAGS.clip_length, FLAGS.image_size)
    # Epochs after epochs in one iterator (reshuffled, as our repeated stream), so workers start once.
    sampler = torch.utils.data.RandomSampler(dataset, replacement=False, num_samples=total)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=FLAGS.batch_size, sampler=sampler, num_workers=workers, drop_last=True
    )
    it = iter(loader)
    shape = None

    def next_batch():
        nonlocal shape
        clips, _ = next(it)
        shape = list(clips.shape)

    rates = _blocks(next_batch)
    return {"side": "torch", "clips_per_s": rates, "shape": shape, "workers": workers}


# --------------------------------------------------------------------------- report


def _run(side, root):
    args = [f"--{name}={FLAGS[name].value}" for name in
            ("videos", "frames", "batch_size", "clip_length", "image_size", "batches", "warmup", "repeats", "workers")]
    done = subprocess.run([sys.executable, __file__, f"--side={side}", f"--data_dir={root}", *args],
                          capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"side": side, "error": f"exit status {done.returncode}, {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.side:
        result = (_sskt_tf if FLAGS.side == "sskt_tf" else _torch)(FLAGS.data_dir)
        print(json.dumps(result))
        return
    root = FLAGS.data_dir or tempfile.mkdtemp(prefix="sskt_tf_video_bench_")
    try:
        start = time.perf_counter()
        write_frames(root)
        print(f"frames: {FLAGS.videos} videos x {FLAGS.frames} frames of {WIDTH}x{HEIGHT} in {root} "
              f"({time.perf_counter() - start:.0f} s to write)", flush=True)
        results = [_run("sskt_tf", root)] + ([_run("torch", root)] if FLAGS.torch else [])
    finally:
        if not FLAGS.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntraining clips of {FLAGS.clip_length} frames at {FLAGS.image_size} px, batch {FLAGS.batch_size}, "
          f"{_cores()} CPU cores; median of {FLAGS.repeats} blocks of {FLAGS.batches} batches after {FLAGS.warmup}")
    medians = {}
    for r in results:
        name = "sskt_tf (tf.data, decode_and_crop_jpeg)" if r["side"] == "sskt_tf" else "PyTorch way (PIL, DataLoader)"
        if "error" in r:
            print(f"  {name:<42} {r['error']}")
            continue
        medians[r["side"]] = statistics.median(r["clips_per_s"])
        spread = (max(r["clips_per_s"]) - min(r["clips_per_s"])) / medians[r["side"]]
        workers = f", {r['workers']} workers" if r["workers"] else ""
        print(f"  {name:<42} {medians[r['side']]:>8.1f} clips/s  (spread {spread:.0%}{workers}; batches {r['shape']})")
    if len(medians) == 2:
        print(f"  ratio sskt_tf / PyTorch way: {medians['sskt_tf'] / medians['torch']:.2f}x")


if __name__ == "__main__":
    app.run(main)
