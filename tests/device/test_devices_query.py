"""Device query (`runtime.devices`) on a real Vulkan device (lavapipe in CI): its Caps record and
text form. The Caps record without a device is tests/unit/test_devices.py.
"""
from __future__ import annotations

import pytest

from kgen.caps import Caps
from kgen.tools.devices_report import format_caps


@pytest.fixture(scope="module")
def devices() -> list[Caps]:
    from kgen.runtime.devices import list_devices
    return list_devices()


@pytest.fixture(scope="module")
def lavapipe(devices: list[Caps]) -> Caps:
    found = [c for c in devices if "llvmpipe" in c.name and c.device_type == "cpu"]
    assert found, f"no lavapipe among {[c.name for c in devices]}: run scripts/bootstrap.sh"
    return found[0]


# --- a real device -----------------------------------------------------------------------------

def test_lavapipe_is_listed_with_sane_values(lavapipe: Caps) -> None:
    sg = lavapipe.subgroup_size
    assert sg >= 4 and sg & (sg - 1) == 0
    assert lavapipe.min_subgroup_size <= sg <= lavapipe.max_subgroup_size
    assert lavapipe.max_shared_memory >= 16384
    assert lavapipe.api_version.startswith("1.")
    assert len(lavapipe.pipeline_cache_uuid) == 32 and int(lavapipe.pipeline_cache_uuid, 16) >= 0
    assert lavapipe.driver_name and lavapipe.max_workgroup_invocations >= 128
    assert lavapipe.extensions == tuple(sorted(lavapipe.extensions))
    assert not lavapipe.coopmat_shapes and not lavapipe.has_coopmat2  # lavapipe lists neither


def test_list_devices_is_repeatable(devices: list[Caps]) -> None:
    from kgen.runtime.devices import list_devices
    assert list_devices() == devices  # each call makes and destroys its own instance


def test_real_caps_round_trip(lavapipe: Caps) -> None:
    assert Caps.from_json(lavapipe.to_json()) == lavapipe


def test_format_caps_mentions_name_and_shared_memory(lavapipe: Caps) -> None:
    text = format_caps(lavapipe)
    assert lavapipe.name in text and str(lavapipe.max_shared_memory) in text
