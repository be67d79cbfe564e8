"""Tests of sskt_tf.data.folder: layout, labels, formats, unused and bad files, sizes, the check cache."""

import os

import numpy as np
import tensorflow as tf

from sskt_tf import data
from sskt_tf.data import folder


def _label_of(path, class_names):
    return class_names.index(os.path.basename(os.path.dirname(path)))


def _match(image, pixels):
    hits = [p for p, px in pixels.items() if np.array_equal(px.astype(np.float32), image)]
    assert len(hits) == 1, "image must equal exactly one file"
    return hits[0]


def test_folder_dataset_contents(tmp_path, make_tree):
    pixels = make_tree(str(tmp_path))
    # Non-image files and hidden folders are ignored.
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "test" / ".ipynb_checkpoints")
    ds = data.load(f"folder:{tmp_path}", batch_size=2, augment="none")
    assert ds.class_names == ("ant", "bee", "cat")
    assert ds.num_classes == 3
    assert (ds.num_train, ds.num_test, ds.steps_per_epoch) == (9, 4, 4)
    assert ds.image_size == (8, 8)

    test_seen = []
    for images, labels in ds.test:
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        for image, label in zip(images.numpy(), labels.numpy()):
            path = _match(image, pixels)
            assert "/test/" in path
            assert label == _label_of(path, ds.class_names)
            test_seen.append(path)
    assert len(test_seen) == 4 and len(set(test_seen)) == 4

    # One epoch (4 batches of 2 out of 9): distinct training files with their labels.
    train_seen = []
    for images, labels in ds.train.take(4):
        assert images.shape == (2, 8, 8, 3)
        for image, label in zip(images.numpy(), labels.numpy()):
            path = _match(image, pixels)
            assert "/train/" in path
            assert label == _label_of(path, ds.class_names)
            train_seen.append(path)
    assert len(set(train_seen)) == 8


def test_folder_dataset_augmented_train_batch(tmp_path, make_tree):
    make_tree(str(tmp_path))
    ds = data.load(f"folder:{tmp_path}", batch_size=2, eval_batch_size=3)
    images, labels = next(iter(ds.train))
    assert images.shape == (2, 8, 8, 3) and images.dtype == tf.float32
    assert labels.shape == (2,) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert [int(b[0].shape[0]) for b in ds.test] == [3, 1]


def test_folder_dataset_reads_jpeg_and_resizes(tmp_path, make_tree):
    pixels = make_tree(str(tmp_path))
    jpeg_path = str(tmp_path / "test" / "ant" / "x.jpg")
    tf.io.write_file(jpeg_path, tf.io.encode_jpeg(np.full((8, 8, 3), 120, np.uint8)))
    ds = data.load(f"folder:{tmp_path}", batch_size=2, image_size=(4, 6))
    assert ds.image_size == (4, 6) and ds.num_test == 5
    images = np.concatenate([b[0].numpy() for b in ds.test])
    assert images.shape == (5, 4, 6, 3)
    assert next(iter(ds.train))[0].shape == (2, 4, 6, 3)
    # Test order is class then file name: ant/000.png is first.
    first = pixels[str(tmp_path / "test" / "ant" / "000.png")]
    expected = np.round(tf.image.resize(first, (4, 6), method="bilinear").numpy())
    np.testing.assert_array_equal(images[0], np.clip(expected, 0, 255))
    # JPEG of a flat colour stays (nearly) flat after decoding and resizing.
    assert np.abs(images[2] - 120).max() <= 3


def test_folder_dataset_size_of_the_images(tmp_path, capsys, make_tree):
    make_tree(str(tmp_path), size=(6, 10))
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert ds.image_size == (6, 10)
    assert next(iter(ds.test))[0].shape[1:] == (6, 10, 3)
    assert "sizes" not in capsys.readouterr().out  # One size: nothing to say.


