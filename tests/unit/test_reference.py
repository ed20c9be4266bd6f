"""The float64 reference (kgen.reference) and the ggml-compatible quantizers (kgen.quant).

Each is checked against an independent, deliberately naive implementation: attention by a
per-(b, h, i) loop in Python floats; the quantizers by scalar ports of ggml's C loops in numpy
float32 scalars, with Python's struct doing the f16 packing.
"""
from __future__ import annotations

import contextlib
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kgen import quant, reference
from kgen.reference import alibi_slopes, attention, nmse
from kgen.types import KvType

F = np.float32


# === attention: naive loop =====================================================================
def naive_attention(q, k, v, *, mask=None, causal=False, window=None, scale=None, softcap=0.0,
                    alibi_max_bias=0.0, sinks=None):
    B, Hq, Nq, Dk = q.shape
    Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(Dk) if scale is None else scale
    full = np.broadcast_to(mask, (B, Hq, Nq, Nkv)) if mask is not None else None
    out = np.zeros((B, Hq, Nq, Dv))
    n2 = 2 ** int(math.floor(math.log2(Hq)))
    for b in range(B):
        for h in range(Hq):
            hk = h * Hkv // Hq
            if alibi_max_bias > 0:
                base = 2 ** (-alibi_max_bias / n2) if h < n2 else 2 ** (-alibi_max_bias / (2 * n2))
                slope = base ** (h + 1) if h < n2 else base ** (2 * (h - n2) + 1)
            else:
                slope = 1.0
            for i in range(Nq):
                logits, rows = [], []
                for j in range(Nkv):
                    behind = i + (Nkv - Nq) - j         # distance back from the diagonal
                    if (causal or window) and behind < 0:
                        continue
                    if window and behind >= window:
                        continue
                    s = scale * sum(float(q[b, h, i, d]) * float(k[b, hk, j, d]) for d in range(Dk))
                    if softcap:
                        s = softcap * math.tanh(s / softcap)
                    if full is not None:
                        mv = full[b, h, i, j]
                        if full.dtype == bool:
                            if not mv:
                                continue
                        elif mv == -math.inf:
                            continue
                        else:
                            s += slope * float(mv)
                    logits.append(s)
                    rows.append(v[b, hk, j])
                if not logits:
                    continue
                top = max(logits + ([float(sinks[h])] if sinks is not None else []))
                w = [math.exp(s - top) for s in logits]
                den = sum(w) + (math.exp(float(sinks[h]) - top) if sinks is not None else 0.0)
                out[b, h, i] = sum(wj * r for wj, r in zip(w, rows)) / den
    return out


@st.composite
def problems(draw):
    """Small attention problems with every feature, as (q, k, v, kwargs)."""
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 3))
    Hq = Hkv * draw(st.integers(1, 3))
    Nq, Nkv = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    Dk, Dv = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    amp = draw(st.sampled_from([0.3, 1.0, 4.0]))
    q = rng.standard_normal((B, Hq, Nq, Dk)) * amp
    k = rng.standard_normal((B, Hkv, Nkv, Dk)) * amp
    v = rng.standard_normal((B, Hkv, Nkv, Dv))
    kw = {"causal": draw(st.booleans()),
          "window": draw(st.one_of(st.none(), st.integers(1, 8))),
          "scale": draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
          "softcap": draw(st.sampled_from([0.0, 0.7, 5.0])),
          "alibi_max_bias": draw(st.sampled_from([0.0, 1.0, 8.0]))}
    mask_kind = draw(st.sampled_from(["none", "float", "bool"]))
    if mask_kind != "none":
        shape = draw(st.sampled_from([(Nq, Nkv), (1, 1, Nq, Nkv), (B, 1, Nq, Nkv), (B, Hq, Nq, Nkv)]))
        hide = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.8]))
        if mask_kind == "bool":
            kw["mask"] = ~hide
        else:
            kw["mask"] = np.where(hide, -np.inf, rng.standard_normal(shape))
    if draw(st.booleans()):
        kw["sinks"] = rng.standard_normal(Hq) * 2
    return q, k, v, kw


@settings(max_examples=200)
@given(problems())
def test_attention_matches_naive_loop(problem):
    q, k, v, kw = problem
    out = attention(q, k, v, **kw)
    assert out.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[3]) and out.dtype == np.float64
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, naive_attention(q, k, v, **kw), rtol=1e-11, atol=1e-12)


