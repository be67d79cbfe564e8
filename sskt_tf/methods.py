"""The training methods of `--method`: one builder per method, from a `Config` to a built model.

| method    | model                                   | paper                          |
|-----------|-----------------------------------------|--------------------------------|
| `sskt`    | `SSKTModel` with `--sources`            | Hong et al., WACV 2022         |
| `scratch` | `SSKTModel` without sources             | the target alone, same recipe  |
| `kd`      | `KDModel`, frozen `--teacher`           | Hinton et al., 2015            |
| `dml`     | `DMLModel`, `--dml_peers` peers         | Zhang et al., CVPR 2018        |
| `maxl`    | `MAXLModel`, a label-generation network | Liu et al., NeurIPS 2019       |

Every model is a `sskt_tf.models.TrainingModel`: `call()` = the target's logits, `target_model()` =
the target alone for export, Mean trackers per loss term, evaluation of the target alone, and what
train_lib asks of a run (`sources`, `extra_targets`, `split_results`) answered by each model itself.
"""

import os
import zipfile

import keras

from sskt_tf import heads, models, sources
from sskt_tf.baselines import DMLModel, KDModel, MAXLModel, build_label_generator
from sskt_tf.errors import UserError
from sskt_tf.names import METHODS
from sskt_tf.sskt import SSKTModel


def _backbone(config, input_shape):
    return models.get_backbone(config.model, input_shape, sync_bn=config.sync_bn, shortcut=config.resnet_shortcut)


def _source_kwargs(config, clip_length):
    """What every frozen network of `config` shares: precision, outputs, and what it sees of a clip."""
    kwargs = dict(outputs=config.source_outputs)
    if clip_length is not None:
        kwargs.update(video_frames=config.video_source_frames, video_num_frames=config.video_source_num_frames)
    return kwargs


def _target_kwargs(config, backbone, class_names=None):
    return dict(
        target_loss=config.target_loss,
        weight_decay=config.weight_decay,
        feature_key=list(backbone.stage_channels)[-1],
        class_names=class_names,
    )


def _known_names(names):
    """`names` as a tuple, or None where they are absent or only placeholders (`class_0`, `class_1`, ...)."""
    if names is None:
        return None
    names = tuple(str(n) for n in names)
    return None if all(n == f"class_{i}" for i, n in enumerate(names)) else names


def _check_teacher_names(spec, teacher_names, class_names):
    """Refuses a teacher whose stored class names are not the dataset's, in the same order.

    Both sides must carry real names (a target trained by this project stores them; placeholder
    names `class_<i>` say nothing). Same count, other names or another order: the teacher's
    output k is another class than the target's label k, which no loss would ever notice.

    Raises:
        UserError: one line with the first differing position and the fix.
    """
    teacher_names, class_names = _known_names(teacher_names), _known_names(class_names)
    if teacher_names is None or class_names is None or teacher_names == class_names:
        return
    k = next(i for i, (a, b) in enumerate(zip(teacher_names, class_names)) if a != b)
    same_set = sorted(teacher_names) == sorted(class_names)
    raise UserError(
        f"--teacher={spec} was trained on {'the same classes in another order' if same_set else 'other classes'}: "
        f"its output {k} is {teacher_names[k]!r} where the dataset's class {k} is {class_names[k]!r} "
        f"(teacher: {', '.join(teacher_names[:4])}, ...; dataset: {', '.join(class_names[:4])}, ...). KD needs a "
        "teacher of the same classes in the same order: pass the target.keras of a run on this dataset."
    )


