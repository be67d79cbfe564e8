"""Tests of the learning-rate schedules (epoch boundaries as PyTorch MultiStepLR) and strategy helpers."""

import dataclasses

import numpy as np

import pytest

from sskt_tf import distribute, optim
from sskt_tf.config import Config
from sskt_tf.errors import UserError


def lr_at(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_multistep_changes_on_the_first_step_of_each_milestone_epoch():
    config = Config(lr=0.1, lr_milestones=(60, 120, 160), lr_gamma=0.2, epochs=200)
    schedule = optim.learning_rate(config, steps_per_epoch=390)
    expected = {0: 0.1, 60 * 390 - 1: 0.1, 60 * 390: 0.02, 120 * 390 - 1: 0.02, 120 * 390: 0.004, 160 * 390: 0.0008}
    for step, lr in expected.items():
        assert lr_at(schedule, step) == pytest.approx(lr, rel=1e-6), step


def test_cosine_and_constant():
    config = Config(lr=0.1, lr_schedule="cosine", epochs=10)
    schedule = optim.learning_rate(config, steps_per_epoch=10)
    assert lr_at(schedule, 0) == pytest.approx(0.1)
    assert lr_at(schedule, 50) == pytest.approx(0.05, rel=1e-5)
    assert lr_at(schedule, 100) == pytest.approx(0.0, abs=1e-8)
    assert optim.learning_rate(dataclasses.replace(config, lr_schedule="constant"), 10) == 0.1


def test_optimizer_is_sgd_with_momentum_and_no_decoupled_decay():
    opt = optim.build_optimizer(Config(momentum=0.9), 10)
    assert opt.momentum == 0.9 and not opt.weight_decay


def test_batch_size_must_divide_by_replicas(two_replicas):
    distribute.check_batch_size(8, two_replicas)
    with pytest.raises(UserError, match="--batch_size=7 does not divide by the 2 replicas"):
        distribute.check_batch_size(7, two_replicas)


def test_strategies_by_name():
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1
    assert distribute.get_strategy("one_device").num_replicas_in_sync == 1
    with pytest.raises(UserError, match="--strategy=tpu"):
        distribute.get_strategy("tpu")


def test_dampened_sgd_steps_exactly_as_torch_sgd():
    """--dampening: three steps of TorchSGD equal torch.optim.SGD's (momentum, dampening, weight decay), and a
    learning-rate change between steps takes effect as in torch (the rate outside the buffer)."""
    import keras
    import numpy as np
    import torch  # In the [dev] extra.

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    rates = [0.1, 0.1, 0.01]
    weight_decay = 1e-3

    w = torch.nn.Parameter(torch.tensor(start))
    reference = torch.optim.SGD([w], lr=rates[0], momentum=0.9, dampening=0.9, weight_decay=weight_decay)
    variable = keras.Variable(start)
    optimizer = optim.build_optimizer(Config(lr=rates[0], momentum=0.9, dampening=0.9, lr_schedule="plateau"), 1)
    assert isinstance(optimizer, optim.TorchSGD) and optimizer.dampening == 0.9
    for g, lr in zip(grads, rates):
        w.grad = torch.tensor(g)
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        optimizer.learning_rate = lr
        # TrainingModel adds the coupled L2 to the gradient; so does torch's weight_decay.
        optimizer.apply([g + weight_decay * keras.ops.convert_to_numpy(variable)], [variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), w.detach().numpy(), rtol=1e-6, atol=1e-7)
    # Without dampening the recipe keeps Keras' SGD (runs of earlier versions stay identical).
    assert type(optim.build_optimizer(Config(momentum=0.9), 1)) is keras.optimizers.SGD


def test_dampening_needs_momentum_and_a_range():
    with pytest.raises(UserError, match="--dampening=0.5 damps the momentum buffer, but --momentum=0"):
        Config(dampening=0.5, momentum=0.0)
    with pytest.raises(UserError, match=r"--dampening must be in \[0, 1\)"):
        Config(dampening=1.0)


def test_plateau_lowers_the_rate_as_torch_reduce_lr_on_plateau():
    """The callback against torch.optim.lr_scheduler.ReduceLROnPlateau on one loss sequence (with ties,
    tiny improvements under the relative threshold, and epochs without evaluation), and its state
    carried into a resumed run."""
    import keras
    import torch

    from sskt_tf import callbacks

    losses = [1.0, 0.9, 0.9, 0.89995, 0.95, None, 0.91, 0.5, 0.6, 0.6, 0.6, 0.7, 0.6, 0.4, 0.5, 0.5, 0.5]
    w = torch.nn.Parameter(torch.zeros(1))
    reference_optimizer = torch.optim.SGD([w], lr=0.01)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(reference_optimizer, mode="min", factor=0.1, patience=2)
    expected = []
    for loss in losses:
        if loss is not None:
            reference.step(loss)
        expected.append(reference_optimizer.param_groups[0]["lr"])

    class Holder:
        optimizer = keras.optimizers.SGD(0.01)

    def run(sequence, restored=None):
        callback = callbacks.ReduceLROnPlateau(factor=0.1, patience=2, restored=restored)
        callback.set_model(Holder)
        rates = []
        for epoch, loss in enumerate(sequence):
            callback.on_epoch_end(epoch, {} if loss is None else {"val_loss": loss})
            rates.append(float(keras.ops.convert_to_numpy(Holder.optimizer.learning_rate)))
        return rates, callback.state()

    first, state = run(losses[:8])
    second, _ = run(losses[8:], restored=state)  # A resumed run: the rate is the optimizer's, the rest the state's.
    np.testing.assert_allclose(first + second, expected, rtol=1e-6)
    assert expected[-1] < expected[0] / 50  # The sequence does reduce the rate (twice).
