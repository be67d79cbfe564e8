"""Runs of colour models: trained targets whose every prediction is known by construction.

A colour model classifies an image by the nearest of its class colours: its logits are
`-(squared distance of the image's mean colour to each class colour) / (2 * SCALE)` plus a
constant per image (a Dense layer on the mean colour). The evaluation tests use `evaluation_run`
(six classes, a test folder of plain colours), the prediction tests `prediction_files` (seven
classes, the run's SavedModel and three image files); the command tests reuse them.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from sskt_tf.serving.export import export

SCALE = 20000.0


def colour_model(colours, size=(8, 8), names=False):
    """The colour model of `colours` (`[C, 3]`, 0..255) on float32 images `[N, *size, 3]`.

    `names=True` names the input `images` and the Dense layer `classifier`.
    """
    colours = np.asarray(colours, np.float64)
    inputs = keras.Input((*size, 3), name="images" if names else None)
    dense = keras.layers.Dense(len(colours), name="classifier" if names else None)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([(colours.T / SCALE).astype(np.float32), (-(colours**2).sum(1) / (2 * SCALE)).astype(np.float32)])
    return model


# --- The evaluation run: six classes; three of the 20 test images have another class's colour. -------

EVALUATION_CLASSES = ["airplane", "cat", "dog", "frog", "ship", "truck"]
EVALUATION_COLOURS = np.array(
    [[220, 220, 250], [200, 60, 20], [40, 200, 30], [10, 40, 230], [20, 20, 60], [240, 240, 10]], np.float64
)
# (true class, colour of the image) for the 20 test images; three look like another class.
TEST_SET = (
    [("airplane", "airplane")] * 3
    + [("cat", "cat")] * 4 + [("cat", "dog")]
    + [("dog", "dog")] * 3
    + [("frog", "frog")] * 3
    + [("ship", "ship")] * 2 + [("ship", "airplane")]  # airplane's colour is the farthest from ship's: top-5 miss.
    + [("truck", "truck")] * 2 + [("truck", "cat")]
)


def image_colours():
    """Each test image's colour; a different brightness offset per image keeps every score distinct."""
    colours = np.array(
        [EVALUATION_COLOURS[EVALUATION_CLASSES.index(look)] + i - 15 for i, (_, look) in enumerate(TEST_SET)]
    )
    assert colours.min() >= 0 and colours.max() <= 255
    return colours


def evaluation_run(root):
    """A run directory with the six-class colour model, trained and tested on a folder of the TEST_SET images."""
    data = root / "data"
    for i, ((label, _), colour) in enumerate(zip(TEST_SET, image_colours())):
        png = tf.io.encode_png(np.full((8, 8, 3), colour, np.uint8))
        for split in ("train", "test"):
            os.makedirs(data / split / label, exist_ok=True)
            tf.io.write_file(str(data / split / label / f"{i:02d}.png"), png)
    run = root / "run"
    run.mkdir()
    colour_model(EVALUATION_COLOURS, names=True).save(run / "target.keras")
    (run / "config.json").write_text(json.dumps({"dataset": f"folder:{data}", "data_dir": None, "target_loss": "ce"}))
    (run / "results.json").write_text(json.dumps({"class_names": EVALUATION_CLASSES, "image_size": [8, 8]}))
    return run


# --- The prediction files: seven classes, a run, its SavedModel, three images of other sizes. --------

PREDICTION_CLASSES = ["cat", "dog", "frog", "horse", "ship", "truck", "zebra"]
PREDICTION_COLOURS = np.array(
    [[200, 60, 20], [40, 200, 30], [10, 40, 230], [120, 80, 40], [20, 20, 60], [240, 240, 10], [128, 128, 128]], np.float64
)


def prediction_files(root):
    """A run directory with the seven-class colour model, its SavedModel, and three images of other sizes.

    Returns:
        `{"run": run dir, "keras": its target.keras, "saved_model": the SavedModel directory,
        "root": root}` (paths as str, `root` as given); the images are `root/red.png` (20x30),
        `root/grey.png` (5x7) and `root/blue.jpg` (16x16).
    """
    run = root / "run"
    run.mkdir()
    colour_model(PREDICTION_COLOURS).save(run / "target.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "folder:/x", "target_loss": "ce"}))
    (run / "results.json").write_text(json.dumps({"class_names": PREDICTION_CLASSES, "image_size": [8, 8]}))
    saved = export(str(run), str(root / "saved_model"))
    images = {
        "red.png": tf.io.encode_png(np.full((20, 30, 3), (205, 55, 25), np.uint8)),
        "grey.png": tf.io.encode_png(np.full((5, 7, 3), (125, 130, 128), np.uint8)),
        "blue.jpg": tf.io.encode_jpeg(np.full((16, 16, 3), (10, 40, 230), np.uint8), quality=100),
    }
    for name, data in images.items():
        tf.io.write_file(str(root / name), data)
    return {"run": str(run), "keras": str(run / "target.keras"), "saved_model": saved, "root": root}
