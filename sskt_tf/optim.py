"""The optimizer of the reference recipe: SGD with momentum and a per-epoch learning-rate schedule."""

import keras


def learning_rate(config, steps_per_epoch):
    """The learning rate as a function of the step, from `config.lr_schedule`.

    multistep: `lr * lr_gamma^i` after the i-th of `lr_milestones` epochs (PyTorch MultiStepLR, stepped
    per epoch as the reference does); cosine: from `lr` to 0 over all steps (Keras `CosineDecay`,
    no warm-up or restarts); constant.

    Args:
        config: the run's `Config`; reads `lr_schedule`, `lr`, `lr_gamma`, `lr_milestones` (epochs;
            those at or after `epochs` never apply) and `epochs`.
        steps_per_epoch: optimizer steps per epoch (int >= 1); converts epochs into steps.

    Returns:
        A Python float (constant, or multistep without a milestone before `epochs`) or a
        `keras.optimizers.schedules.LearningRateSchedule` of the optimizer's step count (the steps
        already taken), for `keras.optimizers.SGD(learning_rate=...)`.
    """
    if config.lr_schedule == "constant":
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


def build_optimizer(config, steps_per_epoch):
    """SGD with momentum. Weight decay is not here: TrainingModel adds the coupled L2 to the gradients."""
    return keras.optimizers.SGD(learning_rate(config, steps_per_epoch), momentum=config.momentum)
