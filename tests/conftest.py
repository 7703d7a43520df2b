"""Shared test configuration: a hypothesis profile that keeps the suite fast and repeatable."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("BBITS_HYPOTHESIS_PROFILE", "default"))
