"""How every `python -m sskt_tf.<command>` defines its flags, parses them and reports bad input.

A command module defines its flags in `define_flags(flag_values)`, decorated by
`flag_definitions`, and hands it to `run_cli` with its absl `main` (TF Model Garden's
`define_flags()`, so that tests and other commands need not set them):

    @cli.flag_definitions
    def define_flags(flag_values):
        flags.DEFINE_string("model", None, "Run directory or .keras file.", required=True, flag_values=flag_values)

    def main(argv):
        cli.reject_arguments(argv)
        ...

    def run():
        cli.run_cli(main, define_flags)

`--model` keeps the meaning each command gives it: a network name (an enum) for `train` and
`compare`, a trained model (a path) for `export`, `evaluate` and `predict`. The two are never
defined on one FlagValues: each command's process defines its own flags only.

Bad input ends in one line, `error: <message>`, and exit status 2 (`UserError`, see
`sskt_tf.errors`); a bug stays a traceback.
"""

import functools
import os
import re
import sys

from absl import flags

from sskt_tf.errors import UserError, one_line


def flag_definitions(define):
    """Makes `define(flag_values)`, a command's flag definitions, safe to call more than once.

    absl refuses a flag defined twice on one FlagValues; the decorated function defines its flags
    the first time it is called with a FlagValues and does nothing later. A conflicting flag of
    another command on the same FlagValues (the same name defined elsewhere) still raises absl's
    `DuplicateFlagError`: no command silently reads another's flag.

    Args:
        define: a function of one FlagValues that calls `flags.DEFINE_*(..., flag_values=...)`.

    Returns:
        `define_flags(flag_values=flags.FLAGS)`, with absl's global FLAGS by default.
    """
    defined_on = []  # The FlagValues it ran on, held so that their ids are never reused.

    @functools.wraps(define)
    def define_flags(flag_values=None):
        flag_values = flags.FLAGS if flag_values is None else flag_values
        if not any(done is flag_values for done in defined_on):
            define(flag_values)
            defined_on.append(flag_values)

    return define_flags


def reject_arguments(argv):
    """The guard of a command that takes flags only.

    Args:
        argv: what absl passes to `main`: the program name, then what was not a flag.

    Raises:
        UserError: anything follows the program name (e.g. a flag written without `--`).
    """
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull).")


def exit_with_error(error):
    """Prints `error: <message>` (one line, see `sskt_tf.errors.one_line`) on stderr and exits with status 2."""
    sys.stdout.flush()
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


def _flag_error_message(error, flag_values):
    """absl's flag-parsing error as one line that names the flag and the fix."""
    message = one_line(error)
    if isinstance(error, flags.CantOpenFlagFileError):
        reason = message.removeprefix("ERROR:: Unable to open flagfile:").strip()
        os_error = re.fullmatch(r"\[Errno \d+\] (.*?): '(.*)'", reason)
        # "[Errno 2] No such file or directory: 'x.cfg'" (the file may be named inside another flagfile).
        what = f"--flagfile={os_error.group(2)}: {os_error.group(1).lower()}" if os_error else f"--flagfile: cannot read it ({reason})"
        relative = os_error and not os.path.isabs(os_error.group(2))
        where = (
            f" (a relative path, also one inside a flagfile, is read from the current directory {os.getcwd()}: the "
            "repository's flagfiles name flags/common.cfg that way, so run them from the repository root)"
            if relative
            else ""
        )
        return f"{what}{where}; pass the path of an existing flagfile."
    if isinstance(error, flags.UnrecognizedFlagError):
        known = re.search(r"Did you mean: (.*?)\s*\?", message)
        hint = " (did you mean " + " or ".join(f"--{n.strip()}" for n in known.group(1).split(",")) + "?)" if known else ""
        return f"unknown flag --{error.flagname} for this command{hint}; see --helpfull for its flags."
    required = re.search(r"Flag --(\w+) must have a value other than None", message)
    if required:
        name = required.group(1)
        about = flag_values[name].help if name in flag_values else ""
        about = f" ({about.rstrip('.')})" if about else ""
        return f"--{name} is required and was not given{about}; pass --{name}=<value>."
    bad = re.match(r"flag --(\w+)=", message)
    if bad and bad.group(1) in flag_values:
        flag = flag_values[bad.group(1)]
        kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "list": "a comma-separated list"}
        takes = kinds.get(flag.flag_type(), f"a {flag.flag_type()}")
        about = f" ({flag.help.rstrip('.')})" if flag.help else ""
        if "should be one of" in message:
            return f"{message.rstrip('.')}."
        return f"{message.rstrip('.')}; --{flag.name} takes {takes}{about}."
    return f"{message.rstrip('.')}; see --helpfull."


def run_cli(main, define_flags, argv=None):
    """Runs the absl `main` of a command: bad input ends in one line, `error: ...`, and exit status 2.

    Bad input is a UserError raised anywhere (while the flags are parsed, in a flag validator or
    parser, or in `main`) or one of absl's own flag errors (an unknown flag, a missing required
    flag, a flagfile that cannot be read, a value the flag's type refuses). Any other exception is a
    bug and stays a traceback.

    The error line is printed after absl's `app.run` has returned, whatever state `main` left the
    global flags in (a command may parse other flags on them and clear them, as `sskt_tf.compare`
    does): inside `app.run`, a non-zero exit reads `--pdb_post_mortem`, which fails on unparsed flags.

    Args:
        main: the command's absl main, `main(argv)` with argv the program name and the arguments
            that are not flags; it reads the parsed flags from absl's global FLAGS.
        define_flags: `define_flags(flag_values)`, defining the command's flags (see
            `flag_definitions`); called here with absl's global FLAGS, where `app.run` parses.
        argv: the command line, program name first; default `sys.argv`.

    Raises:
        SystemExit: always, as `app.run` does: status 0 after `main` returned, 2 after bad input,
            1 after a bug (with its traceback).
    """
    from absl import app

    flag_values = flags.FLAGS
    define_flags(flag_values)
    failure = []

    def parse(args):
        try:
            return flag_values(args)
        except UserError as e:
            exit_with_error(e)  # Before main: absl has nothing to read yet.
        except flags.Error as e:
            exit_with_error(_flag_error_message(e, flag_values))
        except UnicodeDecodeError as e:  # absl reads flagfiles as text and lets this through.
            given = [a.partition("=")[2] for a in args if a.startswith("--flagfile=")]
            exit_with_error(
                UserError(
                    f"--flagfile={','.join(given) or '?'}: a flagfile (or one it includes) is not UTF-8 text "
                    f"({e.reason} at byte {e.start}); a flagfile holds one --flag=value per line."
                )
            )

    def main_or_error(args):
        try:
            main(args)
        except (UserError, app.UsageError) as e:
            failure.append(e)
        finally:
            if not flag_values.is_parsed():
                # `main` cleared the global flags. absl's app.run reads --pdb_post_mortem when an
                # exception (a bug) leaves `main`; with the flags cleared, that read would raise
                # UnparsedFlagAccessError over the real traceback. Their defaults are enough for it.
                flag_values.mark_as_parsed()
        # Returning (not raising) makes app.run exit with status 0 through SystemExit(None).

    try:
        app.run(main_or_error, argv=argv, flags_parser=parse)
    except SystemExit as e:
        if failure and not e.code:
            exit_with_error(failure[0])
        raise
