"""Tests of benchmarks/torch_reference.py, the plain-PyTorch SSKT step that the throughput benchmark
compares against: its loss equals sskt_tf's, its networks have the published sizes, and a timed run
prints the JSON line the benchmark reads. No timing is asserted."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sskt_tf import losses
from sskt_tf.models import CifarResNet
from sskt_tf.models.cifar_resnet import OptionAShortcut

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "torch_reference.py")
JSON_KEYS = {
    "row", "framework", "torch_version", "threads", "batch_size", "ms_per_step", "median_ms",
    "images_per_second", "peak_rss_mib",
}


def run_script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout  # one JSON line and nothing else on stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("torch_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_check_matches_sskt_tf_losses_and_numpy(tmp_path):
    rng = np.random.default_rng(0)
    # Different scales for source and aux logits, so that swapping them changes the value.
    logits = rng.normal(0, 2, (4, 10)).astype(np.float32)
    labels = np.array([3, 0, 9, 3], np.int64)
    source_logits = rng.normal(0, 4, (4, 7)).astype(np.float32)
    aux_logits = rng.normal(0, 1, (4, 7)).astype(np.float32)
    path = tmp_path / "logits.npz"
    np.savez(path, logits=logits, labels=labels, source_logits=source_logits, aux_logits=aux_logits)

    got = run_script(f"--loss_check={path}")

    target = float(tf.reduce_mean(losses.softmax_cross_entropy(labels, logits)))
    aux = float(losses.soft_cross_entropy(source_logits, aux_logits, 3.0))
    total = float(losses.total_loss([tf.constant(target), 0.1 * tf.constant(aux)]))
    np.testing.assert_allclose([got["total"], got["target"], got["aux"]], [total, target, aux], rtol=1e-5, atol=1e-6)

    # An independent float64 computation of the same formula pins both sides.
    t = 3.0
    expected_target = -np_log_softmax(logits.astype(np.float64))[np.arange(4), labels].mean()
    soft = np.exp(np_log_softmax(source_logits.astype(np.float64) / t))
    expected_aux = t * t * -(soft * np_log_softmax(aux_logits.astype(np.float64) / t)).sum(-1).mean()
    np.testing.assert_allclose(
        [got["target"], got["aux"], got["total"]],
        [expected_target, expected_aux, expected_target + 0.1 * expected_aux],
        rtol=1e-5,
    )


def count(parameters):
    return sum(p.numel() for p in parameters)


def test_networks_have_the_published_sizes_and_shapes(reference):
    import torch

    target = reference.CifarResNet(20, 10, aux_classes=(1000, 365))
    main = [p for name, p in target.named_parameters() if not name.startswith("aux_heads")]
    # He et al.'s "0.27M" for ResNet-20: 269,722 with the 10-class head.
    assert count(main) == 269_722
    keras_backbone = CifarResNet(20, (32, 32, 3))
    keras_count = sum(int(np.prod(w.shape)) for w in keras_backbone.trainable_weights)
    assert count(main) == keras_count + 64 * 10 + 10
    assert count(target.aux_heads.parameters()) == 64 * 1000 + 1000 + 64 * 365 + 365
    x = torch.zeros(2, 3, 32, 32)
    logits, aux = target(x)
    assert tuple(logits.shape) == (2, 10) and [tuple(a.shape) for a in aux] == [(2, 1000), (2, 365)]

    source = reference.frozen_source(1000)
    assert count(source.parameters()) == 25_557_032  # torchvision's resnet50
    assert not source.training and not any(p.requires_grad for p in source.parameters())
    big = reference.upsample(x)
    assert tuple(big.shape) == (2, 3, 74, 74)
    with torch.no_grad():
        assert tuple(source(big).shape) == (2, 1000)


def test_option_a_shortcut_matches_sskt_tf(reference):
    import torch

    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype(np.float32)
    want = OptionAShortcut(2, 32)(x).numpy()
    got = reference.OptionAShortcut(2, 32)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_array_equal(got.transpose(0, 2, 3, 1), want)
    assert want.shape == (2, 4, 4, 32) and not want[..., :8].any() and not want[..., 24:].any()


def test_timed_run_prints_one_json_line_with_every_key():
    got = run_script("--row=sskt", "--batch_size=4", "--steps=1", "--warmup=1", "--repeats=1", "--threads=1")
    assert set(got) == JSON_KEYS
    assert got["row"] == "sskt" and got["framework"] == "torch" and got["batch_size"] == 4 and got["threads"] == 1
    # Consistency of the report only: the figures themselves are timings, which tests never judge.
    assert len(got["ms_per_step"]) == 1 and got["median_ms"] == got["ms_per_step"][0]
    assert got["images_per_second"] == pytest.approx(4 / (got["median_ms"] / 1e3))
    assert got["peak_rss_mib"] > 0
