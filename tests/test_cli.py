"""Tests of sskt_tf.cli: every kind of bad input ends in one `error:` line and exit status 2, every
command defines its flags the same way, on the FlagValues it is given, once; flagfiles (nested ones
read from the including file's directory, --config) and every command's --help.

`run_cli` is run in small absl-only commands (a subprocess each: absl's app.run runs once per
process), loading errors.py and cli.py by their paths so that TensorFlow is not imported: each takes
a fraction of a second. The real commands' error lines are tested in test_compare.py,
test_export.py, test_evaluate.py, test_predict.py and test_convert_torch.py.
"""

import importlib
import inspect
import os
import subprocess
import sys

import pytest
from absl import flags
from conftest import ROOT, assert_one_error_line, run_commands, tf_native_log_line

from sskt_tf import cli, compare, convert_torch, evaluate, export, predict, prepare_video
from sskt_tf import config as config_lib
from sskt_tf.errors import UserError

ERRORS_PY = os.path.abspath(sys.modules["sskt_tf.errors"].__file__)
CLI_PY = os.path.abspath(cli.__file__)

COMMAND = '''
import importlib.util, sys, types

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

package = types.ModuleType("sskt_tf")  # Not the real package: its __init__ imports TensorFlow.
package.__path__ = []
sys.modules["sskt_tf"] = package
errors = load("sskt_tf.errors", sys.argv.pop(1))
cli = load("sskt_tf.cli", sys.argv.pop(1))
assert "tensorflow" not in sys.modules
from absl import flags
FLAGS = flags.FLAGS

@cli.flag_definitions
def define(flag_values):
    flags.DEFINE_string("model", None, "Run directory or .keras file.", required=True, flag_values=flag_values)
    flags.DEFINE_enum("mode", "ok", ["ok", "user", "user_unparsed", "bug_unparsed", "multiline", "args"], "What main does.", flag_values=flag_values)
    flags.DEFINE_integer("steps", 1, "Steps per epoch.", flag_values=flag_values)

    def at_most_100(value):
        if value > 100:
            raise errors.UserError(f"--steps={value} is more than 100; pass --steps=100 or less.")
        return True

    flags.register_validator("steps", at_most_100, flag_values=flag_values)

def main(argv):
    mode = FLAGS.mode
    if mode == "args":
        cli.reject_arguments(argv)
    if mode.endswith("_unparsed"):
        FLAGS.unparse_flags()  # As sskt_tf.compare did: absl then failed reading --pdb_post_mortem.
    if mode.startswith("user"):
        raise errors.UserError("--model=x: no such file or directory; pass a run directory.")
    if mode == "bug_unparsed":
        raise ZeroDivisionError("a bug")
    if mode == "multiline":
        raise errors.UserError("first line\\n  second line")
    print("ran", FLAGS.model)

cli.run_cli(main, define)
'''


