"""Test stand-in package (NOT the official code); see tests/fake_official/README.md.

The adapter loads only quantization/straight_through.py, by path: importing this package
__init__ would be a bug, so it raises.
"""
raise ImportError("the stand-in package __init__ must not be imported by the official adapter")
