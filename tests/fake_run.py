"""A run directory without training: a small Keras target with the config.json and results.json of a run.

`sskt_tf.serving.trained.load_trained` reads such a directory as it reads one of
`python -m sskt_tf.train`; the export, serving and evaluation tests use it where the network does
not matter.
"""

import json
import os

import keras
import numpy as np


def linear_model(num_classes, size=(8, 8)):
    """Images -> mean colour -> Dense: logits are a known linear function of the mean colour.

    Returns:
        `(model, kernel, bias)`: the model of float32 `[N, *size, 3]` images, its Dense kernel
        `[3, num_classes]` and bias `[num_classes]` as numpy arrays.
    """
    inputs = keras.Input((*size, 3))
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    kernel = np.linspace(-0.02, 0.02, 3 * num_classes).reshape(3, num_classes).astype(np.float32)
    dense.set_weights([kernel, np.linspace(-1, 1, num_classes).astype(np.float32)])
    return model, kernel, np.linspace(-1, 1, num_classes)


def fake_run(directory, model, class_names, target_loss="ce"):
    """Writes `model` as `directory/target.keras` beside a config.json and a results.json; returns `directory`."""
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "target.keras"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"dataset": "synthetic", "target_loss": target_loss}, f)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"class_names": list(class_names), "image_size": list(model.input_shape[1:3])}, f)
    return directory
