"""Each code path, forced, against the reference: the matrix the GPU verification runs.

On a device without a path (lavapipe has no cooperative matrices) forcing it must fail with a
clear error naming the path; where the path exists, every case must pass. `KGEN_DEVICE`
picks the device, so the same file verifies an H100 (see README: GPU verification).
"""
import itertools
import zlib

import numpy as np
import pytest

import kgen
from kgen.errors import KgenError
from kgen.paths import path_spec
from kgen.runtime import open_device

from test_attention import check, make_inputs

HEADS = [(64, 64), (128, 128), (256, 256), (576, 512)]
KV = ["f16", "q8_0", "q4_0"]
CASES = list(itertools.product(HEADS, KV, ["f32", "f16"]))


def case_id(case):
    (dk, dv), kv, precision = case
    return f"k{dk}v{dv}-{kv}-{precision}"


@pytest.mark.parametrize("path", ["scalar", "coopmat1", "coopmat2"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_path_case(path, case):
    (dk, dv), kv, precision = case
    rng = np.random.default_rng(zlib.crc32(case_id(case).encode()))
    # GQA 2, Nq > Nkv (causal leaves the first rows empty), a mask with -inf blocks.
    q, k, v = make_inputs(rng, 1, 4, 2, 48, 40, dk, dv)
    mask = rng.standard_normal((48, 40)).astype(np.float32)
    mask[:16, 8:24] = -np.inf
    mask[30] = -np.inf
    kw = dict(mask=mask, causal=True, k_type=kv, v_type=kv, precision=precision)
    reason = path_spec(path).supports(open_device(None).caps)
    if reason is not None:
        with pytest.raises(KgenError, match=path):
            kgen.attention(q, k, v, path=path, **kw)
        return
    with kgen.plan(q, k, v, path=path, **kw) as p:
        assert p.variant.path.value == path
        out = p(q, k, v, mask=mask)
    check(out, q, k, v, mask=mask, causal=True, k_type=kv, v_type=kv)
    assert np.all(out[:, :, :8] == 0)  # rows 0-7 see no key (Nq - Nkv = 8)
    assert np.all(out[:, :, 30] == 0)  # a fully masked row
