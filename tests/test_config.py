"""Tests of flag parsing into the frozen Config: flagfiles, the paper recipe, contradictions."""

import dataclasses
import json
import os
import re

import pytest
from absl import flags

from sskt_tf import config as config_lib
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_lib.define_flags()
FLAGS = flags.FLAGS


def parse(args, monkeypatch):
    monkeypatch.chdir(ROOT)  # Nested --flagfile paths are relative to the repository root.
    FLAGS.unparse_flags()
    FLAGS(["sskt_tf.train", *args])
    try:
        return config_lib.from_flags()
    finally:
        FLAGS.unparse_flags()


def test_cifar_flagfile_is_the_paper_recipe(monkeypatch):
    config = parse(["--flagfile=flags/cifar.cfg"], monkeypatch)
    assert (config.dataset, config.model, config.sources) == ("cifar10", "resnet20", ("resnet50:imagenet",))
    assert (config.epochs, config.batch_size, config.lr, config.momentum, config.weight_decay) == (200, 128, 0.1, 0.9, 5e-4)
    assert (config.lr_schedule, config.lr_milestones, config.lr_gamma) == ("multistep", (60, 120, 160), 0.2)
    assert (config.source_alphas, config.source_temperatures, config.aux_loss) == ((0.1,), (3.0,), "ce")
    assert config.source_scale == pytest.approx(7 / 3)
    assert config.source_bn == "inference"
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    assert json.loads(config.to_json())["sources"] == ["resnet50:imagenet"]


def test_scratch_flagfile_has_no_sources(monkeypatch):
    assert parse(["--flagfile=flags/cifar_scratch.cfg"], monkeypatch).sources == ()


def test_per_source_alpha_and_temperature(monkeypatch):
    config = parse(["--sources=a.keras,b.keras", "--alpha=0.1,0.2", "--temperature=4", "--source_scale=2"], monkeypatch)
    assert config.source_alphas == (0.1, 0.2) and config.source_temperatures == (4.0, 4.0)
    assert config.source_scale == 2.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sources=a.keras,b.keras", "--alpha=0.1,0.2,0.3"], "--alpha=0.1,0.2,0.3: give one value or one per source"),
        (["--aux_loss=ce", "--kd_reduction=mean"], "--kd_reduction=mean only applies to --aux_loss=kd"),
        (["--temperature=0"], "--temperature must be > 0"),
        (["--source_scale=7/0"], "--source_scale=7/0: expected a number or a fraction"),
        (["--lr_milestones=120,60"], "--lr_milestones must be increasing"),
        (["--sources=a.keras,a.keras"], "lists a source twice"),
        (["--batch_size=0"], "--batch_size must be >= 1"),
        (["--alpha=x"], "--alpha=x: expected float"),
        # NaN passes every < and > test: each numeric flag is refused by name, before anything runs.
        (["--temperature=nan"], "--temperature=nan: expected a finite number"),
        (["--sources=a.keras,b.keras", "--alpha=0.1,inf"], "--alpha=0.1,inf: expected a finite number"),
        (["--lr=nan"], "--lr=nan: expected a finite number"),
        (["--weight_decay=-inf"], "--weight_decay=-inf: expected a finite number"),
        (["--source_scale=nan"], "--source_scale=nan: expected a number or a fraction"),
        (["--mixup=nan"], "--mixup=nan: expected a finite number"),
        (["--validation_split=1"], "--validation_split must be in [0, 1)"),
        (["--validation_split=-0.1"], "--validation_split must be in [0, 1)"),
        (["--eval_every=0"], "--eval_every must be >= 1"),
        (["--train_subset=0"], "--train_subset must be >= 1"),
        (["--verbose=3"], "--verbose must be 0, 1 or 2"),
        (["--momentum=1"], "--momentum must be in [0, 1). Received: 1.0."),
        (["--lr=0"], "--lr must be > 0. Received: 0.0."),
        (["--alpha=-1"], "--alpha must be >= 0. Received: -1.0."),
    ],
)
def test_bad_or_contradicting_flags(args, message, monkeypatch):
    with pytest.raises(UserError, match=re.escape(message)):
        parse(args, monkeypatch)


def test_augmentation_flags_and_their_contradictions(monkeypatch):
    config = parse(["--flagfile=flags/smoke.cfg", "--augment=randaugment", "--randaugment_magnitude=0.3", "--mixup=0.2", "--cutmix=1", "--mix_prob=0.5"], monkeypatch)
    a = config.augmentation
    assert (a.kind, a.randaugment_magnitude, a.mixup, a.cutmix, a.mix_prob) == ("randaugment", 0.3, 0.2, 1.0, 0.5)
    assert json.loads(config.to_json())["mixup"] == 0.2
    for args, needle in [
        (["--randaugment_magnitude=0.3"], "only applies to --augment=randaugment"),
        (["--mix_prob=0.5"], "only applies with --mixup or --cutmix"),
        (["--mixup=0.2", "--soft_label_cache=clean"], "--soft_label_cache=clean"),
        (["--cutmix=1", "--method=maxl", "--sources="], "--method=maxl"),
        (["--cutmix=-1"], "--mixup and --cutmix"),
    ]:
        with pytest.raises(UserError, match=needle.replace("-", r"\-")):
            parse(["--flagfile=flags/smoke.cfg", *args], monkeypatch)


def test_paths_are_stored_absolute(monkeypatch, tmp_path):
    # config.json must name the same files from any working directory (evaluate, compare, a resume).
    config = parse(
        ["--dataset=folder:data/pets", "--sources=src.keras,resnet50:w/r50.h5,resnet50:imagenet,mobilenet_v2:random:7",
         "--output_dir=runs/x", "--data_dir=~/tfds"],
        monkeypatch,
    )
    assert config.dataset == f"folder:{ROOT}/data/pets"
    assert config.sources == (f"{ROOT}/src.keras", f"resnet50:{ROOT}/w/r50.h5", "resnet50:imagenet", "mobilenet_v2:random:7")
    assert config.output_dir == f"{ROOT}/runs/x" and config.data_dir == os.path.expanduser("~/tfds")
    kd = parse(["--method=kd", "--teacher=t.keras", "--sources=", "--dataset=cifar10"], monkeypatch)
    assert kd.teacher == f"{ROOT}/t.keras" and kd.dataset == "cifar10"
