"""Tests of `--sources=keras_hub:<preset>`: a KerasHub image classifier as a frozen source, offline.

Every preset here is a tiny ResNet classifier written by `save_to_preset` in the test; the sources
built from it are compared with KerasHub's own `predict` (which runs the preset's preprocessor).
"""

import csv
import json
import re

import keras
import keras_hub
import numpy as np
import pytest
import requests
import tensorflow as tf
import urllib3

from sskt_tf import config as config_lib
from sskt_tf import soft_labels, sources
from sskt_tf.errors import UserError
from conftest import run_training
from round_trip import assert_round_trips

RNG = np.random.RandomState(0)
IMAGES = RNG.uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
CLASSES = 5
# ImageNet's mean and standard deviation, as KerasHub's ResNet presets write them into their converter.
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# The size a source sees for 16-px images: floor(16 * 7/3).
SCALED = 37


def _classifier(activation=None, preprocessor=True, seed=1):
    """A tiny KerasHub ResNet classifier (about 80k weights) whose converter normalises as ImageNet's."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],  # KerasHub's ResNet requires 64 filters in the stem and the first stage.
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(SCALED, SCALED), scale=list(1 / (255 * STD)), offset=list(-MEAN / STD)
    )
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=CLASSES,
        activation=activation,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter) if preprocessor else None,
    )
    # Logits spread over several units: a stripped softmax and its probabilities are then far apart.
    kernel, bias = classifier.get_layer("predictions").get_weights()
    classifier.get_layer("predictions").set_weights([kernel * 40.0, bias])
    return classifier


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """`{kind: (preset directory, classifier)}`, written once for the module."""
    root = tmp_path_factory.mktemp("keras_hub_presets")
    made = {}
    for kind, kwargs in (("tiny_r", {}), ("tiny_softmax", {"activation": "softmax"})):
        classifier = _classifier(**kwargs)
        classifier.save_to_preset(str(root / kind))
        made[kind] = (str(root / kind), classifier)
    return made


def test_a_preset_source_computes_the_classifiers_own_predictions_and_is_frozen(presets):
    path, classifier = presets["tiny_r"]
    source = sources.build_source(f"keras_hub:{path}", (16, 16))
    assert source.name == "source_tiny_r" and source.num_classes == CLASSES
    # No fixed input size: the --source_scale'd size, not the preset's training size.
    assert source.image_size == (SCALED, SCALED)
    assert source.trainable_weights == [] and not source.trainable
    out = source(IMAGES).numpy()
    resized = tf.image.resize(IMAGES, (SCALED, SCALED), method="bilinear").numpy()
    # KerasHub's predict runs the preset's preprocessor (resizing to 37 px, the identity here, then
    # its scale and offset) on the raw 0..255 images.
    np.testing.assert_allclose(out, classifier.predict(resized, verbose=0), rtol=1e-5, atol=1e-5)
    # The documented preprocessing, by hand: (x / 255 - mean) / std into the network alone.
    manual = classifier(((resized / 255.0 - MEAN) / STD).astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(out, manual, rtol=1e-4, atol=1e-4)
    assert np.ptp(out, axis=1).min() > 1.0  # Logits that tell images and classes apart.
    # Images in 0..1 would have been another thing: the source takes the pipeline's 0..255.
    assert np.abs(source(IMAGES / 255.0).numpy() - out).max() > 1e-2
    x = tf.constant(IMAGES)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(source(x))
    assert tape.gradient(y, x) is None


def test_a_softmax_preset_gives_its_logits(presets, capsys):
    path, _ = presets["tiny_softmax"]
    _, logits_twin = presets["tiny_r"]  # The same seed: the same weights, without the softmax.
    source = sources.build_source(f"keras_hub:{path}", (16, 16))
    assert (source.network_outputs, source.stripped_activation) == ("logits", "softmax")
    line = capsys.readouterr().out
    assert line.startswith(f"--sources=keras_hub:{path}: using the pre-softmax logits of 'tiny_softmax'") and line.count("\n") == 1
    resized = tf.image.resize(IMAGES, (SCALED, SCALED)).numpy()
    expected = logits_twin.predict(resized, verbose=0)
    np.testing.assert_allclose(source(IMAGES).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match=rf"^--sources=keras_hub:{path}: --source_outputs=logits, but the network ends in a softmax"):
        sources.build_source(f"keras_hub:{path}", (16, 16), outputs="logits")


def test_a_preset_source_reloads_and_runs_in_other_precisions_and_batch_statistics(presets, tmp_path, monkeypatch):
    path, _ = presets["tiny_r"]
    spec = f"keras_hub:{path}"
    source = sources.build_source(spec, (16, 16))
    clone = assert_round_trips(source, IMAGES, rtol=0, atol=0)
    assert clone.spec == spec
    out = source(IMAGES).numpy()
    # Saved inside a model (as a training model holds it) and loaded: KerasHub's classes come back by name.
    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, source(inputs)).save(str(tmp_path / "wrapper.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "wrapper.keras"))
    assert isinstance(loaded.layers[-1], sources.Source) and loaded.layers[-1].spec == spec
    np.testing.assert_array_equal(loaded(IMAGES).numpy(), out)
    # The precision is KerasHub's own (from_preset(dtype=...)): no second conversion of the network.
    monkeypatch.setattr(sources, "_converted", lambda *a: pytest.fail("the preset was converted after loading"))
    mixed = sources.build_source(spec, (16, 16), dtype_policy="mixed_float16")
    # Found by type: Keras numbers the layer's name by how many classifiers this process made before.
    (classifier,) = [l for l in mixed.network.layers if l.name.startswith("res_net_image_classifier")]
    assert classifier.get_layer("predictions").compute_dtype == "float16"
    assert mixed(IMAGES).dtype == tf.float32
    np.testing.assert_allclose(mixed(IMAGES).numpy(), out, atol=0.05 * np.abs(out).max())
    monkeypatch.undo()
    batch = sources.build_source(spec, (16, 16), source_bn="batch")
    assert any(isinstance(layer, sources.BatchStatsNormalization) for layer in sources._all_layers(batch.network))
    assert np.abs(batch(IMAGES).numpy() - out).max() > 1e-3


def test_the_soft_label_cache_reuses_a_preset_sources_logits(presets, tmp_path):
    from sskt_tf import data as data_lib
    from sskt_tf.config import Config

    path, _ = presets["tiny_r"]
    config = Config(dataset="synthetic", sources=(f"keras_hub:{path}",), soft_label_cache="clean", train_subset=64)
    data = data_lib.load("synthetic", batch_size=32, seed=0, augment="none", train_subset=64)
    messages = []
    for _ in range(2):  # Each run builds its source anew from the preset: the same key, so the file is read.
        source = sources.build_source(config.sources[0], data.image_size)
        (logits,) = soft_labels.load_or_compute([source], data, config, str(tmp_path), log=messages.append, verbose=0)
    assert "computing" in messages[0] and "logits from" in messages[1]
    images = np.concatenate([x.numpy() for x, _ in data.train_ordered(64)])
    np.testing.assert_allclose(logits, source(images).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_training_with_a_preset_source_logs_its_aux_loss(presets, tmp_path):
    path, _ = presets["tiny_r"]
    out = tmp_path / "run"
    results = run_training([
        "--flagfile=flags/smoke.cfg", f"--sources=keras_hub:{path}", "--aux_head=linear", "--epochs=1",
        "--steps_per_epoch=2", "--batch_size=4", "--eval_batch_size=128", f"--output_dir={out}", "--verbose=0",
    ])
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert np.isfinite(float(row["aux_loss_tiny_r"]))
    assert results["sources"][0]["spec"] == f"keras_hub:{path}" and results["sources"][0]["input_size"] == [74, 74]
    assert json.loads((out / "config.json").read_text())["sources"] == [f"keras_hub:{path}"]


# --- What is not a usable preset: one line each --------------------------------------------------


def _without(path, tmp_path, *names):
    """A copy of the preset directory `path` without the files `names`."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    for name in names:
        (copy / name).unlink()
    return str(copy)


