"""VGG-16 with BatchNorm for 32 px CIFAR images: the target of the paper's MAXL comparison."""

import keras

from sskt_tf.models.layers import ImageNormalization

# Conv widths per block; every block ends with a 2x2 max-pool. The common CIFAR variant
# (kuangliu/pytorch-cifar's VGG('VGG16')); MAXL's VGG-16 (lorenmt/maxl) has the same 13 conv
# layers but a Linear(512, 512) + ReLU hidden layer before its classifier.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@keras.saving.register_keras_serializable(package="sskt_tf")
class VGG16BN(keras.Model):
    """CIFAR VGG-16 with BatchNorm: 13 conv3x3 + BN + ReLU layers in five max-pooled blocks.

    Takes raw [0, 255] RGB images and returns a dict with the output of each
    block after its max-pool, `{"stage1": [B,H/2,W/2,64], "stage2":
    [B,H/4,W/4,128], "stage3": [B,H/8,W/8,256], "stage4": [B,H/16,W/16,512],
    "stage5": [B,H/32,W/32,512]}`. At 32 px `stage5` is 1x1x512, so the
    classifier's global pooling of `stage5` followed by `Dense(classes)` is the
    usual CIFAR VGG's flatten + `Linear(512, classes)`. The transfer module
    gets a branch per block (its stride-2 3x3 conv maps the 1x1 `stage5` to
    1x1). Convolutions keep their bias, as in the PyTorch CIFAR VGGs. With a
    10-class `Dense` classifier the network has 14,728,266 trainable
    parameters, the "14.7M" usually quoted for CIFAR VGG-16; MAXL's VGG-16
    adds a Linear(512, 512) hidden layer: 14,990,922, its "15.0M".

    Args:
        input_shape: image shape (H, W, 3); H and W may be None.
        normalize: prepend the ImageNet mean/std normalisation of raw images.
        sync_bn: BatchNorm statistics over all replicas of a tf.distribute strategy.

    Example:
    >>> backbone = VGG16BN()
    >>> features = backbone(keras.ops.ones((2, 32, 32, 3)))
    >>> features["stage5"].shape
    TensorShape([2, 1, 1, 512])

    Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for
    Large-Scale Image Recognition", ICLR 2015; S. Liu, A. Davison, E. Johns,
    "Self-Supervised Generalisation with Meta Auxiliary Learning", NeurIPS 2019.
    """

    def __init__(self, input_shape=(32, 32, 3), normalize=True, sync_bn=False, **kwargs):
        # === Functional Model ===
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        x = ImageNormalization(name="normalize")(inputs) if normalize else inputs
        outputs = {}
        for s, widths in enumerate(BLOCKS, start=1):
            for c, width in enumerate(widths, start=1):
                name = f"block{s}_conv{c}"
                x = keras.layers.Conv2D(
                    width, 3, padding="same", kernel_initializer="he_normal", name=name
                )(x)
                # PyTorch BatchNorm2d defaults (momentum 0.1, eps 1e-5).
                x = keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=f"{name}_bn"
                )(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{s}_pool")(x)
            outputs[f"stage{s}"] = x
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.image_shape = tuple(input_shape)
        self.normalize = normalize
        self.sync_bn = sync_bn
        self.stage_channels = {f"stage{s}": widths[-1] for s, widths in enumerate(BLOCKS, start=1)}

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_shape": self.image_shape,
            "normalize": self.normalize,
            "sync_bn": self.sync_bn,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
