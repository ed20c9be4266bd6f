"""Reading a JSON file a command line names, with one-line errors that name the file (and the
option that gave it)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read_json(name: str, *, option: str | None = None, stdin: bool = False):
    """The JSON in file `name` (`-` for standard input where `stdin`), or a ValueError that
    names `option` and the file and says why it cannot be read."""
    where = f"{option} {name}" if option else name
    try:
        text = sys.stdin.read() if stdin and name == "-" else Path(name).read_text()
        return json.loads(text)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is one; RecursionError: absurd nesting
        raise ValueError(f"{where} is not JSON ({str(exc)[:200]})") from None


def read_json_option(option: str, name: str):
    """The JSON in file `name` given to `option` (read_json)."""
    return read_json(name, option=option)
