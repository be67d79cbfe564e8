"""The one exception type that reaches users as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a flag, a file, a name, or a missing download.

    The message must name what was received, what is allowed, and the fix. The
    command-line entry points print it as one line and exit with status 2.
    """
