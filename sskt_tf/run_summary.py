"""The block a training run prints before its first step, and writes to `<output_dir>/summary.txt`.

What the run will do, from the objects it built (not from the flags alone): the data as loaded
(image counts after the hold-out, the subset and skipped files; classes; image size), the
validation that picks best.keras, the method, the target and what the method adds (SSKT's sources
with the input size each sees and its auxiliary head; KD's teacher; DML's peers; MAXL's label
generator), each with its parameter count, the steps, and where the outputs go. For example:

    run summary
      dataset     synthetic: 512 training images, 256 test images, 10 classes, 32x32 px
      validation  none: the test set picks best.keras, evaluated after every epoch (the paper's protocol)
      method      sskt
      target      resnet20: 272,474 parameters
      sources     frozen (BatchNorm: inference); each with a transfer_module head on the target
        source               parameters  input  head parameters  spec
        mobilenet_v2_random   3,538,984  74x74           36,520  mobilenet_v2:random
      steps       2 epochs x 3 steps x 16 images (global batch; 1 replica); a full pass is 32 steps
      schedule    SGD lr 0.1, momentum 0.9, coupled L2 0.0005; x0.2 after epochs 1
      output_dir  /tmp/sskt_smoke
"""

import os

from sskt_tf import methods, soft_labels
from sskt_tf.config import is_video_dataset
from sskt_tf import run_dir as run_dir_lib

SUMMARY_FILE = "summary.txt"
_LABEL_WIDTH = 12


def _count(n):
    return f"{int(n):,}"


def _size(size):
    return "x".join(str(int(s)) for s in size)


def _plural(n, word):
    return f"{_count(n)} {word}{'' if n == 1 else 's'}"


def _row(label, value):
    return f"  {label:<{_LABEL_WIDTH}}{value}"


