"""Tests of sskt_tf.tf_import: which of TensorFlow's start-up lines are left out, and a command's quiet start."""

import os
import subprocess
import sys

import pytest

from sskt_tf import tf_import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What `import tensorflow` printed on a 2-core machine without a GPU (TensorFlow 2.21), with the lines
# a user must still see around it: a Python warning, TensorFlow's own warnings and errors.
CAPTURED = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795997498.462270    8144 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1795997498.462592    8144 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795997498.589466    8144 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
/venv/lib/python3.11/site-packages/x.py:3: UserWarning: something a user must read
  warnings.warn("something a user must read")
W0000 00:00:1795997502.281201    8144 some_op.cc:10] a warning of TensorFlow
E0000 00:00:1795997503.819529    8144 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1795997503.819600    8144 other.cc:7] an error of TensorFlow
To enable the following instructions: a line of its own, after a kept line
"""
LINES = CAPTURED.splitlines(keepends=True)
PYTHON_WARNING, TF_WARNING, CUINIT, TF_ERROR, OWN_LINE = LINES[5:7], LINES[7], LINES[8], LINES[9], LINES[10]


def test_the_level_applies_to_the_start_up_lines_and_cuda_lines_go_only_without_a_gpu():
    # TF_CPP_MIN_LOG_LEVEL=1 (the commands' default), no GPU: absl's notice, INFO (with cpu_feature_guard's
    # second line) and the CUDA lines go; the Python warning, TensorFlow's warning and error stay, in order.
    assert tf_import.kept_lines(CAPTURED, 1, gpu_device=False) == [*PYTHON_WARNING, TF_WARNING, TF_ERROR, OWN_LINE]
    # With a GPU device, a failed cuInit is a driver problem: it stays.
    assert tf_import.kept_lines(CAPTURED, 1, gpu_device=True) == [*PYTHON_WARNING, TF_WARNING, CUINIT, TF_ERROR, OWN_LINE]
    # Levels 2 and 3 leave out TensorFlow's warnings, then its errors, as TensorFlow does for its later lines.
    assert tf_import.kept_lines(CAPTURED, 2, gpu_device=True) == [*PYTHON_WARNING, CUINIT, TF_ERROR, OWN_LINE]
    assert tf_import.kept_lines(CAPTURED, 3, gpu_device=True) == [*PYTHON_WARNING, OWN_LINE]
    # TF_CPP_MIN_LOG_LEVEL=0 asks for everything.
    assert tf_import.kept_lines(CAPTURED, 0, gpu_device=False) == LINES


@pytest.mark.slow
def test_a_command_starts_without_tensorflows_start_up_lines():
    # The package imports TensorFlow first (sskt_tf/__init__.py), as every command does; on a GPU
    # machine the GPU lines may stay, by design.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import sys; print('before', file=sys.stderr); import sskt_tf; import tensorflow as tf; tf.constant(1.0) + 1"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not tf_import.has_nvidia_device():
        assert proc.stderr == "before\n"
