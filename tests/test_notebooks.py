"""Executes each notebook top to bottom on smoke parameters, so that a broken notebook fails CI.

The parameters are overridden by a cell injected after the cell tagged `parameters` (papermill's
convention); the kernel is `python3`, offline, working in the test's temporary directory (outside the
repository, as a user's notebook would).
"""

import os

import keras
import nbformat
import numpy as np
import pytest
import tensorflow as tf
from nbclient import NotebookClient
from conftest import ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")
CELL_TIMEOUT_S = 600
OFFLINE = {"IN_COLAB": False, "INSTALL": False, "TENSORBOARD": False, "MOUNT_DRIVE": False}
SMOKE_TRAINING = "--steps_per_epoch=2 --batch_size=8 --eval_batch_size=64"


def read(name):
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def execute(name, parameters, workdir):
    """Runs notebook `name` in `workdir` with `parameters` injected; returns the executed notebook."""
    nb = read(name)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    source = "# Injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def outputs(nb, kind):
    """All outputs of `kind` ('text' for streams and text/plain, or a MIME type such as image/png)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "text":
                found.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
            elif kind in out.get("data", {}):
                found.append(out["data"][kind])
    return found


@pytest.mark.parametrize("name", ["sskt_quickstart.ipynb", "bring_your_own.ipynb"])
def test_notebooks_are_stored_thin_and_without_outputs(name):
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs before committing"
    body = "\n".join(c.source for c in code)
    assert "def " not in body and "class " not in body  # Logic belongs in the package.
    assert "import sskt_tf" in body or "from sskt_tf import" in body


def _quickstart(workdir, stand_ins):
    run = workdir / "run"
    parameters = {
        **OFFLINE,
        "CONFIG": "cifar",
        "DATASET": "synthetic",
        # A tiny source of ImageNet's 1000 classes in place of the ResNet-50 (a spec like any other).
        "SOURCES": stand_ins("resnet50_imagenet", 1000),
        "EPOCHS": 1,
        "EXTRA_FLAGS": SMOKE_TRAINING,
        "RUN_DIR": str(run),
    }
    return (run, execute("sskt_quickstart.ipynb", parameters, workdir))


@pytest.mark.slow
def test_quickstart_trains_exports_and_predicts(tmp_path, stand_ins):
    run, nb = _quickstart(tmp_path, stand_ins)
    assert (run / "results.json").exists() and (run / "saved_model" / "saved_model.pb").exists()
    assert len(outputs(nb, "image/png")) == 2  # The augmented batch and the predictions.
    text = "\n".join(outputs(nb, "text"))
    assert "'serving_default'" in text and "'serve_image_bytes'" in text
    assert text.count(" predicted class_") == 16  # One line per test image.


def _bring_your_own(workdir, stand_ins):
    rng = np.random.default_rng(0)
    images = workdir / "images"
    for split, count in (("train", 8), ("test", 3)):
        for label, colour in (("apple", (200, 40, 40)), ("leaf", (40, 180, 40)), ("sky", (60, 90, 220))):
            os.makedirs(images / split / label)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(str(images / split / label / f"{i}.png"), tf.io.encode_png(pixels))
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    source = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
    source.save(workdir / "my_source.keras")
    run = workdir / "run"
    parameters = {
        **OFFLINE,
        "IMAGE_DIR": str(images),
        "SOURCE_MODEL": str(workdir / "my_source.keras"),
        "IMAGE_SIZE": (16, 16),
        "EPOCHS": 1,
        "EXTRA_FLAGS": SMOKE_TRAINING,
        "RUN_DIR": str(run),
    }
    return (workdir, images, run, execute("bring_your_own.ipynb", parameters, workdir))


@pytest.mark.slow
def test_bring_your_own_uses_the_folder_and_the_source_model(tmp_path, stand_ins):
    workdir, images, run, nb = _bring_your_own(tmp_path, stand_ins)
    config = (run / "config.json").read_text()
    assert str(workdir / "my_source.keras") in config and f"folder:{images}" in config
    assert (run / "results.json").exists()
    assert len(list((run / "evaluation").glob("*/confusion_matrix.png"))) == 1
    text = "\n".join(outputs(nb, "text"))
    assert "24 training and 9 test images of 3 classes: ['apple', 'leaf', 'sky']" in text
    assert "sees (37, 37) images, predicts 5 classes" in text  # 16 px * 7/3, floored.
    assert "accuracy=" in text and f"{images}/test/apple/0.png" in text  # Evaluation table, predictions.
    assert len(outputs(nb, "image/png")) == 2  # The batch gallery and the confusion matrix.