def _table(header, rows, right=()):
    """Aligned columns under the block's rows, indented by 4; columns in `right` align right."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = []
    for cells in (header, *rows):
        text = "  ".join(f"{c:>{w}}" if i in right else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths)))
        lines.append(f"    {text.rstrip()}")
    return lines


def _validation(config, data):
    cadence = (
        "after every epoch"
        if config.eval_every == 1 or config.epochs == 1
        else f"every {config.eval_every} epochs and after the last"
    )
    if data.validation is None:
        return f"none: the test set picks best.keras, evaluated {cadence} (the paper's protocol)"
    if data.validation_from == "validation_split":
        where = f"held out of the training set (--validation_split={config.validation_split:g})"
    else:
        where = f"from {data.validation_from}"
    unit = "video" if data.clip_length else "image"
    return f"{_plural(data.num_validation, unit)} {where}; picks best.keras, evaluated {cadence}"


def _dataset(config, data):
    unit = "video" if data.clip_length else "image"
    parts = [f"{_plural(data.num_train, 'training ' + unit)}", f"{_plural(data.num_test, 'test ' + unit)}"]
    labels = "labels (multi-label)" if data.multi_label else "classes"
    parts += [f"{data.num_classes} {labels}", f"{_size(data.image_size)} px"]
    if data.clip_length:
        parts.append(
            f"clips of {_plural(data.clip_length, 'frame')}; per-epoch evaluation on up to 3 clips per video, the final test "
            f"on every non-overlapping clip ({_plural(data.test_videos.num_clips, 'clip')}), scored per clip and per video"
        )
    if config.skip_bad_images:
        parts.append(f"{_plural(len(data.bad_files), 'undecodable file')} skipped (--skip_bad_images)")
    return f"{config.dataset}: {', '.join(parts)}"


def _schedule(config):
    """The learning rate over the run, in words; multistep milestones at or after the last epoch are named."""
    sgd = f"SGD lr {config.lr:g}, momentum {config.momentum:g}, coupled L2 {config.weight_decay:g}"
    if config.lr_schedule == "cosine":
        return f"{sgd}; cosine to 0 over {_plural(config.epochs, 'epoch')}"
    if config.dampening:
        sgd += f", dampening {config.dampening:g} (PyTorch's SGD)"
    if config.lr_schedule == "constant":
        return f"{sgd}; constant"
    if config.lr_schedule == "plateau":
        return (
            f"{sgd}; x{config.lr_gamma:g} after more than {_plural(config.lr_patience, 'evaluation')} without a lower "
            "validation loss (PyTorch's ReduceLROnPlateau)"
        )
    inside = [m for m in config.lr_milestones if m < config.epochs]
    text = f"{sgd}; x{config.lr_gamma:g} after epochs {','.join(map(str, config.lr_milestones))}"
    if len(inside) < len(config.lr_milestones):
        if inside:
            text += f" (within the run's {_plural(config.epochs, 'epoch')}: {','.join(map(str, inside))})"
        else:
            text += (
                f" (none within the run's {_plural(config.epochs, 'epoch')}: the rate stays {config.lr:g}; "
                "set --lr_milestones or --lr_schedule=cosine)"
            )
    return text


def _method_rows(config, model):
    """The rows (and table lines) of what the method adds to the target."""
    lines = []
    sources = list(getattr(model, "sources", ()))
    if sources:
        heads = list(getattr(model, "aux_heads", ()))
        seen = ""
        if config.clip_length and is_video_dataset(config.dataset):
            seen = (
                "; each sees the middle frame of the clip (--video_source_frames=middle)"
                if config.video_source_frames == "middle"
                else f"; each sees {_plural(min(config.video_source_num_frames, config.clip_length), 'evenly spaced frame')} of the clip, logits averaged"
            )
        lines.append(
            _row("sources", f"frozen (BatchNorm: {config.source_bn}); each with a {config.aux_head} head on the target{seen}")
        )
        rows = [
            (
                s.name.removeprefix("source_"),
                _count(s.network.count_params()),
                _size(s.image_size),
                _count(h.count_params()) if h is not None else "-",
                s.spec,
            )
            for s, h in zip(sources, heads + [None] * (len(sources) - len(heads)))
        ]
        lines += _table(("source", "parameters", "input", "head parameters", "spec"), rows, right=(1, 3))
    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        lines.append(
            _row(
                "teacher",
                f"{teacher.spec}: {_count(teacher.network.count_params())} parameters, {_size(teacher.image_size)} px "
                f"input, frozen (BatchNorm: {config.source_bn})",
            )
        )
    if methods.frozen_networks(model) and config.soft_label_cache != "off":
        lines.append(_row("soft labels", _soft_label_cache(config)))
    peers = getattr(model, "peers", None)
    if peers:
        each = peers[0].target_model().count_params()
        lines.append(_row("peers", f"{len(peers)} x {config.model}, {_count(each)} parameters each; peer 0 is the target"))
    generator = getattr(model, "generator", None)
    if generator is not None:
        lines.append(
            _row(
                "generator",
                f"label generator ({config.model}): {_count(generator.count_params())} parameters, "
                f"{sum(model.psi)} auxiliary classes",
            )
        )
    return lines


def _soft_label_cache(config):
    """The `soft labels` row: where the frozen networks' logits come from (`--soft_label_cache`)."""
    if config.soft_label_cache == "clean":
        return "stored logits of the un-augmented images (--soft_label_cache=clean, an approximation)"
    k = config.replay_top_k
    kept = "every logit, float32" if not k else f"top {k} logits, float16; all, float32, for sources of <= {k} classes"
    if config.augmentation.kind == "none":
        views = "of each image (--augment=none: one view)"
    else:
        views = f"of {min(config.replay_views, soft_labels.possible_views(config.augmentation))} stored crops + flips per image, one per epoch"
    return f"stored logits {views} (--soft_label_cache=replay; {kept}); the sources do not run in training"


def summary_lines(config, data, model, steps_per_epoch, replicas=1):
    """The lines of the run's summary block (no trailing newlines).

    Args:
        config: the run's `Config`.
        data: the run's `sskt_tf.data.Datasets`, as loaded.
        model: the method's built model (`methods.build_model`).
        steps_per_epoch: training steps per epoch.
        replicas: the strategy's replicas in sync (the global batch is split over them).

    Returns:
        A list of str: a title, then one aligned row per field (see the module docstring).
    """
    method = methods.method_of(config)
    method_text = method if method == config.method else f"{method} (--method={config.method} without --sources: the target alone)"
    full_pass = data.num_train // config.batch_size
    steps = (
        f"{_plural(config.epochs, 'epoch')} x {_plural(steps_per_epoch, 'step')} x {config.batch_size} "
        f"{'clips (one per video per pass)' if data.clip_length else 'images'} "
        f"(global batch; {_plural(replicas, 'replica')})"
    )
    if steps_per_epoch != full_pass:
        steps += f"; a full pass is {_plural(full_pass, 'step')}"
    return [
        "run summary",
        _row("dataset", _dataset(config, data)),
        _row("validation", _validation(config, data)),
        _row("method", method_text),
        _row("target", f"{config.model}: {_count(model.target_model().count_params())} parameters"),
        *_method_rows(config, model),
        _row("steps", steps),
        _row("schedule", _schedule(config)),
        _row("output_dir", config.output_dir),
    ]


def write_summary(output_dir, lines):
    """Writes `lines` to `<output_dir>/summary.txt` (atomically); returns its path."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    run_dir_lib.atomic_write_text(path, "\n".join(lines) + "\n")
    return path
