"""One training run: `run(config)` trains the target of a resolved `Config` and writes its run directory.

The steps, in order (the files are listed in `sskt_tf.train`'s docstring):

1. The runtime: the distribution strategy (first: a multi-worker strategy configures TensorFlow
   before any other call), op determinism, the seeds, the dtype policy, the worker's --output_dir.
2. The checks, all before the first write (`sskt_tf.run_dir.inspect_output_dir`, the data, the
   target loss, the model and its sources, the saved state: `sskt_tf.resumption`).
3. config.json (`run_dir.prepare_output_dir`), the run's summary (printed, and in summary.txt:
   `sskt_tf.run_summary`), then `fit` with the callbacks of `build_callbacks`,
   resuming at the last finished epoch of backup/ when there is one.
4. The test metrics of the last and the best weights, target.keras and results.json
   (`write_results`); with --export, saved_model/.

A non-finite loss stops the run with one line naming its cause (`_stopped`); Ctrl-C ends it with one
line saying where the same command goes on, and exit status 130 (`_exit_interrupted`).
"""

import dataclasses
import json
import math
import os
import sys
import time

import keras
import tensorflow as tf

from sskt_tf import callbacks as callbacks_lib
from sskt_tf import config as config_lib
from sskt_tf import data as data_lib
from sskt_tf import diagnostics, distribute, losses, methods, optim, soft_labels
from sskt_tf import metrics as metrics_lib
from sskt_tf.data import video as video_data
from sskt_tf import run_dir as run_dir_lib
from sskt_tf import run_summary
from sskt_tf.errors import UserError, writable_dir
from sskt_tf.resumption import restore_state, run_inputs
from sskt_tf.serving.saved_model import export_saved_model
from sskt_tf.serving.trained import load_trained

# Exit status of a run stopped by Ctrl-C (SIGINT), as shells report it.
INTERRUPTED_EXIT_STATUS = 130


def run(config):
    """Trains, evaluates and saves the run `config` describes, in its --output_dir.

    A finished run of the same settings is not trained again: its results are printed and returned.

    Args:
        config: the resolved `Config` (`config.from_flags`).

    Returns:
        The run's results.json as a dict (test metrics, best checkpoint, wall time in seconds,
        training images per second, image counts, ...).

    Raises:
        UserError: bad input, found before the first write to --output_dir (a strategy or batch
            size that does not fit the devices, an output directory that holds another run, data,
            sources or a saved state that do not fit), or a non-finite training loss.
        SystemExit: status 130 after Ctrl-C (KeyboardInterrupt), with one line on stderr.
    """
    start = time.perf_counter()
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
        return _train(config, strategy, start, tracker)
    except KeyboardInterrupt:
        _exit_interrupted(config, tracker)


