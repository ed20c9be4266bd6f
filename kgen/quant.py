"""ggml-compatible quantize / dequantize for every KV type, in vectorized numpy.

Block layouts and rounding follow ggml's reference CPU quantizers (`quantize_row_*_ref` in
ggml/src/ggml-quants.c): the arithmetic is done in float32, in ggml's order, so q8_0, q4_0,
q4_1, q5_0, q5_1, f16 and bf16 bytes match ggml bit for bit. iq4_nl follows the same algorithm
(first guess d = max/-127, weighted least-squares scale with weights x^2) but its float32 sums
may differ from ggml in the last bit, which can flip a rare tie.

Rows are the last axis. A row whose length is not a multiple of the block size is zero-padded to
whole blocks (a 40-wide q8_0 row takes 2 blocks, the second one 8 values + 24 zeros); the input
is first rounded to float32, as ggml's quantizers take float32 rows. Dequantized values are
float64 (exact products of the stored codes and f16 scales; ggml's f32 dequantizers round once
more, by at most half an f32 ulp).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import KvType

# ggml's kvalues_iq4nl (ggml-common.h): the sorted 16-entry codebook of iq4_nl.
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                         1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_IQ4NL_F32 = IQ4NL_VALUES.astype(np.float32)
# A value picks codebook entry i once it reaches the midpoint of entries i-1 and i (ties go up,
# as in ggml's best_index_int8); midpoints are half-integers, exact in float64.
_IQ4NL_MIDS = (IQ4NL_VALUES[:-1].astype(np.float64) + IQ4NL_VALUES[1:]) / 2
_GROUP_MAX_EPS = np.float32(1e-15)  # ggml: an iq4_nl block below this amax is all zero
_IQ4NL_SEARCH_NTRY = 7             # quantize_iq4_nl (model files): itry in -7..7
F16_MAX = 65504.0
F32_MAX = float(np.finfo(np.float32).max)

Fields = dict[str, np.ndarray]


# --- public API ---------------------------------------------------------------------------------
def n_blocks(t: "KvType | str", n: int) -> int:
    """Blocks (elements, for float types) holding a row of `n` values."""
    t = KvType.parse(t)
    return -(-n // t.block_size)


def row_bytes(t: "KvType | str", n: int) -> int:
    """Bytes of one row of `n` values in type `t`, padding blocks included."""
    t = KvType.parse(t)
    if n < 1:
        raise ValueError(f"row length n={n}: must be >= 1")
    return n_blocks(t, n) * t.block_bytes


def quantize(x: np.ndarray, t: "KvType | str", *, iq4_nl_search: bool = False, name: str = "x") -> np.ndarray:
    """Encode `x` along its last axis: uint8 array of shape (*x.shape[:-1], row_bytes(t, n)).

    Float types return their raw little-endian bytes. `iq4_nl_search` (iq4_nl only) selects
    ggml's model-file quantizer `quantize_iq4_nl` (best scale over itry in -7..7, then
    re-indexing with it) instead of `quantize_row_iq4_nl_ref` (ntry = -1: one least-squares
    pass, what ggml's from_float / set_rows writes into a KV cache). Non-finite inputs give
    unspecified codes in block types, as in ggml. Finite values that `t` cannot hold (beyond
    f32 or f16 / bf16's range, or a block whose f16 scale would overflow) are a ValueError
    naming `name`, the value and the limit: they would decode as Inf or NaN.
    """
    t = KvType.parse(t)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {x.dtype} values: quantize takes real numbers")
    with np.errstate(over="ignore"):
        x32 = np.asarray(x, dtype=np.float32)
    check_stored(x, np.isfinite(x32), name, "f32", F32_MAX,
                 f"{name} is stored as f32" if t is KvType.F32 else f"{name} is rounded to f32, then stored as {t}")
    if x32.ndim < 1 or x32.shape[-1] < 1:
        raise ValueError(f"{name} has shape {x32.shape}: quantize needs rows of length >= 1 on the last axis")
    if iq4_nl_search and t is not KvType.IQ4_NL:
        raise ValueError(f"iq4_nl_search applies to iq4_nl only, not {t}")
    with np.errstate(all="ignore"):
        if not t.quantized:
            raw = _FLOAT_CODECS[t].encode(x32)
            check_stored(x32, _FLOAT_CODECS[t].finite(raw), name, str(t), _FLOAT_MAX[t],
                         f"{name} is stored as {t}; store it as {'f32 or bf16' if t is KvType.F16 else 'f32'}, "
                         "or scale it down")
            return raw
        codec = _BLOCK_CODECS[t]
        blocks = _to_blocks(x32, t)
        fields = codec.encode(blocks, _IQ4NL_SEARCH_NTRY if iq4_nl_search else -1)
        _check_scales(blocks, fields, name, t)
        out = np.zeros(blocks.shape[:-1], dtype=codec.dtype)
        for field, value in fields.items():
            out[field] = value
    return out.view(np.uint8)


def check_stored(x: np.ndarray, finite: np.ndarray, name: str, type_name: str, limit: float, why: str) -> None:
    """A ValueError naming `name` where a finite value of `x` is not `finite` once stored in
    `type_name`, whose largest finite magnitude is `limit`; `why` ends the message."""
    if finite.all():
        return
    bad = ~finite & np.isfinite(x)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}[{', '.join(map(str, at))}]={float(x[at]):.9g} is beyond {type_name}'s range "
                         f"(at most {limit:.9g} in magnitude): {why}")


def nonfinite(raw: np.ndarray, t: "KvType | str", n: int) -> "tuple[tuple[int, ...], str] | None":
    """The first NaN or Inf in rows of `raw` (uint8, last axis row_bytes(t, n)) without decoding
    them: (index, "value") for float types (index of the element), (index, "scale d" or
    "minimum m") for block types (index of the block); None when all are finite."""
    t = KvType.parse(t)
    if not t.quantized:
        checks = {"value": _FLOAT_CODECS[t].finite(np.ascontiguousarray(raw))}
    else:
        b = blocks(raw, t)
        checks = {label: np.isfinite(b[field]) for field, label in (("d", "scale d"), ("m", "minimum m"))
                  if field in b.dtype.names}
    for what, finite in checks.items():
        if not finite.all():
            return tuple(int(i) for i in np.argwhere(~finite)[0]), what
    return None


def _check_scales(blocks: np.ndarray, fields: Fields, name: str, t: KvType) -> None:
    """A ValueError naming `name` where a block of finite values gets an f16 scale (d) or minimum
    (m) that f16 cannot hold: that block would decode as Inf or NaN."""
    finite = np.isfinite(blocks).all(axis=-1)
    for field in ("d", "m"):
        if field not in fields:
            continue
        value = np.asarray(fields[field], dtype=np.float32)
        bad = finite & ~np.isfinite(value.astype(np.float16))
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            row, block = at[:-1], at[-1]
            span = f"{name}[{', '.join(map(str, row + ('',)))}{block * t.block_size}:{(block + 1) * t.block_size}]"
            peak = float(np.abs(blocks[at]).max())
            raise ValueError(f"{span} holds values up to {peak:.9g} in magnitude: its {t} block's f16 "
                             f"{'scale d' if field == 'd' else 'minimum m'} would be {float(value[at]):.6g}, "
                             f"beyond f16's {F16_MAX:g}; store {name} as f32 or bf16, or scale it down")


def dequantize(raw: np.ndarray, t: "KvType | str", n: int) -> np.ndarray:
    """Decode rows of `raw` (uint8, last axis row_bytes(t, n)) into float64 of shape (*, n)."""
    t = KvType.parse(t)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"raw has dtype {raw.dtype}: dequantize takes the uint8 bytes from quantize")
    want = row_bytes(t, n)
    if raw.ndim < 1 or raw.shape[-1] != want:
        raise ValueError(f"raw has shape {raw.shape}: a row of {n} {t} values is {want} bytes "
                         f"on the last axis")
    raw = np.ascontiguousarray(raw)
    if not t.quantized:
        return _FLOAT_CODECS[t].decode(raw)
    vals = _BLOCK_CODECS[t].decode(blocks(raw, t))
    return vals.reshape(*vals.shape[:-2], -1)[..., :n]


def roundtrip(x: np.ndarray, t: "KvType | str", **kw) -> np.ndarray:
    """dequantize(quantize(x)): the float64 values a kernel sees when `x` is stored as `t`."""
    x = np.asarray(x)
    return dequantize(quantize(x, t, **kw), t, x.shape[-1])


def block_dtype(t: "KvType | str") -> np.dtype:
    """The numpy structured dtype of one ggml block of `t` (fields d, m, qh, qs as present)."""
    t = KvType.parse(t)
    if not t.quantized:
        raise ValueError(f"{t} is a float type: it has no blocks")
    return _BLOCK_CODECS[t].dtype


def blocks(raw: np.ndarray, t: "KvType | str") -> np.ndarray:
    """View quantized rows as structured blocks (*, n_blocks), e.g. blocks(raw, "q8_0")["d"]."""
    dtype = block_dtype(t)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim < 1 or raw.shape[-1] % dtype.itemsize:
        raise ValueError(f"raw has shape {raw.shape}: the last axis must be whole "
                         f"{dtype.itemsize}-byte {t} blocks")
    return raw.view(dtype)


# --- float types --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FloatCodec:
    encode: Callable[[np.ndarray], np.ndarray]   # float32 (*, n) -> uint8 (*, n * bytes)
    decode: Callable[[np.ndarray], np.ndarray]   # uint8 (*, n * bytes) -> float64 (*, n)
    finite: Callable[[np.ndarray], np.ndarray]   # uint8 (*, n * bytes) -> bool (*, n), without decoding


def _bf16_bits(x32: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN keeps its top bits, made quiet."""
    u = x32.view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(is_nan, (u >> 16) | 0x40, rounded).astype("<u2")


def _bf16_decode(raw: np.ndarray) -> np.ndarray:
    bits = raw.view("<u2").astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


_FLOAT_CODECS = {
    KvType.F32: _FloatCodec(lambda x: x.astype("<f4").view(np.uint8),
                            lambda r: r.view("<f4").astype(np.float64), lambda r: np.isfinite(r.view("<f4"))),
    KvType.F16: _FloatCodec(lambda x: x.astype("<f2").view(np.uint8),
                            lambda r: r.view("<f2").astype(np.float64), lambda r: np.isfinite(r.view("<f2"))),
    KvType.BF16: _FloatCodec(lambda x: _bf16_bits(x).view(np.uint8), _bf16_decode,
                             lambda r: (r.view("<u2") & 0x7FFF) < 0x7F80),   # exponent all ones: Inf or NaN
}
# The largest finite magnitude of each float type (bf16: 0x7f7f).
_FLOAT_MAX = {KvType.F32: F32_MAX, KvType.F16: F16_MAX, KvType.BF16: 3.3895313892515355e38}


# --- block types: shared pieces -----------------------------------------------------------------
@dataclass(frozen=True)
class _BlockCodec:
    dtype: np.dtype
    encode: Callable[[np.ndarray, int], Fields]  # float32 (*, nb, 32), ntry -> field values
    decode: Callable[[np.ndarray], np.ndarray]   # structured (*, nb) -> float64 (*, nb, 32)


def _to_blocks(x32: np.ndarray, t: KvType) -> np.ndarray:
    n = x32.shape[-1]
    pad = n_blocks(t, n) * t.block_size - n
    if pad:
        x32 = np.concatenate([x32, np.zeros((*x32.shape[:-1], pad), np.float32)], axis=-1)
    return x32.reshape(*x32.shape[:-1], -1, t.block_size)


def _inverse(d: np.ndarray) -> np.ndarray:
    """ggml's `id = d ? 1.0f/d : 0.0f`, in float32."""
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def _signed_absmax(xb: np.ndarray) -> np.ndarray:
    """The value of largest magnitude per block (the first one on ties), shape (*, nb, 1)."""
    mag = np.where(np.isnan(xb), np.float32(0), np.abs(xb))
    mx = np.take_along_axis(xb, mag.argmax(axis=-1)[..., None], axis=-1)
    return np.where(mx == 0, np.float32(0), mx)   # ggml starts from +0: an all-zero block has +0


def _first_extreme(xb: np.ndarray, arg: Callable) -> np.ndarray:
    """The first minimum / maximum per block, shape (*, nb, 1): ggml's scan keeps the sign of the
    first of several equal zeros."""
    return np.take_along_axis(xb, arg(xb, axis=-1)[..., None], axis=-1)


def _truncate(v: np.ndarray, top: int) -> np.ndarray:
    """C's (int) cast (toward zero) of float32 codes, clamped to [0, top] as ggml's MIN does."""
    return np.clip(np.trunc(np.nan_to_num(v)), 0, top).astype(np.int64)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Elements j < 16 go to the low nibble of byte j, elements j + 16 to its high nibble."""
    return ((q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int64)


_BIT = np.arange(32, dtype=np.uint64)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Bit j of the little-endian u32 qh is bit 4 of element j."""
    return (((q.astype(np.uint64) >> 4) & 1) << _BIT).sum(axis=-1).astype("<u4")


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    return ((qh.astype(np.uint64)[..., None] >> _BIT) & 1).astype(np.int64) << 4


def _f16(d: np.ndarray) -> np.ndarray:
    """An f16 field as float64 (broadcastable against (*, nb, 32))."""
    return d.astype(np.float64)[..., None]


def _layout(*, qs: tuple[str, int], m: bool = False, qh: bool = False) -> np.dtype:
    """A ggml block: f16 d, then f16 m, u32 qh, qs[] where present (packed, little-endian)."""
    return np.dtype([("d", "<f2")] + ([("m", "<f2")] if m else []) + ([("qh", "<u4")] if qh else [])
                    + [("qs", qs[0], (qs[1],))])


def _pack_codes(q: np.ndarray, bits: int) -> Fields:
    """4- or 5-bit codes (*, nb, 32) -> the qs (and qh) fields."""
    return {"qs": _pack_nibbles(q)} | ({"qh": _pack_high_bits(q)} if bits == 5 else {})


def _unpack_codes(b: np.ndarray, bits: int) -> np.ndarray:
    q = _unpack_nibbles(b["qs"])
    return q | _unpack_high_bits(b["qh"]) if bits == 5 else q


# --- q8_0 ---------------------------------------------------------------------------------------
def _encode_q8_0(xb: np.ndarray, ntry: int) -> Fields:
    d = np.abs(xb).max(axis=-1, keepdims=True) / np.float32(127)
    v = (xb * _inverse(d)).astype(np.float64)      # exact; roundf rounds half away from zero
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return {"d": d[..., 0], "qs": np.clip(np.nan_to_num(q), -128, 127).astype(np.int8)}


def _decode_q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b["d"]) * b["qs"].astype(np.float64)


# --- q4_0 / q5_0: d = max / -2^(bits-1), q = min(top, (int)(x/d + 2^(bits-1) + 0.5)) ---------------
def _symmetric(bits: int) -> tuple[Callable, Callable]:
    half, top = 1 << (bits - 1), (1 << bits) - 1

    def encode(xb: np.ndarray, ntry: int) -> Fields:
        d = _signed_absmax(xb) / np.float32(-half)
        q = _truncate(xb * _inverse(d) + np.float32(half + 0.5), top)
        return {"d": d[..., 0]} | _pack_codes(q, bits)

    def decode(b: np.ndarray) -> np.ndarray:
        return _f16(b["d"]) * (_unpack_codes(b, bits) - half)
    return encode, decode


# --- q4_1 / q5_1: d = (max - min) / top, m = min, q = min(top, (int)((x - min)/d + 0.5)) ----------
def _affine(bits: int) -> tuple[Callable, Callable]:
    top = (1 << bits) - 1

    def encode(xb: np.ndarray, ntry: int) -> Fields:
        lo, hi = _first_extreme(xb, np.argmin), _first_extreme(xb, np.argmax)
        d = (hi - lo) / np.float32(top)
        q = _truncate((xb - lo) * _inverse(d) + np.float32(0.5), top)
        return {"d": d[..., 0], "m": lo[..., 0]} | _pack_codes(q, bits)

    def decode(b: np.ndarray) -> np.ndarray:
        return _f16(b["d"]) * _unpack_codes(b, bits) + _f16(b["m"])
    return encode, decode


# --- iq4_nl: quantize_row_iq4_nl_impl with super_block_size == block_size == 32 -----------------
def _iq4nl_index(a: np.ndarray) -> np.ndarray:
    return np.searchsorted(_IQ4NL_MIDS, a, side="right")


def _weighted_sums(xb: np.ndarray, w: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum(w*q*x), sum(w*q*q) accumulated in float32 in element order, as ggml's loop does."""
    sqx = np.zeros(xb.shape[:-1], np.float32)
    sq2 = np.zeros(xb.shape[:-1], np.float32)
    for j in range(xb.shape[-1]):   # over the 32 positions of a block, all blocks at once
        wq = w[..., j] * q[..., j]
        sqx = sqx + wq * xb[..., j]
        sq2 = sq2 + wq * q[..., j]
    return sqx, sq2


def _encode_iq4_nl(xb: np.ndarray, ntry: int) -> Fields:
    w = xb * xb
    mx = _signed_absmax(xb)
    empty = np.abs(mx) < _GROUP_MAX_EPS                  # (*, nb, 1); these blocks end up zero
    mx = np.where(empty, np.float32(1), mx)
    first = (-mx if ntry > 0 else mx) / _IQ4NL_F32[0]
    idx = _iq4nl_index(xb * (np.float32(1) / first))
    sqx, sq2 = _weighted_sums(xb, w, _IQ4NL_F32[idx])
    d = np.divide(sqx, sq2, out=np.zeros_like(sqx), where=sq2 > 0)
    best = d * sqx
    for itry in range(-ntry, ntry + 1):
        inv = np.float32(itry + int(IQ4NL_VALUES[0])) / mx
        t_sqx, t_sq2 = _weighted_sums(xb, w, _IQ4NL_F32[_iq4nl_index(xb * inv)])
        better = (t_sq2 > 0) & (t_sqx * t_sqx > best * t_sq2)
        d = np.where(better, np.divide(t_sqx, t_sq2, where=better, out=np.zeros_like(d)), d)
        best = np.where(better, d * t_sqx, best)
    d = np.where(empty[..., 0], np.float32(0), d)
    if ntry > 0:        # re-index with the chosen scale (an empty block indexes 0 -> entry 8)
        idx = _iq4nl_index(xb * _inverse(d)[..., None])
    else:               # the first pass's indices stand; an empty block is all index 0
        idx = np.where(empty, 0, idx)
    return {"d": d, "qs": _pack_nibbles(idx)}


def _decode_iq4_nl(b: np.ndarray) -> np.ndarray:
    return _f16(b["d"]) * IQ4NL_VALUES.astype(np.float64)[_unpack_nibbles(b["qs"])]


_BLOCK_CODECS = {
    KvType.Q8_0: _BlockCodec(_layout(qs=("i1", 32)), _encode_q8_0, _decode_q8_0),
    KvType.Q4_0: _BlockCodec(_layout(qs=("u1", 16)), *_symmetric(4)),
    KvType.Q4_1: _BlockCodec(_layout(qs=("u1", 16), m=True), *_affine(4)),
    KvType.Q5_0: _BlockCodec(_layout(qs=("u1", 16), qh=True), *_symmetric(5)),
    KvType.Q5_1: _BlockCodec(_layout(qs=("u1", 16), m=True, qh=True), *_affine(5)),
    KvType.IQ4_NL: _BlockCodec(_layout(qs=("u1", 16)), _encode_iq4_nl, _decode_iq4_nl),
}
for _t, _c in _BLOCK_CODECS.items():
    assert _c.dtype.itemsize == _t.block_bytes, (_t, _c.dtype.itemsize)
assert set(_BLOCK_CODECS) | set(_FLOAT_CODECS) == set(KvType), "a KvType has no codec"
