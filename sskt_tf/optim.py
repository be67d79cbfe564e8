"""The optimizer of the reference recipe: SGD with momentum (and PyTorch's dampening) and a learning-rate schedule."""

import keras
from keras import ops


def learning_rate(config, steps_per_epoch):
    """The learning rate as a function of the step, from `config.lr_schedule`.

    multistep: `lr * lr_gamma^i` after the i-th of `lr_milestones` epochs (PyTorch MultiStepLR, stepped
    per epoch as the reference does); cosine: from `lr` to 0 over all steps (Keras `CosineDecay`,
    no warm-up or restarts); constant; plateau: starts at `lr`, and `sskt_tf.callbacks.ReduceLROnPlateau`
    lowers it between epochs.

    Args:
        config: the run's `Config`; reads `lr_schedule`, `lr`, `lr_gamma`, `lr_milestones` (epochs;
            those at or after `epochs` never apply) and `epochs`.
        steps_per_epoch: optimizer steps per epoch (int >= 1); converts epochs into steps.

    Returns:
        A Python float (constant, or multistep without a milestone before `epochs`) or a
        `keras.optimizers.schedules.LearningRateSchedule` of the optimizer's step count (the steps
        already taken), for `keras.optimizers.SGD(learning_rate=...)`.
    """
    if config.lr_schedule in ("constant", "plateau"):
        return config.lr
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=config.epochs * steps_per_epoch)
    milestones = [m for m in config.lr_milestones if m < config.epochs]
    if not milestones:
        return config.lr
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        # Keras keeps values[i] while step <= boundaries[i], and `step` counts the steps already
        # taken: the first step of epoch m (0-based) is step m * steps_per_epoch.
        boundaries=[m * steps_per_epoch - 1 for m in milestones],
        values=[config.lr * config.lr_gamma**i for i in range(len(milestones) + 1)],
    )


@keras.saving.register_keras_serializable(package="sskt_tf")
class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum and dampening, updating exactly as `torch.optim.SGD` does.

    For gradient g (the coupled L2 already in it, as `TrainingModel` adds it) and learning rate lr:

        buf = g                                      at the first step,
        buf = momentum * buf + (1 - dampening) * g   after it,
        w = w - lr * buf.

    Keras' SGD keeps `v = momentum * v - lr * g` instead, with the learning rate inside the
    velocity: the two agree for a constant learning rate without dampening, and Keras' has no
    dampening. The SSKT authors' video recipe uses dampening 0.9 (3D_SSKT/opts.py, after Hara et
    al.'s 3D-ResNets-PyTorch), which shrinks the momentum buffer's intake of each gradient tenfold.

    Args:
        learning_rate: a float or a schedule.
        momentum: in (0, 1); the buffer of dampening needs momentum.
        dampening: in [0, 1).
        **kwargs: `keras.optimizers.SGD` arguments (`name`, ...), without `nesterov`.

    Raises:
        ValueError: momentum not in (0, 1), or dampening not in [0, 1).

    Reference: `torch.optim.SGD` (PyTorch), its `momentum` and `dampening` arguments.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, dampening=0.0, **kwargs):
        if not 0 < momentum < 1 or not 0 <= dampening < 1:
            raise ValueError(f"TorchSGD needs 0 < momentum < 1 and 0 <= dampening < 1. Received: momentum={momentum}, dampening={dampening}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.dampening = float(dampening)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        damped = ops.add(ops.multiply(buffer, self.momentum), ops.multiply(gradient, 1.0 - self.dampening))
        # PyTorch starts the buffer at the first gradient, undamped.
        self.assign(buffer, ops.where(ops.equal(self.iterations, 0), gradient, damped))
        self.assign_sub(variable, ops.multiply(buffer, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update({"dampening": self.dampening})
        return config


def build_optimizer(config, steps_per_epoch):
    """SGD with momentum: Keras' SGD, or `TorchSGD` with --dampening > 0.

    Weight decay is not here: `TrainingModel` adds the coupled L2 to the gradients.
    """
    rate = learning_rate(config, steps_per_epoch)
    if config.dampening > 0:
        return TorchSGD(rate, momentum=config.momentum, dampening=config.dampening)
    return keras.optimizers.SGD(rate, momentum=config.momentum)