def test_run_cli_turns_every_kind_of_bad_input_into_one_line(tmp_path):
    script = tmp_path / "command.py"
    script.write_text(COMMAND)
    nested = tmp_path / "outer.cfg"
    nested.write_text(f"# A comment.\n--flagfile={tmp_path / 'inner.cfg'}\n")
    (tmp_path / "binary.cfg").write_bytes(b"--model=m\n\xff\xfe\n")
    cases = {
        "ok": (["--model=m"], None),
        "user error in main": (["--model=m", "--mode=user"], ["error: --model=x: no such file or directory; pass a run directory."]),
        "user error after main cleared the flags": (["--model=m", "--mode=user_unparsed"], ["--model=x: no such file"]),
        "message of several lines": (["--model=m", "--mode=multiline"], ["error: first line; second line"]),
        "missing required flag": ([], ["--model is required", "Run directory or .keras file", "pass --model=<value>"]),
        "unknown flag": (["--model=m", "--nope=3"], ["unknown flag --nope", "see --help for its flags"]),
        "misspelt flag": (["--model=m", "--step=3"], ["unknown flag --step ", "did you mean --steps?"]),
        "validator raising a UserError": (["--model=m", "--steps=500"], ["error: --steps=500 is more than 100"]),
        "value of the wrong type": (["--model=m", "--steps=abc"], ["--steps=abc", "--steps takes an integer"]),
        "value outside an enum": (["--model=m", "--mode=zzz"], ["--mode=zzz", "one of <ok|user"]),
        "missing flagfile": ([f"--flagfile={tmp_path / 'none.cfg'}"], [f"--flagfile={tmp_path / 'none.cfg'}: no such file"]),
        "flagfile that is not text": ([f"--flagfile={tmp_path / 'binary.cfg'}"], [f"--flagfile={tmp_path / 'binary.cfg'}: not UTF-8 text"]),
        # A nested flagfile is named with the flagfile and line that name it.
        "missing flagfile inside a flagfile": ([f"--flagfile={nested}"], [f"--flagfile={tmp_path / 'inner.cfg'} (line 2 of {nested}): no such file"]),
        # A relative path on the command line is read from the current directory: the line says which.
        "relative flagfile": (["--flagfile=flags/none.cfg"], [f"--flagfile=flags/none.cfg: no such file or directory (a relative path is read from the current directory, {ROOT})"]),
        "an argument that is not a flag": (["--model=m", "--mode=args", "steps=3"], ["error: unexpected arguments ['steps=3']; every setting is a --flag (see --help)."]),
        # --help before anything else: the flags are neither defined on absl's FLAGS nor parsed (no error for --steps=abc).
        "help": (["-h", "--steps=abc"], None),
        "bug after main cleared the flags": (["--model=m", "--mode=bug_unparsed"], None),
    }
    results = run_commands([[sys.executable, str(script), ERRORS_PY, CLI_PY, *args] for args, _ in cases.values()], timeout=120)
    outcomes = dict(zip(cases, results))
    for name, (_, needles) in cases.items():
        if needles is not None:
            line = assert_one_error_line(outcomes[name], *needles)
            assert "Traceback" not in line and outcomes[name][1] == "", name
    rc, stdout, stderr = outcomes["ok"]
    assert rc == 0 and stdout == "ran m\n" and stderr == []
    assert "repository root" not in outcomes["relative flagfile"][2][0]
    rc, stdout, stderr = outcomes["help"]
    assert rc == 0 and stderr == [], stderr
    assert "\nFlags:\n  --model=<text>  (required)\n      Run directory or .keras file.\n" in stdout
    assert "  --mode=ok|user|user_unparsed|bug_unparsed|multiline|args  (default: ok)\n      What main does.\n" in stdout
    assert "  --steps=<int>  (default: 1)\n" in stdout and "--config" not in stdout
    assert stdout.rstrip().endswith("--helpfull.") and "--logtostderr" not in stdout
    # A bug stays a traceback of the bug (exit status 1), with nothing of absl's flag state over it.
    rc, _, stderr = outcomes["bug after main cleared the flags"]
    assert rc == 1 and stderr[0] == "Traceback (most recent call last):" and stderr[-1] == "ZeroDivisionError: a bug"
    assert not any("UnparsedFlagAccessError" in line or line.startswith("error:") for line in stderr)


def test_flag_definitions_run_once_per_flag_values():
    calls = []

    @cli.flag_definitions
    def define_flags(flag_values):
        calls.append(flag_values)
        flags.DEFINE_integer("steps", 1, "Steps per epoch.", flag_values=flag_values)

    first, second = flags.FlagValues(), flags.FlagValues()
    define_flags(first)
    define_flags(first)  # absl would refuse a second definition: nothing happens.
    define_flags(second)
    assert calls == [first, second] and "steps" in first and "steps" in second
    assert define_flags.__name__ == "define_flags"


def test_reject_arguments():
    cli.reject_arguments(["sskt_tf.export"])
    with pytest.raises(UserError, match=r"^unexpected arguments \['x'\]; every setting is a --flag \(see --help\)\.$"):
        cli.reject_arguments(["sskt_tf.export", "x"])


