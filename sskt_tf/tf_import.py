"""TensorFlow's import without the start-up lines that no setting removes.

`import tensorflow` (2.16 to 2.21) prints, from C++ code that runs before TensorFlow's logging reads
TF_CPP_MIN_LOG_LEVEL, lines like these on a machine without a GPU (some of them twice):

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795997498.462270    8144 port.cc:153] oneDNN custom operations are on. You may see ...
    I0000 00:00:1795997498.462592    8144 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 00:00:1795997503.819529    8144 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

`import_tensorflow` imports TensorFlow and, on a machine without an NVIDIA GPU device, lists its
physical devices (where the CUDA platform starts and the last line comes from), with file
descriptor 2 sent to a temporary file; then it writes back every line but:

- absl's notice about its own initialisation (the first line above);
- TensorFlow's log lines (`I`/`W`/`E`/`F` + date ...) below TF_CPP_MIN_LOG_LEVEL (0: all, 1: no INFO,
  2: no WARNING, 3: no ERROR): the level TensorFlow applies to its later lines, applied to these too;
- on a machine without an NVIDIA GPU device (no /dev/nvidia<N>, no WSL /dev/dxg): the log lines of
  TensorFlow's CUDA and GPU code (files named cuda*, cudnn*, cublas*, cufft*, cudart*, gpu*), which
  only say that there is no GPU to use. With a GPU device they stay: a failed cuInit there is a
  driver problem the user must see.

Everything else written to stderr meanwhile (Python warnings, other lines) comes back unchanged,
in order, once the import has finished. Importing `sskt_tf` does this first (its `__init__`), so
every command (`python -m sskt_tf.<command>`, the `sskt-*` scripts) starts quietly; it also sets
TF_CPP_MIN_LOG_LEVEL to 1 (no INFO) unless the environment sets it (`TF_CPP_MIN_LOG_LEVEL=0` shows
everything, these lines included). When TensorFlow was imported before, nothing is done.
"""

import glob
import os
import re
import sys
import tempfile

# TensorFlow's (absl/glog) log line: severity, MMDD, time, thread, file:line] message.
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w./-]+):\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The second line of cpu_feature_guard.cc's INFO message (it has no prefix of its own).
_CPU_FEATURES_CONTINUATION = "To enable the following instructions:"
_GPU_FILE = re.compile(r"(^|/)(cuda|cudnn|cublas|cufft|cudart|gpu)\w*\.cc$")


def has_nvidia_device():
    """Whether the machine exposes an NVIDIA GPU: a /dev/nvidia<N> device, or WSL's /dev/dxg."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def _min_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def kept_lines(text, min_level, gpu_device):
    """The lines of `text` (what stderr received during the import) to write back.

    Args:
        text: the captured stderr, as text.
        min_level: TF_CPP_MIN_LOG_LEVEL as an int (0 keeps every TensorFlow log line).
        gpu_device: whether the machine has an NVIDIA GPU device (`has_nvidia_device`).

    Returns:
        The kept lines, each with its line ending, in order (see the module docstring).
    """
    kept, dropped_cpu_guard = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if min_level <= 0:
            kept.append(line)
            continue
        match = _LOG_LINE.match(stripped)
        if stripped == _ABSL_NOTICE:
            drop = True
        elif match:
            severity, path = _SEVERITY[match.group(1)], match.group(2)
            drop = severity < min_level or (not gpu_device and bool(_GPU_FILE.search(path)))
        else:
            drop = dropped_cpu_guard and stripped.startswith(_CPU_FEATURES_CONTINUATION)
        dropped_cpu_guard = drop and bool(match) and match.group(2).endswith("cpu_feature_guard.cc")
        if not drop:
            kept.append(line)
    return kept


def import_tensorflow():
    """Imports TensorFlow and starts its device platforms without their start-up noise on stderr.

    See the module docstring for what is left out. Listing the physical devices does not
    initialise TensorFlow's runtime: logical devices, memory growth and a multi-worker strategy
    can still be configured afterwards (tests/test_multi_worker.py starts two workers so).

    Returns:
        The `tensorflow` module.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        sys.stderr.flush()
        captured = tempfile.TemporaryFile()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # No usable stderr or temporary file: nothing filtered.
        import tensorflow as tf

        return tf
    gpu_device = has_nvidia_device()
    with captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            if not gpu_device:  # Where cuInit fails; with a GPU its lines are kept anyway.
                tf.config.list_physical_devices()
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = kept_lines(captured.read().decode("utf-8", errors="replace"), _min_level(), gpu_device)
            if lines:
                os.write(2, "".join(lines).encode("utf-8", errors="replace"))
    return tf