@contextlib.contextmanager
def chunk_elems(n):
    """Temporarily stream attention() in chunks of `n` scores."""
    old, reference._CHUNK_ELEMS = reference._CHUNK_ELEMS, n
    try:
        yield
    finally:
        reference._CHUNK_ELEMS = old


@settings(max_examples=30)
@given(problems(), st.sampled_from([1, 7, 40]))
def test_chunked_equals_whole(problem, chunk):
    q, k, v, kw = problem
    whole = attention(q, k, v, **kw)
    with chunk_elems(chunk):
        np.testing.assert_allclose(attention(q, k, v, **kw), whole, rtol=1e-13, atol=1e-15)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_fully_masked_rows_are_zero_even_with_sinks():
    q, k, v = _rand(1, 2, 4, 8), _rand(1, 1, 5, 8, seed=1), _rand(1, 1, 5, 8, seed=2)
    mask = np.ones((4, 5), bool)
    mask[1] = False
    fmask = np.where(mask, 0.0, -np.inf)
    for kw in ({"mask": mask}, {"mask": fmask}, {"mask": mask, "sinks": np.array([0.5, -3.0])}):
        out = attention(q, k, v, **kw)
        assert (out[:, :, 1] == 0).all() and (np.abs(out[:, :, [0, 2, 3]]) > 0).any()


def test_causal_with_more_queries_than_keys_has_no_nan():
    Nq, Nkv = 7, 3
    out = attention(_rand(2, 2, Nq, 4), _rand(2, 2, Nkv, 4, seed=1), _rand(2, 2, Nkv, 4, seed=2),
                    causal=True)
    assert np.isfinite(out).all()
    assert (out[:, :, :Nq - Nkv] == 0).all()              # rows before the first key see nothing
    assert (np.abs(out[:, :, Nq - Nkv:]) > 0).all()


def test_window_keeps_w_keys_ending_at_the_diagonal():
    Nq, Nkv, W = 3, 6, 2
    v = np.eye(Nkv)[None, None]                            # out row = the softmax weights
    out = attention(np.zeros((1, 1, Nq, 4)), np.zeros((1, 1, Nkv, 4)), v, causal=True, window=W)
    for i in range(Nq):
        last = i + Nkv - Nq
        expect = np.zeros(Nkv)
        expect[last - W + 1:last + 1] = 1 / W
        np.testing.assert_allclose(out[0, 0, i], expect, atol=1e-15)
    # decision: a window implies the causal bound
    np.testing.assert_array_equal(attention(np.zeros((1, 1, Nq, 4)), np.zeros((1, 1, Nkv, 4)), v,
                                            window=W), out)


def test_sinks_shrink_every_row_by_one_factor():
    q, k = _rand(1, 3, 4, 8), _rand(1, 3, 6, 8, seed=1)
    v = np.abs(_rand(1, 3, 6, 5, seed=2)) + 0.1
    plain = attention(q, k, v)
    sunk = attention(q, k, v, sinks=np.array([-1.0, 0.0, 3.0]))
    ratio = sunk / plain
    assert (ratio < 1).all() and (ratio > 0).all()
    np.testing.assert_allclose(ratio, ratio[..., :1].repeat(5, axis=-1), rtol=1e-12)
    assert (ratio[0, 2] < ratio[0, 0]).all()               # a larger sink takes more mass


def test_softcap_bounds_scores():
    c, Nkv = 0.5, 6
    q, k = _rand(1, 1, 3, 8) * 30, _rand(1, 1, Nkv, 8, seed=1) * 30
    p = attention(q, k, np.eye(Nkv)[None, None], softcap=c)[0, 0]   # softmax weights
    logit = np.log(p)
    assert (logit.max(-1) - logit.min(-1) <= 2 * c + 1e-12).all()
    raw = (q[0, 0] @ k[0, 0].T) / math.sqrt(8)
    capped = c * np.tanh(raw / c)
    np.testing.assert_allclose(logit - logit[:, :1], capped - capped[:, :1], atol=1e-12)


def test_bool_mask_equals_float_mask():
    rng = np.random.default_rng(3)
    q, k, v = _rand(2, 4, 5, 8), _rand(2, 2, 7, 8, seed=1), _rand(2, 2, 7, 3, seed=2)
    keep = rng.random((2, 1, 5, 7)) < 0.6
    kw = {"causal": True, "alibi_max_bias": 8.0, "sinks": np.zeros(4)}
    np.testing.assert_array_equal(attention(q, k, v, mask=keep, **kw),
                                  attention(q, k, v, mask=np.where(keep, 0.0, -np.inf), **kw))


