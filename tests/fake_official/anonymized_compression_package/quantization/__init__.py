"""Test stand-in (NOT the official code); see tests/fake_official/README.md."""