def _sskt(config, image_size, num_classes, class_names=None, clip_length=None):
    """SSKT: target `config.model`, one source and auxiliary head per `config.sources` (none: scratch)."""
    backbone = _backbone(config, _input_shape(image_size, clip_length))
    frozen, aux_heads, names = [], [], set()
    for spec in config.sources:
        name = base = sources.source_name(spec)
        # Two files may share a stem; metric and layer names must not.
        index = 2
        while name in names:
            name, index = f"{base}_{index}", index + 1
        names.add(name)
        source = sources.build_source(
            spec,
            image_size,
            config.source_scale,
            config.source_bn,
            name=f"source_{name}",
            dtype_policy=config.precision if config.source_precision == "same" else config.source_precision,
            **_source_kwargs(config, clip_length),
        )
        frozen.append(source)
        aux_heads.append(
            heads.build_head(
                config.aux_head,
                source.num_classes,
                backbone.stage_channels,
                name=f"aux_{name}",
                sync_bn=config.sync_bn,
                # The reference widens ImageNet-style targets' branches to 1000 (a backbone attribute).
                width=backbone.transfer_width,
                spatial_dims=3 if clip_length is not None else 2,
            )
        )
    return SSKTModel(
        backbone,
        num_classes,
        sources=frozen,
        aux_heads=aux_heads,
        alphas=config.source_alphas,
        temperatures=config.source_temperatures,
        aux_loss=config.aux_loss,
        kd_reduction=config.kd_reduction,
        name="sskt",
        **_target_kwargs(config, backbone, class_names),
    )


def _kd(config, image_size, num_classes, class_names=None, clip_length=None):
    backbone = _backbone(config, _input_shape(image_size, clip_length))
    # A KD teacher shares the target's label space, so it was trained on this data: it sees the
    # target's image size (or its own fixed input size, with a printed line), not the sources'
    # 7/3 upscaling.
    teacher = sources.build_source(
        config.teacher,
        image_size,
        1.0,
        config.source_bn,
        name="teacher",
        outputs=config.source_outputs,
        flag="--teacher",
        clip_length=clip_length,
    )
    if teacher.num_classes != num_classes:
        raise UserError(
            f"--teacher={config.teacher} predicts {teacher.num_classes} classes but the dataset has "
            f"{num_classes}; KD needs a teacher of the same label space, e.g. the target.keras of a run "
            "on the same data."
        )
    _check_teacher_names(config.teacher, teacher.class_names, class_names)
    return KDModel(
        backbone,
        num_classes,
        teacher,
        kd_alpha=config.kd_alpha,
        kd_temperature=config.temperature[0],
        name="kd",
        **_target_kwargs(config, backbone, class_names),
    )


def _dml(config, image_size, num_classes, class_names=None, clip_length=None):
    peers = []
    for k in range(config.dml_peers):
        # Each backbone draws its own initial weights from the seeded global generator.
        backbone = _backbone(config, _input_shape(image_size, clip_length))
        # The scratch target (SSKTModel without sources, a TargetModel). Its class name also names
        # each peer's part of the saved training state (layers/sskt_model, layers/sskt_model_1, ...):
        # another class would stop the states of earlier runs from loading.
        peers.append(SSKTModel(backbone, num_classes, name=f"peer{k}", **_target_kwargs(config, backbone, class_names)))
    return DMLModel(peers, weight_decay=config.weight_decay, name="dml")


def _maxl(config, image_size, num_classes, class_names=None, clip_length=None):
    psi = config.maxl_psi * num_classes if len(config.maxl_psi) == 1 else config.maxl_psi
    if len(psi) != num_classes:
        raise UserError(
            f"--maxl_psi={','.join(map(str, config.maxl_psi))}: give one value or one per class; the "
            f"dataset has {num_classes} classes."
        )
    backbone = _backbone(config, _input_shape(image_size, clip_length))
    generator_backbone = _backbone(config, _input_shape(image_size, clip_length))
    kwargs = _target_kwargs(config, backbone, class_names)
    generator = build_label_generator(generator_backbone, sum(psi), kwargs["feature_key"])
    return MAXLModel(
        backbone,
        num_classes,
        generator,
        psi=psi,
        aux_weight=config.maxl_aux_weight,
        entropy_weight=config.maxl_entropy_weight,
        generator_lr=config.maxl_generator_lr,
        base_lr=config.lr,
        first_order=config.maxl_first_order,
        name="maxl",
        **kwargs,
    )


