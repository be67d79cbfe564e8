"""Tests of flag parsing into the frozen Config: flagfiles, the paper recipe, contradictions, config.json."""

import dataclasses
import json
import os
import re

import pytest
from absl import flags

from sskt_tf import config as config_lib
from sskt_tf.cli import expand_flagfiles
from sskt_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_lib.define_flags()
FLAGS = flags.FLAGS


def parse(args, monkeypatch, cwd=ROOT):
    monkeypatch.chdir(cwd)  # The tests name flagfiles relative to the repository root.
    FLAGS.unparse_flags()
    FLAGS(["sskt_tf.train", *expand_flagfiles(args, configs=True)])  # As the training command reads them.
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


def test_flagfiles_and_configs_resolve_the_same_from_any_directory(monkeypatch, tmp_path):
    # flags/cifar.cfg includes cifar10_resnet20_imagenet.cfg, which includes common.cfg, each by a path
    # relative to its own directory: the recipe is the same from the repository root and from elsewhere.
    at_root = parse(["--flagfile=flags/cifar.cfg", f"--output_dir={tmp_path}"], monkeypatch)
    elsewhere = [
        parse([f"--flagfile={ROOT}/flags/cifar.cfg", f"--output_dir={tmp_path}"], monkeypatch, cwd=tmp_path),
        parse(["--config=cifar", f"--output_dir={tmp_path}"], monkeypatch, cwd=tmp_path),
        parse(["--config=cifar10_resnet20_imagenet", f"--output_dir={tmp_path}"], monkeypatch, cwd=tmp_path),
    ]
    assert all(c == at_root for c in elsewhere)
    assert (at_root.dataset, at_root.sources, at_root.epochs, at_root.lr_milestones) == ("cifar10", ("resnet50:imagenet",), 200, (60, 120, 160))
    # The config's flags stand where --config is: flags after it override it, flags before it are overridden.
    assert parse(["--config=smoke", "--epochs=7"], monkeypatch, cwd=tmp_path).epochs == 7
    assert parse(["--epochs=7", "--config=smoke"], monkeypatch, cwd=tmp_path).epochs == 2
    # smoke.cfg writes to runs/smoke under the current directory and never over a finished run.
    smoke = parse(["--config=smoke"], monkeypatch, cwd=tmp_path)
    assert smoke.output_dir == str(tmp_path / "runs" / "smoke") and not smoke.overwrite


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
        (["--mixup=0.2", "--mix_prob=nan"], "--mix_prob=nan: expected a finite number"),
        (["--validation_split=1"], "--validation_split must be in [0, 1)"),
        (["--validation_split=-0.1"], "--validation_split must be in [0, 1)"),
        (["--eval_every=0"], "--eval_every must be >= 1"),
        (["--train_subset=0"], "--train_subset must be >= 1"),
        (["--verbose=3"], "--verbose must be 0, 1 or 2"),
        (["--momentum=1"], "--momentum must be in [0, 1). Received: 1.0."),
        (["--lr=0"], "--lr must be > 0. Received: 0.0."),
        (["--alpha=-1"], "--alpha must be >= 0. Received: -1.0."),
        # Videos and 3D targets.
        (["--dataset=ucf101"], "--dataset=ucf101 holds videos, but --model=resnet20 is a 2D network; use a 3D target"),
        (["--model=resnet18_3d"], "--model=resnet18_3d is a 3D network for video clips, but --dataset=cifar10 holds images"),
        (["--clip_length=8"], "--clip_length=8 only applies to video datasets; received --dataset=cifar10"),
        (["--dataset=synthetic_video", "--model=resnet10_3d", "--video_split=2"], "--video_split=2 only applies to --dataset=ucf101 or hmdb51"),
        (["--dataset=ucf101", "--model=resnet18_3d", "--video_split=4"], "--video_split must be 1, 2 or 3"),
        (["--dataset=ucf101", "--model=resnet18_3d", "--clip_length=0"], "--clip_length must be >= 1 frame"),
        (["--dataset=ucf101", "--model=resnet18_3d", "--video_source_num_frames=3"], "--video_source_num_frames=3 only applies to --video_source_frames=mean"),
        (["--resnet_shortcut=A"], "--resnet_shortcut=A only applies to the 3D ResNets (--model=resnet*_3d); received --model=resnet20"),
        (["--dataset=ucf101", "--model=resnet18_3d", "--soft_label_cache=replay"], "--soft_label_cache=replay stores one logit vector per image; it does not apply to video datasets"),
        (["--dataset=hmdb51", "--model=resnet18_3d", "--method=maxl"], "--method=maxl is not implemented for video datasets"),
        (["--dataset=hmdb51", "--model=resnet18_3d", "--mixup=0.2"], "video clips get the reference's multi-scale corner crop and flip"),
        (["--dataset=ucf101", "--model=resnet18_3d", "--clip_length=8", "--video_source_frames=mean", "--video_source_num_frames=9"],
         "--video_source_num_frames=9 is more than the 8 frames of a clip (--clip_length); pass at most 8"),
        # A video flagfile with a 2D --model: the model is the problem, not the flagfile's --resnet_shortcut.
        (["--config=video_common", "--dataset=hmdb51", "--model=resnet20"], "--dataset=hmdb51 holds videos, but --model=resnet20 is a 2D network"),
        (["--dataset=tfds:ucf101/ucf101_1"], "--dataset=tfds:ucf101/ucf101_1: TFDS serves UCF101 as whole videos"),
        (["--lr_patience=3"], "--lr_patience=3 only applies to --lr_schedule=plateau; received --lr_schedule=multistep"),
        (["--lr_schedule=plateau", "--lr_patience=-1"], "--lr_patience must be >= 0"),
    ],
)
def test_bad_or_contradicting_flags(args, message, monkeypatch):
    with pytest.raises(UserError, match=re.escape(message)):
        parse(args, monkeypatch)


