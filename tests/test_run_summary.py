"""Tests of sskt_tf.run_summary: the rows whose wording depends on the settings alone.

The whole block (data, target, sources, steps) is checked on real runs in tests/test_train.py.
"""

from sskt_tf import run_summary
from sskt_tf.config import Config


def test_the_schedule_row_says_when_milestones_lie_beyond_the_run():
    sgd = "SGD lr 0.1, momentum 0.9, coupled L2 0.0005"
    assert run_summary._schedule(Config(epochs=200)) == f"{sgd}; x0.2 after epochs 60,120,160"
    # A short run with the paper's milestones keeps the rate: said, with the fix.
    assert run_summary._schedule(Config(epochs=30)) == (
        f"{sgd}; x0.2 after epochs 60,120,160 (none within the run's 30 epochs: the rate stays 0.1; "
        "set --lr_milestones or --lr_schedule=cosine)"
    )
    assert run_summary._schedule(Config(epochs=100)) == f"{sgd}; x0.2 after epochs 60,120,160 (within the run's 100 epochs: 60)"
    assert run_summary._schedule(Config(epochs=30, lr_schedule="cosine", lr=0.05)) == (
        "SGD lr 0.05, momentum 0.9, coupled L2 0.0005; cosine to 0 over 30 epochs"
    )
    assert run_summary._schedule(Config(lr_schedule="constant")).endswith("; constant")
    assert "(none within the run's 1 epoch: the rate stays 0.1;" in run_summary._schedule(Config(epochs=1))


def test_the_soft_labels_row_says_where_the_sources_logits_come_from():
    replay = run_summary._soft_label_cache(Config(soft_label_cache="replay", replay_views=4, replay_top_k=5))
    assert replay.startswith("stored logits of 4 stored crops + flips per image") and "top 5 logits, float16" in replay
    assert "every logit, float32" in run_summary._soft_label_cache(Config(soft_label_cache="replay", replay_top_k=0))
    assert "un-augmented" in run_summary._soft_label_cache(Config(soft_label_cache="clean"))
