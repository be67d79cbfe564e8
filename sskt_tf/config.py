"""The run configuration: absl flags, turned at once into one frozen `Config`.

Library code receives a `Config` (or plain arguments), never FLAGS. Every training flag is a field of
`Config` (or of its nested `AugmentationConfig`), and the field's metadata holds everything else about
the flag: its help text, its choices, and how its text becomes the field's value. `define_flags` and
`from_flags` are derived from those fields, so a new flag is one new field. This module imports
nothing from the package but `sskt_tf.names` (the flags' choices), `sskt_tf.errors` and `sskt_tf.cli`.
"""

import dataclasses
import fractions
import json
import math
import os
import types
import typing

from absl import flags

from sskt_tf.cli import flag_definitions
from sskt_tf.errors import UserError
from sskt_tf.names import (
    AUGMENTS,
    AUX_LOSSES,
    CACHES,
    HEAD_NAMES,
    JIT_CHOICES,
    KD_REDUCTIONS,
    LR_SCHEDULES,
    METHODS,
    MODEL_NAMES,
    PRECISIONS,
    RESNET_SHORTCUTS,
    SOFT_LABEL_CACHES,
    SOURCE_BN_MODES,
    SOURCE_OUTPUTS,
    SOURCE_PRECISIONS,
    STRATEGIES,
    TARGET_LOSSES,
    VIDEO_SOURCE_FRAMES,
)

# The flags that belong to one method, and that method. Any other --method refuses them, and
# `sskt_tf.compare` passes them to that method's runs only. --sources and --teacher are refused when
# they are not empty (`_check_method`: a flagfile may set them, and --sources= then drops them); the
# others as soon as they are given.
METHOD_FLAGS = {
    "sources": "sskt",
    "teacher": "kd",
    "kd_alpha": "kd",
    "dml_peers": "dml",
    "maxl_psi": "maxl",
    "maxl_aux_weight": "maxl",
    "maxl_entropy_weight": "maxl",
    "maxl_generator_lr": "maxl",
    "maxl_first_order": "maxl",
}
_REFUSED_WHEN_NOT_EMPTY = ("sources", "teacher")


# --- Flag text -> field value -----------------------------------------------------------------------
# Each parser takes the flag's name (for the error line) and the parsed flag's value.


def _numbers(flag, values, kind):
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise UserError(f"--{flag}={','.join(values)}: expected {kind.__name__} values.") from None


def _ints(flag, values):
    return _numbers(flag, values, int)


def _floats(flag, values):
    return _numbers(flag, values, float)


def _fraction(flag, text):
    try:
        return float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--{flag}={text}: expected a number or a fraction such as 7/3.") from None


def _top_k(flag, text):
    text = str(text).strip()
    if text == "full":
        return 0  # config.json's value of full.
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 0:
        raise UserError(f"--{flag}={text}: expected a number of logits >= 1 (e.g. 10), or full (also 0).")
    return k


def _image_size(flag, values):
    if not values:
        return None
    size = _numbers(flag, values, int)
    return size * 2 if len(size) == 1 else size


# Paths are stored absolute: config.json then names the same files from any working directory (evaluate,
# compare), and the same command run from elsewhere with other spellings of a path is the same run.
def _absolute(path):
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _absolute_path(flag, path):
    return _absolute(path)


def _absolute_dataset(flag, dataset):
    prefix, _, path = dataset.partition(":")
    return f"{prefix}:{_absolute(path)}" if prefix in ("folder", "video_folder") and path else dataset


def is_video_dataset(dataset):
    """Whether a `--dataset` value names videos (clips `[T, H, W, 3]`) rather than images: the forms the
    data package reads with `sskt_tf.data.video` (`sskt_tf.data.load.KINDS`, tests/test_config.py checks)."""
    return dataset in ("ucf101", "hmdb51", "synthetic_video") or dataset.startswith(("video_folder:", "synthetic_video:"))


def is_video_model(model):
    """Whether a `--model` name is a 3D network (clips in), by its `_3d` suffix."""
    return model.endswith("_3d")


def _absolute_spec(spec):
    """A source spec with its file path made absolute: `x.keras`, `<application>:<weights file>`, `keras_hub:<directory>`."""
    if not spec or spec.endswith(".keras"):
        return _absolute(spec)
    app, sep, weights = spec.partition(":")
    if app == "keras_hub":  # A preset name or a kaggle:// or hf:// handle stays; a local directory becomes absolute.
        local = "://" not in weights and ("/" in weights or weights.startswith(("~", ".")) or os.path.isdir(weights))
        return f"{app}:{_absolute(weights)}" if local else spec
    if sep and weights != "imagenet" and not weights.startswith("random"):
        return f"{app}:{_absolute(weights)}"
    return spec


def _specs(flag, specs):
    return tuple(_absolute_spec(s.strip()) for s in specs if s.strip())


def _optional_spec(flag, spec):
    return _absolute_spec((spec or "").strip()) or None


