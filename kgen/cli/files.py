"""Reading a JSON file an option names, with one-line errors that name the option."""
from __future__ import annotations

import json
from pathlib import Path


def read_json_option(option: str, name: str):
    """The JSON in file `name`, or a ValueError naming `option` and why it cannot be read."""
    try:
        return json.loads(Path(name).read_text())
    except OSError as exc:
        raise ValueError(f"{option} {name}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:   # RecursionError: absurdly nested JSON
        raise ValueError(f"{option} {name}: not JSON ({str(exc)[:200]})") from None
