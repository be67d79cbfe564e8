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


CHANNELS_3D = {"stage1": 8, "stage2": 16, "stage3": 32, "stage4": 64}


def clip_features(batch=2, seed=0):
    """Stage outputs of a 3D target, `[B, T, H, W, C]`, with odd and even sizes."""
    rng = np.random.RandomState(seed)
    sizes = {"stage1": (4, 8, 8), "stage2": (2, 4, 4), "stage3": (1, 3, 2), "stage4": (2, 2, 1)}
    return {k: rng.randn(batch, *sizes[k], c).astype(np.float32) for k, c in CHANNELS_3D.items()}


def test_linear_head_pools_a_clip_stage_over_time_and_space():
    head = heads.build_head("linear", 5, CHANNELS_3D)
    f = clip_features()
    out = head(f).numpy()
    kernel, bias = head.dense.get_weights()
    np.testing.assert_allclose(out, f["stage4"].mean(axis=(1, 2, 3)) @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_3d_transfer_module_convolves_each_stage_in_time_and_space():
    head = heads.build_head("transfer_module", 7, CHANNELS_3D, spatial_dims=3)
    f = clip_features()
    out = head(f).numpy()
    assert out.shape == (2, 7) and head.spatial_dims == 3
    for key, cin in CHANNELS_3D.items():
        branch = next(b for b in head.branches if b.name == f"{key}_branch")
        convs = [l for l in branch.layers if isinstance(l, keras.layers.Conv3D)]
        assert [tuple(c.kernel.shape) for c in convs] == [(1, 1, 1, cin, 32), (3, 3, 3, 32, 32), (1, 1, 1, 32, 64)]
        assert [c.strides for c in convs] == [(1, 1, 1), (2, 2, 2), (1, 1, 1)]
        # "same" padding: ceil(n / 2) in time, height and width.
        t, h, w = f[key].shape[1:4]
        assert tuple(branch(f[key]).shape) == (2, -(-t // 2), -(-h // 2), -(-w // 2), 64)
    # One branch by hand: conv 1x1x1 (8 -> 32), BN(32), conv 3x3x3 (32 -> 32), BN(32), conv 1x1x1 (32 -> 64),
    # BN(64); no conv biases; a BN has 2 trainable weights per channel and 2 moving statistics.
    stage1 = head.branches[0]
    trainable = 8 * 32 + 2 * 32 + 27 * 32 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert trainable == 30_208 and sum(int(np.prod(v.shape)) for v in stage1.trainable_weights) == trainable
    assert stage1.count_params() == trainable + 2 * (32 + 32 + 64)
    pooled = [b(f[k]).numpy().mean(axis=(1, 2, 3)) for k, b in zip(head.stage_keys, head.branches)]
    kernel, bias = head.dense.get_weights()
    np.testing.assert_allclose(out, np.mean(pooled, axis=0) @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_each_branch_of_the_3d_transfer_module_reads_its_own_stage():
    head = heads.build_head("transfer_module", 7, CHANNELS_3D, spatial_dims=3)
    f = clip_features()
    out = head(f).numpy()

    kernel, bias = head.dense.get_weights()

    def by_hand(g):  # stage k through branch k, pooled over time and space, averaged, Dense
        pooled = [b(g[k]).numpy().mean(axis=(1, 2, 3)) for k, b in zip(head.stage_keys, head.branches)]
        return np.mean(pooled, axis=0) @ kernel + bias

    for key in CHANNELS_3D:
        changed = dict(f, **{key: np.zeros_like(f[key])})
        zeroed = head(changed).numpy()
        assert np.abs(zeroed - out).max() > 1e-3, key
        np.testing.assert_allclose(zeroed, by_hand(changed), rtol=1e-5, atol=1e-5)


def test_3d_transfer_module_round_trips_and_refuses_other_dims():
    head = heads.build_head("transfer_module", 10, CHANNELS_3D, name="aux", spatial_dims=3)
    clone = assert_round_trips(head, clip_features())
    assert clone.get_config()["spatial_dims"] == 3
    # A config saved before the argument existed builds the 2D module.
    old = heads.build_head("transfer_module", 10, CHANNELS).get_config()
    del old["spatial_dims"]
    assert heads.TransferModule.from_config(old).spatial_dims == 2
    with pytest.raises(ValueError, match=r"spatial_dims must be 2 \(images\) or 3 \(clips\). Received: spatial_dims=1"):
        heads.TransferModule(10, 64, spatial_dims=1)
