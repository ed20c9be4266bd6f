"""Helpers that test files in tests/unit/ and tests/device/ share (not a test module).

tests/ is on sys.path (conftest.py's folder), so a test file in either folder imports these
as `from helpers import ...`.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m kgen.cli ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kgen.cli", *args], capture_output=True, text=True, cwd=ROOT)