def test_alibi_slopes_known_values():
    np.testing.assert_allclose(alibi_slopes(8, 8.0), 2.0 ** -np.arange(1, 9), rtol=1e-15)
    tail = 2.0 ** -np.array([0.5, 1.5, 2.5, 3.5])          # 12 heads: odd powers of m1 = 2^-0.5
    np.testing.assert_allclose(alibi_slopes(12, 8.0), np.r_[2.0 ** -np.arange(1, 9), tail], rtol=1e-15)
    assert (alibi_slopes(5, 0.0) == 1).all()


def test_nmse():
    ref = np.array([1.0, -2.0, 2.0])
    assert nmse(ref, ref) == 0
    assert nmse(ref * 1.1, ref) == pytest.approx(0.01)
    assert nmse(np.array([0.0, 3.0]), np.zeros(2)) == 9.0  # zero ref: the output's energy
    assert nmse(np.array([np.nan, 0.0]), np.zeros(2)) == math.inf
    with pytest.raises(ValueError, match="shape"):
        nmse(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("change, match", [
    ({"q": _rand(1, 3, 2, 4)}, r"Hq=3 is not a multiple of Hkv=2"),
    ({"k": _rand(1, 2, 5, 6)}, r"k has Dk=6, q has Dk=4"),
    ({"v": _rand(1, 2, 4, 3)}, r"v has \(2, 4\)"),
    ({"q": _rand(2, 2, 2, 4)}, r"batch sizes differ"),
    ({"q": _rand(2, 4)}, r"q has shape \(2, 4\): expected 4 dimensions"),
    ({"window": 0}, r"window=0: must be an integer >= 1"),
    ({"softcap": -1.0}, r"softcap=-1.0: must be finite and >= 0"),
    ({"sinks": np.zeros(3)}, r"sinks has shape \(3,\): expected \(2,\)"),
    ({"mask": np.zeros((2, 6))}, r"mask has shape \(2, 6\): it must broadcast to \(B, Hq, Nq, Nkv\)"),
    ({"mask": np.full((2, 5), np.nan)}, r"mask has NaN or \+inf"),
    ({"alibi_max_bias": -1.0}, r"alibi_max_bias=-1.0: must be finite and >= 0"),
    ({"q": np.full((1, 2, 2, 4), np.inf)}, r"q has non-finite values"),
])
def test_invalid_inputs_name_the_argument(change, match):
    args = {"q": _rand(1, 2, 2, 4), "k": _rand(1, 2, 5, 4), "v": _rand(1, 2, 5, 3)} | change
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **args)


def test_large_problem_streams_in_bounded_memory():
    # B*Hq*Nq*Nkv = 1e8 scores: the full matrix would be 800 MB; chunks keep it to tens of MB.
    import tracemalloc
    q, k, v = _rand(1, 4, 5000, 8), _rand(1, 1, 5000, 8, seed=1), _rand(1, 1, 5000, 8, seed=2)
    tracemalloc.start()
    out = attention(q[:, :, :500], k, v, causal=True)   # 1e7 scores, enough to cross chunks
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isfinite(out).all() and peak < 200e6


# === quantizers: scalar ports of ggml's reference loops =======================================
def _f16_bytes(x) -> bytes:
    return struct.pack("<e", float(x))                     # Python rounds to nearest even


def _roundf(z) -> int:
    return int(math.copysign(math.floor(abs(float(z)) + 0.5), float(z)))


def _signed_max(x):
    amax, mx = F(0), F(0)
    for v in x:
        if amax < abs(v):
            amax, mx = abs(v), v
    return mx


def _qs(codes) -> bytes:
    return bytes((codes[j] & 15) | ((codes[j + 16] & 15) << 4) for j in range(16))


def _qh(codes) -> bytes:
    return struct.pack("<I", sum(((c >> 4) & 1) << j for j, c in enumerate(codes)))


def ggml_q8_0(x):
    amax = F(0)
    for v in x:
        amax = max(amax, abs(v))
    d = amax / F(127)
    inv = F(1) / d if d else F(0)
    return _f16_bytes(d) + struct.pack("<32b", *(_roundf(v * inv) for v in x))


def ggml_sym(bits):
    half = 1 << (bits - 1)

    def block(x):
        d = _signed_max(x) / F(-half)
        inv = F(1) / d if d else F(0)
        codes = [min(2 * half - 1, int(v * inv + F(half + 0.5))) for v in x]
        return _f16_bytes(d) + (_qh(codes) if bits == 5 else b"") + _qs(codes)
    return block


