"""The one config and `.keras` round trip of the layer and model tests (KerasHub's `run_serialization_test`)."""

import keras
import numpy as np


def _outputs(outputs, pick):
    outputs = pick(outputs) if pick is not None else outputs
    return keras.ops.convert_to_numpy(outputs)


def assert_round_trips(layer, inputs, tmp_path=None, *, pick=None, rtol=1e-6, atol=1e-6, **call_kwargs):
    """`layer` rebuilt from `get_config()`, and reloaded from a `.keras` file, computes what it computes.

    Args:
      layer: a built or unbuilt Keras layer or model (called on `inputs` here).
      inputs: a batch it accepts, e.g. float32 `[N, H, W, 3]` images.
      tmp_path: a directory for the `.keras` file; None skips the file round trip.
      pick: picks the array to compare from the outputs (e.g. one stage of a backbone's dict).
      rtol, atol: the tolerances of the comparison of outputs.
      **call_kwargs: passed to every call (e.g. `training=False`).

    Returns:
      The clone made from the config.
    """
    expected = _outputs(layer(inputs, **call_kwargs), pick)
    clone = layer.__class__.from_config(layer.get_config())
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_outputs(clone(inputs, **call_kwargs), pick), expected, rtol=rtol, atol=atol)
    assert clone.get_config() == layer.get_config()
    if tmp_path is not None:
        path = f"{tmp_path}/{layer.name}.keras"
        if isinstance(layer, keras.Model):
            layer.save(path)
        else:  # A layer is saved inside a model of its own.
            x = keras.Input(inputs.shape[1:])
            keras.Model(x, layer(x, **call_kwargs)).save(path)
        loaded = keras.saving.load_model(path)
        if not isinstance(layer, keras.Model):
            loaded = loaded.layers[-1]
            assert type(loaded) is type(layer) and loaded.get_config() == layer.get_config()
        np.testing.assert_allclose(_outputs(loaded(inputs, **call_kwargs), pick), expected, rtol=rtol, atol=atol)
    return clone
