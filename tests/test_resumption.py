"""Tests of sskt_tf.resumption: what differs between a saved state's inputs and this run's, and the
one line that refuses to load a state that does not fit.

Resuming through the training command onto another source file is tested in test_resilience.py."""

import pytest

from sskt_tf import resumption
from sskt_tf.config import Config
from sskt_tf.errors import UserError

INPUTS = {
    "method": "sskt", "num_classes": 3, "class_names": ["cat", "dog", "owl"], "image_size": [32, 32],
    "networks": [{"role": "source", "spec": "s.keras", "classes": 10, "input_size": [32, 32], "weights": "ab12"}],
}


class _Resume:
    """A `callbacks.ResumeCheckpoint` holding `state`, whose loader raises `error` (None: it loads)."""

    directory = "/run/backup"

    def __init__(self, state, error=None):
        self._state, self._error, self.restored = state, error, False

    def state(self):
        return self._state

    def restore(self, model):
        if self._error is not None:
            raise self._error
        self.restored = True


def test_input_changes_name_what_differs_over_the_keys_both_have():
    assert resumption.input_changes(None, INPUTS) == []  # A state saved before the inputs were recorded.
    assert resumption.input_changes({"method": "sskt"}, INPUTS) == []
    now = {**INPUTS, "class_names": ["cat", "emu", "owl"], "image_size": [64, 64], "num_classes": 3}
    assert resumption.input_changes(INPUTS, now) == [
        "class_names: class 1 was 'dog', is 'emu'",
        "image_size: 32,32 -> 64,64",
    ]
    assert resumption.input_changes(INPUTS, {**INPUTS, "class_names": ["cat"]}) == ["class_names: 3 classes -> 1"]
    other = [{**INPUTS["networks"][0], "weights": "cd34"}]
    assert resumption.input_changes(INPUTS, {**INPUTS, "networks": other}) == [
        "sources: source s.keras (10 classes, [32, 32] px, weights ab12) -> source s.keras (10 classes, [32, 32] px, weights cd34)"
    ]
    assert resumption.input_changes(INPUTS, {**INPUTS, "networks": []}) == [
        "sources: source s.keras (10 classes, [32, 32] px, weights ab12) -> none"
    ]


def test_restore_state_loads_only_a_state_that_fits(tmp_path):
    config = Config(dataset="synthetic", output_dir=str(tmp_path))
    state = {"epoch": 2, "weights": "epoch_2.weights.h5", "inputs": INPUTS}
    resume = _Resume(state)
    assert resumption.restore_state(config, resume, None, INPUTS) is state and resume.restored
    with pytest.raises(UserError, match=r"the saved state \(backup/, after epoch 2\) was trained on other inputs than this command finds now \(num_classes: 3 -> 4\)"):
        resumption.restore_state(config, _Resume(state), None, {**INPUTS, "num_classes": 4})
    with pytest.raises(UserError, match=r"the saved state /run/backup/epoch_2.weights.h5 cannot be loaded into this run's model \(OSError: truncated file\)"):
        resumption.restore_state(config, _Resume(state, OSError("truncated file\nmore")), None, INPUTS)
