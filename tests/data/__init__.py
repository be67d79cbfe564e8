"""Tests of sskt_tf.data, one module per module of the package. A package, so that its conftest.py is
not imported as the top-level `conftest` module that other test files import from."""
