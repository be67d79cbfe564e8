"""Serving a trained target: loading it, its input preprocessing, SavedModel and TFLite export, inference.

- `preprocessing`: the resizing and decoding that the SavedModel runs and that `sskt_tf.data`
  applies to its images, so a served image reaches the model as a training or test image does.
- `trained`: `load_trained`, a run directory or a `.keras` file as a `TrainedModel`.
- `saved_model`: `export_saved_model`, the TensorFlow SavedModel (TF Serving, `tf.saved_model.load`).
- `tflite`: `export_tflite`, the TFLite flatbuffer and its labels file.
- `export`: `export`, the choice of format and the default output, over the two above.
- `predictor`: `predict` and `Predictor`, the top classes of image files from a run, a `.keras`
  file or a SavedModel.

The commands over them are `python -m sskt_tf.export` and `python -m sskt_tf.predict`. This
package imports nothing of itself here, so `sskt_tf.data` can use `preprocessing` without loading
the rest.
"""
