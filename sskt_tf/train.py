"""Trains a target network with SSKT (or from scratch when --sources is empty).

    python -m sskt_tf.train --flagfile=flags/cifar.cfg [--output_dir=runs/cifar] [--flag=value ...]

Writes to --output_dir: config.json (the resolved configuration), metrics.csv, tensorboard/,
checkpoints/{last,best}.keras (the target alone, per epoch), backup/ (resumption state while
training; a run started again with the same command resumes at the last finished epoch),
target.keras, and results.json (final test metrics, wall time, training images/second).
"""

import dataclasses
import json
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from sskt_tf import callbacks as callbacks_lib  # noqa: E402
from sskt_tf import config as config_lib  # noqa: E402
from sskt_tf import data as data_lib  # noqa: E402
from sskt_tf import distribute, methods, optim, soft_labels  # noqa: E402
from sskt_tf import export as export_lib  # noqa: E402
from sskt_tf.errors import UserError, run_cli  # noqa: E402

# Settings that do not change what a run computes: a run may resume under other values.
_RUN_ONLY_FIELDS = ("output_dir", "overwrite", "verbose", "resume", "export", "soft_label_cache_dir")


def prepare_output_dir(config):
    """Creates --output_dir and writes config.json; refuses to mix two runs in one directory.

    The same configuration in a directory without results.json is the same run: it resumes.
    """
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    config_path = os.path.join(out, "config.json")
    if not config.overwrite:
        if _finished(out):
            raise UserError(
                f"--output_dir={out} holds a finished run (results.json); choose another directory "
                "or pass --overwrite to replace it."
            )
        if os.path.exists(config_path):
            with open(config_path) as f:
                previous = json.load(f)
            current = json.loads(config.to_json())
            changed = sorted(k for k in current if k not in _RUN_ONLY_FIELDS and previous.get(k) != current[k])
            if changed:
                raise UserError(
                    f"--output_dir={out} holds a run with other settings ({', '.join(changed)}); choose another "
                    "directory, or pass --overwrite to start over there."
                )
    else:
        # A stale backup would otherwise be restored into the new run.
        shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
        for name in ("metrics.csv", "results.json"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    _write_json(config_path, json.loads(config.to_json()))


def _finished(out):
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("status", "finished") == "finished"


def _write_json(path, value):
    with open(f"{path}.tmp", "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f"{path}.tmp", path)


def build_callbacks(config, throughput, resume, steps_per_epoch, multi_label_test=None):
    out = config.output_dir
    return [
        *([resume] if resume else []),
        # Multi-label: exact mAP of the test set, before the callbacks that log it or pick the best.
        *([callbacks_lib.MultiLabelEvaluation(multi_label_test)] if multi_label_test is not None else []),
        callbacks_lib.StopOnNonFiniteLoss(steps_per_epoch),
        keras.callbacks.CSVLogger(os.path.join(out, "metrics.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
        callbacks_lib.TargetCheckpoint(
            os.path.join(out, "checkpoints"), monitor="val_map" if multi_label_test is not None else "val_accuracy"
        ),
        throughput,
    ]


def _jit(value):
    return {"auto": "auto", "true": True, "false": False}[value]


def write_results(config, model, data, epochs_completed, throughput, wall_seconds):
    """Evaluates the final model, saves the target alone and writes results.json."""
    test = model.evaluate(data.test, verbose=0, return_dict=True)
    # DML: `test` is peer 0's, every peer's is in `peers`, and peer k >= 1 is also saved as peer_<k>.keras.
    test, method_results = methods.split_results(config, model, {k: float(v) for k, v in test.items()})
    if getattr(model, "multi_label", False):
        test.update(callbacks_lib.multi_label_metrics(model, data.test))
    target = model.target_model(name=f"{config.model}_target")
    callbacks_lib.atomic_save(target, os.path.join(config.output_dir, "target.keras"))
    for filename, network in methods.extra_targets(model, target.name):
        callbacks_lib.atomic_save(network, os.path.join(config.output_dir, filename))
    results = {
        "test": test,
        "status": "finished",
        "epochs_completed": epochs_completed,
        "wall_time_seconds": wall_seconds,
        "train_images_per_second": throughput.images_per_second(),
        "train_images_per_second_after_first_epoch": throughput.images_per_second(skip_first=True),
        "num_train": data.num_train,
        "num_test": data.num_test,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_size": list(data.image_size),
        "target_parameters": int(target.count_params()),
        "sources": [{"spec": s.spec, "classes": s.num_classes, "input_size": list(s.image_size)} for s in model.sources],
        **method_results,
    }
    _write_json(os.path.join(config.output_dir, "results.json"), results)
    return results


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull).")
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
    prepare_output_dir(config)
    data = data_lib.load(
        config.dataset,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        data_dir=config.data_dir,
        image_size=config.image_size,
        seed=config.seed,
        train_subset=config.train_subset,
        augment=config.augmentation,
        deterministic=config.deterministic,
    )
    data_lib.check_target_loss(config.dataset, data.multi_label, config.target_loss)
    steps_per_epoch = config.steps_per_epoch or data.steps_per_epoch
    with strategy.scope():
        model = methods.build_model(config, data.image_size, data.num_classes)
        model.compile(optimizer=optim.build_optimizer(config, steps_per_epoch), jit_compile=_jit(config.jit_compile))
        # Built before fit: resumption loads its state, and Keras' own symbolic build of a
        # distributed batch fails under MultiWorkerMirroredStrategy (see SSKTModel).
        model.optimizer.build(model.trainable_variables)
    resume = callbacks_lib.ResumeCheckpoint(os.path.join(config.output_dir, "backup")) if config.resume else None
    initial_epoch = resume.restore(model) if resume else 0
    if initial_epoch:
        print(f"resuming after epoch {initial_epoch} from {resume.directory}")
    extras = ()
    if config.soft_label_cache == "clean" and getattr(model, "sources", ()):
        cache_dir = config.soft_label_cache_dir or os.path.join(config.output_dir, "soft_label_cache")
        extras = soft_labels.load_or_compute(model.sources, data, config, cache_dir)
    throughput = callbacks_lib.Throughput(config.batch_size)
    try:
        history = model.fit(
            data.train_from(initial_epoch * steps_per_epoch, extras=extras),
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=data.test,
            callbacks=build_callbacks(
                config, throughput, resume, steps_per_epoch, multi_label_test=data.test if data.multi_label else None
            ),
            verbose=config.verbose,
            shuffle=False,  # The pipeline shuffles, seeded.
        )
    except callbacks_lib.NonFiniteLoss as e:
        _write_json(
            os.path.join(config.output_dir, "results.json"),
            {"status": "stopped", "reason": str(e), "epoch": e.epoch + 1, "step": e.step + 1, "global_step": e.global_step + 1},
        )
        raise UserError(
            f"{e}. The last good state is kept ({'backup/ and ' if resume else ''}checkpoints/last.keras in "
            f"{config.output_dir}); results.json says why. Lower --lr or check the data."
        ) from None
    epochs_completed = initial_epoch + len(history.history.get("loss", []))
    results = write_results(config, model, data, epochs_completed, throughput, time.perf_counter() - start)
    if config.export:
        export_lib.export_saved_model(export_lib.load_trained(config.output_dir), os.path.join(config.output_dir, "saved_model"))
    print(f"test: {json.dumps(results['test'])}; outputs in {config.output_dir}")
    return results


def run():
    run_cli(main, config_lib.define_flags)


if __name__ == "__main__":
    run()