def method_of(config):
    """The method a run trains: `config.method`, except `--method=sskt` without `--sources`, which is scratch.

    The same model either way (an `SSKTModel` without sources); results.json and the run's summary
    name it by what it is.

    Args:
        config: the run's `Config`.

    Returns:
        One of `sskt_tf.names.METHODS`.
    """
    return "scratch" if config.method == "sskt" and not config.sources else config.method


def _input_shape(image_size, clip_length):
    """The target's input: `(H, W, 3)` images, or `(T, H, W, 3)` clips."""
    return (*image_size, 3) if clip_length is None else (clip_length, *image_size, 3)


def build_model(config, image_size, num_classes, class_names=None, clip_length=None):
    """The built model of `config.method`; call it inside the strategy's scope.

    Builds the target `config.model` and what the method adds: SSKT's sources (`config.sources`,
    each checked and adapted by `sources.build_source`) and auxiliary heads, KD's teacher, DML's
    peers, MAXL's label generator. The model is built for `(None, H, W, 3)` images, so that its
    variables (and a compiled optimizer's) exist before `fit` or a resumption loads them.

    Args:
        config: the run's `Config`.
        image_size: (H, W) of the training images, in pixels.
        num_classes: classes of the dataset.
        class_names: the dataset's class names (one str per class), or None. Stored in every
            saved target (`TargetModel.target_model`), and compared with a `--teacher` that
            stores its own.
        clip_length: frames per clip of a video dataset (the target then takes `(None, T, H, W, 3)`
            clips, the sources see their frames); None for images.

    Returns:
        A built `sskt_tf.models.TrainingModel`: `SSKTModel` (sskt, scratch), `KDModel`,
        `DMLModel` or `MAXLModel`.

    Raises:
        UserError: an unknown method; a source or teacher that cannot serve (see
            `sources.build_source`); a teacher of another label space (class count, or stored
            class names and their order); `--maxl_psi` neither one value nor one per class.
        ValueError: `class_names` that do not name every class.
    """
    # Scratch is SSKT without sources (the config refuses --sources with --method=scratch).
    builders = {"sskt": _sskt, "scratch": _sskt, "kd": _kd, "dml": _dml, "maxl": _maxl}
    if config.method not in builders:
        raise UserError(f"--method={config.method} is not known. Allowed: {', '.join(METHODS)}.")
    model = builders[config.method](config, image_size, num_classes, class_names, clip_length)
    model.build((None, *_input_shape(image_size, clip_length)))
    backbones = [target.backbone for target in _targets(model)]
    if config.init_checkpoint:
        for backbone in backbones:
            initialize_backbone(backbone, config.init_checkpoint)
    if config.finetune_from:
        for backbone in backbones:
            freeze_before(backbone, config.finetune_from)
    return model


def _targets(model):
    """The `TargetModel`s a model trains: DML's peers, or the model itself."""
    return list(getattr(model, "peers", [model]))


