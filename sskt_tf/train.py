"""Trains a target network with SSKT (or from scratch when --sources is empty).

    python -m sskt_tf.train --flagfile=flags/cifar.cfg [--output_dir=runs/cifar] [--flag=value ...]

Writes to --output_dir: config.json (the resolved configuration), metrics.csv, tensorboard/,
checkpoints/{last,best}.keras (the target alone, per epoch), backup/ (resumption state while
training; a run started again with the same command resumes at the last finished epoch),
target.keras, and results.json (final test metrics, wall time, training images/second).

Every check (flags, output directory, data, sources, the resumption state) comes before the first
write to --output_dir, so a refused start leaves nothing there; a directory that holds no finished,
resumable or saved run (e.g. only the config.json of a start that failed before) counts as empty.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from sskt_tf import callbacks as callbacks_lib  # noqa: E402
from sskt_tf import config as config_lib  # noqa: E402
from sskt_tf import data as data_lib  # noqa: E402
from sskt_tf import distribute, errors, losses, methods, optim, soft_labels  # noqa: E402
from sskt_tf.cli import reject_arguments, run_cli  # noqa: E402
from sskt_tf.errors import UserError  # noqa: E402
from sskt_tf.serving.saved_model import export_saved_model  # noqa: E402
from sskt_tf.serving.trained import load_trained  # noqa: E402

# Settings that do not change what a run computes: a run may resume under other values.
_RUN_ONLY_FIELDS = ("output_dir", "overwrite", "verbose", "resume", "export", "soft_label_cache_dir", "cache")

# What a run writes, deleted when a run starts over in its directory (--overwrite, or a directory
# with nothing finished or resumable in it). Caches (data_cache/, soft_label_cache/) are kept.
# What a run and the commands on it (export, evaluate) write into --output_dir: a run that starts
# over removes them, so that nothing of the old model stays beside the new one.
_RUN_OUTPUTS = (
    "backup", "checkpoints", "tensorboard", "saved_model", "metrics.csv", "results.json", "target.keras",
    "skipped_images.txt", "evaluation", "model.tflite", "model.labels.txt", "model_int8.tflite",
    "model_int8.labels.txt",
)

# Exit status of a run stopped by Ctrl-C (SIGINT), as shells report it.
INTERRUPTED_EXIT_STATUS = 130


# --- The output directory -------------------------------------------------------------------------


def check_output_dir(out):
    """Refuses an --output_dir that cannot become a run directory, with one line; writes nothing.

    The directory itself is created (and a write tried) by `prepare_output_dir`, after every other check.
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


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _finished(out):
    results = _read_json(os.path.join(out, "results.json"))
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


def _show(value):
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return "(unset)" if value is None else str(value)


def changed_settings(previous, current):
    """`[(flag, old, new)]` of the settings (not run-only) that differ between two config.json dicts.

    Both are read by flag name (`config.flag_values`: a flat config.json of an earlier version reads
    as a nested one); a setting the older config.json lacks (added since) counts as its default.
    """
    defaults = config_lib.flag_values(json.loads(config_lib.Config().to_json()))
    previous, current = config_lib.flag_values(previous), config_lib.flag_values(current)
    return [
        (k, previous.get(k, defaults.get(k)), current[k])
        for k in sorted(current)
        if k not in _RUN_ONLY_FIELDS and previous.get(k, defaults.get(k)) != current[k]
    ]