def test_folder_dataset_errors(tmp_path, user_error, make_tree):
    missing = tmp_path / "nope"
    assert f"{missing} does not exist" in user_error(lambda: data.load(f"folder:{missing}", batch_size=2))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert f"{a_file} is a file, not a directory" in user_error(lambda: data.load(f"folder:{a_file}", batch_size=2))

    root = tmp_path / "d"
    make_tree(str(root))
    load = lambda: data.load(f"folder:{root}", batch_size=2)  # noqa: E731

    os.rename(root / "test", tmp_path / "test_saved")
    assert str(root / "test") in user_error(load)
    os.rename(tmp_path / "test_saved", root / "test")

    os.makedirs(root / "test" / "dog")
    message = user_error(load)
    assert str(root / "test") in message and "dog" in message
    os.makedirs(root / "train" / "dog")
    (root / "train" / "dog" / "readme.txt").write_text("no images here")
    assert str(root / "train" / "dog") in user_error(load)
    os.remove(root / "train" / "dog" / "readme.txt")
    # A class folder of videos: the right dataset form is named.
    (root / "train" / "dog" / "walk.mp4").write_bytes(b"not read")
    assert f"it holds videos: pass --dataset=video_folder:{root} for videos" in user_error(load)
    os.remove(root / "train" / "dog" / "walk.mp4")
    os.rmdir(root / "train" / "dog")
    os.rmdir(root / "test" / "dog")

    bad = root / "train" / "bee" / "broken.jpg"
    bad.write_bytes(b"<html>404</html>")
    assert str(bad) in user_error(load)
    bad.write_bytes(b"")
    assert str(bad) in user_error(load)
    os.remove(bad)
    data.load(f"folder:{root}", batch_size=2)  # Back to a valid tree.

    assert "--batch_size=10" in user_error(lambda: data.load(f"folder:{root}", batch_size=10))

    # One class: its softmax is 1 for every image, so training would report accuracy 1.0 for nothing.
    one = tmp_path / "one"
    make_tree(str(one), train_counts={"cat": 4}, test_counts={"cat": 2})
    assert f"--dataset=folder:{one} has 1 class (cat); a classifier needs at least 2" in user_error(
        lambda: data.load(f"folder:{one}", batch_size=2)
    )

    empty = tmp_path / "empty"
    os.makedirs(empty / "train")
    os.makedirs(empty / "test")
    assert str(empty / "train") in user_error(lambda: data.load(f"folder:{empty}", batch_size=2))
    os.rmdir(empty / "train")
    assert str(empty / "train") in user_error(lambda: data.load(f"folder:{empty}", batch_size=2))


def test_val_folder_is_the_validation_set(tmp_path, user_error, make_tree, write_png):
    pixels = make_tree(str(tmp_path))
    rng = np.random.default_rng(7)
    for cls, n in (("ant", 1), ("bee", 2), ("cat", 1)):
        os.makedirs(tmp_path / "val" / cls)
        for i in range(n):
            p = str(tmp_path / "val" / cls / f"{i}.png")
            pixels[p] = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            write_png(p, pixels[p])
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert (ds.validation_from, ds.num_validation, ds.num_train) == ("val/", 4, 9)
    seen = [_match(image, pixels) for batch, _ in ds.validation for image in batch.numpy()]
    assert all("/val/" in p for p in seen) and len(set(seen)) == 4
    assert "--validation_split=0.1 contradicts" in user_error(
        lambda: data.load(f"folder:{tmp_path}", batch_size=2, validation_split=0.1))
    os.makedirs(tmp_path / "val" / "dog")
    assert str(tmp_path / "val") in user_error(lambda: data.load(f"folder:{tmp_path}", batch_size=2))


# An 8x8 lossless WebP of the flat colour (10, 200, 30), written once with Pillow (TensorFlow
# decodes WebP but cannot encode it).
_WEBP_10_200_30 = (
    b"RIFF\x1e\x00\x00\x00WEBPVP8L\x11\x00\x00\x00/\x07\xc0\x01\x00\x07P\xe4*\xd4\xa3\xff\x81\x88\xe8\x7f\x00\x00"
)