def _train(config, strategy, start, tracker):
    """`run` once the runtime is set up: the checks, `fit`, the results (see the module docstring)."""
    out = config.output_dir
    run_dir_lib.check_output_dir(out)
    if config.soft_label_cache != "off" and config.soft_label_cache_dir:
        writable_dir(config.soft_label_cache_dir, "--soft_label_cache_dir", what="soft-label cache")
    state = run_dir_lib.inspect_output_dir(config)
    if state == "finished":
        results = run_dir_lib.read_json(os.path.join(out, "results.json"), default=None)
        print(
            f"this run is finished: results in {os.path.join(out, 'results.json')} "
            f"(test: {json.dumps(results.get('test'))}); --overwrite starts it over."
        )
        return results
    data = _load_data(config)
    steps_per_epoch = config.steps_per_epoch or data.steps_per_epoch
    model = _build_model(config, data, strategy, steps_per_epoch)
    inputs = run_inputs(config, data, model, steps_per_epoch)
    resume = callbacks_lib.ResumeCheckpoint(os.path.join(out, "backup")) if config.resume else None
    restored = restore_state(config, resume, model, inputs) if state == "resume" else None
    initial_epoch = int(restored["epoch"]) if restored else 0

    _note_unreached_milestones(config)
    # Every check is done: the first write to --output_dir.
    run_dir_lib.prepare_output_dir(config, fresh=not initial_epoch)
    summary = run_summary.summary_lines(config, data, model, steps_per_epoch, strategy.num_replicas_in_sync)
    run_summary.write_summary(out, summary)
    print("\n".join(summary), flush=True)
    if data.bad_files:
        run_dir_lib.write_skipped_images(out, data.bad_files)
        print(f"skipped {len(data.bad_files)} images that cannot be decoded (--skip_bad_images): {out}/skipped_images.txt")
    if initial_epoch:
        print(f"resuming after epoch {initial_epoch} from {resume.directory}")
    tracker.filling = True
    extras, replay = _soft_label_cache(config, data, model, out)
    tracker.filling = False

    # Without a validation set (the paper's protocol) the test set is evaluated after each epoch and
    # picks best.keras, as the reference code does; results.json says which split chose it.
    validation, split = (data.validation, "validation") if data.validation is not None else (data.test, "test")
    restored = restored or {}
    earlier_seconds = float(restored.get("wall_seconds", 0.0))
    throughput = callbacks_lib.Throughput(config.batch_size, history=restored.get("throughput"))
    source_diagnostics = diagnostics.SourceDiagnostics(
        model.sources, config.source_temperatures, last=restored.get("source_diagnostics")
    )
    plateau = (
        callbacks_lib.ReduceLROnPlateau(config.lr_gamma, config.lr_patience, restored=restored.get("plateau"))
        if config.lr_schedule == "plateau"
        else None
    )
    checkpoint = callbacks_lib.TargetCheckpoint(
        os.path.join(out, "checkpoints"),
        monitor="val_map" if data.multi_label else "val_accuracy",
        resume=resume,
        restored=restored or None,
        extra_state=lambda: {
            "inputs": inputs,
            "throughput": throughput.history(),
            "source_diagnostics": source_diagnostics.last,
            "wall_seconds": earlier_seconds + time.perf_counter() - start,
            **({"plateau": plateau.state()} if plateau is not None else {}),
        },
    )
    try:
        history = model.fit(
            data.train_from(initial_epoch * steps_per_epoch, extras=extras, replay=replay),
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
                source_diagnostics=source_diagnostics,
                plateau=plateau,
            ),
            verbose=config.verbose,
            shuffle=False,  # The pipeline shuffles, seeded.
        )
    except callbacks_lib.NonFiniteLoss as e:
        raise _stopped(config, e, resume, checkpoint) from None
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise _unreadable_frame(e, resume) from None
    tracker.finished = True
    epochs_completed = initial_epoch + len(history.history.get("loss", []))
    wall_seconds = earlier_seconds + time.perf_counter() - start
    try:
        results = write_results(
            config, model, data, epochs_completed, throughput, wall_seconds, checkpoint, split, source_diagnostics.last
        )
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise _unreadable_frame(e, resume) from None
    if resume is not None:
        resume.delete()  # Only now: a crash before results.json leaves a state to resume from.
    if config.export:
        export_saved_model(load_trained(out), os.path.join(out, "saved_model"))
    print(f"test: {json.dumps(results['test'])}; outputs in {out}")
    if results["best"] is not None and results["best"]["epoch"] != epochs_completed:
        best = results["best"]
        print(f"best.keras (epoch {best['epoch']}, {best['monitor']} on the {best['split']} set): test {json.dumps(results['test_best'])}")
    return results


def _load_data(config):
    """The run's `sskt_tf.data.Datasets`, its labels checked against --target_loss (UserError)."""
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
        cache_dir=os.path.join(config.output_dir, "data_cache"),
        validation_split=config.validation_split,
        skip_bad_images=config.skip_bad_images,
        deterministic=config.deterministic,
        clip_length=config.clip_length,
        video_split=config.video_split,
    )
    losses.check_target_loss(config.dataset, data.multi_label, config.target_loss)
    return data


def _build_model(config, data, strategy, steps_per_epoch):
    """The method's model under `strategy`, compiled, its optimizer built (`methods.build_model`)."""
    with strategy.scope():
        model = methods.build_model(
            config, data.image_size, data.num_classes, class_names=data.class_names, clip_length=data.clip_length
        )
        model.compile(optimizer=optim.build_optimizer(config, steps_per_epoch), jit_compile=_jit(config.jit_compile))
        # Built before fit: resumption loads its state, and Keras' own symbolic build of a
        # distributed batch fails under MultiWorkerMirroredStrategy (see TrainingModel).
        model.optimizer.build(model.trainable_variables)
    return model


