"""Serving a trained target: loading it, its input preprocessing, SavedModel and TFLite export.

- `preprocessing`: the resizing and decoding that the SavedModel runs and that `sskt_tf.data`
  applies to its images, so a served image reaches the model as a training or test image does.
- `trained`: `load_trained`, a run directory or a `.keras` file as a `TrainedModel`.
- `saved_model`: `export_saved_model`, the TensorFlow SavedModel (TF Serving, `tf.saved_model.load`).
- `tflite`: `export_tflite`, the TFLite flatbuffer and its labels file.

The command that writes them is `python -m sskt_tf.export`. This package imports nothing of
itself here, so `sskt_tf.data` can use `preprocessing` without loading the rest.
"""
