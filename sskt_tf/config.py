"""The run configuration: absl flags, turned at once into one frozen `Config`.

Library code receives a `Config` (or plain arguments), never FLAGS.
"""

import dataclasses
import fractions
import json
import math
import os

from absl import flags

from sskt_tf import augment, heads, losses, models, sources
from sskt_tf.errors import UserError
from sskt_tf.methods import METHODS

LR_SCHEDULES = ("multistep", "cosine", "constant")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SOURCE_PRECISIONS = ("same", "float32", "float16", "bfloat16")
SOFT_LABEL_CACHES = ("off", "clean")
JIT_CHOICES = ("auto", "true", "false")
# What the sources' and the teacher's outputs are: auto detects a final softmax (sskt_tf.sources).
SOURCE_OUTPUTS = ("auto", "logits", "probabilities")
# Where the decoded training images are kept: auto = memory within a budget, else decoded every epoch.
CACHES = ("auto", "memory", "disk", "none")
# Flags of one method each, named <method>_*: any other --method refuses them.
METHOD_FLAGS = (
    "kd_alpha",
    "dml_peers",
    "maxl_psi",
    "maxl_aux_weight",
    "maxl_entropy_weight",
    "maxl_generator_lr",
    "maxl_first_order",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on. Written to `<output_dir>/config.json`."""

    # Data.
    dataset: str = "cifar10"
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    train_subset: int | None = None
    # Share of the training set held out (seeded, stratified) to choose best.keras; 0: the paper's protocol.
    validation_split: float = 0.0
    cache: str = "auto"
    skip_bad_images: bool = False
    # Augmentation of training batches (sskt_tf.augment).
    augment: str = "standard"
    randaugment_layers: int = 2
    randaugment_magnitude: float = 0.5
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    # Target.
    model: str = "resnet20"
    target_loss: str = "ce"
    # Sources and auxiliary tasks.
    sources: tuple[str, ...] = ()
    aux_head: str = "linear"
    alpha: tuple[float, ...] = (0.1,)
    temperature: tuple[float, ...] = (3.0,)
    aux_loss: str = "ce"
    kd_reduction: str = "batchmean"
    source_scale: float = 7 / 3
    source_bn: str = "inference"
    source_outputs: str = "auto"
    # Method: SSKT or a baseline (sskt_tf.methods).
    method: str = "sskt"
    teacher: str | None = None
    kd_alpha: float = 0.9
    dml_peers: int = 2
    # 10 as the paper's MAXL row for the default ResNet-20 target (its VGG-16 row used 5).
    maxl_psi: tuple[int, ...] = (10,)
    maxl_aux_weight: float = 1.0
    maxl_entropy_weight: float = 0.2
    maxl_generator_lr: float = 1e-3
    maxl_first_order: bool = False
    # Recipe.
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int | None = None
    steps_per_epoch: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    lr_milestones: tuple[int, ...] = (60, 120, 160)
    lr_gamma: float = 0.2
    seed: int = 0
    eval_every: int = 1
    # Execution and outputs.
    strategy: str = "auto"
    tpu: str = ""
    precision: str = "float32"
    source_precision: str = "same"
    soft_label_cache: str = "off"
    soft_label_cache_dir: str | None = None
    resume: bool = True
    deterministic: bool = False
    sync_bn: bool = False
    jit_compile: str = "auto"
    output_dir: str = "runs/default"
    overwrite: bool = False
    export: bool = False
    verbose: int = 1

    def __post_init__(self):
        _check_config(self)

    @staticmethod
    def _expand(values, n):
        return tuple(values) * n if len(values) == 1 else tuple(values)

    @property
    def augmentation(self):
        """The `sskt_tf.augment.Augmentation` of the training batches."""
        return augment.Augmentation(
            kind=self.augment,
            randaugment_layers=self.randaugment_layers,
            randaugment_magnitude=self.randaugment_magnitude,
            mixup=self.mixup,
            cutmix=self.cutmix,
            mix_prob=self.mix_prob,
        )

    @property
    def source_alphas(self):
        """One alpha per source."""
        return self._expand(self.alpha, len(self.sources))

    @property
    def source_temperatures(self):
        """One temperature per source."""
        return self._expand(self.temperature, len(self.sources))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _check_config(c):
    def bad(message):
        raise UserError(message)

    _check_numbers(c, bad)
    n = len(c.sources)
    for flag, values in (("alpha", c.alpha), ("temperature", c.temperature)):
        if len(values) not in (1, max(n, 1)):
            bad(f"--{flag}={','.join(map(str, values))}: give one value or one per source ({n} sources).")
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
        ("lr_gamma", c.lr_gamma > 0, "> 0"),
    ):
        if not ok:
            bad(f"--{name} must be {allowed}. Received: {getattr(c, name)}.")
    if list(c.lr_milestones) != sorted(set(c.lr_milestones)) or any(m < 1 for m in c.lr_milestones):
        bad(f"--lr_milestones must be increasing positive epochs. Received: {','.join(map(str, c.lr_milestones))}.")
    if c.soft_label_cache == "clean" and c.source_bn == "batch":
        bad(
            "--soft_label_cache=clean stores one logit vector per image, but --source_bn=batch makes it depend "
            "on the rest of the batch; use --source_bn=inference or --soft_label_cache=off."
        )
    mixing = c.augmentation.mixes  # Also validates the augmentation flags.
    if mixing and c.soft_label_cache == "clean":
        bad(
            f"--soft_label_cache=clean stores the sources' logits of single un-augmented images, but --mixup={c.mixup} "
            f"--cutmix={c.cutmix} make every training image a mix of two; use --soft_label_cache=off (the sources "
            "then see the mixed images) or drop --mixup/--cutmix."
        )
    if mixing and c.method == "maxl":
        bad(
            f"--method=maxl generates auxiliary labels within each image's one class, which mixed images do not have; "
            f"drop --mixup={c.mixup} --cutmix={c.cutmix} for MAXL."
        )
    if c.tpu and c.strategy != "tpu":
        bad(f"--tpu={c.tpu} only applies to --strategy=tpu; received --strategy={c.strategy}.")
    if c.image_size is not None and (len(c.image_size) != 2 or min(c.image_size) < 1):
        bad(f"--image_size must be one or two positive integers. Received: {c.image_size}.")
    if c.target_loss == "bce" and c.method not in ("sskt", "scratch"):
        bad(f"--target_loss=bce (multi-label) only applies to --method=sskt or scratch; received --method={c.method}.")
    _check_method(c, bad)


def _check_numbers(c, bad):
    """Every numeric field is a finite number: NaN passes every `<`/`>` test, so it is refused first."""
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                bad(f"--{field.name}={_show(value)}: expected a finite number; NaN and infinity are not allowed.")
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


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


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


def define_flags():
    """Defines the training flags on absl's global FLAGS (once; safe to call again)."""
    if "dataset" in flags.FLAGS:
        return
    d = Config()
    # Data.
    flags.DEFINE_string("dataset", d.dataset, "cifar10 | cifar100 | stl10 | voc2007 (multi-label: --target_loss=bce) | tfds:<name> (TFDS) | folder:<dir with train/ and test/> | synthetic[:classes] | synthetic_multilabel:<classes>.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (offline: put the original archive in <data_dir>/downloads/manual/).")
    flags.DEFINE_list("image_size", None, "H[,W] for folder and synthetic datasets (default: the first training image's size, 32 for synthetic).")
    flags.DEFINE_integer("train_subset", None, "Train on a fixed random subset of this many examples (quick experiments).")
    flags.DEFINE_float("validation_split", d.validation_split, "Hold out this share of the training set (seeded, stratified) to choose best.keras and show validation metrics; the test set is then scored once, at the end. 0 (default): the paper's protocol, best.keras chosen on the test set. A folder: dataset with a val/ directory uses it instead.")
    flags.DEFINE_enum("cache", d.cache, CACHES, "Decoded training images: memory (cached after the first epoch), disk (a tf.data cache file in <output_dir>/data_cache), none (decoded from the files every epoch), auto (memory if they fit in 25% of RAM, else none). The batches are identical whichever is used.")
    flags.DEFINE_bool("skip_bad_images", d.skip_bad_images, "folder: datasets: train without images that cannot be decoded, listed in <output_dir>/skipped_images.txt (default: stop and name them).")
    flags.DEFINE_enum("augment", d.augment, augment.AUGMENTS, "Training augmentation: standard (random crop of the 4-padded image + flip, the paper's), randaugment (standard, then keras-cv RandAugment), none.")
    flags.DEFINE_integer("randaugment_layers", d.randaugment_layers, "--augment=randaugment: operations per image (RandAugment's N).")
    flags.DEFINE_float("randaugment_magnitude", d.randaugment_magnitude, "--augment=randaugment: magnitude of every operation in [0, 1] (keras-cv's scale; RandAugment's M / 10), fixed.")
    flags.DEFINE_float("mixup", d.mixup, "MixUp's Beta(a, a) parameter (e.g. 0.2 or 1); 0 = off. Labels become soft; the sources see the mixed images.")
    flags.DEFINE_float("cutmix", d.cutmix, "CutMix's Beta(a, a) parameter (e.g. 1); 0 = off. With --mixup too, each mixed batch uses one of the two at random.")
    flags.DEFINE_float("mix_prob", d.mix_prob, "Probability that a training batch is mixed by --mixup/--cutmix (the CutMix paper's CIFAR recipe: 0.5).")
    # Target.
    flags.DEFINE_enum("model", d.model, models.MODEL_NAMES, "Target network.")
    flags.DEFINE_enum("target_loss", d.target_loss, losses.TARGET_LOSSES, "Loss of the target task.")
    # Sources.
    flags.DEFINE_list("sources", [], "Comma-separated source specs (empty: scratch): <application>:imagenet, <application>:/path/weights.h5, <application>:random[:classes], /path/model.keras.")
    flags.DEFINE_enum("aux_head", d.aux_head, heads.HEAD_NAMES, "Auxiliary head on the target for each source.")
    flags.DEFINE_list("alpha", ["0.1"], "Weight of the auxiliary losses: one value, or one per source.")
    flags.DEFINE_list("temperature", ["3"], "Softmax temperature T of the auxiliary losses: one value, or one per source.")
    flags.DEFINE_enum("aux_loss", d.aux_loss, losses.AUX_LOSSES, "ce: T^2 * soft-label cross-entropy; kd: T^2 * KL.")
    flags.DEFINE_enum("kd_reduction", d.kd_reduction, losses.KD_REDUCTIONS, "For --aux_loss=kd: batchmean (true KL) or mean (PyTorch KLDivLoss() default of the reference code: / classes).")
    flags.DEFINE_string("source_scale", "7/3", "Sources see the (augmented) batch resized by this factor (a number or a fraction), floor per side: 32 -> 74, 96 -> 224.")
    flags.DEFINE_enum("source_bn", d.source_bn, sources.SOURCE_BN_MODES, "inference: sources use their moving BatchNorm statistics; batch: batch statistics, as the reference code (statistics never updated).")
    flags.DEFINE_enum("source_outputs", d.source_outputs, SOURCE_OUTPUTS, "What the sources and the --teacher output: auto (a final softmax is detected and stripped, so its logits are used), logits, probabilities (their log is taken as logits).")
    # Method.
    flags.DEFINE_enum("method", d.method, METHODS, "sskt (with --sources; none: scratch), or a baseline: scratch (the target alone), kd (distillation from --teacher), dml (deep mutual learning of --dml_peers peers), maxl (meta auxiliary learning).")
    flags.DEFINE_string("teacher", None, "--method=kd: the frozen teacher, any source spec of the target's classes (e.g. /path/target.keras of a run on the same data); it sees the target's image size.")
    flags.DEFINE_float("kd_alpha", d.kd_alpha, "--method=kd: a in (1 - a) * CE + a * T^2 * KL(teacher/T || student/T); T is --temperature.")
    flags.DEFINE_integer("dml_peers", d.dml_peers, "--method=dml: number of peers K >= 2, each evaluated and exported on its own.")
    flags.DEFINE_list("maxl_psi", [str(p) for p in d.maxl_psi], "--method=maxl: auxiliary classes per class: one value for all classes, or one per class (default 10, the paper's MAXL row for ResNet-20; its VGG-16 row used 5).")
    flags.DEFINE_float("maxl_aux_weight", d.maxl_aux_weight, "--method=maxl: weight of the auxiliary loss in the target's multi-task loss.")
    flags.DEFINE_float("maxl_entropy_weight", d.maxl_entropy_weight, "--method=maxl: weight of the entropy regulariser in the label generator's objective (MAXL: 0.2).")
    flags.DEFINE_float("maxl_generator_lr", d.maxl_generator_lr, "--method=maxl: the label generator's SGD learning rate (MAXL: 1e-3), following the target's schedule.")
    flags.DEFINE_bool("maxl_first_order", d.maxl_first_order, "--method=maxl: finite-difference meta-gradient (first derivatives only, as MAXL's first-order code) instead of the second-order one.")
    # Recipe.
    flags.DEFINE_integer("epochs", d.epochs, "Training epochs.")
    flags.DEFINE_integer("batch_size", d.batch_size, "Global training batch size (divided over replicas).")
    flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size (default: --batch_size).")
    flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: training examples // batch size).")
    flags.DEFINE_float("lr", d.lr, "Peak learning rate of SGD.")
    flags.DEFINE_float("momentum", d.momentum, "SGD momentum.")
    flags.DEFINE_float("weight_decay", d.weight_decay, "Coupled L2 (added to the gradient before momentum, as PyTorch SGD) on every target weight.")
    flags.DEFINE_enum("lr_schedule", d.lr_schedule, LR_SCHEDULES, "multistep: x lr_gamma at each of --lr_milestones; cosine: to 0 over the run; constant.")
    flags.DEFINE_list("lr_milestones", [str(m) for m in d.lr_milestones], "Epochs at which multistep multiplies the learning rate by --lr_gamma (ignored by the other schedules).")
    flags.DEFINE_float("lr_gamma", d.lr_gamma, "Multistep decay factor.")
    flags.DEFINE_integer("seed", d.seed, "Seed of weights, data order and augmentation.")
    flags.DEFINE_integer("eval_every", d.eval_every, "Evaluate (and consider best.keras) every N epochs, and always after the last.")
    # Execution and outputs.
    flags.DEFINE_enum("strategy", d.strategy, STRATEGIES, "tf.distribute strategy: auto (mirrored over >1 GPUs, else default), one_device, mirrored, multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu (TPUStrategy, see --tpu).")
    flags.DEFINE_string("tpu", d.tpu, "TPU address for --strategy=tpu ('' = the local or Colab TPU).")
    flags.DEFINE_enum("precision", d.precision, PRECISIONS, "Compute precision of the target (variables, logits and losses stay float32).")
    flags.DEFINE_enum("source_precision", d.source_precision, SOURCE_PRECISIONS, "Compute precision of the frozen sources (same: as --precision). Their logits are cast to float32.")
    flags.DEFINE_enum("soft_label_cache", d.soft_label_cache, SOFT_LABEL_CACHES, "off: sources see every augmented batch (faithful); clean: each source's logits are computed once on the un-augmented training images and reused (SSKT then costs about as much as scratch).")
    flags.DEFINE_string("soft_label_cache_dir", None, "Where --soft_label_cache=clean stores logits (default <output_dir>/soft_label_cache); share it between runs with the same data and sources.")
    flags.DEFINE_bool("resume", d.resume, "Save the training state after every epoch and resume from it when the same command runs again.")
    flags.DEFINE_bool("deterministic", d.deterministic, "Bit-identical runs: TensorFlow op determinism (slower; turns XLA off).")
    flags.DEFINE_bool("sync_bn", d.sync_bn, "Synchronise the target's BatchNorm statistics across replicas.")
    flags.DEFINE_enum("jit_compile", d.jit_compile, JIT_CHOICES, "XLA compilation of the steps (auto: on GPU/TPU only).")
    flags.DEFINE_string("output_dir", d.output_dir, "Where the run writes config.json, metrics.csv, TensorBoard logs, checkpoints, target.keras, results.json.")
    flags.DEFINE_bool("overwrite", d.overwrite, "Allow writing into an --output_dir that holds another or a finished run.")
    flags.DEFINE_bool("export", d.export, "At the end, also export the target as a SavedModel to <output_dir>/saved_model (see sskt_tf.export).")
    flags.DEFINE_integer("verbose", d.verbose, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")


def _numbers(flag, values, kind):
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise UserError(f"--{flag}={','.join(values)}: expected {kind.__name__} values.") from None


def _fraction(flag, text):
    try:
        return float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--{flag}={text}: expected a number or a fraction such as 7/3.") from None


# Paths are stored absolute: config.json then names the same files from any working directory (evaluate,
# compare), and the same command run from elsewhere with other spellings of a path is the same run.
def _absolute(path):
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _absolute_dataset(dataset):
    prefix, _, path = dataset.partition(":")
    return f"folder:{_absolute(path)}" if prefix == "folder" and path else dataset


def _absolute_spec(spec):
    """A source spec with its file path made absolute: `x.keras`, `<application>:<weights file>`."""
    if not spec or spec.endswith(".keras"):
        return _absolute(spec)
    app, sep, weights = spec.partition(":")
    if sep and weights != "imagenet" and not weights.startswith("random"):
        return f"{app}:{_absolute(weights)}"
    return spec


def from_flags(fl=flags.FLAGS):
    """The frozen `Config` of parsed flags; raises UserError for values that contradict each other."""
    if fl["kd_reduction"].present and fl.aux_loss != "kd":
        raise UserError(f"--kd_reduction={fl.kd_reduction} only applies to --aux_loss=kd; received --aux_loss={fl.aux_loss}.")
    for name in METHOD_FLAGS:
        method = name.split("_")[0]
        if fl[name].present and fl.method != method:
            raise UserError(
                f"--{name}={fl[name].value} only applies to --method={method}; received --method={fl.method}. Drop it."
            )
    for name in ("randaugment_layers", "randaugment_magnitude"):
        if fl[name].present and fl.augment != "randaugment":
            raise UserError(f"--{name}={fl[name].value} only applies to --augment=randaugment; received --augment={fl.augment}.")
    if fl["mix_prob"].present and not (fl.mixup > 0 or fl.cutmix > 0):
        raise UserError(f"--mix_prob={fl.mix_prob} only applies with --mixup or --cutmix > 0; both are 0.")
    image_size = None
    if fl.image_size:
        size = _numbers("image_size", fl.image_size, int)
        image_size = size * 2 if len(size) == 1 else size
    return Config(
        dataset=_absolute_dataset(fl.dataset),
        data_dir=_absolute(fl.data_dir),
        image_size=image_size,
        train_subset=fl.train_subset,
        validation_split=fl.validation_split,
        cache=fl.cache,
        skip_bad_images=fl.skip_bad_images,
        augment=fl.augment,
        randaugment_layers=fl.randaugment_layers,
        randaugment_magnitude=fl.randaugment_magnitude,
        mixup=fl.mixup,
        cutmix=fl.cutmix,
        mix_prob=fl.mix_prob,
        model=fl.model,
        target_loss=fl.target_loss,
        sources=tuple(_absolute_spec(s.strip()) for s in fl.sources if s.strip()),
        aux_head=fl.aux_head,
        alpha=_numbers("alpha", fl.alpha, float),
        temperature=_numbers("temperature", fl.temperature, float),
        aux_loss=fl.aux_loss,
        kd_reduction=fl.kd_reduction,
        source_scale=_fraction("source_scale", fl.source_scale),
        source_bn=fl.source_bn,
        source_outputs=fl.source_outputs,
        method=fl.method,
        teacher=_absolute_spec((fl.teacher or "").strip()) or None,
        kd_alpha=fl.kd_alpha,
        dml_peers=fl.dml_peers,
        maxl_psi=_numbers("maxl_psi", fl.maxl_psi, int),
        maxl_aux_weight=fl.maxl_aux_weight,
        maxl_entropy_weight=fl.maxl_entropy_weight,
        maxl_generator_lr=fl.maxl_generator_lr,
        maxl_first_order=fl.maxl_first_order,
        epochs=fl.epochs,
        batch_size=fl.batch_size,
        eval_batch_size=fl.eval_batch_size,
        steps_per_epoch=fl.steps_per_epoch,
        lr=fl.lr,
        momentum=fl.momentum,
        weight_decay=fl.weight_decay,
        lr_schedule=fl.lr_schedule,
        lr_milestones=_numbers("lr_milestones", fl.lr_milestones, int),
        lr_gamma=fl.lr_gamma,
        seed=fl.seed,
        eval_every=fl.eval_every,
        strategy=fl.strategy,
        tpu=fl.tpu,
        precision=fl.precision,
        source_precision=fl.source_precision,
        soft_label_cache=fl.soft_label_cache,
        soft_label_cache_dir=_absolute(fl.soft_label_cache_dir),
        resume=fl.resume,
        deterministic=fl.deterministic,
        sync_bn=fl.sync_bn,
        jit_compile=fl.jit_compile,
        output_dir=_absolute(fl.output_dir),
        overwrite=fl.overwrite,
        export=fl.export,
        verbose=fl.verbose,
    )
