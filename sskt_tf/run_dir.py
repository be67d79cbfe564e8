"""A run directory: what `python -m sskt_tf.train` writes into --output_dir, and reading it back.

- Before a run: `check_output_dir` (can it be a run directory at all) and `inspect_output_dir`
  (does it hold this run, finished or resumable, or another one), then `prepare_output_dir`, the
  run's first write. `changed_settings` is the settings check that `sskt_tf.compare` shares.
- During and after a run: `write_json`, `atomic_write_text` and `atomic_save` write through a
  temporary file, so that a crash leaves the old file or the new one; `write_skipped_images`.
- Reading: `read_json`, and for a trained target the run it belongs to (`run_dir_of`, `run_json`).

The files themselves are listed in `sskt_tf.train`'s docstring and docs/training.md's outputs table.
"""

import json
import os
import shutil

from sskt_tf import config as config_lib
from sskt_tf import errors
from sskt_tf.errors import UserError

# Settings that do not change what a run computes: a run may resume under other values.
_RUN_ONLY_FIELDS = ("output_dir", "overwrite", "verbose", "resume", "export", "soft_label_cache_dir", "cache")

# What a run and the commands on it (export, evaluate) write into --output_dir: a run that starts
# over removes them, so that nothing of the old model stays beside the new one. Caches
# (data_cache/, soft_label_cache/) are kept.
_RUN_OUTPUTS = (
    "backup", "checkpoints", "tensorboard", "saved_model", "metrics.csv", "results.json", "target.keras",
    "skipped_images.txt", "evaluation", "model.tflite", "model.labels.txt", "model_int8.tflite",
    "model_int8.labels.txt",
)

_NO_DEFAULT = object()


# --- Reading and writing a run's files ---------------------------------------------------------------


def read_json(path, default=_NO_DEFAULT):
    """The JSON value stored in `path`: a run's config.json, results.json or backup/latest.json.

    Args:
        path: the file.
        default: what a file that cannot be read (missing, not a file, not valid JSON) gives
            instead; without it, such a file raises.

    Returns:
        The decoded value (a dict for the files of a run), or `default`.

    Raises:
        UserError: without `default`, the file is not valid JSON (a run killed while writing it);
            the line names the run directory to delete to redo that run.
        OSError: without `default`, the file cannot be opened (`FileNotFoundError` for a missing
            one: callers that allow it check first).
    """
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        if default is not _NO_DEFAULT:
            return default
        if isinstance(e, json.JSONDecodeError):
            raise UserError(
                f"{path} is not valid JSON ({e.msg}, line {e.lineno}); delete the run directory that holds it to redo that run."
            ) from None
        raise


def write_json(path, value):
    """Writes `value` to `path` as indented JSON with sorted keys, atomically (`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file: a crash leaves the old file or the new one."""
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def atomic_save(model, path):
    """Saves the Keras `model` to `path` (`.keras`) through a temporary file, so a crash never leaves a half-written file."""
    tmp = f"{path}.tmp{os.path.splitext(path)[1]}"
    model.save(tmp)
    os.replace(tmp, path)


def write_skipped_images(out, paths):
    """Lists `paths`, the image files a run left out (`--skip_bad_images`), one a line in `out`/skipped_images.txt.

    Returns:
        The path of the list.
    """
    path = os.path.join(out, "skipped_images.txt")
    with open(path, "w") as f:
        f.writelines(f"{p}\n" for p in paths)
    return path


def run_dir_of(keras_path):
    """The run directory holding `keras_path` (its target.keras or checkpoints/*.keras), or None.

    A run directory is recognised by its config.json.
    """
    here = os.path.dirname(os.path.abspath(keras_path))
    for candidate in (here, os.path.dirname(here) if os.path.basename(here) == "checkpoints" else None):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    return None


def run_json(directory, name):
    """The run directory's JSON file `name` (config.json, results.json) as a dict; {} when it has none.

    Raises:
        UserError: the file is not valid JSON (see `read_json`).
    """
    path = os.path.join(directory, name)
    return read_json(path) if os.path.isfile(path) else {}


# --- The checks before a run -------------------------------------------------------------------------


