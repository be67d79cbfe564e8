"""The one exception type that reaches users as a single line instead of a traceback, and the checks
of output paths that raise it. `sskt_tf.cli` turns it (and absl's own flag errors) into `error: ...`
and exit status 2."""

import errno
import os
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
