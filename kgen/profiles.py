"""Capability records of reference devices, for work that needs no device: `kgen generate` renders
its checked-in set for these, and tests use them. Each file under kgen/data/ is what
`kgen devices --json` printed on that machine (the H100 of ../shared/device, and lavapipe)."""
from __future__ import annotations

import json
from pathlib import Path

from .caps import Caps

_DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> Caps:
    path = _DATA / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in _DATA.glob("*.json"))
        raise ValueError(f"no device profile {name!r}; known: {', '.join(known)}")
    return Caps.from_dict(json.loads(path.read_text()))


H100 = load("h100")
LAVAPIPE = load("lavapipe")
PROFILES = {"h100": H100, "lavapipe": LAVAPIPE}
