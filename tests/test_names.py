"""The names the flags offer (sskt_tf.names) are exactly the names each registry serves."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from sskt_tf import augment, config, heads, losses, models, names, sources
from sskt_tf.errors import UserError

config.define_flags()


def test_each_choice_flag_offers_its_names_in_order():
    for flag, choices in {
        "model": names.MODEL_NAMES,
        "aux_head": names.HEAD_NAMES,
        "target_loss": names.TARGET_LOSSES,
        "aux_loss": names.AUX_LOSSES,
        "kd_reduction": names.KD_REDUCTIONS,
        "source_bn": names.SOURCE_BN_MODES,
        "source_outputs": names.SOURCE_OUTPUTS,
        "augment": names.AUGMENTS,
        "method": names.METHODS,
        "lr_schedule": names.LR_SCHEDULES,
        "strategy": names.STRATEGIES,
        "precision": names.PRECISIONS,
        "source_precision": names.SOURCE_PRECISIONS,
        "soft_label_cache": names.SOFT_LABEL_CACHES,
        "jit_compile": names.JIT_CHOICES,
        "cache": names.CACHES,
        "resnet_shortcut": names.RESNET_SHORTCUTS,
        "video_source_frames": names.VIDEO_SOURCE_FRAMES,
    }.items():
        assert flags.FLAGS[flag].parser.enum_values == list(choices), flag


def test_target_networks():
    assert tuple(models._BACKBONES) == names.MODEL_NAMES
    with pytest.raises(UserError, match=f"Allowed: {', '.join(names.MODEL_NAMES)}."):
        models.get_backbone("resnet21", (32, 32, 3))


def test_auxiliary_heads():
    channels = {"stage1": 4, "stage2": 8}
    built = {kind: heads.build_head(kind, 3, channels, name=kind) for kind in names.HEAD_NAMES}
    assert len({type(h) for h in built.values()}) == len(names.HEAD_NAMES)
    with pytest.raises(UserError, match=f"Allowed: {', '.join(names.HEAD_NAMES)}."):
        heads.build_head("mlp", 3, channels)


def test_losses():
    logits = tf.constant([[1.0, -1.0, 0.5], [0.2, 0.3, -2.0]])
    indices, multi_hot = tf.constant([0, 2]), tf.constant([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    for name in names.TARGET_LOSSES:
        labels = multi_hot if name in losses.MULTI_LABEL_TARGET_LOSSES else indices
        assert losses.target_loss_fn(name)(labels, logits).shape == (2,), name
    source = tf.constant([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    values = {kind: float(losses.aux_loss(kind, source, logits, 3.0)) for kind in names.AUX_LOSSES}
    assert len(set(values.values())) == len(names.AUX_LOSSES) and all(np.isfinite(v) for v in values.values())
    reductions = {r: float(losses.aux_loss("kd", source, logits, 3.0, kd_reduction=r)) for r in names.KD_REDUCTIONS}
    assert len(set(reductions.values())) == len(names.KD_REDUCTIONS)
    with pytest.raises(ValueError):
        losses.aux_loss("l2", source, logits, 3.0)


def test_source_settings():
    assert names.SOURCE_OUTPUTS == ("auto", *sources.NETWORK_OUTPUTS)
    inputs = keras.Input((8, 8, 3))
    network = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    for mode in names.SOURCE_BN_MODES:
        assert sources.Source(network, (8, 8), source_bn=mode).source_bn == mode
    with pytest.raises(UserError, match=f"Allowed: {', '.join(names.SOURCE_BN_MODES)}."):
        sources.Source(network, (8, 8), source_bn="train")


def test_augmentations():
    images = tf.fill([2, 8, 8, 3], 7.0)
    seed = tf.constant([0, 1], tf.int64)
    for kind in names.AUGMENTS:
        augmenter = augment.BatchAugmenter(config.AugmentationConfig(kind=kind), num_classes=3)
        out = augmenter.geometric(images, seed)
        assert out.dtype == tf.float32 and out.shape == images.shape
        # "none" leaves the images as they are; the others crop the zero-padded images.
        assert np.array_equal(out.numpy(), images.numpy()) == (kind == "none"), kind
        assert (augmenter.randaugment is not None) == (kind == "randaugment"), kind
