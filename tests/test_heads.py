"""Tests of the auxiliary heads: shapes, the transfer module's widths and arithmetic, config round trips."""

import keras
import numpy as np
import pytest

from sskt_tf import heads, names
from sskt_tf.errors import UserError
from round_trip import assert_round_trips

CHANNELS = {"stage1": 16, "stage2": 32, "stage3": 64}


def features(batch=2, seed=0):
    rng = np.random.RandomState(seed)
    return {
        "stage1": rng.randn(batch, 16, 16, 16).astype(np.float32),
        "stage2": rng.randn(batch, 8, 8, 32).astype(np.float32),
        "stage3": rng.randn(batch, 4, 4, 64).astype(np.float32),
    }


def test_linear_head_is_dense_on_pooled_last_stage():
    head = heads.build_head("linear", 1000, CHANNELS)
    f = features()
    out = head(f).numpy()
    kernel, bias = head.dense.get_weights()
    np.testing.assert_allclose(out, f["stage3"].mean(axis=(1, 2)) @ kernel + bias, rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 1000)


def test_transfer_module_widths_match_the_reference():
    head = heads.build_head("transfer_module", 365, CHANNELS)
    head(features())
    for key, cin in CHANNELS.items():
        branch = next(b for b in head.branches if b.name == f"{key}_branch")
        convs = [l for l in branch.layers if isinstance(l, keras.layers.Conv2D)]
        assert [tuple(c.kernel.shape) for c in convs] == [(1, 1, cin, 32), (3, 3, 32, 32), (1, 1, 32, 64)]
        assert [c.strides for c in convs] == [(1, 1), (2, 2), (1, 1)]
        assert sum(isinstance(l, keras.layers.BatchNormalization) for l in branch.layers) == 3
        assert sum(isinstance(l, keras.layers.ReLU) for l in branch.layers) == 3
    assert tuple(head.dense.kernel.shape) == (64, 365)


def test_transfer_module_averages_the_pooled_branches():
    head = heads.build_head("transfer_module", 7, CHANNELS)
    f = features()
    out = head(f).numpy()
    pooled = [b(f[k]).numpy().mean(axis=(1, 2)) for k, b in zip(head.stage_keys, head.branches)]
    kernel, bias = head.dense.get_weights()
    np.testing.assert_allclose(out, np.mean(pooled, axis=0) @ kernel + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", names.HEAD_NAMES)
def test_config_round_trip(kind):
    assert_round_trips(heads.build_head(kind, 10, CHANNELS, name="aux"), features())


def test_unknown_head():
    with pytest.raises(UserError, match="--aux_head=mlp.*linear, transfer_module"):
        heads.build_head("mlp", 10, CHANNELS)
