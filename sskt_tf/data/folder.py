"""Image-folder sources (`--dataset=folder:<path>`) and the check that every image decodes.

A folder is checked before anything is trained: its layout, the files that are not read (one
printed line), and every image, decoded once (the result cached per file, so the next run checks
only what changed).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from sskt_tf.data import pipeline
from sskt_tf.errors import UserError
from sskt_tf.serving import preprocessing

PREFIX = "folder:"
# Every format tf.io.decode_image reads (it goes by the content, not the name).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp")

_LAYOUT = "<path>/train/<class>/<image> and <path>/test/<class>/<image> (optionally <path>/val/<class>/<image>)"
_SPLIT_DIRS = ("train", "test", "val")
_FORMATS = "JPEG, PNG, BMP, GIF or WebP"
# Raised when what the check stores changes (2: reasons without TensorFlow's "name:" wrapping).
_CHECK_CACHE_VERSION = 2
# Show a progress bar when the check has run this long and is not done.
_PROGRESS_AFTER_S = 1.0


def source(
    dataset: str,
    *,
    data_dir: str | None,
    image_size: tuple[int, int] | None,
    seed: int,
    skip_bad_images: bool,
) -> pipeline.Source:
    """An image folder: `<path>/train/<class>/*`, `<path>/test/<class>/*`, optionally `<path>/val/<class>/*`.

    Labels follow the sorted class folder names; test/ and val/ must have the same class folders
    as train/. Read are the files with an extension of `IMAGE_EXTENSIONS` directly in a class
    folder, not hidden; every other file under `<path>` is reported in one printed line, counted
    per extension and per reason. Every image is decoded once up front, in parallel, as the
    pipeline decodes it (`tf.io.decode_image`, 3 channels, an animation's first frame); the result
    is cached per file in `$XDG_CACHE_HOME/sskt_tf/folder_checks/` (default `~/.cache`), keyed by
    path, size, modification time and TensorFlow version, so a second run checks only new or
    changed files.

    Args:
        dataset: `folder:<path>`; `~` in `<path>` is expanded.
        data_dir: unused (TFDS only).
        image_size: `(H, W)` in pixels to resize every image to (bilinear); None: the most
            common size of the training images (ties: the larger), printed when sizes differ.
        seed: unused; the training files get a fixed permutation independent of it (so that a
            bounded shuffle buffer mixes the classes and the soft-label cache's order stays put).
        skip_bad_images: leave out the files that cannot be decoded (listed in
            `Source.bad_files` and printed) instead of raising.

    Returns:
        A `pipeline.Source` whose splits decode `(string path, int32 label)` elements to uint8
        `[H, W, 3]` images; the test and val splits in class, then file name order.

    Raises:
        UserError: an empty path, a missing directory or split, class folders that differ
            between splits, a class without image files, or files that cannot be decoded
            (without `skip_bad_images`), each naming the path.
    """
    del data_dir, seed  # Every kind takes them; a folder has no TFDS directory and a fixed order.
    path = dataset[len(PREFIX):]
    flag = f"--dataset=folder:{path}"
    if not path:
        raise UserError(
            "--dataset=folder: needs a directory after 'folder:', got an empty path; pass "
            f"--dataset=folder:/path/to/images laid out as {_LAYOUT}."
        )
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        what = "is a file, not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"{flag}: {root} {what}; pass a directory laid out as {_LAYOUT}.")
    splits = ["train", "test"] + (["val"] if os.path.isdir(os.path.join(root, "val")) else [])
    classes = {split: _class_folders(root, split, flag) for split in splits}
    for split in splits[1:]:
        if classes[split] != classes["train"]:
            only_train = sorted(set(classes["train"]) - set(classes[split]))
            only_other = sorted(set(classes[split]) - set(classes["train"]))
            raise UserError(
                f"{flag}: {os.path.join(root, split)} must have the same class folders as "
                f"{os.path.join(root, 'train')}; only in train: {only_train or 'none'}, only in "
                f"{split}: {only_other or 'none'}. Add or remove class folders so that both match."
            )
    class_names = classes["train"]

    listed, unused = _scan_folder(root, splits, class_names)
    _report_unused(flag, root, unused)
    for split in splits:
        _check_not_empty(root, split, class_names, listed[split], flag)
    all_paths = [p for split in splits for p, _ in listed[split]]
    checked, stamps = _check_images(root, all_paths, flag)
    bad = sorted(p for p in all_paths if isinstance(checked[p], str))
    if bad and not skip_bad_images:
        shown = "; ".join(f"{p} ({checked[p]})" for p in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(
            f"{flag}: {len(bad)} of {len(all_paths)} image files cannot be decoded: {shown}{more}. Delete or "
            "replace them, or pass --skip_bad_images to go on without them (the command lists them in its output: "
            "skipped_images.txt of a training run, metrics.json of an evaluation)."
        )
    if bad:
        pipeline.info(
            f"{flag}: leaving out {len(bad)} image file{'s' if len(bad) > 1 else ''} that cannot be decoded "
            f"(--skip_bad_images): {', '.join(bad[:3])}{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}."
        )
        bad_set = set(bad)
        listed = {split: [(p, y) for p, y in items if p not in bad_set] for split, items in listed.items()}
        for split in splits:
            _check_not_empty(root, split, class_names, listed[split], flag, after_skipping=True)

    size = image_size or _common_size(flag, [checked[p] for p, _ in listed["train"]])

    def decode(file_path, label):
        image = tf.io.decode_image(
            tf.io.read_file(file_path), channels=3, expand_animations=False, dtype=tf.uint8
        )
        return preprocessing.resize_images(image, size), label

    def make_split(items, split: str, mix: bool) -> pipeline.Split:
        if mix:
            # The files come sorted by class; a fixed permutation (independent of --seed, so the
            # soft-label cache's order stays put) lets a bounded shuffle buffer mix the classes.
            items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
        paths = [p for p, _ in items]
        labels = np.asarray([y for _, y in items], np.int32)
        return pipeline.Split(
            elements=tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels))),
            size=len(paths),
            decode=decode,
            image_bytes=size[0] * size[1] * 3,
            labels=labels,
            key=json.dumps(["folder", split, list(size), hashlib.sha256(json.dumps([paths, [stamps[p] for p in paths]]).encode()).hexdigest()]),
        )

    return pipeline.Source(
        train=make_split(listed["train"], "train", mix=True),
        test=make_split(listed["test"], "test", mix=False),
        validation=make_split(listed["val"], "val", mix=False) if "val" in listed else None,
        class_names=tuple(class_names),
        image_size=size,
        bad_files=tuple(bad),
    )


def _class_folders(root: str, split: str, flag: str) -> list[str]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise UserError(f"{flag}: {split_dir} is missing; lay the folder out as {_LAYOUT}.")
    # Hidden folders (.ipynb_checkpoints, .git, ...) are tool artefacts, not classes.
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(
            f"{flag}: {split_dir} has no class folders; put each class's images in "
            f"{split_dir}/<class>/ ({_LAYOUT})."
        )
    return classes


def _files_under(directory: str) -> list[str]:
    """Every file below `directory`, hidden ones included."""
    found = []
    for where, _, files in os.walk(directory):
        found.extend(os.path.join(where, f) for f in files)
    return found


def _scan_folder(root: str, splits: Sequence[str], classes: Sequence[str]):
    """The image files of each split as `[(path, label)]`, and every other file as `[(path, why)]`.

    Read: files with an image extension directly in `<split>/<class>/`, not hidden.
    Everything else under `root` is returned as unused, with the reason.
    """
    listed = {split: [] for split in splits}
    unused = []
    with os.scandir(root) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name in splits and e.is_dir():
                continue
            why = "hidden" if e.name.startswith(".") else f"outside {'/, '.join(splits)}/"
            unused.extend((p, why) for p in (_files_under(e.path) if e.is_dir() else [e.path]))
    for split in splits:
        split_dir = os.path.join(root, split)
        with os.scandir(split_dir) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                if e.is_dir() and not e.name.startswith("."):
                    continue  # A class folder.
                why = "hidden" if e.name.startswith(".") else "outside the class folders"
                unused.extend((p, why) for p in (_files_under(e.path) if e.is_dir() else [e.path]))
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            with os.scandir(class_dir) as entries:
                for e in sorted(entries, key=lambda e: e.name):
                    if e.name.startswith("."):
                        unused.extend((p, "hidden") for p in (_files_under(e.path) if e.is_dir() else [e.path]))
                    elif e.is_dir():
                        unused.extend((p, "in a sub-folder of a class folder") for p in _files_under(e.path))
                    elif not e.is_file():
                        unused.append((e.path, "not a regular file (a broken link?)"))
                    elif not e.name.lower().endswith(IMAGE_EXTENSIONS):
                        unused.append((e.path, "not an image extension"))
                    else:
                        listed[split].append((e.path, label))
    return listed, unused


def _extension(path: str) -> str:
    name = os.path.basename(path)
    ext = os.path.splitext(name.lstrip("."))[1].lower()
    return ext or "no extension"


def _report_unused(flag: str, root: str, unused) -> None:
    """One line: the files under `root` that are not read, counted per extension and per reason."""
    if not unused:
        return
    by_ext = collections.Counter(_extension(p) for p, _ in unused)
    by_why = collections.Counter(why for _, why in unused)
    exts = ", ".join(f"{ext}: {n}" for ext, n in sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0])))
    whys = ", ".join(f"{n} {why}" for why, n in sorted(by_why.items(), key=lambda kv: (-kv[1], kv[0])))
    pipeline.info(
        f"{flag}: {len(unused)} file{'s are' if len(unused) > 1 else ' is'} not used ({exts}; {whys}; e.g. "
        f"{unused[0][0]}); read are {'/'.join(IMAGE_EXTENSIONS)} files directly in <split>/<class>/ "
        "(train/, test/, val/), not hidden."
    )


def _check_not_empty(root, split, classes, items, flag, after_skipping=False) -> None:
    counts = collections.Counter(y for _, y in items)
    for label, name in enumerate(classes):
        if not counts[label]:
            class_dir = os.path.join(root, split, name)
            why = " once the files that cannot be decoded are left out" if after_skipping else ""
            from sskt_tf.video_io import VIDEO_EXTENSIONS  # Only here: image folders need no video decoder.

            videos = os.path.isdir(class_dir) and any(n.lower().endswith(VIDEO_EXTENSIONS) for n in os.listdir(class_dir))
            if videos:
                why += f" (it holds videos: pass --dataset=video_folder:{root} for videos)"
            raise UserError(
                f"{flag}: class folder {class_dir} has no image files{why} "
                f"({'/'.join(IMAGE_EXTENSIONS)}); add images or remove the class from "
                f"{', '.join(s + '/' for s in _SPLIT_DIRS if os.path.isdir(os.path.join(root, s)))}."
            )


def _stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _check_cache_file(root: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = hashlib.sha256(root.encode()).hexdigest()[:24] + ".json"
    return os.path.join(base, "sskt_tf", "folder_checks", name)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences what the C image libraries print to standard error ("Corrupt JPEG data...")."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _decode_reason(path: str) -> str:
    """Why TensorFlow cannot decode the file at `path`, in a few words."""
    try:
        data = tf.io.read_file(path)
    except tf.errors.OpError as e:
        return f"cannot be read: {e.message.splitlines()[0]}"
    if int(tf.strings.length(data)) == 0:
        return "empty file"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        # TensorFlow wraps the reason in "{{function_node ...}} ... [Op:DecodeImage] name: ".
        text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\s*name:\s*$", "", e.message.splitlines()[0]).strip()
        return f"{text} (not a complete {_FORMATS} image)" if text else f"not a complete {_FORMATS} image"
    return "decodes now; it failed during the check"


def _check_images(root: str, paths: Sequence[str], flag: str) -> tuple[dict, dict]:
    """Decodes every file once, as the pipeline will: `{path: (height, width) or reason it fails}`,
    and `{path: [size, mtime_ns]}`.

    Results are cached per file under `$XDG_CACHE_HOME/sskt_tf/folder_checks/` (default
    `~/.cache`), keyed by path, size and modification time (and the TensorFlow version),
    so a second run decodes only new or changed files. The data folder may be read-only.
    """
    cache_file = _check_cache_file(root)
    try:
        with open(cache_file) as f:
            stored = json.load(f)
        if stored.get("version") != _CHECK_CACHE_VERSION or stored.get("tensorflow") != tf.__version__:
            stored = {}
    except (OSError, ValueError):
        stored = {}
    known = stored.get("files", {}) if stored.get("root") == root else {}
    results, entries, todo, stamps = {}, {}, [], {}
    for p in paths:
        stamp = stamps[p] = _stamp(p)
        entry = known.get(p)
        if entry is not None and entry[:2] == stamp:
            results[p] = entry[2] if len(entry) == 3 else (entry[2], entry[3])
            entries[p] = entry
        else:
            todo.append((p, stamp))
    if todo:
        found = _decode_all([p for p, _ in todo], flag)
        with _quiet_stderr():
            for p, stamp in todo:
                result = found.get(p) or _decode_reason(p)
                results[p] = result
                entries[p] = stamp + (list(result) if isinstance(result, tuple) else [result])
    if todo or len(known) != len(entries):
        record = {"version": _CHECK_CACHE_VERSION, "tensorflow": tf.__version__, "root": root, "files": entries}
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, cache_file)
        except OSError as e:
            pipeline.info(f"{flag}: could not store the image check in {cache_file} ({e.strerror}); the next run checks again.")
    return results, stamps


def _decode_all(paths: Sequence[str], flag: str) -> dict:
    """`{path: (height, width)}` of the files that decode; one parallel pass, with a progress bar."""

    def probe(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        shape = tf.shape(image)
        return path, shape[0], shape[1]

    ds = (
        tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
        .map(probe, num_parallel_calls=pipeline.AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(256)
        .prefetch(pipeline.AUTOTUNE)
    )
    found, done, bar = {}, 0, None
    start = time.perf_counter()
    with _quiet_stderr():
        for names, heights, widths in ds.as_numpy_iterator():
            for name, h, w in zip(names, heights, widths):
                found[name.decode()] = (int(h), int(w))
            done += len(names)
            if bar is None and time.perf_counter() - start > _PROGRESS_AFTER_S:
                import keras  # Only when a bar is shown.

                print(f"{flag}: checking that every one of {len(paths)} images decodes (once; the result is cached)", flush=True)
                bar = keras.utils.Progbar(len(paths), unit_name="image")
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.update(len(paths), finalize=True)
        pipeline.info(f"{flag}: checked {len(paths)} images in {time.perf_counter() - start:.1f} s.")
    return found


def _size_text(size, n) -> str:
    return f"{size[0]}x{size[1]}: {n} file{'s' if n > 1 else ''}"


def _common_size(flag: str, sizes) -> tuple[int, int]:
    """The most common (height, width) of the training images (ties: the larger); printed when they differ."""
    counts = collections.Counter(sizes)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], -kv[0][0] * kv[0][1], -kv[0][0]))
    size = ranked[0][0]
    if len(ranked) > 1:
        shown = ", ".join(_size_text(s, n) for s, n in ranked[:5])
        more = f", and {len(ranked) - 5} more sizes" if len(ranked) > 5 else ""
        pipeline.info(
            f"{flag}: the training images have {len(ranked)} sizes ({shown}{more}); training at "
            f"{size[0]}x{size[1]}, the most common (every image is resized to it); pass --image_size=H,W to choose."
        )
    return size
