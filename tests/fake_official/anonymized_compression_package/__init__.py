"""Test stand-in package (NOT the official code); see tests/fake_official/README.md.

For the quantizer functions the adapter loads only quantization/straight_through.py, by path;
the model files import this package normally (docs/method.md §9.1), so importing it is allowed.
``IMPORTS`` counts imports, so the tests can check which path was taken.
"""
IMPORTS = 1
