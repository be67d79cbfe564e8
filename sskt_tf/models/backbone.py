"""The base of the target networks: raw images in, named stage outputs out (KerasHub's `Backbone`)."""

import keras


class Backbone(keras.Model):
    """A functional model from raw [0, 255] RGB images to a dict of named stage outputs.

    The stages are `{"stage1": ..., "stageN": ...}`, in order, each a float `[B, H_s, W_s, C_s]`
    feature map (channels last; the compute dtype of the policy, float32 by default). A target's
    classifier pools the last stage (`TargetModel`); SSKT's transfer module reads them all
    (`sskt_tf.heads`). `stage_channels` gives each stage's `C_s`, as KerasHub's backbones give
    `pyramid_outputs`.

    Subclasses build the graph, call `super().__init__(inputs, stage_outputs, **kwargs)` and extend
    `get_config` with their own constructor arguments (`from_config` then calls the constructor).

    Args:
        inputs: the `keras.Input` of the images, `(H, W, 3)`; H and W may be None.
        stage_outputs: dict, stage name -> Keras tensor `[B, H_s, W_s, C_s]`, in stage order.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: a stage output without a known channel count (the last axis).

    Example:
    >>> class TinyBackbone(Backbone):
    ...     def __init__(self, **kwargs):
    ...         inputs = keras.Input((32, 32, 3))
    ...         x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    ...         super().__init__(inputs, {"stage1": x}, **kwargs)
    >>> TinyBackbone().stage_channels
    {'stage1': 8}

    Reference: keras_hub.models.Backbone (KerasHub).
    """

    # The output width of the SSKT transfer module's branches for this backbone, or None for the
    # last stage's width (the reference's CIFAR choice); see `sskt_tf.heads.build_head`.
    transfer_width = None

    def __init__(self, inputs, stage_outputs, **kwargs):
        stage_outputs = dict(stage_outputs)
        channels = {key: output.shape[-1] for key, output in stage_outputs.items()}
        if any(c is None for c in channels.values()):
            raise ValueError(f"Every stage output needs a known channel count. Received: {channels}")
        super().__init__(inputs=inputs, outputs=stage_outputs, **kwargs)
        # === Config ===
        self.stage_channels = {key: int(c) for key, c in channels.items()}

    def get_config(self):
        # Not Functional's graph config: the subclass's constructor rebuilds the graph.
        return {"name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