def ggml_affine(bits):
    top = (1 << bits) - 1

    def block(x):
        lo, hi = F(np.finfo(F).max), F(-np.finfo(F).max)
        for v in x:
            lo, hi = min(lo, v), max(hi, v)
        d = (hi - lo) / F(top)
        inv = F(1) / d if d else F(0)
        codes = [min(top, int((v - lo) * inv + F(0.5))) for v in x]
        return _f16_bytes(d) + _f16_bytes(lo) + (_qh(codes) if bits == 5 else b"") + _qs(codes)
    return block


_KV = [F(v) for v in quant.IQ4NL_VALUES]


def _best_index(x):
    if x <= _KV[0]:
        return 0
    if x >= _KV[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < _KV[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if x - _KV[hi - 1] < _KV[hi] - x else hi


def ggml_iq4_nl(ntry):
    def sums(x, inv):
        sqx = sq2 = F(0)
        for v in x:
            qv, w = _KV[_best_index(inv * v)], v * v
            sqx, sq2 = sqx + w * qv * v, sq2 + w * qv * qv
        return sqx, sq2

    def block(x):
        mx = _signed_max(x)
        if abs(mx) < F(1e-15):
            return _f16_bytes(0) + bytes([0x88 if ntry > 0 else 0] * 16)
        d = (-mx if ntry > 0 else mx) / _KV[0]
        sqx, sq2 = sums(x, F(1) / d)
        d = sqx / sq2 if sq2 > 0 else F(0)
        codes = [_best_index((F(1) / ((-mx if ntry > 0 else mx) / _KV[0])) * v) for v in x]
        best = d * sqx
        for itry in range(-ntry, ntry + 1):
            tqx, tq2 = sums(x, F(itry - 127) / mx)
            if tq2 > 0 and tqx * tqx > best * tq2:
                d = tqx / tq2
                best = d * tqx
        if ntry > 0:
            inv = F(1) / d if d else F(0)
            codes = [_best_index(inv * v) for v in x]
        return _f16_bytes(d) + _qs(codes)
    return block


GGML_BLOCK = {KvType.Q8_0: ggml_q8_0, KvType.Q4_0: ggml_sym(4), KvType.Q5_0: ggml_sym(5),
              KvType.Q4_1: ggml_affine(4), KvType.Q5_1: ggml_affine(5),
              KvType.IQ4_NL: ggml_iq4_nl(-1)}
BLOCK_TYPES = [t for t in KvType if t.quantized]


def _ggml_row(t, x, block=None):
    x = np.asarray(x, F)
    x = np.concatenate([x, np.zeros(-len(x) % 32, F)])
    block = block or GGML_BLOCK[t]
    return np.frombuffer(b"".join(block(list(x[i:i + 32])) for i in range(0, len(x), 32)), np.uint8)


@st.composite
def rows(draw, width=st.sampled_from([8, 32, 40, 64, 96])):
    """(n_rows, n) float32 rows of assorted shape: gaussian, uniform, one-signed, ties, zeros."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 4)), draw(width))
    kind = draw(st.sampled_from(["normal", "uniform", "positive", "ties", "sparse"]))
    x = {"normal": lambda: rng.standard_normal(shape),
         "uniform": lambda: rng.uniform(-1, 1, shape),
         "positive": lambda: rng.uniform(0.5, 2, shape),
         "ties": lambda: rng.integers(-4, 5, shape) / 4.0,
         "sparse": lambda: rng.standard_normal(shape) * (rng.random(shape) < 0.1)}[kind]()
    return (x * 10.0 ** draw(st.integers(-3, 3))).astype(F)


@settings(max_examples=150)
@given(rows(), st.sampled_from(BLOCK_TYPES))
def test_block_bytes_match_ggml_scalar_loops(x, t):
    got = quant.quantize(x, t)
    assert got.shape == (x.shape[0], quant.row_bytes(t, x.shape[1]))
    for r in range(x.shape[0]):
        np.testing.assert_array_equal(got[r], _ggml_row(t, x[r]), err_msg=f"{t} row {r}")


@settings(max_examples=25)
@given(rows(st.sampled_from([32, 40])))
def test_iq4_nl_search_matches_ggml_model_quantizer(x):
    got = quant.quantize(x, "iq4_nl", iq4_nl_search=True)
    for r in range(x.shape[0]):
        np.testing.assert_array_equal(got[r], _ggml_row(KvType.IQ4_NL, x[r], ggml_iq4_nl(7)))


def _f16_err(a: np.ndarray) -> np.ndarray:
    """Largest error of storing `a` as f16: half an ulp (2^-11 relative, 2^-25 when subnormal)."""
    return np.maximum(np.abs(a) * 2.0 ** -11, 2.0 ** -25)


def _err_bound(t: KvType, xb: np.ndarray) -> np.ndarray:
    """Per-block max |x - dequant(x)| the format promises: the rounding of one step (a full step
    where q4_0/q5_0 clamp the end opposite the largest magnitude) plus |code| times the f16
    error of the stored scale (and of the stored min)."""
    amax, lo, hi = np.abs(xb).max(-1), xb.min(-1), xb.max(-1)
    if t in (KvType.Q4_1, KvType.Q5_1):
        top = 15 if t is KvType.Q4_1 else 31
        d = (hi - lo) / top
        return 0.5 * d + top * _f16_err(d) + _f16_err(lo)
    half, frac = {KvType.Q8_0: (127, 0.5), KvType.Q4_0: (8, 1.0), KvType.Q5_0: (16, 1.0)}[t]
    d = amax / half
    return frac * d + (half + 1) * _f16_err(d)


@settings(max_examples=100)
@given(rows(), st.sampled_from([KvType.Q8_0, KvType.Q4_0, KvType.Q5_0, KvType.Q4_1, KvType.Q5_1]))
def test_roundtrip_error_within_half_a_step(x, t):
    y = quant.roundtrip(x, t)
    n = x.shape[1]
    xb = quant._to_blocks(x, t).astype(np.float64)
    err = np.abs(np.concatenate([y, np.zeros((len(y), -n % 32))], -1).reshape(xb.shape) - xb)
    assert (err.max(-1) <= _err_bound(t, xb) * (1 + 1e-6) + 1e-30).all()


@settings(max_examples=20)
@given(rows())
def test_float_type_roundtrip(x):
    assert (quant.roundtrip(x, "f32") == x).all()
    ax = np.abs(x.astype(np.float64))
    assert (np.abs(quant.roundtrip(x, "f16") - x) <= np.maximum(ax * 2.0 ** -11, 2.0 ** -25)).all()
    assert (np.abs(quant.roundtrip(x, "bf16") - x) <= ax * 2.0 ** -8).all()


def test_iq4_nl_error_is_4_bit_class():
    x = np.random.default_rng(5).standard_normal((64, 128)).astype(F)
    e_ref = nmse(quant.roundtrip(x, "iq4_nl"), x)
    e_search = nmse(quant.roundtrip(x, "iq4_nl", iq4_nl_search=True), x)
    e_q4 = nmse(quant.roundtrip(x, "q4_0"), x)
    assert e_search <= e_ref < e_q4 < 0.02


# --- exact bytes of hand-made blocks ----------------------------------------------------------
ONE, TWO = [0x00, 0x3C], [0x00, 0x40]                      # f16 1.0 and 2.0, little-endian
DOWN_UP = [j | ((15 - j) << 4) for j in range(16)]          # codes j, then 15 - j


def _hand_rows():
    j = np.arange(16)
    yield "q4_0", np.r_[j - 8, 7 - j], ONE + DOWN_UP         # max -8 -> d = 1, codes x + 8
    yield "q4_1", np.r_[1 + j, 16 - j], ONE + ONE + DOWN_UP  # min 1, max 16 -> d = 1, m = 1
    same = [j | (j << 4) for j in range(16)]
    yield "q5_0", np.arange(32) - 16, ONE + [0, 0, 0xFF, 0xFF] + same   # codes 0..31
    yield "q5_1", np.arange(32) + 2.0, ONE + TWO + [0, 0, 0xFF, 0xFF] + same
    yield "iq4_nl", np.r_[quant.IQ4NL_VALUES, quant.IQ4NL_VALUES[::-1]], ONE + DOWN_UP
    x8 = np.r_[-127, 126.5, -0.5, 0.5, 2.5, -2.5, 1.49, np.zeros(25)]   # roundf: half away from 0
    yield "q8_0", x8, ONE + [b & 0xFF for b in [-127, 127, -1, 1, 3, -3, 1] + [0] * 25]


@pytest.mark.parametrize("t, x, expect", list(_hand_rows()), ids=lambda a: a if isinstance(a, str) else "")
def test_hand_made_block_bytes(t, x, expect):
    raw = quant.quantize(np.asarray(x, F), t)
    assert raw.tolist() == expect
    if t != "q8_0":
        np.testing.assert_array_equal(quant.dequantize(raw, t, 32), x)   # exactly on the grid


def test_q4_0_ties_go_to_the_first_largest_magnitude():
    x = np.zeros(32, F)
    x[3], x[9] = 2.0, -2.0                                    # same |x|: ggml keeps the first
    assert quant.blocks(quant.quantize(x, "q4_0"), "q4_0")["d"][0] == -0.25


@pytest.mark.parametrize("t", BLOCK_TYPES + [KvType.F16, KvType.BF16, KvType.F32])
def test_forty_wide_rows_are_zero_padded(t):
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(F)
    raw = quant.quantize(x, t)
    assert raw.shape == (3, quant.row_bytes(t, 40))
    assert quant.row_bytes(t, 40) == (2 * t.block_bytes if t.quantized else 40 * t.block_bytes)
    padded = np.concatenate([x, np.zeros((3, 24), F)], axis=1)
    if t.quantized:
        np.testing.assert_array_equal(raw, quant.quantize(padded, t))
    y = quant.dequantize(raw, t, 40)
    assert y.shape == (3, 40) and y.dtype == np.float64
    np.testing.assert_array_equal(quant.roundtrip(x[None], t)[0], y)   # batch dims are free


@pytest.mark.parametrize("value, bits", [
    (1.0, 0x3F80), (1 + 2**-8, 0x3F80), (1 + 3 * 2**-8, 0x3F82), (1 + 2**-8 + 2**-20, 0x3F81),
    (-0.0, 0x8000), (np.inf, 0x7F80), (-1.5, 0xBFC0),
    (2.0**-140, 0x0000), (3 * 2.0**-134, 0x0002),          # subnormals round too (even)
])
def test_bf16_round_to_nearest_even(value, bits):
    raw = quant.quantize(np.array([value], F), "bf16")
    assert int(raw.view("<u2")[0]) == bits


def test_bf16_overflow_is_refused_but_the_rounding_is_ggml_s():
    """f32's largest value rounds to bf16 +inf (ggml's rounding); quantize refuses to store a
    finite value as inf."""
    assert int(quant._bf16_bits(np.array([np.finfo(F).max], F))[0]) == 0x7F80
    with pytest.raises(ValueError, match=r"beyond bf16's range"):
        quant.quantize(np.array([np.finfo(F).max], F), "bf16")


def test_bf16_nan_stays_nan_and_becomes_quiet():
    snan = np.array([0x7F800001, 0xFF812345], np.uint32).view(F)
    out = quant.quantize(snan, "bf16").view("<u2")
    assert out.tolist() == [0x7FC0, 0xFFC1]
    assert np.isnan(quant.dequantize(quant.quantize(snan, "bf16"), "bf16", 2)).all()


def test_quantize_is_fast_enough_for_a_million_values():
    import time
    x = np.random.default_rng(2).standard_normal((1000, 1024)).astype(F)
    for t in KvType:
        start = time.perf_counter()
        quant.roundtrip(x, t)
        assert time.perf_counter() - start < 3.0, t


def test_quant_api_errors():
    with pytest.raises(ValueError, match="unknown KV type 'q3_k'"):
        quant.quantize(np.zeros(32), "q3_k")
    with pytest.raises(ValueError, match="a row of 40 q8_0 values is 68 bytes"):
        quant.dequantize(np.zeros((2, 34), np.uint8), "q8_0", 40)
    with pytest.raises(ValueError, match="iq4_nl_search applies to iq4_nl only"):
        quant.quantize(np.zeros(32), "q8_0", iq4_nl_search=True)
    with pytest.raises(ValueError, match="dtype"):
        quant.dequantize(np.zeros(34), "q8_0", 32)


def test_alibi_zero_slope_keeps_a_minus_inf_mask_entry_hidden():
    # max_bias 2000 over 8 heads: slopes 2^-250 .. 2^-2000, the last one 0 even in float64.
    assert alibi_slopes(8, 2000.0)[-1] == 0
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(s) for s in ((1, 8, 3, 16), (1, 8, 5, 16), (1, 8, 5, 16)))
    mask = np.zeros((1, 1, 3, 5))
    mask[..., 1] = -np.inf
    mask[..., 3] = -2.5
    out = attention(q, k, v, mask=mask, alibi_max_bias=2000.0)
    assert np.isfinite(out).all()
    # A slope that small leaves finite entries as 0 and still hides the -inf column.
    seen = np.delete(np.arange(5), 1)
    expect = attention(q, k[:, :, seen], v[:, :, seen])
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)