def inspect_output_dir(config):
    """What --output_dir holds for this run: "new", "resume" or "finished"; reads, never writes.

    A directory holding a finished run, a resumable state or saved targets of other settings (or
    of unknown settings) is refused unless --overwrite. One that holds none of them (leftovers of a
    start that failed or was stopped before its first epoch ended) is "new": the run starts there.
    """
    out = config.output_dir
    if config.overwrite or not os.path.isdir(out):
        return "new"
    saved = _saved_outputs(out)
    if not saved:
        return "new"
    fix = "choose another --output_dir, or pass --overwrite to start over there"
    previous = _read_json(os.path.join(out, "config.json"))
    if not isinstance(previous, dict):
        raise UserError(f"--output_dir={out} holds {', '.join(saved)} of a run without a readable config.json; {fix}.")
    changed = changed_settings(previous, json.loads(config.to_json()))
    finished = _finished(out)
    if changed:
        what = "; ".join(f"--{k}: {_show(old)} -> {_show(new)}" for k, old, new in changed)
        verb = "see" if finished else "resume"
        raise UserError(
            f"--output_dir={out} holds a {'finished ' if finished else ''}run with other settings ({what}); "
            f"pass the same settings to {verb} it, {fix}."
        )
    if finished:
        return "finished"
    if "backup/" in saved:
        if not config.resume:
            epoch = (_read_json(os.path.join(out, "backup", "latest.json")) or {}).get("epoch")
            raise UserError(
                f"--noresume, but --output_dir={out} holds this run's resumable state (after epoch {epoch}); drop "
                f"--noresume to resume it, or pass --overwrite to start over there."
            )
        return "resume"
    return "new"  # The same run, with nothing to resume from (e.g. trained with --noresume): it starts over.


def prepare_output_dir(config, fresh):
    """Creates --output_dir and writes config.json: the run's first write, after every check.

    `fresh`: the run starts at epoch 0, so what an earlier run wrote there goes first (a stale
    backup would otherwise be restored, stale metrics.csv rows kept).
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
        _write_json(os.path.join(out, "config.json"), json.loads(config.to_json()))
    except OSError as e:
        raise UserError(
            f"--output_dir={out}: cannot write there ({e.strerror or e}: {e.filename}); pass a directory you can write to."
        ) from None


def _write_json(path, value):
    callbacks_lib.atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- The resumption state ---------------------------------------------------------------------------


def run_inputs(config, data, model, steps_per_epoch):
    """What the saved training state depends on besides the settings: the data and the sources as found.

    Saved with the state and compared before it is loaded: the same flags can meet other data (a
    folder with another class) or another file behind a source spec.
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
    return f"{key}: {_show(old)} -> {_show(new)}"


def input_changes(saved, current):
    """Descriptions of what differs between the saved and the current `run_inputs` (keys both have)."""
    saved = saved or {}  # A state saved before the inputs were recorded: nothing to compare.
    return [_describe_change(k, saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]]


