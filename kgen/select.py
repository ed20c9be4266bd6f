"""Which device kgen uses: KGEN_DEVICE (an index or a name substring), else the best kind."""
from __future__ import annotations

from . import knobs
from .caps import Caps

# Lower is preferred: a GPU before the CPU fallback (lavapipe).
DEVICE_TYPE_RANK = {"discrete": 0, "integrated": 1, "virtual": 2, "other": 3, "cpu": 4}


def default_index(devices: list[Caps], wanted: str | None = None) -> int:
    if not devices:
        raise LookupError("no Vulkan device found: install a driver (lavapipe: mesa-vulkan-drivers)")
    wanted = wanted if wanted is not None else knobs.get("KGEN_DEVICE")
    if wanted is None:
        return min(range(len(devices)), key=lambda i: (DEVICE_TYPE_RANK.get(devices[i].device_type, 3), i))
    if wanted.strip().isdigit():
        index = int(wanted)
        if not 0 <= index < len(devices):
            raise LookupError(f"KGEN_DEVICE={wanted}: there are {len(devices)} device(s), "
                              f"indices 0-{len(devices) - 1}")
        return index
    matches = [i for i, d in enumerate(devices) if wanted.lower() in d.name.lower()]
    if not matches:
        names = ", ".join(d.name for d in devices)
        raise LookupError(f"KGEN_DEVICE={wanted!r} matches no device name; devices: {names}")
    return matches[0]