# Each command's flags (the training flags for train; compare adds its own to them), with --model's kind.
COMMANDS = {
    "train": (config_lib.define_flags, {"dataset", "epochs", "output_dir", "overwrite"}, "string enum"),
    "compare": (compare.define_flags, {"dataset", "epochs", "seeds", "methods"}, "string enum"),
    "export": (export.define_flags, {"output", "format", "quantize", "top_k", "multi_label", "overwrite"}, "string"),
    "evaluate": (evaluate.define_flags, {"dataset", "data_dir", "output_dir", "batch_size", "multi_label", "skip_bad_images"}, "string"),
    "predict": (predict.define_flags, {"top_k", "multi_label"}, "string"),
    "convert_torch": (convert_torch.define_flags, {"arch", "num_classes", "allow_pickle", "overwrite"}, None),
    "prepare_video": (prepare_video.define_flags, {"videos", "output", "dataset", "short_side", "jpeg_quality", "workers"}, None),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_defines_its_flags_on_the_flag_values_it_is_given(command):
    define_flags, names, model_kind = COMMANDS[command]
    global_flags = set(flags.FLAGS)
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    define_flags(flag_values)  # Safe to call again.
    assert names <= set(flag_values), names - set(flag_values)
    if model_kind is None:
        assert "model" not in flag_values
    else:
        # A network name (train, compare) or a trained model's path (export, evaluate, predict).
        assert flag_values["model"].flag_type() == model_kind
    assert set(flags.FLAGS) == global_flags  # Nothing defined on absl's global FLAGS.


def test_two_commands_with_flags_of_one_name_never_share_a_flag_values():
    # evaluate's --model (a trained model) is not train's --model (a network name): where both met, absl
    # refuses the second, instead of evaluate silently reading train's flags.
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    with pytest.raises(flags.DuplicateFlagError, match="model"):
        evaluate.define_flags(flag_values)


# --- Flagfiles ----------------------------------------------------------------------------------------


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_nested_flagfiles_are_read_from_the_directory_of_the_file_that_names_them(tmp_path, monkeypatch):
    _write(tmp_path / "cfg" / "base.cfg", "# a comment\n// absl's other comment\n\n--epochs=200\n--lr=0.1\n")
    _write(tmp_path / "cfg" / "sub" / "deeper.cfg", "--flagfile=../base.cfg\n--lr=0.2\n--sources=a.keras,b:c d\n")
    _write(tmp_path / "absolute.cfg", "--verbose=2\n")
    run = _write(tmp_path / "cfg" / "run.cfg", f"  --flagfile=sub/deeper.cfg  \n--seed=3\n--flagfile={tmp_path / 'absolute.cfg'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # Each flagfile's flags where it is named, so later flags override it; what follows `--` stays as it is.
    assert cli.expand_flagfiles(["--epochs=1", f"--flagfile={run}", "--lr=0.3", "--", "--flagfile=x"]) == [
        "--epochs=1", "--epochs=200", "--lr=0.1", "--lr=0.2", "--sources=a.keras,b:c d", "--seed=3", "--verbose=2",
        "--lr=0.3", "--", "--flagfile=x",
    ]
    # On the command line a relative path is read from the current directory (absl's `--flagfile <path>` too).
    monkeypatch.chdir(tmp_path)
    assert cli.expand_flagfiles(["--flagfile", "cfg/sub/deeper.cfg", "-flagfile=absolute.cfg"]) == [
        "--epochs=200", "--lr=0.1", "--lr=0.2", "--sources=a.keras,b:c d", "--verbose=2",
    ]
    # Without `configs`, --config is left to absl (an unknown flag of evaluate, export, ...).
    assert cli.expand_flagfiles(["--config=smoke", "--model=m"]) == ["--config=smoke", "--model=m"]


def test_bad_flagfiles_are_one_line_naming_the_file_and_the_line_that_includes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outer = _write(tmp_path / "d" / "outer.cfg", "--seed=1\n\n--flagfile=inner.cfg\n")
    _write(tmp_path / "a.cfg", "--flagfile=b.cfg\n")
    _write(tmp_path / "b.cfg", "--seed=2\n--flagfile=./a.cfg\n")
    (tmp_path / "latin1.cfg").write_bytes(b"--dataset=caf\xe9\n")
    _write(tmp_path / "empty_include.cfg", "--flagfile=\n")
    cases = {
        # The nested path as written, where it was looked for, and the rule.
        "missing nested": (
            [f"--flagfile={outer}"],
            f"--flagfile=inner.cfg (line 3 of {outer}): no such file or directory ({tmp_path / 'd' / 'inner.cfg'}: a relative "
            "path inside a flagfile is read from that flagfile's directory); pass the path of an existing flagfile.",
        ),
        "missing, relative": (["--flagfile=none.cfg"], f"--flagfile=none.cfg: no such file or directory (a relative path is read from the current directory, {tmp_path}); pass the path of an existing flagfile."),
        "a directory": (["--flagfile=d"], "--flagfile=d: is a directory"),
        "include loop": (["--flagfile=a.cfg"], f"--flagfile=./a.cfg (line 2 of {tmp_path / 'b.cfg'}): the flagfile includes itself ({tmp_path / 'a.cfg'} -> {tmp_path / 'b.cfg'} -> {tmp_path / 'a.cfg'})"),
        "not UTF-8": (["--flagfile=latin1.cfg"], "--flagfile=latin1.cfg: not UTF-8 text (invalid continuation byte at byte 13)"),
        "no value": (["--flagfile"], "--flagfile= names nothing; write --flagfile=<path of a flagfile>."),
        "empty value inside": (["--flagfile=empty_include.cfg"], f"--flagfile= (line 1 of {tmp_path / 'empty_include.cfg'}) names nothing"),
    }
    for name, (args, message) in cases.items():
        with pytest.raises(UserError) as e:
            cli.expand_flagfiles(args)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (name, str(e.value))


def test_config_names_a_packaged_flagfile_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = cli.config_names()
    assert {"smoke", "common", "cifar", "compare_smoke", "cifar10_resnet20_imagenet"} <= set(names)
    assert names == sorted(p[: -len(".cfg")] for p in os.listdir(os.path.join(ROOT, "flags")) if p.endswith(".cfg"))
    with open(os.path.join(ROOT, "flags", "smoke.cfg")) as f:
        smoke = [line.strip() for line in f if line.strip() and not line.startswith(("#", "--flagfile="))]
    with open(os.path.join(ROOT, "flags", "common.cfg")) as f:
        common = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    # The config's flags (its nested common.cfg first) where --config stands: the flags after it override it.
    expanded = cli.expand_flagfiles(["--epochs=9", "--config=smoke", "--lr=0.5"], configs=True)
    assert expanded == ["--epochs=9", *common, *smoke, "--lr=0.5"]
    assert cli.expand_flagfiles(["--config", "smoke.cfg"], configs=True) == [*common, *smoke]
    with pytest.raises(UserError) as e:
        cli.expand_flagfiles(["--config=smok"], configs=True)
    assert str(e.value) == f"--config=smok: no packaged flagfile of that name (did you mean --config=smoke?); pass one of: {', '.join(names)} (or --flagfile=<path> for your own)."
    # A missing --flagfile whose name is a packaged one points to it.
    with pytest.raises(UserError, match=r"^--flagfile=flags/smoke.cfg: no such file or directory .*, or --config=smoke for the packaged one\.$"):
        cli.expand_flagfiles(["--flagfile=flags/smoke.cfg"], configs=True)


def test_packaged_flagfiles_of_an_installed_package_and_of_a_checkout(tmp_path):
    # pip install . (setup.py copies flags/ to sskt_tf/flags/): the package's own copy.
    installed = tmp_path / "site-packages" / "sskt_tf"
    _write(installed / "flags" / "smoke.cfg", "--epochs=1\n")
    assert cli.packaged_flags_dir(str(installed)) == str(installed / "flags")
    assert cli.config_names(cli.packaged_flags_dir(str(installed))) == ["smoke"]
    # A checkout or pip install -e .: flags/ beside the package, next to setup.py.
    checkout = tmp_path / "clone"
    _write(checkout / "flags" / "cifar.cfg", "--epochs=1\n")
    (checkout / "sskt_tf").mkdir()
    assert cli.packaged_flags_dir(str(checkout / "sskt_tf")) is None  # No setup.py: not this project's checkout.
    _write(checkout / "setup.py", "")
    assert cli.packaged_flags_dir(str(checkout / "sskt_tf")) == str(checkout / "flags")
    assert cli.packaged_flags_dir(os.path.dirname(cli.__file__)) == os.path.join(ROOT, "flags")


# --- --help -------------------------------------------------------------------------------------------

HELP = {
    "train": ("sskt_tf.train", ["Data", "Augmentation", "Target", "Sources and auxiliary tasks", "Method and baselines", "Recipe", "Execution and outputs", "Flagfiles"]),
    "compare": ("sskt_tf.compare", ["Comparison", "Data", "Augmentation", "Target", "Sources and auxiliary tasks", "Method and baselines", "Recipe", "Execution and outputs", "Flagfiles"]),
    "export": ("sskt_tf.export", ["Flags", "Flagfiles"]),
    "evaluate": ("sskt_tf.evaluate", ["Flags", "Flagfiles"]),
    "predict": ("sskt_tf.predict", ["Flags", "Flagfiles"]),
    "convert_torch": ("sskt_tf.convert_torch", ["Flags", "Flagfiles"]),
    "prepare_video": ("sskt_tf.prepare_video", ["Flags", "Flagfiles"]),
}


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_shows_the_command_and_its_own_flags_under_headings(command, monkeypatch, capsys):
    name, headings = HELP[command]
    module = importlib.import_module(name)
    global_flags = set(flags.FLAGS)
    # As the console script (sskt-train, ...) runs it: __main__ is the script, not the module.
    monkeypatch.setattr(sys, "argv", [f"sskt-{command.replace('_', '-')}", "--help"])
    with pytest.raises(SystemExit) as e:
        module.run()
    assert e.value.code == 0
    out = capsys.readouterr().out
    doc = inspect.cleandoc(module.__doc__)
    assert out.startswith(doc + "\n\n") and doc.splitlines()[0].endswith(".")  # The description, then the usage.
    flag_help = out[len(doc):]
    assert [line[:-1] for line in flag_help.splitlines() if line.endswith(":") and not line.startswith(" ")] == headings
    own = flags.FlagValues()
    (compare.define_command_flags if command == "compare" else COMMANDS[command][0])(own)
    for flag in own._flags().values():
        assert (f"\n  --{flag.name}=" if not flag.boolean else f"\n  --[no]{flag.name}") in out, flag.name
    assert flag_help.count("\n  --") == len({f.name for f in own._flags().values()}) + 1 + ("Comparison" in headings or command == "train")
    assert ("--config=<name>" in out) == (command in ("train", "compare"))
    assert out.rstrip().endswith("--helpfull.") and "--logtostderr" not in out and "--xla_" not in out
    assert set(flags.FLAGS) == global_flags  # --help defines nothing on absl's global FLAGS.
    if command == "train":
        assert "\n  --sources=<a,b,...>  (default: empty)\n      Comma-separated source specs" in out
        assert "\n  --alpha=<a,b,...>  (default: 0.1)\n" in out and "\n  --cache=auto|memory|disk|none  (default: auto)\n      Decoded" in out
        assert "\n  --[no]overwrite  (default: false)\n" in out and "smoke, smoke_video, stl10_resnet20_places_imagenet" in out
    if command == "compare":
        assert "\n  --output_dir=<text>  (default: runs/compare)\n      Where the runs" in out


def test_what_asks_for_help():
    assert all(cli.wants_help(["--model=m", arg]) for arg in ("--help", "-h", "-help", "--helpshort", "-?"))
    assert not cli.wants_help(["--helpfull"])  # absl's, with TensorFlow's flags.
    assert not cli.wants_help(["--model=m", "--", "-h"])  # After `--`: an argument.


@pytest.mark.slow
def test_the_training_command_reads_a_config_from_another_directory(tmp_path):
    # The real command from a directory without flags/: --config=smoke finds smoke.cfg, which includes the
    # common.cfg beside it. --method=dml after it contradicts its --sources: one line, in seconds, nothing written.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "sskt_tf.train", "--config=smoke", "--method=dml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    stderr = [line for line in proc.stderr.splitlines() if not tf_native_log_line(line)]
    assert_one_error_line((proc.returncode, proc.stdout, stderr), "error: --sources=mobilenet_v2:random only applies to --method=sskt; received --method=dml")
    assert os.listdir(tmp_path) == []
