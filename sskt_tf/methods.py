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

METHODS = ("sskt", "scratch", "kd", "dml", "maxl")


def _backbone(config, image_size):
    return models.get_backbone(config.model, (*image_size, 3), sync_bn=config.sync_bn)


def _target_kwargs(config, backbone):
    return dict(
        target_loss=config.target_loss,
        weight_decay=config.weight_decay,
        feature_key=list(backbone.stage_channels)[-1],
    )


def _kd(config, image_size, num_classes):
    backbone = _backbone(config, image_size)
    # A KD teacher shares the target's label space, so it was trained on this data: it sees the
    # target's image size (or its own fixed input size), not the sources' 7/3 upscaling.
    teacher = sources.build_source(config.teacher, image_size, 1.0, config.source_bn, name="teacher")
    if teacher.num_classes != num_classes:
        raise UserError(
            f"--teacher={config.teacher} predicts {teacher.num_classes} classes but the dataset has "
            f"{num_classes}; KD needs a teacher of the same label space, e.g. the target.keras of a run "
            "on the same data."
        )
    return KDModel(
        backbone,
        num_classes,
        teacher,
        kd_alpha=config.kd_alpha,
        kd_temperature=config.temperature[0],
        name="kd",
        **_target_kwargs(config, backbone),
    )


def _dml(config, image_size, num_classes):
    peers = []
    for k in range(config.dml_peers):
        # Each backbone draws its own initial weights from the seeded global generator.
        backbone = _backbone(config, image_size)
        peers.append(sskt.SSKTModel(backbone, num_classes, name=f"peer{k}", **_target_kwargs(config, backbone)))
    return DMLModel(peers, weight_decay=config.weight_decay, name="dml")


def _maxl(config, image_size, num_classes):
    psi = config.maxl_psi * num_classes if len(config.maxl_psi) == 1 else config.maxl_psi
    if len(psi) != num_classes:
        raise UserError(
            f"--maxl_psi={','.join(map(str, config.maxl_psi))}: give one value or one per class; the "
            f"dataset has {num_classes} classes."
        )
    backbone = _backbone(config, image_size)
    generator_backbone = _backbone(config, image_size)
    kwargs = _target_kwargs(config, backbone)
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


def build_model(config, image_size, num_classes):
    """The built model of `config.method` (call it inside the strategy's scope)."""
    if config.method in ("sskt", "scratch"):
        # Scratch is SSKT without sources (the config refuses --sources with --method=scratch).
        return sskt.build_model(config, image_size, num_classes)
    builders = {"kd": _kd, "dml": _dml, "maxl": _maxl}
    if config.method not in builders:
        raise UserError(f"--method={config.method} is not known. Allowed: {', '.join(METHODS)}.")
    model = builders[config.method](config, image_size, num_classes)
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
