"""Shared pytest setup: one hypothesis profile, deterministic in CI and locally."""
from hypothesis import settings

# derandomize: the same examples on every run, so a failure reproduces; deadline=None: numpy
# references and device dispatches have uneven first-call costs that are not bugs.
settings.register_profile("kgen", derandomize=True, deadline=None)
settings.load_profile("kgen")
