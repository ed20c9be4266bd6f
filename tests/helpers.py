"""Helpers that test files in tests/unit/ and tests/device/ share (not a test module).

tests/ is on sys.path (conftest.py's folder), so a test file in either folder imports these
as `from helpers import ...`.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the repository


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m kgen.cli ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kgen.cli", *args], capture_output=True, text=True, cwd=ROOT)


def make_paged_problem(rng, *, bs, lens, q_lens, hkv, hq, dk, dv, t, share, spare_pages=0, spare_columns=0):
    """(q, k pages NHD, v pages, table, seq_lens, cu_seqlens_q): pages shuffled, each used once,
    except that with `share` sequence 1 reads sequence 0's pages for its common prefix."""
    need = [-(-n // bs) for n in lens]
    max_blocks = max(need + [1]) + spare_columns
    num_blocks = max(sum(need), 1) + spare_pages
    order = rng.permutation(num_blocks).astype(np.int32)
    table = np.full((len(lens), max_blocks), -1, np.int32)     # unused entries: vLLM's padding
    at = 0
    for b, k in enumerate(need):
        table[b, :k] = order[at:at + k]
        at += k
    if share:
        table[1, :min(need[0], need[1])] = table[0, :min(need[0], need[1])]
    from kgen import quant
    k_pages = quant.roundtrip(rng.standard_normal((num_blocks, bs, hkv, dk)), t)
    v_pages = quant.roundtrip(rng.standard_normal((num_blocks, bs, hkv, dv)), t)
    q = rng.standard_normal((sum(q_lens), hq, dk))
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return q, k_pages, v_pages, table, np.array(lens, np.int32), cu
