"""The names every choice flag accepts, one tuple per flag; this module imports nothing.

`sskt_tf.config` offers them as the flags' choices (the order is the order `--helpfull` lists), and
each module that serves a flag's names keeps its registry equal to its tuple here (tests/test_names.py
checks them): adding a target network, head, loss, augmentation or method means adding its name here
and its builder there.
"""

# --- Served by a registry ----------------------------------------------------------------------------

# --model: target networks (sskt_tf.models.get_backbone).
MODEL_NAMES = (
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg16_bn",
    "resnet10_3d",
    "resnet18_3d",
    "resnet34_3d",
    "resnet50_3d",
)
# --resnet_shortcut: Hara et al.'s shortcut of the 3D ResNets (sskt_tf.models.resnet3d).
RESNET_SHORTCUTS = ("A", "B")
# --aux_head: auxiliary heads (sskt_tf.heads.build_head).
HEAD_NAMES = ("linear", "transfer_module")
# --target_loss (sskt_tf.losses.target_loss).
TARGET_LOSSES = ("ce", "focal", "bce")
# --aux_loss (sskt_tf.losses.aux_loss).
AUX_LOSSES = ("ce", "kd")
# --kd_reduction (sskt_tf.losses.kd_loss).
KD_REDUCTIONS = ("batchmean", "mean")
# --source_bn: the BatchNorm statistics of the frozen sources (sskt_tf.sources.build_source).
SOURCE_BN_MODES = ("inference", "batch")
# --source_outputs: what the sources and the teacher output; auto detects a final softmax (sskt_tf.sources).
SOURCE_OUTPUTS = ("auto", "logits", "probabilities")
# --augment: the first stages of training-batch augmentation (sskt_tf.augment.BatchAugmenter).
AUGMENTS = ("none", "standard", "randaugment")
# --method: SSKT and its baselines (sskt_tf.methods.build_model).
METHODS = ("sskt", "scratch", "kd", "dml", "maxl")

# --- Read by the training driver --------------------------------------------------------------------

# --lr_schedule (sskt_tf.optim.learning_rate).
LR_SCHEDULES = ("multistep", "cosine", "constant", "plateau")
# --strategy (sskt_tf.distribute.get_strategy).
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
# --precision: Keras dtype policies of the target.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# --source_precision: same (as --precision) or a compute dtype of the frozen sources.
SOURCE_PRECISIONS = ("same", "float32", "float16", "bfloat16")
# --video_source_frames: which frames of a clip the 2D sources see (sskt_tf.sources.Source).
VIDEO_SOURCE_FRAMES = ("middle", "mean")
# --soft_label_cache (sskt_tf.soft_labels).
SOFT_LABEL_CACHES = ("off", "clean", "replay")
# --jit_compile: XLA compilation of the steps.
JIT_CHOICES = ("auto", "true", "false")
# --cache: where the decoded training images are kept: auto = memory within a budget, else decoded every epoch.
CACHES = ("auto", "memory", "disk", "none")
