"""Trains a target network with SSKT (or from scratch when --sources is empty).

    python -m sskt_tf.train --config=cifar [--output_dir=runs/cifar] [--flag=value ...]
    python -m sskt_tf.train --flagfile=path/to/yours.cfg [--flag=value ...]

`--config=<name>` is a flagfile shipped with sskt_tf (the repository's flags/<name>.cfg: smoke,
cifar, one per paper row, ...), found from any directory; `--flagfile=<path>` is any flagfile. Flags
after either override its flags. `sskt-train` is the same command.

Writes to --output_dir: config.json (the resolved configuration), metrics.csv, tensorboard/,
checkpoints/{last,best}.keras (the target alone, per epoch), backup/ (resumption state while
training; a run started again with the same command resumes at the last finished epoch),
target.keras, and results.json (final test metrics, wall time, training images/second).

Every check (flags, output directory, data, sources, the resumption state) comes before the first
write to --output_dir, so a refused start leaves nothing there; a directory that holds no finished,
resumable or saved run (e.g. only the config.json of a start that failed before) counts as empty.
"""

from sskt_tf import config as config_lib  # noqa: E402
from sskt_tf import train_lib  # noqa: E402
from sskt_tf.cli import reject_arguments, run_cli  # noqa: E402


def main(argv):
    """The command: the parsed flags become one `Config`, and `train_lib.run` trains it.

    Args:
        argv: the program name, then what absl did not parse as a flag.

    Returns:
        The run's results.json as a dict.

    Raises:
        UserError: arguments that are not flags, flags that contradict each other, or what
            `train_lib.run` refuses.
        SystemExit: status 130 after Ctrl-C (`train_lib.run`).
    """
    reject_arguments(argv)
    config = config_lib.from_flags()
    return train_lib.run(config)


def run():
    """The console script `sskt-train`: `main` under `cli.run_cli` (bad input: one line, exit status 2)."""
    run_cli(main, config_lib.define_flags, groups=config_lib.help_groups(), configs=True)


if __name__ == "__main__":
    run()
