"""Inputs at the edge of their storage types on a device: masks with an engine's large finite
negatives match the float64 reference (they saturate at -65504, as the C dispatcher's f32-mask
pass does), values the storage type cannot hold are refused by name, and a refused call leaves
the plan's buffers as the last good call wrote them."""
from __future__ import annotations

import numpy as np
import pytest

import kgen
from kgen import reference
from kgen.quant import roundtrip

NMSE_MAX = 5e-4
B, HQ, HKV, NQ, NKV, D = 1, 2, 1, 5, 40, 64


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, HQ, NQ, D)).astype(np.float32),
            rng.standard_normal((B, HKV, NKV, D)).astype(np.float32),
            rng.standard_normal((B, HKV, NKV, D)).astype(np.float32))


def _check(out, q, k, v, **kw):
    ref = reference.attention(q, roundtrip(k, "f16"), roundtrip(v, "f16"), **kw)
    assert np.isfinite(out).all()
    assert reference.nmse(out, ref) <= NMSE_MAX


F16_MAX = 65504.0


def _mask(seed: int, hidden: float) -> np.ndarray:
    """Random finite values with `hidden` on about 40% of keys, and all of row 1."""
    rng = np.random.default_rng(seed)
    mask = np.where(rng.random((NQ, NKV)) < 0.4, hidden, rng.standard_normal((NQ, NKV)))
    mask[:, 0] = 0.0
    mask[1] = hidden
    return mask


@pytest.mark.parametrize("hidden", [-1e30, float(np.finfo(np.float32).min), -1e5])
def test_mask_values_below_f16_act_as_minus_65504(hidden):
    q, k, v = _inputs(0)
    mask = _mask(1, hidden)
    out = kgen.attention(q, k, v, mask=mask)
    # The documented meaning: as if clipped at -65504. A row hidden entirely then weighs its keys
    # by score alone, as the C dispatcher's f32-mask pass gives, not the -inf rule's zero row.
    _check(out, q, k, v, mask=np.maximum(mask, -F16_MAX))
    assert np.abs(out[:, :, 1]).max() > 0.01
    as_inf = kgen.attention(q, k, v, mask=np.where(mask == hidden, -np.inf, mask))
    rows = [r for r in range(NQ) if r != 1]
    np.testing.assert_allclose(out[:, :, rows], as_inf[:, :, rows], rtol=0, atol=1e-6)


def test_alibi_with_saturated_mask_matches_the_reference():
    q, k, v = _inputs(2)
    mask = _mask(3, -1e30)
    out = kgen.attention(q, k, v, mask=mask, alibi_max_bias=8.0)
    _check(out, q, k, v, mask=np.maximum(mask, -F16_MAX), alibi_max_bias=8.0)


def test_the_largest_alibi_max_bias_keeps_minus_inf_keys_hidden():
    """At alibi_max_bias=126 the smallest slope is 2^-126, still a normal f32: slope x -inf is
    -inf, never NaN. Past it the call is refused (tests/unit/test_input_limits.py)."""
    q, k, v = _inputs(4)
    mask = _mask(5, -np.inf)
    mask[1, :3] = 0.0   # row 1 sees three keys
    out = kgen.attention(q, k, v, mask=mask, alibi_max_bias=126.0)
    _check(out, q, k, v, mask=mask, alibi_max_bias=126.0)


def test_refused_call_leaves_the_last_good_inputs_in_place():
    q, k, v = _inputs(3)
    q2, _, _ = _inputs(4)
    mask = np.zeros((NQ, NKV))
    with kgen.plan(q, k, v, mask=mask) as p:
        good = p(q, k, v, mask=mask)
        _check(good, q, k, v, mask=mask)
        bad_k = k.copy()
        bad_k[0, 0, 7, 3] = np.nan
        overflow_v = v * 1e5
        big_mask = mask.copy()
        big_mask[2, 2] = 1e5
        for args, kwargs, match in [((q2, bad_k, v), dict(mask=mask), r"^k has NaN or Inf values \(k\[0, 0, 7, 3\]=nan\)"),
                                    ((q2, k, overflow_v), dict(mask=mask), r"^v\[0, 0, \d+, \d+\]=.* is beyond f16's range"),
                                    ((q2, k, v), dict(mask=big_mask), r"^mask\[2, 2\]=100000 is beyond f16's range")]:
            with pytest.raises(ValueError, match=match):
                p(*args, **kwargs)
            p.run_device()
            np.testing.assert_array_equal(p.result(), good)   # q2 never went up


def test_values_f16_cannot_hold_run_when_stored_as_f32():
    q, k, v = _inputs(5)
    k, v = k * 7e4, v * 7e4
    with pytest.raises(ValueError, match=r"^k\[.*beyond f16's range \(at most 65504"):
        kgen.attention(q, k, v)
    out = kgen.attention(q, k, v, k_type="f32", v_type="f32", scale=1 / (7e4 * 8))
    ref = reference.attention(q, k, v, scale=1 / (7e4 * 8))
    assert reference.nmse(out, ref) <= NMSE_MAX


def test_quantized_kv_beyond_its_scale_and_nan_scales_are_refused():
    q, k, v = _inputs(6)
    with pytest.raises(ValueError, match=r"^k\[0, 0, 0, 0:32\] holds values up to .* q8_0 block's f16 scale d"):
        kgen.attention(q, k * 1e7, v, k_type="q8_0")
    kt = kgen.KVTensor.from_array(k, "q8_0")
    raw = np.frombuffer(kt.raw, np.uint8).copy()
    raw[34 * 2 * 9:34 * 2 * 9 + 2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)   # row 9's d
    bad = kgen.KVTensor(raw.tobytes(), "q8_0", kt.shape, kt.strides)
    with pytest.raises(ValueError, match=r"^k: KVTensor.data holds a NaN or Inf scale d at batch 0, head 0, row 9, block 0"):
        kgen.attention(q, bad, v)
    out = kgen.attention(q, kt, v)
    ref = reference.attention(q, roundtrip(k, "q8_0"), roundtrip(v, "f16"))
    assert reference.nmse(out, ref) <= NMSE_MAX


def test_plan_takes_a_variant_uri():
    q, k, v = _inputs(7)
    with kgen.plan(q, k, v) as chosen:
        uri = chosen.variant.uri
    with kgen.plan(q, k, v, variant=uri) as p:
        assert p.variant.uri == uri
        _check(p(q, k, v), q, k, v)