def test_what_is_no_image_classifier_preset_is_one_line(presets, tmp_path):
    path, _ = presets["tiny_r"]
    fix = r"pass a local preset directory, --sources=keras_hub:/path/to/preset \(written by classifier.save_to_preset\(path\)\)\.$"
    cases = [
        (str(tmp_path), r"the directory is no KerasHub preset \(it has no config.json\); " + fix),
        (_without(path, tmp_path / "a", "task.json", "task.weights.h5"), r"the preset holds a ResNetBackbone alone, no classifier \(no task.json\)"),
        (_without(path, tmp_path / "b", "task.weights.h5"), r"the preset has no classifier weights \(no task.weights.h5\)"),
        (f"{tmp_path}/nowhere", r"the preset directory '\S+/nowhere' does not exist"),
        ("resnet_50_imagenett", r"'resnet_50_imagenett' names no KerasHub preset \(did you mean resnet_50_imagenet, .*\); pass one of keras_hub.models.ImageClassifier.presets"),
        ("bert_base_en", r"'bert_base_en' is a KerasHub preset of another kind of model, not an image classifier"),
        ("", r"no preset given; name one, e.g. keras_hub:resnet_50_imagenet"),
    ]
    other_task = _without(path, tmp_path / "c")
    task = json.loads((tmp_path / "c" / "copy" / "task.json").read_text())
    (tmp_path / "c" / "copy" / "task.json").write_text(json.dumps({**task, "registered_name": "keras_hub>BertTextClassifier"}))
    cases.append((other_task, r"the preset holds a BertTextClassifier, not an image classifier"))
    (tmp_path / "a_file").write_text("")
    cases.append((str(tmp_path / "a_file"), r"'\S+a_file' is a file, not a preset directory"))
    for preset, message in cases:
        with pytest.raises(UserError) as error:
            sources.build_source(f"keras_hub:{preset}", (16, 16))
        text = str(error.value)
        assert text.startswith(f"--sources=keras_hub:{preset}: ") and "\n" not in text, text
        assert re.search(message, text), text


