"""Resuming a run: the inputs its saved state was trained on, checked before that state is loaded.

The state itself (backup/: weights, optimizer, a pointer written last) is
`sskt_tf.callbacks.ResumeCheckpoint`; whether a directory holds one of this run's settings is
`sskt_tf.run_dir.inspect_output_dir`. What the settings do not show is checked here: the same flags
can meet other data (a folder with another class) or another file behind a source spec.
"""

import os

from sskt_tf import soft_labels
from sskt_tf.errors import UserError
from sskt_tf.run_dir import show_value


def run_inputs(config, data, model, steps_per_epoch):
    """What the saved training state depends on besides the settings: the data and the sources as found.

    Saved with the state and compared (`input_changes`) before it is loaded.

    Args:
        config: the run's `Config`.
        data: the run's `sskt_tf.data.Datasets`.
        model: the method's model (its `sources`, KD's `teacher`).
        steps_per_epoch: training steps per epoch.

    Returns:
        A JSON-ready dict: method, model, class count and names, image size `[H, W]` in pixels,
        multi-label, image counts, steps per epoch, and per source or teacher its spec, class
        count, input size `[H, W]` and weights' fingerprint (`soft_labels.fingerprint`).
    """
    networks = [("source", s) for s in getattr(model, "sources", ())]
    if getattr(model, "teacher", None) is not None:
        networks.append(("teacher", model.teacher))
    return {
        "method": config.method,
        "model": config.model,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_size": list(data.image_size),
        "multi_label": bool(data.multi_label),
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "steps_per_epoch": steps_per_epoch,
        "networks": [
            # The weights' fingerprint: another network copied over the same file is another source.
            {"role": role, "spec": n.spec, "classes": n.num_classes, "input_size": list(n.image_size),
             "weights": soft_labels.fingerprint(n)}
            for role, n in networks
        ],
    }


def _describe_change(key, old, new):
    if key == "class_names" and isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return f"class_names: {len(old)} classes -> {len(new)}"
        i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        return f"class_names: class {i} was {old[i]!r}, is {new[i]!r}"
    if key == "networks" and isinstance(old, list) and isinstance(new, list):
        show = lambda ns: "; ".join(
            f"{n.get('role')} {n.get('spec')} ({n.get('classes')} classes, {n.get('input_size')} px, weights {n.get('weights', '?')})"
            for n in ns
        )
        return f"sources: {show(old) or 'none'} -> {show(new) or 'none'}"
    return f"{key}: {show_value(old)} -> {show_value(new)}"


def input_changes(saved, current):
    """What differs between the saved and the current `run_inputs`, over the keys both have.

    Args:
        saved: the `run_inputs` stored with the state, or None (a state saved before they were
            recorded: nothing to compare).
        current: this run's `run_inputs`.

    Returns:
        One description per differing key (e.g. `class_names: class 3 was 'cat', is 'dog'`).
    """
    saved = saved or {}
    return [_describe_change(k, saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]]


def restore_state(config, resume, model, inputs):
    """Loads the saved state into `model` after checking it fits.

    Whatever does not fit ends in one line, never in a traceback from Keras' weight loader.

    Args:
        config: the run's `Config`.
        resume: the run's `callbacks.ResumeCheckpoint`, holding a state.
        model: the method's model, built and compiled, its optimizer built.
        inputs: this run's `run_inputs`.

    Returns:
        The state (its pointer: `epoch`, `weights`, and what the run saved with it).

    Raises:
        UserError: the state was trained on other inputs (each change named), or its weights
            cannot be loaded into `model`.
    """
    out = config.output_dir
    state = resume.state()
    fix = "restore the inputs it was trained on, or pass --overwrite (or another --output_dir) to start over"
    changes = input_changes(state.get("inputs"), inputs)
    if changes:
        raise UserError(
            f"--output_dir={out}: the saved state (backup/, after epoch {state['epoch']}) was trained on other "
            f"inputs than this command finds now ({'; '.join(changes)}); {fix}."
        )
    try:
        resume.restore(model)
    except Exception as e:  # noqa: BLE001  (any loader failure: the file does not fit this model)
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(
            f"--output_dir={out}: the saved state {os.path.join(resume.directory, state['weights'])} cannot be "
            f"loaded into this run's model ({type(e).__name__}: {detail}); {fix}."
        ) from None
    return state
