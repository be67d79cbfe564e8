"""Tests of sskt_tf/serving/, one file per module."""