def _flag(default, about, *, choices=None, parse=None, flag=None, flag_default=None, kind=None, group=None):
    """A dataclass field that is also a flag.

    Args:
        default: the field's default (also the flag's, unless `flag_default`).
        about: the flag's help text.
        choices: the allowed values of a string field: the flag is a DEFINE_enum.
        parse: `parse(flag_name, flag_value) -> field value`, for flags whose parsed value is not yet the
            field's (number lists, fractions, paths made absolute); default: the value as it is.
        flag: the flag's name, where it is not the field's.
        flag_default: the flag's default where the field's would show otherwise in --help, or is not
            a value of the flag's type (a fraction given as text).
        kind: the flag's absl type ("string", "list", ...) where the field's type does not say it.
        group: the --help heading of this flag and of the ones declared after it, up to the next
            `group` (see `help_groups`).
    """
    metadata = {"help": about, "choices": choices, "parse": parse, "flag": flag, "flag_default": flag_default, "kind": kind, "group": group}
    return dataclasses.field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


def _check_finite(settings):
    """Every float field of the dataclass `settings` is finite: NaN passes every `<`/`>` test, so it is refused first."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{_flag_name(field)}={_show(value)}: expected a finite number; NaN and infinity are not allowed.")


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# --- The settings -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """What a training batch goes through, in order (`sskt_tf.augment.BatchAugmenter` applies it).

    1. `kind="standard"`: per-image random crop of the zero-padded image, then a random horizontal
       flip (torchvision's `RandomCrop(size, padding=4)` + `RandomHorizontalFlip()`, the reference
       code's). `"randaugment"`: the same, then RandAugment with a fixed magnitude (Cubuk et al.,
       CVPR Workshops 2020, as keras-cv implements it). `"none"`: neither.
    2. MixUp (Zhang et al., ICLR 2018) and/or CutMix (Yun et al., ICCV 2019) of the batch with a
       permutation of itself; the labels become soft, float32 `[B, classes]`.

    Attributes:
        kind: "none", "standard" or "randaugment" (`sskt_tf.names.AUGMENTS`); the `--augment` flag.
        padding: zero padding of the random crop, in pixels per side (no flag: the reference's 4).
        randaugment_layers: operations applied per image (RandAugment's N), >= 1.
        randaugment_magnitude: strength of every operation, in [0, 1] (keras-cv's scale: 0 leaves
            images unchanged, 1 is each operation's strongest setting; RandAugment's M / 10).
        mixup: MixUp's Beta(alpha, alpha) parameter, >= 0; 0 turns MixUp off.
        cutmix: CutMix's Beta(alpha, alpha) parameter, >= 0; 0 turns CutMix off.
        mix_prob: probability that a batch is mixed at all, in (0, 1]. With both MixUp and CutMix on,
            a mixed batch uses one of the two, each with probability 1/2 (as timm's switch).

    Raises:
        UserError: a value out of its range (named by its flag, e.g. `--mix_prob must be in (0, 1]`),
            or NaN or infinity in a float field.
    """

    kind: str = _flag("standard", "Training augmentation: standard (random crop of the 4-padded image + flip, the paper's), randaugment (standard, then keras-cv RandAugment), none.", choices=AUGMENTS, flag="augment")
    padding: int = 4
    randaugment_layers: int = _flag(2, "--augment=randaugment: operations per image (RandAugment's N).")
    randaugment_magnitude: float = _flag(0.5, "--augment=randaugment: magnitude of every operation in [0, 1] (keras-cv's scale; RandAugment's M / 10), fixed.")
    mixup: float = _flag(0.0, "MixUp's Beta(a, a) parameter (e.g. 0.2 or 1); 0 = off. Labels become soft; the sources see the mixed images.")
    cutmix: float = _flag(0.0, "CutMix's Beta(a, a) parameter (e.g. 1); 0 = off. With --mixup too, each mixed batch uses one of the two at random.")
    mix_prob: float = _flag(1.0, "Probability that a training batch is mixed by --mixup/--cutmix (the CutMix paper's CIFAR recipe: 0.5).")

    def __post_init__(self):
        _check_finite(self)
        if self.kind not in AUGMENTS:
            raise UserError(f"--augment={self.kind} is not known. Allowed: {', '.join(AUGMENTS)}.")
        if self.padding < 0:
            raise UserError(f"augmentation padding must be >= 0. Received: {self.padding}.")
        if self.randaugment_layers < 1:
            raise UserError(f"--randaugment_layers must be >= 1. Received: {self.randaugment_layers}.")
        if not 0.0 <= self.randaugment_magnitude <= 1.0:
            raise UserError(
                f"--randaugment_magnitude must be in [0, 1] (keras-cv's scale, RandAugment's M / 10). "
                f"Received: {self.randaugment_magnitude}."
            )
        if self.mixup < 0 or self.cutmix < 0:
            raise UserError(
                f"--mixup and --cutmix are Beta(alpha, alpha) parameters, >= 0 (0: off). "
                f"Received: --mixup={self.mixup} --cutmix={self.cutmix}."
            )
        if not 0.0 < self.mix_prob <= 1.0:
            raise UserError(f"--mix_prob must be in (0, 1]. Received: {self.mix_prob}.")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed, i.e. labels leave the pipeline soft: float32 [B, classes]."""
        return self.mixup > 0 or self.cutmix > 0


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Written to `<output_dir>/config.json` (`to_json`).

    One field per training flag, of the same name (the augmentation flags are the fields of the nested
    `augmentation`; `--augment` is its `kind`); each field's help text is its flag's (`--help` shows
    them under the headings of `help_groups`).
    Numbers are in the flags' units: images and sizes in pixels, `epochs` and `lr_milestones` in
    epochs, `batch_size` in examples (global, over all replicas). Paths (`dataset` folders, source
    specs, `data_dir`, `output_dir`, ...) are absolute when the config comes from `from_flags`.

    Example:

        config = Config(dataset="synthetic", epochs=2, augmentation=AugmentationConfig(mixup=0.2))

    Raises:
        UserError: a value out of its range or settings that contradict each other, in one line that
            names the flags (e.g. `--alpha must be >= 0. Received: -1.0.`).
    """

    # Data.
    dataset: str = _flag("cifar10", "cifar10 | cifar100 | stl10 | voc2007 (multi-label: --target_loss=bce) | tfds:<name> (TFDS) | folder:<dir with train/ and test/> | synthetic[:classes] | synthetic_multilabel:<classes>; videos: ucf101 | hmdb51 (frame folders and the official split lists under --data_dir) | video_folder:<dir with train/ and test/ of <class>/<video files>> | synthetic_video[:classes].", parse=_absolute_dataset, group="Data")
    data_dir: str | None = _flag(None, "TFDS data directory (offline: put the original archive in <data_dir>/downloads/manual/); ucf101, hmdb51: the dataset's root (frames/ from python -m sskt_tf.prepare_video, and the split lists).", parse=_absolute_path)
    image_size: tuple[int, int] | None = _flag(None, "H[,W] for folder and synthetic datasets (default: the most common size of the training images, 32 for synthetic); videos: the crop size of every frame (default 112, 32 for synthetic_video).", parse=_image_size)
    clip_length: int = _flag(16, "Video datasets: frames per clip (the reference's 16).")
    video_split: int = _flag(1, "ucf101, hmdb51: which of the three official train/test splits, 1, 2 or 3.")
    train_subset: int | None = _flag(None, "Train on a fixed random subset of this many examples (quick experiments).")
    # Share of the training set held out (seeded, stratified) to choose best.keras; 0: the paper's protocol.
    validation_split: float = _flag(0.0, "Hold out this share of the training set (seeded, stratified) to choose best.keras and show validation metrics; the test set is then scored once, at the end. 0 (default): the paper's protocol, best.keras chosen on the test set. A folder: dataset with a val/ directory uses it instead.")
    cache: str = _flag("auto", "Decoded training images: memory (cached after the first epoch), disk (a tf.data cache file in <output_dir>/data_cache), none (decoded from the files every epoch), auto (memory if they fit in 25% of RAM, else none). The batches are identical whichever is used.", choices=CACHES)
    skip_bad_images: bool = _flag(False, "folder: datasets: train without images that cannot be decoded, listed in <output_dir>/skipped_images.txt (default: stop and name them).")
    # Augmentation of training batches (sskt_tf.augment).
    augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig, metadata={"group": "Augmentation"})
    # Target.
    model: str = _flag("resnet20", "Target network.", choices=MODEL_NAMES, group="Target")
    target_loss: str = _flag("ce", "Loss of the target task.", choices=TARGET_LOSSES)
    resnet_shortcut: str = _flag("B", "3D ResNets (--model=resnet*_3d): Hara et al.'s shortcut where the shape changes, A (subsample + zero channels, no parameters; their Kinetics ResNet-18 and 34) or B (1x1x1 convolution + BN).", choices=RESNET_SHORTCUTS)
    init_checkpoint: str | None = _flag(None, "Start the target's backbone from the weights of this .keras file (e.g. Hara's Kinetics 3D ResNet converted by python -m sskt_tf.convert_torch, or a target.keras), matched layer by layer; the classifier and the auxiliary heads start new.", parse=_absolute_path)
    finetune_from: str | None = _flag(None, "Train the target's backbone from this stage on (e.g. stage4, the reference's fine-tuning from layer4); the earlier stages are frozen, their BatchNorm in inference mode. The classifier and the auxiliary heads train.")
    # Sources and auxiliary tasks.
    sources: tuple[str, ...] = _flag((), "Comma-separated source specs (empty: scratch): <application>:imagenet, <application>:/path/weights.h5, <application>:random[:classes], /path/model.keras, keras_hub:<preset name or directory> (a KerasHub image classifier).", parse=_specs, group="Sources and auxiliary tasks")
    aux_head: str = _flag("linear", "Auxiliary head on the target for each source.", choices=HEAD_NAMES)
    alpha: tuple[float, ...] = _flag((0.1,), "Weight of the auxiliary losses: one value, or one per source.", parse=_floats)
    temperature: tuple[float, ...] = _flag((3.0,), "Softmax temperature T of the auxiliary losses: one value, or one per source.", parse=_floats, flag_default=["3"])
    aux_loss: str = _flag("ce", "ce: T^2 * soft-label cross-entropy; kd: T^2 * KL.", choices=AUX_LOSSES)
    kd_reduction: str = _flag("batchmean", "For --aux_loss=kd: batchmean (true KL) or mean (PyTorch KLDivLoss() default of the reference code: / classes).", choices=KD_REDUCTIONS)
    source_scale: float = _flag(7 / 3, "Sources see the (augmented) batch resized by this factor (a number or a fraction), floor per side: 32 -> 74, 96 -> 224.", parse=_fraction, flag_default="7/3", kind="string")
    source_bn: str = _flag("inference", "inference: sources use their moving BatchNorm statistics; batch: batch statistics, as the reference code (statistics never updated).", choices=SOURCE_BN_MODES)
    video_source_frames: str = _flag("middle", "Video datasets: the frames of each clip the 2D sources see: middle (the reference: the middle frame's logits), mean (the mean of the logits of --video_source_num_frames evenly spaced frames).", choices=VIDEO_SOURCE_FRAMES)
    video_source_num_frames: int = _flag(4, "--video_source_frames=mean: how many evenly spaced frames (the centres of equal segments of the clip).")
    source_outputs: str = _flag("auto", "What the sources and the --teacher output: auto (a final softmax is detected and stripped, so its logits are used), logits, probabilities (their log is taken as logits).", choices=SOURCE_OUTPUTS)
    # Method: SSKT or a baseline (sskt_tf.methods).
    method: str = _flag("sskt", "sskt (with --sources; none: scratch), or a baseline: scratch (the target alone), kd (distillation from --teacher), dml (deep mutual learning of --dml_peers peers), maxl (meta auxiliary learning).", choices=METHODS, group="Method and baselines")
    teacher: str | None = _flag(None, "--method=kd: the frozen teacher, any source spec of the target's classes (e.g. /path/target.keras of a run on the same data); it sees the target's image size.", parse=_optional_spec)
    kd_alpha: float = _flag(0.9, "--method=kd: a in (1 - a) * CE + a * T^2 * KL(teacher/T || student/T); T is --temperature.")
    dml_peers: int = _flag(2, "--method=dml: number of peers K >= 2, each evaluated and exported on its own.")
    # 10 as the paper's MAXL row for the default ResNet-20 target (its VGG-16 row used 5).
    maxl_psi: tuple[int, ...] = _flag((10,), "--method=maxl: auxiliary classes per class: one value for all classes, or one per class (default 10, the paper's MAXL row for ResNet-20; its VGG-16 row used 5).", parse=_ints)
    maxl_aux_weight: float = _flag(1.0, "--method=maxl: weight of the auxiliary loss in the target's multi-task loss.")
    maxl_entropy_weight: float = _flag(0.2, "--method=maxl: weight of the entropy regulariser in the label generator's objective (MAXL: 0.2).")
    maxl_generator_lr: float = _flag(1e-3, "--method=maxl: the label generator's SGD learning rate (MAXL: 1e-3), following the target's schedule.")
    maxl_first_order: bool = _flag(False, "--method=maxl: finite-difference meta-gradient (first derivatives only, as MAXL's first-order code) instead of the second-order one.")
    # Recipe.
    epochs: int = _flag(200, "Training epochs.", group="Recipe")
    batch_size: int = _flag(128, "Global training batch size (divided over replicas).")
    eval_batch_size: int | None = _flag(None, "Evaluation batch size (default: --batch_size).")
    steps_per_epoch: int | None = _flag(None, "Steps per epoch (default: training examples // batch size).")
    lr: float = _flag(0.1, "Peak learning rate of SGD.")
    momentum: float = _flag(0.9, "SGD momentum.")
    dampening: float = _flag(0.0, "SGD dampening, as PyTorch's: the momentum buffer adds (1 - dampening) x the gradient (the video reference: 0.9). > 0 uses PyTorch's SGD update exactly.")
    weight_decay: float = _flag(5e-4, "Coupled L2 (added to the gradient before momentum, as PyTorch SGD) on every target weight.")
    lr_schedule: str = _flag("multistep", "multistep: x lr_gamma at each of --lr_milestones; cosine: to 0 over the run; constant; plateau: x lr_gamma when the validation loss (the test loss without a validation set) has not improved for --lr_patience evaluations (PyTorch's ReduceLROnPlateau, the video reference's).", choices=LR_SCHEDULES)
    lr_milestones: tuple[int, ...] = _flag((60, 120, 160), "Epochs at which multistep multiplies the learning rate by --lr_gamma (ignored by the other schedules).", parse=_ints)
    lr_gamma: float = _flag(0.2, "Decay factor of multistep and plateau.")
    lr_patience: int = _flag(10, "--lr_schedule=plateau: evaluations without improvement of the loss before the learning rate is multiplied by --lr_gamma.")
    seed: int = _flag(0, "Seed of weights, data order and augmentation.")
    eval_every: int = _flag(1, "Evaluate (and consider best.keras) every N epochs, and always after the last.")
    # Execution and outputs.
    strategy: str = _flag("auto", "tf.distribute strategy: auto (mirrored over >1 GPUs, else default), one_device, mirrored, multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu (TPUStrategy, see --tpu).", choices=STRATEGIES, group="Execution and outputs")
    tpu: str = _flag("", "TPU address for --strategy=tpu ('' = the local or Colab TPU).")
    precision: str = _flag("float32", "Compute precision of the target (variables, logits and losses stay float32).", choices=PRECISIONS)
    source_precision: str = _flag("same", "Compute precision of the frozen sources (same: as --precision). Their logits are cast to float32.", choices=SOURCE_PRECISIONS)
    soft_label_cache: str = _flag("off", "off: sources see every augmented batch (faithful); replay: the sources' logits on --replay_views stored crops and flips of each image, computed once, and training cuts exactly those views (exact soft labels; SSKT then costs about as much as scratch); clean: logits of the un-augmented images (an approximation).", choices=SOFT_LABEL_CACHES)
    soft_label_cache_dir: str | None = _flag(None, "Where --soft_label_cache stores logits (default <output_dir>/soft_label_cache); share it between runs with the same data and sources (any --seed, target or method).", parse=_absolute_path)
    replay_views: int = _flag(10, "--soft_label_cache=replay: views (crop + flip) stored per training image; each epoch an image trains on one of them. The fill costs this many passes of the sources over the data.")
    replay_top_k: int = _flag(10, "--soft_label_cache=replay: logits stored per view (float16, with their classes; the others get the mean of the rest), or full (also 0: every logit, float32; training then equals live sources on the same views).", parse=_top_k, kind="string", flag_default="10")
    resume: bool = _flag(True, "Save the training state after every epoch and resume from it when the same command runs again.")
    deterministic: bool = _flag(False, "Bit-identical runs: TensorFlow op determinism (slower; turns XLA off).")
    sync_bn: bool = _flag(False, "Synchronise the target's BatchNorm statistics across replicas.")
    jit_compile: str = _flag("auto", "XLA compilation of the steps (auto: on GPU/TPU only).", choices=JIT_CHOICES)
    output_dir: str = _flag("runs/default", "Where the run writes config.json, metrics.csv, TensorBoard logs, checkpoints, target.keras, results.json.", parse=_absolute_path)
    overwrite: bool = _flag(False, "Allow writing into an --output_dir that holds another or a finished run.")
    export: bool = _flag(False, "At the end, also export the target as a SavedModel to <output_dir>/saved_model (see sskt_tf.export).")
    verbose: int = _flag(1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")

    def __post_init__(self):
        _check_config(self)

    @staticmethod
    def _expand(values, n):
        return tuple(values) * n if len(values) == 1 else tuple(values)

    @property
    def source_alphas(self):
        """One alpha per source: tuple of float, of length `len(sources)`."""
        return self._expand(self.alpha, len(self.sources))

    @property
    def source_temperatures(self):
        """One temperature per source: tuple of float, of length `len(sources)`."""
        return self._expand(self.temperature, len(self.sources))

    def to_json(self):
        """The config as indented JSON with sorted keys (tuples as lists, `augmentation` nested): config.json."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _check_config(c):
    def bad(message):
        raise UserError(message)

    _check_numbers(c, bad)
    n = len(c.sources)
    for flag, values in (("alpha", c.alpha), ("temperature", c.temperature)):
        if len(values) not in (1, max(n, 1)):
            bad(f"--{flag}={','.join(map(str, values))}: give one value or one per source ({n} source{'' if n == 1 else 's'}).")
    if any(t <= 0 for t in c.temperature):
        bad(f"--temperature must be > 0. Received: {_show(c.temperature)}.")
    if any(a < 0 for a in c.alpha):
        bad(f"--alpha must be >= 0. Received: {_show(c.alpha)}.")
    if len(set(c.sources)) != n:
        bad(f"--sources lists a source twice: {','.join(c.sources)}.")
    for name, value in (("epochs", c.epochs), ("batch_size", c.batch_size)):
        if value < 1:
            bad(f"--{name} must be >= 1. Received: {value}.")
    if c.eval_batch_size is not None and c.eval_batch_size < 1:
        bad(f"--eval_batch_size must be >= 1. Received: {c.eval_batch_size}.")
    if c.steps_per_epoch is not None and c.steps_per_epoch < 1:
        bad(f"--steps_per_epoch must be >= 1. Received: {c.steps_per_epoch}.")
    if c.source_scale <= 0:
        bad(f"--source_scale must be > 0. Received: {c.source_scale}.")
    for name, ok, allowed in (
        ("lr", c.lr > 0, "> 0"),
        ("weight_decay", c.weight_decay >= 0, ">= 0"),
        ("momentum", 0 <= c.momentum < 1, "in [0, 1)"),
        ("dampening", 0 <= c.dampening < 1, "in [0, 1)"),
        ("lr_gamma", c.lr_gamma > 0, "> 0"),
        ("lr_patience", c.lr_patience >= 0, ">= 0"),
    ):
        if not ok:
            bad(f"--{name} must be {allowed}. Received: {getattr(c, name)}.")
    if c.dampening > 0 and c.momentum == 0:
        bad(f"--dampening={c.dampening} damps the momentum buffer, but --momentum=0 has none; set --momentum > 0 or drop --dampening.")
    if list(c.lr_milestones) != sorted(set(c.lr_milestones)) or any(m < 1 for m in c.lr_milestones):
        bad(f"--lr_milestones must be increasing positive epochs. Received: {','.join(map(str, c.lr_milestones))}.")
    cache = c.soft_label_cache
    if cache != "off" and c.source_bn == "batch":
        bad(
            f"--soft_label_cache={cache} stores one logit vector per image, but --source_bn=batch makes it depend "
            "on the rest of the batch; use --source_bn=inference or --soft_label_cache=off."
        )
    a = c.augmentation
    if a.mixes and cache != "off":
        bad(
            f"--soft_label_cache={cache} stores the sources' logits of single images, but --mixup={a.mixup} "
            f"--cutmix={a.cutmix} make every training image a mix of two; use --soft_label_cache=off (the sources "
            "then see the mixed images) or drop --mixup/--cutmix."
        )
    if cache == "replay" and a.kind == "randaugment":
        bad(
            "--soft_label_cache=replay stores each view's crop and flip, not RandAugment's operations; use "
            "--augment=standard with replay, or --soft_label_cache=off (the sources then see the RandAugment images)."
        )
    if c.replay_views < 1:
        bad(f"--replay_views must be >= 1. Received: {c.replay_views}.")
    distinct = (2 * a.padding + 1) ** 2 * 2  # Crops of the padded image x flips.
    if cache == "replay" and a.kind == "standard" and c.replay_views > distinct:
        bad(f"--replay_views={c.replay_views}: the random crop of the {a.padding}-padded image and the flip have "
            f"{distinct} distinct views; use --replay_views={distinct} or fewer.")
    if a.mixes and c.method == "maxl":
        bad(
            f"--method=maxl generates auxiliary labels within each image's one class, which mixed images do not have; "
            f"drop --mixup={a.mixup} --cutmix={a.cutmix} for MAXL."
        )
    if c.tpu and c.strategy != "tpu":
        bad(f"--tpu={c.tpu} only applies to --strategy=tpu; received --strategy={c.strategy}.")
    if c.image_size is not None and (len(c.image_size) != 2 or min(c.image_size) < 1):
        bad(f"--image_size must be one or two positive integers. Received: {c.image_size}.")
    _check_video(c, bad)
    if c.target_loss == "bce" and c.method not in ("sskt", "scratch"):
        bad(f"--target_loss=bce (multi-label) only applies to --method=sskt or scratch; received --method={c.method}.")
    _check_method(c, bad)


def _check_video(c, bad):
    """Videos and 3D targets go together, with what applies to clips."""
    video, model_3d = is_video_dataset(c.dataset), is_video_model(c.model)
    if c.dataset.removeprefix("tfds:").split("/")[0] in ("ucf101", "hmdb51") and c.dataset.startswith("tfds:"):
        bad(
            f"--dataset={c.dataset}: TFDS serves UCF101 as whole videos, which this tool does not read through tfds:; "
            "use --dataset=ucf101 with --data_dir=<root> of frame folders (python -m sskt_tf.prepare_video makes them; docs/video.md)."
        )
    if c.clip_length < 1:
        bad(f"--clip_length must be >= 1 frame. Received: {c.clip_length}.")
    if c.video_split not in (1, 2, 3):
        bad(f"--video_split must be 1, 2 or 3 (the official splits of UCF101 and HMDB51). Received: {c.video_split}.")
    if c.video_source_num_frames < 1:
        bad(f"--video_source_num_frames must be >= 1. Received: {c.video_source_num_frames}.")
    if c.video_source_frames == "mean" and c.video_source_num_frames > c.clip_length:
        bad(
            f"--video_source_num_frames={c.video_source_num_frames} is more than the {c.clip_length} frames of a clip "
            f"(--clip_length); pass at most {c.clip_length}."
        )
    if video and not model_3d:
        bad(f"--dataset={c.dataset} holds videos, but --model={c.model} is a 2D network; use a 3D target: --model=resnet18_3d (or resnet10_3d, resnet34_3d, resnet50_3d).")
    if model_3d and not video:
        bad(f"--model={c.model} is a 3D network for video clips, but --dataset={c.dataset} holds images; use a video dataset (ucf101, hmdb51, video_folder:<dir>, synthetic_video) or a 2D --model.")
    if not video:
        return
    if c.soft_label_cache != "off":
        bad(f"--soft_label_cache={c.soft_label_cache} stores one logit vector per image; it does not apply to video datasets ({c.dataset}), whose sources see frames of a new clip every step. Use --soft_label_cache=off.")
    if c.method == "maxl":
        bad(f"--method=maxl is not implemented for video datasets ({c.dataset}); use --method=sskt, scratch, kd or dml.")
    if c.augmentation.kind == "randaugment" or c.augmentation.mixes:
        bad(f"--dataset={c.dataset}: video clips get the reference's multi-scale corner crop and flip (--augment=standard) or none; RandAugment, --mixup and --cutmix are for images.")


def _check_numbers(c, bad):
    _check_finite(c)  # The nested augmentation checked its own.
    if not 0 <= c.validation_split < 1:
        bad(f"--validation_split must be in [0, 1) (0: no validation set). Received: {c.validation_split}.")
    if c.eval_every < 1:
        bad(f"--eval_every must be >= 1 (evaluate every N epochs). Received: {c.eval_every}.")
    if c.train_subset is not None and c.train_subset < 1:
        bad(f"--train_subset must be >= 1. Received: {c.train_subset}.")
    if c.verbose not in (0, 1, 2):
        bad(f"--verbose must be 0, 1 or 2. Received: {c.verbose}.")
    if c.seed < 0:
        bad(f"--seed must be >= 0. Received: {c.seed}.")
    for name, allowed in (("cache", CACHES), ("source_outputs", SOURCE_OUTPUTS)):
        if getattr(c, name) not in allowed:
            bad(f"--{name}={getattr(c, name)} is not known. Allowed: {', '.join(allowed)}.")


def _check_method(c, bad):
    if c.method not in METHODS:
        bad(f"--method={c.method} is not known. Allowed: {', '.join(METHODS)}.")
    if c.sources and c.method != "sskt":
        bad(
            f"--sources={','.join(c.sources)} only applies to --method=sskt; received --method={c.method}. "
            "Drop --sources (pass --sources= after a flagfile that sets them)"
            + ("; KD's teacher is --teacher=<spec>." if c.method == "kd" else ".")
        )
    if c.teacher and c.method != "kd":
        bad(f"--teacher={c.teacher} only applies to --method=kd; received --method={c.method}. Drop --teacher.")
    if c.method == "kd":
        if not c.teacher:
            bad("--method=kd needs --teacher=<spec>: a model of the target's classes, e.g. the target.keras of a run on the same data.")
        if len(c.temperature) != 1:
            bad(f"--method=kd takes one --temperature. Received: {','.join(map(str, c.temperature))}.")
    if not 0 <= c.kd_alpha <= 1:
        bad(f"--kd_alpha must be in [0, 1]. Received: {c.kd_alpha}.")
    if c.dml_peers < 2:
        bad(f"--dml_peers must be >= 2. Received: {c.dml_peers}.")
    if not c.maxl_psi or min(c.maxl_psi) < 1:
        bad(f"--maxl_psi must be positive integers (one, or one per class). Received: {','.join(map(str, c.maxl_psi))}.")
    if c.maxl_aux_weight < 0 or c.maxl_entropy_weight < 0 or c.maxl_generator_lr <= 0:
        bad(
            "--maxl_aux_weight and --maxl_entropy_weight must be >= 0, --maxl_generator_lr > 0. Received: "
            f"{c.maxl_aux_weight}, {c.maxl_entropy_weight}, {c.maxl_generator_lr}."
        )


# --- Fields <-> flags -------------------------------------------------------------------------------


def _flag_name(field):
    return field.metadata.get("flag", field.name)


def _nested(field):
    """The settings dataclass a field holds (`Config.augmentation`), or None."""
    return field.type if dataclasses.is_dataclass(field.type) else None


def _flag_fields(settings):
    """The fields of the dataclass `settings` that are flags, nested ones included, in declaration order."""
    for field in dataclasses.fields(settings):
        if _nested(field):
            yield from _flag_fields(_nested(field))
        elif "help" in field.metadata:
            yield field


def _flag_kind(field):
    """The absl type of a field's flag: "enum", "string", "list", "integer", "float" or "bool"."""
    if "choices" in field.metadata:
        return "enum"
    if "kind" in field.metadata:
        return field.metadata["kind"]
    candidates = [field.type]
    if isinstance(field.type, types.UnionType):  # `int | None`: the flag's default is None.
        candidates = [t for t in typing.get_args(field.type) if t is not type(None)]
    base = typing.get_origin(candidates[0]) or candidates[0]
    return {bool: "bool", int: "integer", float: "float", str: "string", tuple: "list"}[base]


def _flag_default(field):
    if "flag_default" in field.metadata:
        return field.metadata["flag_default"]
    if isinstance(field.default, tuple):
        return [str(v) for v in field.default]
    return field.default


def help_groups():
    """The training flags under their --help headings: [(heading, [flag names])], in declaration order.

    A field's metadata `group` starts a heading (`_flag(..., group=...)`); the fields declared after it
    belong to it up to the next one, the nested augmentation fields to the heading of `augmentation`.
    """
    groups = []
    for field in dataclasses.fields(Config):
        if "group" in field.metadata:
            groups.append((field.metadata["group"], []))
        if _nested(field):
            groups[-1][1].extend(_flag_name(f) for f in _flag_fields(_nested(field)))
        elif "help" in field.metadata:
            groups[-1][1].append(_flag_name(field))
    return groups


@flag_definitions
def define_flags(flag_values):
    """Defines one absl flag per `Config` field on `flag_values` (absl's global FLAGS by default; once,
    see `sskt_tf.cli.flag_definitions`).

    Each flag has its field's name (or metadata `flag`), default and help text; a field with
    `choices` is a DEFINE_enum, a tuple a DEFINE_list, and `bool`, `int`, `float`, `str` fields are
    DEFINE_bool, DEFINE_integer, DEFINE_float and DEFINE_string flags.
    """
    define = {
        "string": flags.DEFINE_string,
        "list": flags.DEFINE_list,
        "integer": flags.DEFINE_integer,
        "float": flags.DEFINE_float,
        "bool": flags.DEFINE_bool,
    }
    for field in _flag_fields(Config):
        name, kind, about = _flag_name(field), _flag_kind(field), field.metadata["help"]
        if kind == "enum":
            flags.DEFINE_enum(name, _flag_default(field), field.metadata["choices"], about, flag_values=flag_values)
        else:
            define[kind](name, _flag_default(field), about, flag_values=flag_values)


def _field_values(fl, settings):
    """The keyword arguments of the dataclass `settings` from the parsed flags `fl`, nested ones built."""
    values = {}
    for field in dataclasses.fields(settings):
        if "help" in field.metadata:
            name = _flag_name(field)
            parse = field.metadata.get("parse")
            values[field.name] = parse(name, fl[name].value) if parse else fl[name].value
    # Built (and so checked) once every flag has parsed: a value that does not parse is named first.
    for field in dataclasses.fields(settings):
        if _nested(field):
            values[field.name] = _nested(field)(**_field_values(fl, _nested(field)))
    return values


def from_flags(fl=flags.FLAGS):
    """The frozen `Config` of the parsed training flags (see `define_flags`).

    Args:
        fl: parsed absl `FlagValues` holding the flags `define_flags` defines.

    Returns:
        The `Config`, its paths absolute (relative ones are read from the current directory).

    Raises:
        UserError: a flag given with a method, loss or augmentation it does not apply to
            (`--kd_alpha=0.5 only applies to --method=kd; ...`), a value its field cannot hold
            (`--alpha=x: expected float values.`), or what `Config` refuses.
    """
    if fl["kd_reduction"].present and fl.aux_loss != "kd":
        raise UserError(f"--kd_reduction={fl.kd_reduction} only applies to --aux_loss=kd; received --aux_loss={fl.aux_loss}.")
    for name, method in METHOD_FLAGS.items():
        if name not in _REFUSED_WHEN_NOT_EMPTY and fl[name].present and fl.method != method:
            raise UserError(
                f"--{name}={fl[name].value} only applies to --method={method}; received --method={fl.method}. Drop it."
            )
    for name in ("randaugment_layers", "randaugment_magnitude"):
        if fl[name].present and fl.augment != "randaugment":
            raise UserError(f"--{name}={fl[name].value} only applies to --augment=randaugment; received --augment={fl.augment}.")
    if fl["soft_label_cache_dir"].present and fl.soft_label_cache == "off":
        raise UserError(
            f"--soft_label_cache_dir={fl.soft_label_cache_dir} only applies with --soft_label_cache=replay or clean; "
            "received --soft_label_cache=off (the sources run on every batch). Add --soft_label_cache=replay or drop it."
        )
    for name in ("replay_views", "replay_top_k"):
        if fl[name].present and fl.soft_label_cache != "replay":
            raise UserError(f"--{name}={fl[name].value} only applies to --soft_label_cache=replay; received --soft_label_cache={fl.soft_label_cache}.")
    video = is_video_dataset(_absolute_dataset("dataset", fl.dataset))
    for name in ("clip_length", "video_source_frames", "video_source_num_frames"):
        if fl[name].present and not video:
            raise UserError(f"--{name}={fl[name].value} only applies to video datasets; received --dataset={fl.dataset}.")
    if fl["video_split"].present and fl.dataset not in ("ucf101", "hmdb51"):
        raise UserError(f"--video_split={fl.video_split} only applies to --dataset=ucf101 or hmdb51 (their official splits); received --dataset={fl.dataset}.")
    if fl["video_source_num_frames"].present and fl.video_source_frames != "mean":
        raise UserError(f"--video_source_num_frames={fl.video_source_num_frames} only applies to --video_source_frames=mean; received --video_source_frames={fl.video_source_frames}.")
    # On video data, a 2D --model is the problem to name (Config's check), not its shortcut flag.
    if fl["resnet_shortcut"].present and not is_video_model(fl.model) and not video:
        raise UserError(f"--resnet_shortcut={fl.resnet_shortcut} only applies to the 3D ResNets (--model=resnet*_3d); received --model={fl.model}.")
    if fl["lr_patience"].present and fl.lr_schedule != "plateau":
        raise UserError(f"--lr_patience={fl.lr_patience} only applies to --lr_schedule=plateau; received --lr_schedule={fl.lr_schedule}.")
    if fl["mix_prob"].present and not (fl.mixup > 0 or fl.cutmix > 0):
        raise UserError(f"--mix_prob={fl.mix_prob} only applies with --mixup or --cutmix > 0; both are 0.")
    return Config(**_field_values(fl, Config))


def flag_values(config):
    """The settings of a config.json dict by flag name: `{"augment": "standard", "mixup": 0.2, ...}`.

    Reads config.json as this version writes it (the augmentation nested under `augmentation`) and as
    versions before it did (every field at the top level, named as its flag), so that both compare
    equal. A field without a flag (`augmentation.padding`) is named by its path; keys this version
    does not know are kept as they are.

    Args:
        config: a `json.loads` of config.json (or of `Config.to_json()`).

    Returns:
        dict of flag name -> the JSON value (lists for tuples, None for unset).
    """
    values = {}
    nested = {f.name: _nested(f) for f in dataclasses.fields(Config) if _nested(f)}
    for key, value in config.items():
        if key not in nested or not isinstance(value, dict):
            values[key] = value
            continue
        fields = {f.name: f for f in dataclasses.fields(nested[key])}
        for name, inner in value.items():
            field = fields.get(name)
            values[_flag_name(field) if field and "help" in field.metadata else f"{key}.{name}"] = inner
    return values