def test_a_preset_without_its_preprocessor_is_refused(tmp_path):
    # Without the converter, the range of pixels the network was trained on is unknown.
    path = str(tmp_path / "bare")
    _classifier(preprocessor=False).save_to_preset(path)
    with pytest.raises(UserError, match=r"the preset has no image converter, so the pixel range its network expects is unknown"):
        sources.build_source(f"keras_hub:{path}", (16, 16), 1.0, flag="--teacher")


def _offline(*args, **kwargs):
    # What kagglehub raises without a network: requests' ConnectionError around urllib3's.
    reason = urllib3.exceptions.NameResolutionError("api.kaggle.com", None, "[Errno -2] Name or service not known")
    raise requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/v1/models", reason),
    ) from None


def test_an_offline_download_is_one_line_naming_the_local_way(monkeypatch):
    monkeypatch.setattr(keras_hub.models.ImageClassifier, "from_preset", _offline)
    with pytest.raises(UserError) as error:
        sources.build_source("keras_hub:resnet_50_imagenet", (32, 32))
    assert str(error.value) == (
        "--sources=keras_hub:resnet_50_imagenet: cannot download the preset (no internet?); pass a local preset "
        "directory, --sources=keras_hub:/path/to/preset, saved where there is network by "
        "keras_hub.models.ImageClassifier.from_preset('resnet_50_imagenet').save_to_preset('/path/to/preset') (a "
        "download is also cached, in ~/.cache/kagglehub or ~/.cache/huggingface, and then found offline)."
    )
    # A Hugging Face handle: its host is tried once, briefly; then huggingface_hub looks in its cache only
    # (without, it retries for about 25 s), and whatever fails is the missing network.
    import huggingface_hub.constants

    modes = []

    def from_cache_only(preset, dtype=None):
        modes.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        raise ValueError(f"Preset {preset} has no config.json.")

    monkeypatch.setattr(sources, "_reachable", lambda url: False)
    monkeypatch.setattr(keras_hub.models.ImageClassifier, "from_preset", from_cache_only)
    with pytest.raises(UserError, match=r"^--teacher=keras_hub:hf://keras/r50: cannot download the preset \(no internet\? cannot reach huggingface.co\)"):
        sources.build_source("keras_hub:hf://keras/r50", (32, 32), flag="--teacher")
    assert modes == [True] and huggingface_hub.constants.HF_HUB_OFFLINE is False


# --- Names and specs -------------------------------------------------------------------------------


def test_preset_names():
    assert sources.source_name("keras_hub:resnet_50_imagenet") == "resnet_50_imagenet"
    assert sources.source_name("keras_hub:/presets/My R50/") == "my_r50"
    assert sources.source_name("keras_hub:kaggle://keras/resnetv1/keras/resnet_50_imagenet/3") == "resnet_50_imagenet"
    assert sources.source_name("keras_hub:hf://keras/vit_base_patch16_224_imagenet") == "vit_base_patch16_224_imagenet"


def test_a_local_preset_directory_is_made_absolute_and_a_name_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert config_lib._absolute_spec("keras_hub:mine") == f"keras_hub:{tmp_path}/mine"
    assert config_lib._absolute_spec("keras_hub:./other") == f"keras_hub:{tmp_path}/other"
    for kept in ("keras_hub:resnet_50_imagenet", "keras_hub:hf://keras/resnet_50_imagenet"):
        assert config_lib._absolute_spec(kept) == kept
