"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 train to identical weights."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import sskt_tf  # noqa: F401  (registers the custom layers for loading)
from conftest import ROOT


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _two_workers(workdir, stand_ins):
    out = workdir / "run"
    # smoke.cfg with a tiny source of MobileNetV2's class count: the workers' time goes to starting
    # TensorFlow and tracing, and a real application would add the most to both.
    command = [
        sys.executable, "-m", "sskt_tf.train", "--flagfile=flags/smoke.cfg", "--strategy=multi_worker",
        f"--sources={stand_ins('mobilenet_v2_random', 1000)}",
        "--sync_bn", "--epochs=2", "--steps_per_epoch=2", "--batch_size=16", "--eval_batch_size=64", "--verbose=2", f"--output_dir={out}",
    ]

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs, logs = [], [workdir / f"worker_{index}.log" for index in range(2)]
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        with open(logs[index], "w") as log:
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:  # After a timeout: no worker left behind.
            if p.poll() is None:
                p.kill()
                p.wait()
    return out, codes, [log.read_text() for log in logs]


@pytest.mark.slow
def test_two_local_workers_finish_with_identical_weights(tmp_path, stand_ins):
    out, codes, logs = _two_workers(tmp_path, stand_ins)
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    chief = keras.saving.load_model(out / "target.keras").get_weights()
    other = keras.saving.load_model(out / "worker_1" / "target.keras").get_weights()
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_completed"] == 2 and np.isfinite(results["test"]["loss"])
