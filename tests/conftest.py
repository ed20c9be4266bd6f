"""Shared pytest setup: one hypothesis profile, deterministic in CI and locally."""
from hypothesis import settings

# derandomize: the same examples on every run, so a failure reproduces; deadline=None: numpy
# references and device dispatches have uneven first-call costs that are not bugs.
settings.register_profile("kgen", derandomize=True, deadline=None)
settings.load_profile("kgen")


import pytest  # noqa: E402

from kgen import knobs  # noqa: E402


@pytest.fixture(autouse=True)
def no_validation_errors():
    """Under KGEN_VALIDATION=1 (make test), a validation-layer error fails the test that made it."""
    yield
    if knobs.get("KGEN_VALIDATION"):
        from kgen.runtime import vk
        errors = vk.validation_errors()
        assert not errors, "Vulkan validation errors:\n" + "\n".join(errors[:5])