def show_value(value):
    """A setting's value as the error lines show it: lists comma-separated, `(none)` and `(unset)` for empty ones."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return "(unset)" if value is None else str(value)


def changed_settings(previous, current):
    """The settings (not run-only ones) that differ between two config.json dicts.

    Both are read by flag name (`config.flag_values`: a flat config.json of an earlier version reads
    as a nested one); a setting the older config.json lacks (added since) counts as its default.
    Run-only settings (--output_dir, --verbose, --resume, --export, --cache, ...) change nothing a
    run computes, so a run may go on under other values of them.

    Args:
        previous: the config.json of the run in the directory, as a dict.
        current: the config.json of the run asked for (`json.loads(config.to_json())`).

    Returns:
        `[(flag, old value, new value)]`, sorted by flag name.
    """
    defaults = config_lib.flag_values(json.loads(config_lib.Config().to_json()))
    previous, current = config_lib.flag_values(previous), config_lib.flag_values(current)
    return [
        (k, previous.get(k, defaults.get(k)), current[k])
        for k in sorted(current)
        if k not in _RUN_ONLY_FIELDS and previous.get(k, defaults.get(k)) != current[k]
    ]


def check_output_dir(out):
    """Refuses an --output_dir that cannot become a run directory, with one line; writes nothing.

    The directory itself is created (and a write tried) by `prepare_output_dir`, after every other check.

    Args:
        out: the --output_dir value.

    Raises:
        UserError: `out` is a file, a file stands where one of its parents would be created, or
            its nearest existing parent is not writable by this user.
    """
    path = os.path.abspath(out)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"--output_dir={out} exists and is not a directory; pass a new or existing directory.")
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--output_dir={out} cannot be created: {existing} is a file; pass a path under a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir={out}: {existing} is not writable by this user; pass a directory you can write to.")


def _finished(out):
    results = read_json(os.path.join(out, "results.json"), default=None)
    return isinstance(results, dict) and results.get("status", "finished") == "finished"


def _saved_outputs(out):
    """What in `out` a new run would destroy: a finished run, a resumable state, saved targets."""
    found = []
    if _finished(out):
        found.append("results.json")
    if os.path.exists(os.path.join(out, "backup", "latest.json")):
        found.append("backup/")
    checkpoints = os.path.join(out, "checkpoints")
    if os.path.isdir(checkpoints) and any(n in ("last.keras", "best.keras") for n in os.listdir(checkpoints)):
        found.append("checkpoints/")
    if os.path.exists(os.path.join(out, "target.keras")):
        found.append("target.keras")
    return found


def inspect_output_dir(config):
    """What --output_dir holds for this run; reads, never writes.

    A directory holding a finished run, a resumable state or saved targets of other settings (or
    of unknown settings) is refused unless --overwrite. One that holds none of them (leftovers of a
    start that failed or was stopped before its first epoch ended) is "new": the run starts there.

    Args:
        config: the run's `Config`.

    Returns:
        "new" (start at epoch 0), "resume" (backup/ holds this run's state) or "finished" (its
        results.json is there).

    Raises:
        UserError: without --overwrite, the directory holds saved outputs without a readable
            config.json, or of a run with other settings (each named with its old and new value),
            or this run's resumable state under --noresume.
    """
    out = config.output_dir
    if config.overwrite or not os.path.isdir(out):
        return "new"
    saved = _saved_outputs(out)
    if not saved:
        return "new"
    fix = "choose another --output_dir, or pass --overwrite to start over there"
    previous = read_json(os.path.join(out, "config.json"), default=None)
    if not isinstance(previous, dict):
        raise UserError(f"--output_dir={out} holds {', '.join(saved)} of a run without a readable config.json; {fix}.")
    changed = changed_settings(previous, json.loads(config.to_json()))
    finished = _finished(out)
    if changed:
        what = "; ".join(f"--{k}: {show_value(old)} -> {show_value(new)}" for k, old, new in changed)
        verb = "see" if finished else "resume"
        raise UserError(
            f"--output_dir={out} holds a {'finished ' if finished else ''}run with other settings ({what}); "
            f"pass the same settings to {verb} it, {fix}."
        )
    if finished:
        return "finished"
    if "backup/" in saved:
        if not config.resume:
            epoch = (read_json(os.path.join(out, "backup", "latest.json"), default=None) or {}).get("epoch")
            raise UserError(
                f"--noresume, but --output_dir={out} holds this run's resumable state (after epoch {epoch}); drop "
                f"--noresume to resume it, or pass --overwrite to start over there."
            )
        return "resume"
    return "new"  # The same run, with nothing to resume from (e.g. trained with --noresume): it starts over.


def prepare_output_dir(config, fresh):
    """Creates --output_dir and writes config.json: the run's first write, after every check.

    Args:
        config: the run's `Config`.
        fresh: the run starts at epoch 0, so what an earlier run wrote there goes first (a stale
            backup would otherwise be restored, stale metrics.csv rows kept): every run output,
            DML's `peer_<k>.keras`; the caches stay.

    Raises:
        UserError: the directory cannot be created or written.
    """
    out = errors.writable_dir(config.output_dir, "--output_dir", what="run directory")
    try:
        if fresh:
            for name in _RUN_OUTPUTS:
                path = os.path.join(out, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.remove(path)
            for name in os.listdir(out):
                if name.startswith("peer_") and name.endswith(".keras"):  # DML's other peers.
                    os.remove(os.path.join(out, name))
        write_json(os.path.join(out, "config.json"), json.loads(config.to_json()))
    except OSError as e:
        raise UserError(
            f"--output_dir={out}: cannot write there ({e.strerror or e}: {e.filename}); pass a directory you can write to."
        ) from None
