"""The command line as a user runs it: the commands that query the Vulkan devices (lavapipe in
CI). The rest of the command line is tests/unit/test_cli.py."""
import json

from helpers import run_cli
from kgen.caps import Caps


def test_devices_json_lists_lavapipe_and_round_trips():
    result = run_cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    caps = [Caps.from_dict(r) for r in records]
    assert any("llvmpipe" in c.name and c.device_type == "cpu" for c in caps)
    assert all(Caps.from_json(c.to_json()) == c for c in caps)


def test_devices_text_names_the_limits():
    result = run_cli("devices")
    assert result.returncode == 0 and "llvmpipe" in result.stdout and "shared" in result.stdout