def initialize_backbone(backbone, path, flag="--init_checkpoint"):
    """Sets every weight of `backbone` from the layer of the same name in the `.keras` file `path`.

    The file may hold a whole classifier (e.g. Hara et al.'s Kinetics 3D ResNet converted by
    `python -m sskt_tf.convert_torch`, whose layer names are the backbone's), or a target saved by a
    run (its backbone nested inside). Its other layers (the classifier `fc`, a `classifier`) are not
    used: the target's classifier and heads start new. Prints one line.

    Args:
        backbone: the built `sskt_tf.models.Backbone` to initialise.
        path: the `.keras` file.
        flag: the flag named in messages.

    Raises:
        UserError: a missing file or one that is no `.keras` file or does not load; a network of
            images for a network of clips or the reverse; a backbone layer with weights that the file
            lacks or holds with other shapes (another depth, shortcut or width).
    """
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a .keras file (a zip archive written by Keras 3's model.save)"
        raise UserError(f"{flag}={path} {what}; pass a file written by python -m sskt_tf.convert_torch or by a training run (target.keras).")
    try:
        saved = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise UserError(
            f"{flag}={path}: cannot load it as a Keras 3 .keras file ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
            "pass a file written by python -m sskt_tf.convert_torch or by a training run (target.keras)."
        ) from None
    theirs, ours = len(saved.input_shape), len(backbone.input_shape)
    if theirs != ours:
        kinds = {4: "images [N, H, W, 3]", 5: "clips [N, T, H, W, 3]"}
        raise UserError(
            f"{flag}={path} is a network of {kinds.get(theirs, saved.input_shape)}, but --model={backbone.name} takes "
            f"{kinds.get(ours, backbone.input_shape)}; pass a checkpoint of the same network."
        )
    by_name = {}
    for layer in saved._flatten_layers(include_self=False, recursive=True):
        if layer.weights and not isinstance(layer, keras.Model):
            by_name.setdefault(layer.name, layer)
    layers = [l for l in backbone._flatten_layers(include_self=False, recursive=True) if l.weights and not isinstance(l, keras.Model)]
    missing, mismatched = [], []
    for layer in layers:
        source = by_name.get(layer.name)
        if source is None:
            missing.append(layer.name)
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(w.shape) for w in source.weights] != shapes:
            mismatched.append(f"{layer.name} {shapes[0]} vs {tuple(source.weights[0].shape)}")
            continue
        layer.set_weights(source.get_weights())
    if missing or mismatched:
        what = (
            f"lacks {len(missing)} layers of --model's backbone (first: {', '.join(missing[:3])})"
            if missing
            else f"holds {len(mismatched)} layers with other shapes (first: {mismatched[0]})"
        )
        raise UserError(
            f"{flag}={path} {what}; it must be the same network as --model={backbone.name} "
            "(depth, --resnet_shortcut, widths): convert the checkpoint with the matching --arch."
        )
    unused = sorted(set(by_name) - {layer.name for layer in layers})
    print(f"{flag}={path}: the backbone's {len(layers)} layers with weights start from it; not used: {', '.join(unused) or 'nothing'}.")


def freeze_before(backbone, stage, flag="--finetune_from"):
    """Freezes every layer of `backbone` that computes the stages before `stage` (stem included).

    Frozen layers take no gradient, no weight decay and, for BatchNormalization, run in inference
    mode (their moving statistics stay as loaded). The reference's fine-tuning (Hara et al.) instead
    leaves them in the optimizer at learning rate 0, in training mode, so its frozen BatchNorm
    statistics keep moving.

    Args:
        backbone: a built `Backbone` with outputs `stage1` ... `stageN`.
        stage: the first stage that trains, e.g. "stage4".
        flag: the flag named in messages.

    Raises:
        UserError: `stage` is not one of the backbone's stages after the first.
    """
    stages = list(backbone.stage_channels)
    if stage not in stages[1:]:
        raise UserError(
            f"{flag}={stage}: the first stage that trains must be one of {', '.join(stages[1:])} of --model={backbone.name} "
            "(leave the flag out to train every stage)."
        )
    # Everything the previous stage's output depends on: the stem and the stages before `stage`.
    earlier = keras.Model(backbone.input, backbone.output[stages[stages.index(stage) - 1]])
    for layer in earlier.layers:
        layer.trainable = False


def frozen_networks(model):
    """The frozen networks a model runs on every training batch: SSKT's sources, or KD's teacher.

    `--soft_label_cache` stores their logits; the model's `train_step` then reads them from the
    batch (`{"images": ..., "extras": (logits per network, ...)}`) in this order.

    Args:
        model: a model of `build_model`.

    Returns:
        list of `sskt_tf.sources.Source` (empty for scratch, DML and MAXL).
    """
    if isinstance(model, KDModel):
        return [model.teacher]
    return list(getattr(model, "sources", ()))