def _soft_label_cache(config, data, model, out):
    """`(extras, replay)` for `Datasets.train_from`: the stored logits of the model's frozen networks (`--soft_label_cache`)."""
    frozen = methods.frozen_networks(model)
    if config.soft_label_cache == "off":
        return (), None
    if not frozen:
        print(f"--soft_label_cache={config.soft_label_cache}: --method={config.method} has no sources; nothing to store")
        return (), None
    cache_dir = config.soft_label_cache_dir or os.path.join(out, "soft_label_cache")
    if config.soft_label_cache == "clean":
        return soft_labels.load_or_compute(frozen, data, config, cache_dir, verbose=config.verbose), None
    return (), soft_labels.load_or_fill_replay(frozen, data, config, cache_dir, verbose=config.verbose)


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
    """The epochs `fit` evaluates on the validation set (`validation_freq`).

    Args:
        epochs: the run's length (--epochs).
        eval_every: evaluate every this many epochs (--eval_every).

    Returns:
        The 1-based epoch numbers: every `eval_every`-th, and always the last.
    """
    return [e for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs]


def build_callbacks(
    config,
    throughput,
    checkpoint,
    steps_per_epoch,
    initial_epoch,
    tracker,
    multi_label_validation=None,
    source_diagnostics=None,
    plateau=None,
):
    """The callbacks of `fit`, in the order their epoch-end writes must happen (see `callbacks.TargetCheckpoint`).

    Args:
        config: the run's `Config` (its --output_dir receives metrics.csv and tensorboard/).
        throughput: the run's `callbacks.Throughput`.
        checkpoint: the run's `callbacks.TargetCheckpoint`.
        steps_per_epoch: training steps per epoch (`StopOnNonFiniteLoss` counts global steps with it).
        initial_epoch: epochs already done (a resumed run keeps their metrics.csv rows).
        tracker: the run's `callbacks.EpochTracker`.
        multi_label_validation: the validation set of a multi-label run (its exact mAP is logged), or None.
        source_diagnostics: the run's `diagnostics.SourceDiagnostics` (a warning after epoch 1, the last
            per-source values), or None.
        plateau: the run's `callbacks.ReduceLROnPlateau` (`--lr_schedule=plateau`), or None.

    Returns:
        The list of Keras callbacks.
    """
    out = config.output_dir
    return [
        throughput,  # First: stops its clock before the others write; logs images_per_second.
        tracker,
        callbacks_lib.LearningRateLog(),  # Logs lr: before the callbacks that write the logs.
        # Multi-label: exact mAP of the validation set, before the callbacks that log it or pick the best.
        *([callbacks_lib.MultiLabelEvaluation(multi_label_validation)] if multi_label_validation is not None else []),
        callbacks_lib.StopOnNonFiniteLoss(steps_per_epoch),
        callbacks_lib.MetricsLog(os.path.join(out, "metrics.csv"), initial_epoch),
        callbacks_lib.EpochSummaries(os.path.join(out, "tensorboard")),
        # Before the checkpoint, whose resumption state carries its last values.
        *([source_diagnostics] if source_diagnostics is not None else []),
        # After the rate of this epoch was logged; before the commit, which carries its state.
        *([plateau] if plateau is not None else []),
        checkpoint,  # Last: commits the epoch (the resumption state), then writes the targets.
    ]


def _evaluate(config, model, data):
    """`(test metrics as floats, the method's extra results.json fields)` of the target on the test set."""
    if data.test_videos is not None:
        return _evaluate_videos(config, model, data.test_videos)
    test = model.evaluate(data.test, verbose=0, return_dict=True)
    # DML: `test` is peer 0's, every peer's is in `peers`, and peer k >= 1 is also saved as peer_<k>.keras.
    test, method_results = model.split_results({k: float(v) for k, v in test.items()})
    method_results = {"method": methods.method_of(config), **method_results}
    if getattr(model, "multi_label", False):
        test.update(callbacks_lib.multi_label_metrics(model, data.test))
    return test, method_results


