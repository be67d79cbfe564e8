"""The one exception type that reaches users as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a flag, a file, a name, or a missing download.

    The message must name what was received, what is allowed, and the fix. The
    command-line entry points print it as one line and exit with status 2.
    """


def run_cli(main, define_flags):
    """Runs the absl `main` of a command; a UserError becomes one line, `error: ...`, and exit status 2."""
    import sys

    from absl import app

    def main_or_error(argv):
        try:
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    define_flags()
    app.run(main_or_error)
