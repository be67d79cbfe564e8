"""Tests of sskt_tf.cli: every kind of bad input ends in one `error:` line and exit status 2, and every
command defines its flags the same way, on the FlagValues it is given, once.

`run_cli` is run in small absl-only commands (a subprocess each: absl's app.run runs once per
process), loading errors.py and cli.py by their paths so that TensorFlow is not imported: each takes
a fraction of a second. The real commands' error lines are tested in test_compare.py,
test_export.py, test_evaluate.py, test_predict.py and test_convert_torch.py.
"""

import os
import sys

import pytest
from absl import flags
from conftest import assert_one_error_line, run_commands

from sskt_tf import cli, compare, convert_torch, evaluate, export, predict
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
    nested.write_text(f"--flagfile={tmp_path / 'inner.cfg'}\n")
    (tmp_path / "binary.cfg").write_bytes(b"--model=m\n\xff\xfe\n")
    cases = {
        "ok": (["--model=m"], None),
        "user error in main": (["--model=m", "--mode=user"], ["error: --model=x: no such file or directory; pass a run directory."]),
        "user error after main cleared the flags": (["--model=m", "--mode=user_unparsed"], ["--model=x: no such file"]),
        "message of several lines": (["--model=m", "--mode=multiline"], ["error: first line; second line"]),
        "missing required flag": ([], ["--model is required", "Run directory or .keras file", "pass --model=<value>"]),
        "unknown flag": (["--model=m", "--nope=3"], ["unknown flag --nope", "--helpfull"]),
        "misspelt flag": (["--model=m", "--step=3"], ["unknown flag --step ", "did you mean --steps?"]),
        "validator raising a UserError": (["--model=m", "--steps=500"], ["error: --steps=500 is more than 100"]),
        "value of the wrong type": (["--model=m", "--steps=abc"], ["--steps=abc", "--steps takes an integer"]),
        "value outside an enum": (["--model=m", "--mode=zzz"], ["--mode=zzz", "one of <ok|user"]),
        "missing flagfile": ([f"--flagfile={tmp_path / 'none.cfg'}"], [f"--flagfile={tmp_path / 'none.cfg'}: no such file"]),
        "flagfile that is not text": ([f"--flagfile={tmp_path / 'binary.cfg'}"], [f"--flagfile={tmp_path / 'binary.cfg'}: a flagfile", "is not UTF-8 text"]),
        "missing flagfile inside a flagfile": ([f"--flagfile={nested}"], [f"--flagfile={tmp_path / 'inner.cfg'}: no such file"]),
        # A relative path is read from the current directory: the line says so (run from the repository root).
        "relative flagfile": (["--flagfile=flags/none.cfg"], ["--flagfile=flags/none.cfg: no such file", "read from the current directory", "repository root"]),
        "an argument that is not a flag": (["--model=m", "--mode=args", "steps=3"], ["error: unexpected arguments ['steps=3']; every setting is a --flag (see --helpfull)."]),
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
    with pytest.raises(UserError, match=r"^unexpected arguments \['x'\]; every setting is a --flag \(see --helpfull\)\.$"):
        cli.reject_arguments(["sskt_tf.export", "x"])


# Each command's flags (the training flags for train; compare adds its own to them), with --model's kind.
COMMANDS = {
    "train": (config_lib.define_flags, {"dataset", "epochs", "output_dir", "overwrite"}, "string enum"),
    "compare": (compare.define_flags, {"dataset", "epochs", "seeds", "methods"}, "string enum"),
    "export": (export.define_flags, {"output", "format", "quantize", "top_k", "multi_label", "overwrite"}, "string"),
    "evaluate": (evaluate.define_flags, {"dataset", "data_dir", "output_dir", "batch_size", "multi_label", "skip_bad_images"}, "string"),
    "predict": (predict.define_flags, {"top_k", "multi_label"}, "string"),
    "convert_torch": (convert_torch.define_flags, {"arch", "num_classes", "allow_pickle", "overwrite"}, None),
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