def _evaluate_videos(config, model, videos):
    """`_evaluate` of a video run: every non-overlapping clip of every test video, scored as clips and as
    videos (`metrics.video_metrics`; `accuracy` is the video accuracy, the paper's number). DML scores
    each peer, in results.json's `peers`."""
    targets = model.peer_target_models() if hasattr(model, "peer_target_models") else [model.target_model()]
    # One pass over the clips for every peer: decoding the test videos costs more than the networks.
    clips = keras.Input(targets[0].input_shape[1:])
    logits = keras.Model(clips, [target(clips) for target in targets]).predict(videos.clips, verbose=0)
    logits = logits if isinstance(logits, list) else [logits]
    scored = [metrics_lib.video_metrics(z, videos.video_ids, videos.labels) for z in logits]
    _, method_results = model.split_results({})
    if len(scored) > 1:
        method_results["peers"] = scored
    return scored[0], {"method": methods.method_of(config), **method_results}


def write_results(config, model, data, epochs_completed, throughput, wall_seconds, checkpoint, split, source_diagnostics=None):
    """Scores the last and the best weights on the test set, saves the target alone, writes results.json.

    `test` (the headline) is the last epoch's; `test_best` is `best.keras`'s, chosen on `split`.

    Args:
        config: the run's `Config`.
        model: the trained method's model, holding the last epoch's weights.
        data: the run's `sskt_tf.data.Datasets`.
        epochs_completed: epochs trained, those before a resume included.
        throughput: the run's `callbacks.Throughput`.
        wall_seconds: the run's wall time in seconds, those before a resume included.
        checkpoint: the run's `callbacks.TargetCheckpoint` (the best epoch and its file).
        split: the split that chose `best.keras`: "validation" or "test".
        source_diagnostics: `diagnostics.SourceDiagnostics.last` (source layer name -> its last epoch's
            `agreement` and `relative_entropy`, added to its `sources` entry), or None.

    Returns:
        The results as written to results.json.
    """
    test, method_results = _evaluate(config, model, data)
    target = model.target_model(name=f"{config.model}_target")
    run_dir_lib.atomic_save(target, os.path.join(config.output_dir, "target.keras"))
    for filename, network in model.extra_targets(target.name):
        run_dir_lib.atomic_save(network, os.path.join(config.output_dir, filename))
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
        **({"clip_length": data.clip_length, "num_test_clips": data.test_videos.num_clips} if data.test_videos is not None else {}),
        "target_parameters": int(target.count_params()),
        "sources": [
            {"spec": s.spec, "classes": s.num_classes, "input_size": list(s.image_size), **(source_diagnostics or {}).get(s.name, {})}
            for s in model.sources
        ],
        **method_results,
    }
    run_dir_lib.write_json(os.path.join(config.output_dir, "results.json"), results)
    return results


def _unreadable_frame(error, resume):
    """The UserError of a video frame file that could not be read during the run, or `error` itself."""
    problem = video_data.read_error(error)
    if problem is None:
        return error
    saved = resume.saved_epoch() if resume else 0
    kept = f"; the same command resumes after epoch {saved}" if saved else ""
    return UserError(
        f"{problem} (a frame of the video data, read when its clip was); extract that video again "
        f"(python -m sskt_tf.prepare_video, after deleting its folder) or remove it from the split{kept}."
    )


def _finite_or_text(value):
    return value if value is None or math.isfinite(value) else str(value)


def _stopped(config, e, resume, checkpoint):
    """Writes results.json of a run stopped by the `callbacks.NonFiniteLoss` `e`; returns the UserError to raise.

    Its line names what the facts show: the non-finite terms, what was kept on disk, and the evidence
    about the cause (the first step, a learning rate that grew, or the two causes that fit).
    """
    out = config.output_dir
    run_dir_lib.write_json(
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
    """Ctrl-C: one line on stderr saying where the run stopped and where the same command goes on.

    Raises:
        SystemExit: always, with status 130 (`INTERRUPTED_EXIT_STATUS`).
    """
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
    elif tracker.filling:
        where = "while storing the soft labels (--soft_label_cache)"
    else:
        where = "before training started"
    if tracker.filling and not saved:
        then = "the same command continues the fill from its last written chunk, then trains from the beginning"
    elif saved:
        then = f"the same command resumes after epoch {saved}"
    elif config.resume:
        then = "no epoch had finished, so the same command starts from the beginning"
    else:
        then = "--noresume keeps no state, so the same command starts from the beginning"
    if config.verbose == 1 and (tracker.progress_line_open or tracker.filling):
        print()  # Keras' progress bar redraws its line in place: end it, so that the message starts a line.
    sys.stdout.flush()
    print(f"interrupted {where}; {then}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT_STATUS)
