"""Shared pytest setup: one hypothesis profile, deterministic in CI and locally."""
from hypothesis import settings

# derandomize: the same examples on every run, so a failure reproduces; deadline=None: numpy
# references and device dispatches have uneven first-call costs that are not bugs.
settings.register_profile("kgen", derandomize=True, deadline=None)
settings.load_profile("kgen")


import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from kgen import knobs  # noqa: E402

# Tests never read or write the user's tuning DB: decisions stored there would change which
# variant the tests run. Tests that need a DB point KGEN_DB at their own tmp_path.
os.environ["KGEN_DB"] = os.path.join(tempfile.mkdtemp(prefix="kgen-test-db-"), "tuning.sqlite")


def load_benchmark(name: str):
    """lab/NAME.py as a module: the lab scripts are scripts, not a package."""
    lab = Path(__file__).resolve().parent.parent / "lab"
    if str(lab) not in sys.path:
        sys.path.insert(0, str(lab))  # as when run: the script's folder first (lab/harness.py)
    path = lab / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_validation_errors():
    """Under KGEN_VALIDATION=1 (make test), a validation-layer error fails the test that made it."""
    yield
    if knobs.get("KGEN_VALIDATION"):
        from kgen.runtime import vk
        errors = vk.validation_errors()
        assert not errors, "Vulkan validation errors:\n" + "\n".join(errors[:5])


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """A module's own SPIR-V and pipeline cache root (KGEN_CACHE_DIR), so cache tests start empty."""
    root = tmp_path_factory.mktemp("kgen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGEN_CACHE_DIR", str(root / "spirv"))
        yield root


@pytest.fixture
def fresh_discovery():
    """Compiler discovery is cached per process: forget it around a test that changes the overrides."""
    from kgen import toolchain
    toolchain.find_compiler.cache_clear()
    yield
    toolchain.find_compiler.cache_clear()