def test_augmentation_flags_and_their_contradictions(monkeypatch):
    config = parse(["--flagfile=flags/smoke.cfg", "--augment=randaugment", "--randaugment_magnitude=0.3", "--mixup=0.2", "--cutmix=1", "--mix_prob=0.5"], monkeypatch)
    a = config.augmentation
    assert (a.kind, a.randaugment_magnitude, a.mixup, a.cutmix, a.mix_prob) == ("randaugment", 0.3, 0.2, 1.0, 0.5)
    assert json.loads(config.to_json())["augmentation"]["mixup"] == 0.2  # config.json nests them.
    for args, needle in [
        (["--randaugment_magnitude=0.3"], "only applies to --augment=randaugment"),
        (["--mix_prob=0.5"], "only applies with --mixup or --cutmix"),
        (["--mixup=0.2", "--soft_label_cache=clean"], "--soft_label_cache=clean"),
        (["--cutmix=1", "--method=maxl", "--sources="], "--method=maxl"),
        (["--cutmix=1", "--soft_label_cache=replay"], "--soft_label_cache=replay stores the sources' logits of single images"),
        (["--augment=randaugment", "--soft_label_cache=replay"], "not RandAugment's operations; use --augment=standard"),
        (["--replay_views=3"], "--replay_views=3 only applies to --soft_label_cache=replay"),
        (["--soft_label_cache=replay", "--replay_views=0"], "--replay_views must be >= 1"),
        (["--soft_label_cache=replay", "--replay_views=163"], "--replay_views=163: the random crop of the 4-padded image and the flip have 162 distinct views"),
        (["--soft_label_cache_dir=/tmp/x"], "--soft_label_cache_dir=/tmp/x only applies with --soft_label_cache=replay or clean"),
        (["--soft_label_cache=replay", "--replay_top_k=x"], "--replay_top_k=x: expected a number of logits >= 1"),
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


def test_augmentation_errors_are_one_line():
    for kwargs, needle in [
        (dict(kind="autoaugment"), "--augment=autoaugment"),
        (dict(mixup=-1.0), "--mixup"),
        (dict(mix_prob=0.0), "--mix_prob"),
        (dict(randaugment_magnitude=2.0), "--randaugment_magnitude"),
        (dict(randaugment_layers=0), "--randaugment_layers"),
        (dict(cutmix=float("inf")), "--cutmix=inf: expected a finite number"),
    ]:
        with pytest.raises(UserError, match=needle.replace("-", r"\-")):
            config_lib.AugmentationConfig(**kwargs)


def _args(config):
    """The flags that make `from_flags` build `config`: every setting that differs from the default."""
    values = config_lib.flag_values(json.loads(config.to_json()))
    defaults = config_lib.flag_values(json.loads(config_lib.Config().to_json()))
    args = []
    for name, value in values.items():
        if value == defaults[name]:
            continue
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no{name}")
        else:
            args.append(f"--{name}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return args


# One config per method, every flag away from its default in at least one of them.
_NON_DEFAULT = [
    config_lib.Config(
        dataset="folder:/data/pets", data_dir="/tfds", image_size=(24, 28), train_subset=100, validation_split=0.1,
        cache="memory", skip_bad_images=True,
        augmentation=config_lib.AugmentationConfig(
            kind="randaugment", randaugment_layers=3, randaugment_magnitude=0.3, mixup=0.2, cutmix=1.0, mix_prob=0.5
        ),
        model="resnet32", target_loss="focal", sources=("/s/a.keras", "resnet50:imagenet"), aux_head="transfer_module",
        alpha=(0.2, 0.3), temperature=(4.0,), aux_loss="kd", kd_reduction="mean", source_scale=2.5, source_bn="batch",
        source_outputs="logits", epochs=7, batch_size=16, eval_batch_size=32, steps_per_epoch=5, lr=0.05, momentum=0.8,
        weight_decay=1e-4, lr_schedule="cosine", lr_milestones=(2, 4), lr_gamma=0.5, seed=3, eval_every=2,
        strategy="tpu", tpu="grpc://10.0.0.2:8470", precision="mixed_bfloat16", source_precision="float16",
        resume=False, deterministic=True, sync_bn=True, jit_compile="false",
        output_dir="/runs/x", overwrite=True, export=True, verbose=2,
    ),
    config_lib.Config(method="kd", output_dir="/runs/x", teacher="/runs/t/target.keras", kd_alpha=0.5, soft_label_cache="replay", replay_views=4, replay_top_k=5, soft_label_cache_dir="/cache"),
    config_lib.Config(method="dml", output_dir="/runs/x", dml_peers=3),
    config_lib.Config(
        method="sskt", dataset="ucf101", data_dir="/data/ucf101", image_size=(96, 96), clip_length=8, video_split=2,
        model="resnet34_3d", resnet_shortcut="A", init_checkpoint="/k/resnet34_3d.keras", finetune_from="stage3",
        sources=("resnet50:imagenet",), video_source_frames="mean", video_source_num_frames=3, dampening=0.9,
        lr_schedule="plateau", lr_patience=5, output_dir="/runs/x",
    ),
    config_lib.Config(
        method="maxl", output_dir="/runs/x", maxl_psi=(5, 6), maxl_aux_weight=0.5, maxl_entropy_weight=0.1, maxl_generator_lr=0.01,
        maxl_first_order=True,
    ),
]


@pytest.mark.parametrize("config", _NON_DEFAULT, ids=lambda c: c.method)
def test_from_flags_round_trips_every_field(config, monkeypatch):
    assert parse(_args(config), monkeypatch) == config


def test_every_flag_is_a_field_and_every_field_a_flag():
    flag_names = {f.name for f in FLAGS.get_flags_for_module(config_lib)}
    settings = set(config_lib.flag_values(json.loads(config_lib.Config().to_json())))
    assert settings - flag_names == {"augmentation.padding"}  # The reference's 4 pixels: no flag.
    assert flag_names <= settings
    # The round trip above leaves no flag at its default in all of its configs.
    changed = {a.partition("=")[0].removeprefix("--").removeprefix("no") for c in _NON_DEFAULT for a in _args(c)}
    assert changed == flag_names


def test_help_groups_hold_every_training_flag_once_under_the_config_sections():
    groups = config_lib.help_groups()
    assert [heading for heading, _ in groups] == [
        "Data", "Augmentation", "Target", "Sources and auxiliary tasks", "Method and baselines", "Recipe", "Execution and outputs",
    ]
    names = [name for _, members in groups for name in members]
    own = flags.FlagValues()
    config_lib.define_flags(own)
    assert sorted(names) == sorted(own) and len(names) == len(set(names))
    by_name = {name: heading for heading, members in groups for name in members}
    assert (by_name["dataset"], by_name["mixup"], by_name["model"], by_name["alpha"], by_name["teacher"]) == (
        "Data", "Augmentation", "Target", "Sources and auxiliary tasks", "Method and baselines",
    )
    assert (by_name["lr"], by_name["output_dir"], by_name["augment"]) == ("Recipe", "Execution and outputs", "Augmentation")


def test_flag_types_follow_the_fields():
    kinds = {f.name: f.flag_type() for f in FLAGS.get_flags_for_module(config_lib)}
    assert kinds["model"] == kinds["augment"] == kinds["method"] == "string enum"
    assert kinds["sources"] == kinds["alpha"] == kinds["lr_milestones"] == "comma separated list of strings"
    assert (kinds["mixup"], kinds["epochs"], kinds["train_subset"], kinds["resume"]) == ("float", "int", "int", "bool")
    assert kinds["source_scale"] == kinds["dataset"] == kinds["data_dir"] == "string"
    assert FLAGS["temperature"].default == ["3"] and FLAGS["source_scale"].default == "7/3"


def test_method_flags_belong_to_their_method_only(monkeypatch):
    flag_names = {f.name for f in FLAGS.get_flags_for_module(config_lib)}
    assert set(config_lib.METHOD_FLAGS) <= flag_names
    assert set(config_lib.METHOD_FLAGS.values()) <= set(FLAGS["method"].parser.enum_values)
    for name, method in config_lib.METHOD_FLAGS.items():
        if name in ("sources", "teacher"):
            continue  # Refused when not empty, with their own line (test_bad_or_contradicting_flags).
        other = "dml" if method != "dml" else "maxl"
        value = "true" if FLAGS[name].flag_type() == "bool" else "3"
        with pytest.raises(UserError, match=re.escape(f"--{name}={FLAGS[name].parser.parse(value)} only applies to --method={method}; received --method={other}. Drop it.")):
            parse([f"--method={other}", f"--{name}={value}"], monkeypatch)


def _flat(config_json):
    """config.json as versions before the nested augmentation wrote it: every field at the top level."""
    flat = {k: v for k, v in config_json.items() if k != "augmentation"}
    augmentation = config_json["augmentation"]
    flat.update(augment=augmentation["kind"], **{k: v for k, v in augmentation.items() if k not in ("kind", "padding")})
    return flat


def test_an_old_flat_config_json_reads_as_the_nested_one(tmp_path, monkeypatch):
    from sskt_tf import run_dir

    config = parse(["--flagfile=flags/smoke.cfg", "--mixup=0.2", "--nooverwrite", f"--output_dir={tmp_path}"], monkeypatch)
    nested = json.loads(config.to_json())
    old = _flat(nested)
    assert "augmentation" not in old and old["augment"] == "standard" and old["mixup"] == 0.2
    assert config_lib.flag_values(old) == {k: v for k, v in config_lib.flag_values(nested).items() if k != "augmentation.padding"}
    assert run_dir.changed_settings(old, nested) == []
    assert run_dir.changed_settings({**old, "mixup": 0.0, "lr": 0.5}, nested) == [("lr", 0.5, nested["lr"]), ("mixup", 0.0, 0.2)]
    # A resume of a run an earlier version wrote: the same settings resume, others are named by their flag.
    (tmp_path / "config.json").write_text(json.dumps({**old, "mixup": 0.0}))
    (tmp_path / "target.keras").write_text("")
    with pytest.raises(UserError, match=re.escape("run with other settings (--mixup: 0.0 -> 0.2)")):
        run_dir.inspect_output_dir(config)
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert run_dir.inspect_output_dir(config) == "new"  # The same run, nothing to resume: it starts over.
