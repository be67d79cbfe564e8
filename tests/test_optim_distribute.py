"""Tests of the learning-rate schedules (epoch boundaries as PyTorch MultiStepLR) and strategy helpers."""

import dataclasses

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