# An 8x8 animated GIF: a frame of grey 50, then one of grey 150 (Pillow, once).
_GIF_50_THEN_150 = (
    b"GIF87a\x08\x00\x08\x00\x81\x00\x00222\x00\x00\x00\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x08"
    b"\x00\x08\x00\x00\x08\x0f\x00\x01\x08\x1cH\xb0\xa0\xc1\x83\x08\x13*L\x18\x10\x00!\xf9\x04\x01\x00\x00"
    b"\x01\x00,\x00\x00\x00\x00\x08\x00\x08\x00\x81\x96\x96\x96\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08"
    b"\x0f\x00\x01\x08\x1cH\xb0\xa0\xc1\x83\x08\x13*L\x18\x10\x00;"
)


def _messy_tree(root):
    """A folder as users bring them: every format, odd files, three bad images, one thumbnail.

    Returns (bad files, number of good train files, number of good test files).
    """
    rng = np.random.default_rng(1)
    rgb = lambda h=8, w=8: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # noqa: E731
    for d in ("train/cat/extra", "train/dog", "test/cat", "test/dog"):
        os.makedirs(os.path.join(root, d))
    put = lambda rel, content: open(os.path.join(root, rel), "wb").write(content)  # noqa: E731
    png = lambda px: tf.io.encode_png(px).numpy()  # noqa: E731
    good_png = png(rgb())
    put("train/cat/000.png", good_png)
    put("train/cat/001.webp", _WEBP_10_200_30)
    put("train/cat/002.gif", _GIF_50_THEN_150)
    put("train/cat/003.jpg", png(rgb()))  # PNG data under a .jpg name: TensorFlow goes by the content.
    put("train/cat/004.PNG", png(rgb()[..., :1]))  # Grayscale, upper-case extension.
    put("train/cat/005.png", png(np.concatenate([rgb(), rgb()[..., :1]], axis=-1)))  # RGBA.
    put("train/cat/006.bmp", tf.io.encode_png(rgb()).numpy())  # Any content TF decodes is fine.
    put("train/dog/000_thumb.png", png(rgb(4, 4)))  # Sorts first; must not set the size.
    put("train/dog/001.png", png(rgb()))
    put("train/dog/002.jpeg", tf.io.encode_jpeg(rgb()).numpy())
    jpeg = tf.io.encode_jpeg(rgb()).numpy()
    put("train/dog/003.jpg", jpeg[:4] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())  # Garbage after the magic.
    put("train/dog/004.png", good_png[: len(good_png) // 2])  # Truncated.
    put("test/cat/000.png", png(rgb()))
    put("test/dog/000.png", png(rgb()))
    put("test/dog/001.png", b"")  # Empty.
    # Not used: reported, never read.
    put("train/cat/notes.txt", b"x")
    put("test/cat/labels.TXT", b"x")
    put("train/dog/.DS_Store", b"x")
    put("train/cat/extra/more.png", png(rgb()))
    put("train/README.md", b"x")
    put("train/dog/._001.png", b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: hidden, so not read.
    bad = sorted(os.path.join(root, p) for p in ("train/dog/003.jpg", "train/dog/004.png", "test/dog/001.png"))
    return bad, 10, 2


def test_folder_formats_unused_files_bad_files_and_sizes(tmp_path, capsys, user_error):
    root = str(tmp_path)
    bad, num_train, num_test = _messy_tree(root)

    message = user_error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert f"3 of {num_train + 2 + num_test + 1} image files cannot be decoded" in message
    for path in bad:
        assert path in message
    assert "empty file" in message and "--skip_bad_images" in message and "\n" not in message
    assert "name:" not in message and "[Op:" not in message  # TensorFlow's wrapping is stripped.
    out = capsys.readouterr().out
    report = [line for line in out.splitlines() if "not used" in line]
    assert len(report) == 1
    # 6 files: 2 .txt, and one each of .md, .png (sub-folder), no extension (.DS_Store), .png (._001.png).
    assert "6 files are not used (.png: 2, .txt: 2, .md: 1, no extension: 1;" in report[0]
    assert "2 hidden" in report[0] and "1 in a sub-folder of a class folder" in report[0]
    assert "1 outside the class folders" in report[0] and "2 not an image extension" in report[0]

    ds = data.load(f"folder:{root}", batch_size=2, skip_bad_images=True, augment="none")
    assert ds.bad_files == tuple(bad)
    assert (ds.num_train, ds.num_test) == (num_train, num_test)
    # The most common size, not the thumbnail's that sorts first; said in one line.
    assert ds.image_size == (8, 8)
    out = capsys.readouterr().out
    assert f"2 sizes (8x8: {num_train - 1} files, 4x4: 1 file); training at 8x8" in out
    assert "leaving out 3 image files" in out
    images = np.concatenate([x.numpy() for x, _ in ds.train_ordered(64)])
    assert images.shape == (num_train, 8, 8, 3)
    flat = lambda colour: any((im == np.array(colour, np.float32)).all() for im in images)  # noqa: E731
    assert flat((10, 200, 30))  # The WebP, exactly (lossless).
    assert flat((50, 50, 50))  # The animated GIF's first frame.
    assert not flat((150, 150, 150))

    assert data.load(f"folder:{root}", batch_size=2, skip_bad_images=True, image_size=(4, 4)).image_size == (4, 4)
    assert "sizes" not in capsys.readouterr().out  # --image_size chosen: nothing to say.


def test_folder_check_is_cached(tmp_path, monkeypatch, user_error, make_tree, write_png):
    root = tmp_path / "d"
    make_tree(str(root))
    real = folder._decode_all
    calls = []
    monkeypatch.setattr(folder, "_decode_all", lambda paths, flag: calls.append(list(paths)) or real(paths, flag))
    data.load(f"folder:{root}", batch_size=2)
    assert len(calls) == 1 and len(calls[0]) == 13  # 9 train + 4 test files, decoded once.
    cache_files = list((tmp_path.parent / os.environ["XDG_CACHE_HOME"]).glob("sskt_tf/folder_checks/*.json"))
    assert len(cache_files) == 1

    data.load(f"folder:{root}", batch_size=2)
    assert len(calls) == 1  # Nothing decoded again.

    # A file that changes (size and time) is checked again, alone; so is a new one.
    changed = root / "train" / "cat" / "000.png"
    changed.write_bytes(changed.read_bytes()[:20])
    write_png(str(root / "test" / "bee" / "new.png"), np.zeros((8, 8, 3), np.uint8))
    message = user_error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert str(changed) in message and "1 of 14" in message
    assert sorted(calls[1]) == sorted([str(changed), str(root / "test" / "bee" / "new.png")])
    # A bad file stays bad from the cache too, with its reason.
    assert str(changed) in user_error(lambda: data.load(f"folder:{root}", batch_size=2))
    assert len(calls) == 2


def test_folder_check_cache_in_unwritable_place_still_loads(tmp_path, monkeypatch, capsys, make_tree):
    make_tree(str(tmp_path / "d"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    ds = data.load(f"folder:{tmp_path / 'd'}", batch_size=2)
    assert ds.num_train == 9
    assert "could not store the image check" in capsys.readouterr().out


def test_folder_size_ties_go_to_the_larger(tmp_path, capsys, make_tree, write_png):
    make_tree(str(tmp_path), train_counts={"a": 1, "b": 1}, test_counts={"a": 1, "b": 1}, size=(6, 6))
    for name in ("a", "b"):
        write_png(str(tmp_path / "train" / name / "big.png"), np.zeros((9, 7, 3), np.uint8))
    ds = data.load(f"folder:{tmp_path}", batch_size=2)
    assert ds.image_size == (9, 7)
    assert "2 sizes (9x7: 2 files, 6x6: 2 files); training at 9x7" in capsys.readouterr().out  # Counts: train/ only.
