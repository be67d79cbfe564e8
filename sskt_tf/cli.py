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

Flagfiles are expanded here, before absl parses (`expand_flagfiles`): a `--flagfile=` line inside a
flagfile is read from that flagfile's directory (absl would read it from the current directory), and
train and compare take `--config=<name>`, a flagfile shipped with the package. `--help` (`-h`,
`--helpshort`) prints the command's docstring and its own flags under headings (`command_help`);
`--helpfull` stays absl's, with TensorFlow's and absl's flags too.
"""

import difflib
import functools
import inspect
import os
import re
import sys
import textwrap

from absl import flags

from sskt_tf.errors import UserError, one_line

# absl's spellings of a flagfile, the packaged-flagfile flag of train and compare, and what asks for --help.
_FLAGFILE = ("--flagfile", "-flagfile")
_CONFIG = ("--config", "-config")
_HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?", "--?")
_HELP_WIDTH = 100


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
        raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --help).")


def exit_with_error(error):
    """Prints `error: <message>` (one line, see `sskt_tf.errors.one_line`) on stderr and exits with status 2."""
    sys.stdout.flush()
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


# --- Flagfiles --------------------------------------------------------------------------------------


def packaged_flags_dir(package_dir=None):
    """The directory of the flagfiles that `--config=<name>` names.

    An installed package holds them in `sskt_tf/flags/` (setup.py copies the repository's `flags/`
    there); a source checkout or an editable install (`pip install -e .`) has them in `flags/` beside
    the package directory, next to setup.py.

    Args:
        package_dir: the `sskt_tf` package directory; default: this module's.

    Returns:
        The directory's path, or None where neither exists.
    """
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package_dir, "flags")
    if os.path.isdir(installed):
        return installed
    checkout = os.path.dirname(package_dir)
    if os.path.isdir(os.path.join(checkout, "flags")) and os.path.isfile(os.path.join(checkout, "setup.py")):
        return os.path.join(checkout, "flags")
    return None


def config_names(flags_dir=None):
    """The names `--config` accepts: the packaged flagfiles without `.cfg`, sorted (empty where there are none)."""
    flags_dir = packaged_flags_dir() if flags_dir is None else flags_dir
    if not flags_dir or not os.path.isdir(flags_dir):
        return []
    return sorted(name[: -len(".cfg")] for name in os.listdir(flags_dir) if name.endswith(".cfg"))


def _config_path(name, shown):
    """The packaged flagfile `--config=<name>` names (`name` may end in .cfg)."""
    flags_dir = packaged_flags_dir()
    names = config_names(flags_dir)
    if not names:
        raise UserError(
            f"{shown}: this installation of sskt_tf has no packaged flagfiles (no sskt_tf/flags/); reinstall it "
            "(pip install .) or pass --flagfile=<path of a flagfile>."
        )
    stem = name.removesuffix(".cfg")
    if stem not in names:
        close = difflib.get_close_matches(stem, names, n=1)
        hint = f" (did you mean --config={close[0]}?)" if close else ""
        raise UserError(
            f"{shown}: no packaged flagfile of that name{hint}; pass one of: {', '.join(names)} "
            "(or --flagfile=<path> for your own)."
        )
    return os.path.join(flags_dir, f"{stem}.cfg")


def _include(directive, value, including, configs, stack):
    """The flags of the flagfile that `directive=value` names (`--flagfile` or `--config`), expanded.

    `including` is (path, line number) of the flagfile line that names it, None on the command line.
    """
    value = value.strip()
    kind = directive.lstrip("-")
    shown = f"--{kind}={value}"
    where = f" (line {including[1]} of {os.path.abspath(including[0])})" if including else ""
    if not value:
        what = "--config=<name> of a packaged flagfile" if kind == "config" else "--flagfile=<path of a flagfile>"
        raise UserError(f"--{kind}={where} names nothing; write {what}.")
    if kind == "config":
        path = _config_path(value, shown + where)
    else:
        path = os.path.expanduser(value)
        if including:  # Read from the directory of the flagfile that names it.
            path = os.path.join(os.path.dirname(including[0]), path)
    return _read_flagfile(path, shown + where, including, configs, stack)


def _read_flagfile(path, shown, including, configs, stack):
    """The flags of the flagfile at `path`, nested flagfiles expanded where they are named."""
    key = os.path.realpath(path)
    if key in stack:
        loop = " -> ".join((*stack[stack.index(key):], key))
        raise UserError(f"{shown}: the flagfile includes itself ({loop}); remove the --flagfile line that closes the loop.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        if including:
            hint = f" ({os.path.abspath(path)}: a relative path inside a flagfile is read from that flagfile's directory)"
        elif not os.path.isabs(path):
            hint = f" (a relative path is read from the current directory, {os.getcwd()})"
        else:
            hint = ""
        stem = os.path.basename(path).removesuffix(".cfg")
        packaged = f", or --config={stem} for the packaged one" if configs and not including and stem in config_names() else ""
        raise UserError(f"{shown}: {reason}{hint}; pass the path of an existing flagfile{packaged}.") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{shown}: not UTF-8 text ({e.reason} at byte {e.start}); a flagfile holds one --flag=value per line."
        ) from None
    expanded = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "//")):  # absl's comments.
            continue
        directive, _, value = line.partition("=")
        if directive in _FLAGFILE or (configs and directive in _CONFIG):
            expanded += _include(directive, value, (path, number), configs, (*stack, key))
        else:
            expanded.append(line)
    return expanded


def expand_flagfiles(args, configs=False):
    """The arguments `args` with every flagfile replaced by its flags, where it is named.

    A flagfile holds one flag per line, as absl reads it: blank lines and lines that start with `#` or
    `//` are skipped, and a `--flagfile=<path>` line includes another flagfile there. A flag given
    later overrides an earlier one, so flags after a `--flagfile` (or `--config`) override its flags,
    and a flagfile's own lines override what it included above them.

    Unlike absl, a relative path INSIDE a flagfile is read from the directory of that flagfile (the
    packaged flagfiles include `common.cfg` so); one on the command line is read from the current
    directory. With `configs` (train and compare), `--config=<name>` is the packaged flagfile
    `<name>.cfg` (`packaged_flags_dir`, `config_names`), on the command line or inside a flagfile.
    absl parses the result, which holds no flagfile any more.

    Args:
        args: the command line after the program name.
        configs: whether `--config=<name>` names a packaged flagfile; otherwise absl refuses it as an
            unknown flag.

    Returns:
        list of str: `args` with the flagfiles expanded; what follows `--` is kept as it is.

    Raises:
        UserError: a flagfile that is missing, unreadable, not UTF-8 text or includes itself (a nested
            one named with the flagfile and line that name it), a `--flagfile` or `--config` with no
            value, or an unknown `--config` name (the line lists the names).
    """
    expanded, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            return [*expanded, arg, *rest]
        directive, has_value, value = arg.partition("=")
        if directive in _FLAGFILE or (configs and directive in _CONFIG):
            if not has_value and rest:  # absl's `--flagfile <path>`.
                value = rest.pop(0)
            expanded += _include(directive, value, None, configs, ())
        else:
            expanded.append(arg)
    return expanded


# --- Help -------------------------------------------------------------------------------------------


def wants_help(args):
    """Whether the command line `args` (after the program name) asks for --help, -h or --helpshort."""
    for arg in args:
        if arg == "--":
            return False
        if arg in _HELP:
            return True
    return False


def _usage(flag):
    """How a flag is written: `--[no]name`, `--name=a|b|c`, `--name=<int>`, ..."""
    if flag.boolean:
        return f"--[no]{flag.name}"
    if isinstance(flag.parser, flags.EnumParser):
        return f"--{flag.name}={'|'.join(flag.parser.enum_values)}"
    kind = {"int": "int", "float": "number", "bool": "true|false"}.get(flag.flag_type())
    if kind is None:
        kind = "a,b,..." if isinstance(flag.parser, flags.ListParser) else "text"
    return f"--{flag.name}=<{kind}>"


def _default(flag):
    """The default as --help shows it ("" where there is none to show)."""
    if any(getattr(v, "message", "").endswith("must have a value other than None.") for v in flag.validators):
        return "required"
    value = flag.default
    if value is None:
        return ""  # Unset: the help text says what happens.
    if isinstance(value, bool):
        return f"default: {str(value).lower()}"
    if isinstance(value, list):
        return f"default: {','.join(map(str, value))}" if value else "default: empty"
    return f"default: {value}" if value != "" else "default: ''"


def _flag_lines(flag):
    default = _default(flag)
    head = f"  {_usage(flag)}" + (f"  ({default})" if default else "")
    about = re.sub(r"^<[^>]*>: ", "", flag.help or "")  # absl's enum flags open with their choices: shown in `head`.
    about = textwrap.fill(about, _HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return [head, about] if about.strip() else [head]


def command_help(main, define_flags, groups=(), configs=False):
    """The text of a command's --help: its module docstring, its flags under headings, the flagfile flags.

    Only the command's own flags are shown (defined on a FlagValues of their own, never on absl's
    global FLAGS): `--helpfull` (absl's) adds TensorFlow's and absl's.

    Args:
        main: the command's absl main; its module's docstring is the description and usage.
        define_flags: the command's `define_flags(flag_values)`.
        groups: [(heading, [flag names])], in order; the command's other flags follow under "Flags"
            (all of them, for a command without groups).
        configs: whether the command takes `--config=<name>` (see `expand_flagfiles`).

    Returns:
        str, without a final newline.
    """
    module = sys.modules.get(getattr(main, "__module__", ""), None)
    doc = inspect.cleandoc(module.__doc__) if module is not None and module.__doc__ else ""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    defined, seen = [], set()
    for module_flags in flag_values.flags_by_module_dict().values():
        for flag in module_flags:
            if flag.name not in seen:
                seen.add(flag.name)
                defined.append(flag)
    by_name = {flag.name: flag for flag in defined}
    sections = [(heading, [by_name[n] for n in names if n in by_name]) for heading, names in groups]
    grouped = {flag.name for _, members in sections for flag in members}
    sections.append(("Other flags" if groups else "Flags", [f for f in defined if f.name not in grouped]))
    lines = [doc, ""] if doc else []
    lines.append(f"A flag given later overrides an earlier one, also one from a --flagfile{' (or --config)' if configs else ''} before it.")
    for heading, members in sections:
        if members:
            lines += ["", f"{heading}:"]
            for flag in members:
                lines += _flag_lines(flag)
    wrap = functools.partial(textwrap.fill, width=_HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += [
        "",
        "Flagfiles:",
        "  --flagfile=<path>",
        wrap(
            "Reads flags from a file, one --flag=value per line (lines starting with # or // are comments), "
            "as if they were written in its place. A relative path on the command line is read from the "
            "current directory; a --flagfile= line inside a flagfile is read from that flagfile's directory."
        ),
    ]
    if configs:
        names = config_names()
        lines += [
            "  --config=<name>",
            wrap(
                "The flagfile <name>.cfg shipped with sskt_tf, from any directory, read as --flagfile is: "
                + (", ".join(names) if names else "(none installed)")
                + "."
            ),
        ]
    lines += ["", "TensorFlow's and absl's own flags too (logging and others): --helpfull."]
    return "\n".join(lines)


def _flag_error_message(error, flag_values):
    """absl's flag-parsing error as one line that names the flag and the fix."""
    message = one_line(error)
    if isinstance(error, flags.UnrecognizedFlagError):
        known = re.search(r"Did you mean: (.*?)\s*\?", message)
        hint = " (did you mean " + " or ".join(f"--{n.strip()}" for n in known.group(1).split(",")) + "?)" if known else ""
        return f"unknown flag --{error.flagname} for this command{hint}; see --help for its flags."
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
    return f"{message.rstrip('.')}; see --help."


def run_cli(main, define_flags, argv=None, *, groups=(), configs=False):
    """Runs the absl `main` of a command: bad input ends in one line, `error: ...`, and exit status 2.

    Bad input is a UserError raised anywhere (while the flags are parsed, in a flag validator or
    parser, or in `main`) or one of absl's own flag errors (an unknown flag, a missing required
    flag, a value the flag's type refuses), or a flagfile that cannot be read (`expand_flagfiles`).
    Any other exception is a bug and stays a traceback.

    `--help`, `-h` or `--helpshort` prints `command_help` and exits with status 0 before any flag is
    defined on absl's global FLAGS or parsed; `--helpfull` is absl's.

    The error line is printed after absl's `app.run` has returned, whatever state `main` left the
    global flags in (a command may parse other flags on them and clear them, as `sskt_tf.compare`
    does): inside `app.run`, a non-zero exit reads `--pdb_post_mortem`, which fails on unparsed flags.

    Args:
        main: the command's absl main, `main(argv)` with argv the program name and the arguments
            that are not flags; it reads the parsed flags from absl's global FLAGS. Its module's
            docstring opens --help.
        define_flags: `define_flags(flag_values)`, defining the command's flags (see
            `flag_definitions`); called here with absl's global FLAGS, where `app.run` parses.
        argv: the command line, program name first; default `sys.argv`.
        groups: the --help headings of the command's flags, [(heading, [flag names])] (see `command_help`).
        configs: whether the command takes `--config=<name>`, a packaged flagfile (see `expand_flagfiles`).

    Raises:
        SystemExit: always, as `app.run` does: status 0 after `main` returned or after --help, 2 after
            bad input, 1 after a bug (with its traceback).
    """
    from absl import app

    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv[1:]):
        print(command_help(main, define_flags, groups, configs), flush=True)
        sys.exit(0)
    flag_values = flags.FLAGS
    define_flags(flag_values)
    failure = []

    def parse(args):
        try:
            return flag_values([args[0], *expand_flagfiles(args[1:], configs)])
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