def restore_state(config, resume, model, inputs):
    """Loads the saved state into `model` after checking it fits; returns the state (its pointer).

    Whatever does not fit ends in one line, never in a traceback from Keras' weight loader.
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


# --- Training -------------------------------------------------------------------------------------------


def _note_unreached_milestones(config):
    """One line when --lr_milestones do nothing: at or after --epochs (a shortened run keeps the full-run
    schedule), or given to another schedule than multistep."""
    if config.lr_schedule != "multistep":
        # The recipe's milestones come with every flagfile; other ones were asked for and do nothing here.
        if tuple(config.lr_milestones) != config_lib.Config.lr_milestones:
            print(
                f"--lr_milestones={','.join(map(str, config.lr_milestones))} do not apply to "
                f"--lr_schedule={config.lr_schedule}; only multistep uses them."
            )
        return
    late = [m for m in config.lr_milestones if m >= config.epochs]
    if not late:
        return
    applied = len(config.lr_milestones) - len(late)
    final = config.lr * config.lr_gamma**applied
    print(
        f"--lr_milestones={','.join(map(str, config.lr_milestones))}: {', '.join(map(str, late))} "
        f"{'is' if len(late) == 1 else 'are'} at or after --epochs={config.epochs}, so the learning rate ends at "
        f"{final:g} (not {config.lr * config.lr_gamma ** len(config.lr_milestones):g}); set --lr_milestones for this run's length "
        "to decay it."
    )


def _jit(value):
    return {"auto": "auto", "true": True, "false": False}[value]


def validation_epochs(epochs, eval_every):
    """The 1-based epochs evaluated on the validation set: every `eval_every`-th, and always the last."""
    return [e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs]


def build_callbacks(config, throughput, checkpoint, steps_per_epoch, initial_epoch, tracker, multi_label_validation=None):
    """The callbacks of `fit`, in the order their epoch-end writes must happen (see TargetCheckpoint)."""
    out = config.output_dir
    return [
        throughput,  # First: stops its clock before the others write.
        tracker,
        # Multi-label: exact mAP of the validation set, before the callbacks that log it or pick the best.
        *([callbacks_lib.MultiLabelEvaluation(multi_label_validation)] if multi_label_validation is not None else []),
        callbacks_lib.StopOnNonFiniteLoss(steps_per_epoch),
        callbacks_lib.MetricsLog(os.path.join(out, "metrics.csv"), initial_epoch),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
        checkpoint,  # Last: commits the epoch (the resumption state), then writes the targets.
    ]


def _evaluate(config, model, data):
    """The target's test metrics (as floats) and the method's extra results fields."""
    test = model.evaluate(data.test, verbose=0, return_dict=True)
    # DML: `test` is peer 0's, every peer's is in `peers`, and peer k >= 1 is also saved as peer_<k>.keras.
    test, method_results = methods.split_results(config, model, {k: float(v) for k, v in test.items()})
    if getattr(model, "multi_label", False):
        test.update(callbacks_lib.multi_label_metrics(model, data.test))
    return test, method_results


def write_results(config, model, data, epochs_completed, throughput, wall_seconds, checkpoint, split):
    """Scores the last and the best weights on the test set, saves the target alone, writes results.json.

    `test` (the headline) is the last epoch's; `test_best` is `best.keras`'s, chosen on `split`.
    """
    test, method_results = _evaluate(config, model, data)
    target = model.target_model(name=f"{config.model}_target")
    callbacks_lib.atomic_save(target, os.path.join(config.output_dir, "target.keras"))
    for filename, network in methods.extra_targets(model, target.name):
        callbacks_lib.atomic_save(network, os.path.join(config.output_dir, filename))
    best, test_best = None, None
    if checkpoint.best_epoch is not None and os.path.exists(checkpoint.best_path):
        best = {"epoch": checkpoint.best_epoch, "split": split, "monitor": checkpoint.monitor, "value": checkpoint.best}
        if checkpoint.best_epoch == epochs_completed:
            test_best = dict(test)
        else:
            # The model's target takes best.keras's weights: target.keras is written, nothing else uses them.
            target.set_weights(keras.saving.load_model(checkpoint.best_path, compile=False).get_weights())
            test_best, _ = _evaluate(config, model, data)
    results = {
        "test": test,
        "test_best": test_best,
        "best": best,
        "status": "finished",
        "epochs_completed": epochs_completed,
        "wall_time_seconds": wall_seconds,
        "train_images_per_second": throughput.images_per_second(),
        "train_images_per_second_after_first_epoch": throughput.images_per_second(skip_first=True),
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "validation_from": data.validation_from,
        "num_test": data.num_test,
        "skipped_images": len(data.bad_files),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_size": list(data.image_size),
        "target_parameters": int(target.count_params()),
        "sources": [{"spec": s.spec, "classes": s.num_classes, "input_size": list(s.image_size)} for s in model.sources],
        **method_results,
    }
    _write_json(os.path.join(config.output_dir, "results.json"), results)
    return results


def _finite_or_text(value):
    return value if value is None or math.isfinite(value) else str(value)


def _stopped(config, e, resume, checkpoint):
    """results.json of a run stopped by a non-finite loss, and the one-line error naming what is known."""
    out = config.output_dir
    _write_json(
        os.path.join(out, "results.json"),
        {
            "status": "stopped",
            "reason": str(e),
            "epoch": e.epoch + 1,
            "step": e.step + 1,
            "global_step": e.global_step + 1,
            "loss_terms": {k: _finite_or_text(v) for k, v in e.terms.items()},
            "learning_rate": e.learning_rate,
        },
    )
    saved = resume.saved_epoch() if resume else 0
    kept = [f"backup/ (the state after epoch {saved}: the same command resumes there)"] if saved else []
    kept += [f"checkpoints/{n}" for n in ("last.keras", "best.keras") if os.path.exists(os.path.join(checkpoint.directory, n))]
    if kept:
        where = f"Nothing of epoch {e.epoch + 1} was saved; {out} keeps {', '.join(kept)}"
    else:
        where = "No epoch had finished, so nothing was saved"
    evidence = ""
    if e.global_step == 0:
        evidence = (
            " It happened at the very first step, before any weight update, so the learning rate played no part: "
            "the non-finite value came from the inputs, the sources' outputs or the loss settings."
        )
    # float32 schedules: 1e20 comes back as 1.00000002e20, which is no growth.
    elif e.learning_rate is not None and e.learning_rate > config.lr * (1 + 1e-5):
        why = (
            f" (--lr_gamma={config.lr_gamma:g} > 1 multiplies it at each of --lr_milestones)"
            if config.lr_schedule == "multistep" and config.lr_gamma > 1
            else ""
        )
        evidence = f" The learning rate had grown from --lr={config.lr:g} to {e.learning_rate:.4g} by then{why}."
    elif e.learning_rate is not None:
        # Two causes fit what is known; the message names both rather than guessing one.
        evidence = (
            f" The loss was finite for {e.global_step} steps before, at learning rates up to {config.lr:g}: either "
            f"training diverged at that rate (a lower --lr would tell), or this batch holds a non-finite value."
        )
    return UserError(f"{e}. {where}; results.json records where it stopped.{evidence}")


def _exit_interrupted(config, tracker):
    """Ctrl-C: one line saying where the run stopped and where the same command goes on; exit status 130."""
    saved = 0
    if config.resume:
        try:
            saved = callbacks_lib.ResumeCheckpoint(os.path.join(config.output_dir, "backup")).saved_epoch()
        except (OSError, ValueError, KeyError):
            saved = 0
    if tracker.finished:
        where = "after training, while writing the results"
    elif tracker.epoch is not None and tracker.ended and (saved == tracker.epoch + 1 or not config.resume):
        where = f"after epoch {tracker.epoch + 1}"
    elif tracker.epoch is not None:
        where = f"in epoch {tracker.epoch + 1}"
    else:
        where = "before training started"
    if saved:
        then = f"the same command resumes after epoch {saved}"
    elif config.resume:
        then = "no epoch had finished, so the same command starts from the beginning"
    else:
        then = "--noresume keeps no state, so the same command starts from the beginning"
    sys.stdout.flush()
    print(f"interrupted {where}; {then}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT_STATUS)


def main(argv):
    reject_arguments(argv)
    start = time.perf_counter()
    config = config_lib.from_flags()
    # First: a multi-worker strategy must configure the runtime before any other TensorFlow call.
    strategy = distribute.get_strategy(config.strategy, config.tpu)
    distribute.check_batch_size(config.batch_size, strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    # Set every time: the policy is global, and variables, logits and losses stay float32 under it.
    keras.config.set_dtype_policy(config.precision)
    config = dataclasses.replace(config, output_dir=distribute.worker_output_dir(config.output_dir, strategy))
    tracker = callbacks_lib.EpochTracker()
    try:
        return _run(config, strategy, start, tracker)
    except KeyboardInterrupt:
        _exit_interrupted(config, tracker)


def _run(config, strategy, start, tracker):
    out = config.output_dir
    check_output_dir(out)
    state = inspect_output_dir(config)
    if state == "finished":
        results = _read_json(os.path.join(out, "results.json"))
        print(
            f"this run is finished: results in {os.path.join(out, 'results.json')} "
            f"(test: {json.dumps(results.get('test'))}); --overwrite starts it over."
        )
        return results
    data = data_lib.load(
        config.dataset,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        data_dir=config.data_dir,
        image_size=config.image_size,
        seed=config.seed,
        train_subset=config.train_subset,
        augment=config.augmentation,
        cache=config.cache,
        cache_dir=os.path.join(out, "data_cache"),
        validation_split=config.validation_split,
        skip_bad_images=config.skip_bad_images,
        deterministic=config.deterministic,
    )
    losses.check_target_loss(config.dataset, data.multi_label, config.target_loss)
    steps_per_epoch = config.steps_per_epoch or data.steps_per_epoch
    with strategy.scope():
        model = methods.build_model(config, data.image_size, data.num_classes, class_names=data.class_names)
        model.compile(optimizer=optim.build_optimizer(config, steps_per_epoch), jit_compile=_jit(config.jit_compile))
        # Built before fit: resumption loads its state, and Keras' own symbolic build of a
        # distributed batch fails under MultiWorkerMirroredStrategy (see SSKTModel).
        model.optimizer.build(model.trainable_variables)
    inputs = run_inputs(config, data, model, steps_per_epoch)
    resume = callbacks_lib.ResumeCheckpoint(os.path.join(out, "backup")) if config.resume else None
    restored = restore_state(config, resume, model, inputs) if state == "resume" else None
    initial_epoch = int(restored["epoch"]) if restored else 0

    _note_unreached_milestones(config)
    # Every check is done: the first write to --output_dir.
    prepare_output_dir(config, fresh=not initial_epoch)
    if data.bad_files:
        with open(os.path.join(out, "skipped_images.txt"), "w") as f:
            f.writelines(f"{path}\n" for path in data.bad_files)
        print(f"skipped {len(data.bad_files)} images that cannot be decoded (--skip_bad_images): {out}/skipped_images.txt")
    if initial_epoch:
        print(f"resuming after epoch {initial_epoch} from {resume.directory}")
    extras = ()
    if config.soft_label_cache == "clean" and getattr(model, "sources", ()):
        cache_dir = config.soft_label_cache_dir or os.path.join(out, "soft_label_cache")
        extras = soft_labels.load_or_compute(model.sources, data, config, cache_dir)

    # Without a validation set (the paper's protocol) the test set is evaluated after each epoch and
    # picks best.keras, as the reference code does; results.json says which split chose it.
    validation, split = (data.validation, "validation") if data.validation is not None else (data.test, "test")
    restored = restored or {}
    earlier_seconds = float(restored.get("wall_seconds", 0.0))
    throughput = callbacks_lib.Throughput(config.batch_size, history=restored.get("throughput"))
    checkpoint = callbacks_lib.TargetCheckpoint(
        os.path.join(out, "checkpoints"),
        monitor="val_map" if data.multi_label else "val_accuracy",
        resume=resume,
        restored=restored or None,
        extra_state=lambda: {
            "inputs": inputs,
            "throughput": throughput.history(),
            "wall_seconds": earlier_seconds + time.perf_counter() - start,
        },
    )
    try:
        history = model.fit(
            data.train_from(initial_epoch * steps_per_epoch, extras=extras),
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_freq=validation_epochs(config.epochs, config.eval_every),
            callbacks=build_callbacks(
                config,
                throughput,
                checkpoint,
                steps_per_epoch,
                initial_epoch,
                tracker,
                multi_label_validation=validation if data.multi_label else None,
            ),
            verbose=config.verbose,
            shuffle=False,  # The pipeline shuffles, seeded.
        )
    except callbacks_lib.NonFiniteLoss as e:
        raise _stopped(config, e, resume, checkpoint) from None
    tracker.finished = True
    epochs_completed = initial_epoch + len(history.history.get("loss", []))
    wall_seconds = earlier_seconds + time.perf_counter() - start
    results = write_results(config, model, data, epochs_completed, throughput, wall_seconds, checkpoint, split)
    if resume is not None:
        resume.delete()  # Only now: a crash before results.json leaves a state to resume from.
    if config.export:
        export_saved_model(load_trained(out), os.path.join(out, "saved_model"))
    print(f"test: {json.dumps(results['test'])}; outputs in {out}")
    if results["best"] is not None and results["best"]["epoch"] != epochs_completed:
        best = results["best"]
        print(f"best.keras (epoch {best['epoch']}, {best['monitor']} on the {best['split']} set): test {json.dumps(results['test_best'])}")
    return results


def run():
    run_cli(main, config_lib.define_flags)


if __name__ == "__main__":
    run()
