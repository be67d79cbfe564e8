"""The one exception type that reaches users as a single line instead of a traceback, and the helpers
that turn it (and absl's own flag errors) into `error: ...` and exit status 2."""

import errno
import os
import re
import sys
import tempfile


class UserError(Exception):
    """Bad input from the user: a flag, a file, a name, or a missing download.

    The message must name what was received, what is allowed, and the fix. The
    command-line entry points print it as one line and exit with status 2.
    """


def one_line(message):
    """`message` on one line: its non-empty lines joined with "; ", whitespace runs collapsed."""
    lines = [" ".join(line.split()) for line in str(message).splitlines()]
    return "; ".join(line for line in lines if line) or "(no message)"


def exit_with_error(error):
    """Prints `error: <message>` (one line) on stderr and exits with status 2."""
    sys.stdout.flush()
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


# --- Output paths ------------------------------------------------------------------------------------


def blocking_file(path):
    """The first component of `path` (from the root) that exists and is not a directory, or None."""
    path = os.path.abspath(path)
    parts = []
    while True:
        parts.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for part in reversed(parts):
        if os.path.lexists(part) and not os.path.isdir(part):
            return part
    return None


def _os_reason(error):
    reason = error.strerror or type(error).__name__
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {error.filename}" if error.filename else "permission denied"
    if error.errno == errno.EROFS:
        return "read-only file system"
    return f"{reason.lower()}{f' ({error.filename})' if error.filename else ''}"


def writable_dir(path, flag, what="directory"):
    """Creates the directory `path` (with its parents) and checks that a file can be written in it.

    Returns the path. Raises UserError, naming `flag` and the real cause, when the path is a file, a
    parent is a file, or the directory cannot be created or written (permissions, a read-only file
    system, a full disk).
    """
    path = os.path.expanduser(str(path))
    shown = f"{flag}={path}" if flag else path
    blocking = blocking_file(path)
    if blocking is not None and os.path.abspath(blocking) == os.path.abspath(path):
        raise UserError(f"{shown} is a file, not a directory; pass the path of a directory for the {what} (created if missing).")
    if blocking is not None:
        raise UserError(f"{shown}: cannot create the {what} there, {blocking} is a file; pass another path.")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{shown}: cannot write the {what} there ({_os_reason(e)}); pass a directory you can write to.") from None
    return path


def writable_file(path, flag, what="file"):
    """Checks that the file `path` can be written: not a directory, its directory creatable and writable.

    Creates the missing parent directories. Returns the path; UserError otherwise (see `writable_dir`).
    """
    path = os.path.expanduser(str(path))
    shown = f"{flag}={path}" if flag else path
    if os.path.isdir(path):
        raise UserError(f"{shown} is a directory, not a file; pass a file path for the {what}.")
    blocking = blocking_file(os.path.dirname(os.path.abspath(path)))
    if blocking is not None:
        raise UserError(f"{shown}: cannot write the {what} there, {blocking} is a file; pass another path.")
    writable_dir(os.path.dirname(os.path.abspath(path)), None, what=f"directory of {shown}")
    return path


# --- Command lines -----------------------------------------------------------------------------------


def _flag_error_message(error, flag_values):
    """absl's flag-parsing error as one line that names the flag and the fix."""
    from absl import flags

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
    """
    from absl import app, flags

    flag_values = flags.FLAGS
    define_flags()
    failure = []

    def parse(args):
        try:
            return flag_values(args)
        except UserError as e:
            exit_with_error(e)  # Before main: absl has nothing to read yet.
        except flags.Error as e:
            exit_with_error(_flag_error_message(e, flag_values))

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
