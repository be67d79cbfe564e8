"""The training methods of `--method`: SSKT and the baselines the paper compares it with.

| method    | model                                   | paper                          |
|-----------|-----------------------------------------|--------------------------------|
| `sskt`    | `SSKTModel` with `--sources`            | Hong et al., WACV 2022         |
| `scratch` | `SSKTModel` without sources             | the target alone, same recipe  |
| `kd`      | `KDModel`, frozen `--teacher`           | Hinton et al., 2015            |
| `dml`     | `DMLModel`, `--dml_peers` peers         | Zhang et al., CVPR 2018        |
| `maxl`    | `MAXLModel`, a label-generation network | Liu et al., NeurIPS 2019       |

Every model has SSKTModel's surface: `call()` = the target's logits, `target_model()` = the target
alone for export, Mean trackers per loss term, evaluation of the target alone.
"""

from sskt_tf import models, sources, sskt
from sskt_tf.baselines import DMLModel, KDModel, MAXLModel, build_label_generator
from sskt_tf.baselines.dml import split_peer_results
from sskt_tf.errors import UserError
from sskt_tf.names import METHODS


def _backbone(config, image_size):
    return models.get_backbone(config.model, (*image_size, 3), sync_bn=config.sync_bn)


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


def _kd(config, image_size, num_classes, class_names=None):
    backbone = _backbone(config, image_size)
    # A KD teacher shares the target's label space, so it was trained on this data: it sees the
    # target's image size (or its own fixed input size, with a printed line), not the sources'
    # 7/3 upscaling.
    teacher = sources.build_source(
        config.teacher, image_size, 1.0, config.source_bn, name="teacher", outputs=config.source_outputs, flag="--teacher"
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


def _dml(config, image_size, num_classes, class_names=None):
    peers = []
    for k in range(config.dml_peers):
        # Each backbone draws its own initial weights from the seeded global generator.
        backbone = _backbone(config, image_size)
        peers.append(
            sskt.SSKTModel(backbone, num_classes, name=f"peer{k}", **_target_kwargs(config, backbone, class_names))
        )
    return DMLModel(peers, weight_decay=config.weight_decay, name="dml")


def _maxl(config, image_size, num_classes, class_names=None):
    psi = config.maxl_psi * num_classes if len(config.maxl_psi) == 1 else config.maxl_psi
    if len(psi) != num_classes:
        raise UserError(
            f"--maxl_psi={','.join(map(str, config.maxl_psi))}: give one value or one per class; the "
            f"dataset has {num_classes} classes."
        )
    backbone = _backbone(config, image_size)
    generator_backbone = _backbone(config, image_size)
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


def build_model(config, image_size, num_classes, class_names=None):
    """The built model of `config.method` (call it inside the strategy's scope).

    Args:
        config: the run's `Config`.
        image_size: (H, W) of the training images.
        num_classes: classes of the dataset.
        class_names: the dataset's class names (one str per class), or None. Stored in every
            saved target (`SSKTModel.target_model`), and compared with a `--teacher` that
            stores its own.

    Raises:
        UserError: a source or teacher that cannot serve (see `sources.build_source`), a teacher
            of another label space (class count, or stored class names and their order).
    """
    if config.method in ("sskt", "scratch"):
        # Scratch is SSKT without sources (the config refuses --sources with --method=scratch).
        return sskt.build_model(config, image_size, num_classes, class_names=class_names)
    builders = {"kd": _kd, "dml": _dml, "maxl": _maxl}
    if config.method not in builders:
        raise UserError(f"--method={config.method} is not known. Allowed: {', '.join(METHODS)}.")
    model = builders[config.method](config, image_size, num_classes, class_names)
    model.build((None, *image_size, 3))
    return model


def split_results(config, model, test):
    """The run's test metrics (the target's: DML's peer 0) and the method's extra results.json fields.

    Args:
        config: the run's `Config`.
        model: the trained model.
        test: `model.evaluate(..., return_dict=True)`, as floats.

    Returns:
        `(test, extra)`: extra holds `method`, and `peers` (DML: each peer's test metrics, peer 0
        first) or `teacher` (KD: its spec, classes and input size).
    """
    extra = {"method": config.method}
    if isinstance(model, DMLModel):
        peers = split_peer_results(test, len(model.peers))
        test, extra["peers"] = peers[0], peers
    if isinstance(model, KDModel):
        t = model.teacher
        extra["teacher"] = {"spec": t.spec, "classes": t.num_classes, "input_size": list(t.image_size)}
    return test, extra


def extra_targets(model, name):
    """`(file name, target)` for every exported network besides target.keras: DML's `peer_<k>.keras`, k >= 1."""
    if isinstance(model, DMLModel):
        return [(f"peer_{k}.keras", m) for k, m in enumerate(model.peer_target_models(name)) if k > 0]
    return []
