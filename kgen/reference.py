"""kgen's float64 attention reference, written from the math (not from any kernel).

    score(i, j) = scale * q_i . k_j                    scale defaults to 1/sqrt(Dk)
    score       = softcap * tanh(score / softcap)       when softcap > 0
    score      += slope_h * mask[i, j]                  slope_h = 1 without ALiBi; -inf stays -inf
    hidden keys (causal / window / -inf mask) drop out of the softmax
    out_i       = sum_j softmax(score_i)_j v_j          sinks: one extra logit per head

Quantized K/V: pass `kgen.quant.roundtrip(k, t)`, the values a kernel decodes.
"""
from __future__ import annotations

import math

import numpy as np

# Scores of at most this many elements are live at once (~32 MiB of float64 per array):
# attention() streams over batches, KV heads and query rows to stay under it.
_CHUNK_ELEMS = 1 << 22


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ggml's ALiBi slope per query head (float64, shape (n_head,)); all ones when max_bias == 0.

    n2 = 2^floor(log2(n_head)), m0 = 2^(-max_bias/n2), m1 = 2^(-max_bias/2/n2);
    slope_h = m0^(h+1) for h < n2, else m1^(2(h-n2)+1).
    """
    if n_head < 1:
        raise ValueError(f"n_head={n_head}: must be >= 1")
    if not (math.isfinite(max_bias) and max_bias >= 0):
        raise ValueError(f"alibi_max_bias={max_bias}: must be finite and >= 0")
    if max_bias == 0:
        return np.ones(n_head)
    n2 = 1 << (n_head.bit_length() - 1)
    m0, m1 = 2.0 ** (-max_bias / n2), 2.0 ** (-max_bias / 2 / n2)
    h = np.arange(n_head)
    with np.errstate(over="ignore", under="ignore", divide="ignore"):   # np.where computes both branches
        return np.where(h < n2, m0 ** (h + 1.0), m1 ** (2.0 * (h - n2) + 1.0))


def _alibi_bias(slopes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """slope * mask, where a -inf entry stays -inf: the key is hidden whatever the slope. Calls
    keep every slope a normal f32 (alibi_max_bias <= 126, kgen.shapes), so a kernel never
    meets 0 * -inf; the reference keeps the rule for any max_bias it is given."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isneginf(mask), -np.inf, slopes * mask)


# The correctness bar every kernel meets against this reference (tuner checks, bench, tests).
NMSE_MAX = 5e-4


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2), in float64.

    When ref is all zero the ratio is undefined; this returns sum(out^2) instead (0 when out is
    zero too). Any non-finite value in `out` gives inf, so a NaN never passes `nmse(...) < tol`.
    """
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {out.shape}, ref has shape {ref.shape}: they must match")
    if not np.isfinite(ref).all():
        raise ValueError("ref has non-finite values: a reference must be finite")
    if not np.isfinite(out).all():
        return math.inf
    den = float(np.sum(ref * ref))
    num = float(np.sum((out - ref) ** 2))
    return num / den if den > 0 else float(np.sum(out * out))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, mask: np.ndarray | None = None,
              causal: bool = False, window: int | None = None, scale: float | None = None,
              softcap: float = 0.0, alibi_max_bias: float = 0.0,
              sinks: np.ndarray | None = None) -> np.ndarray:
    """Multi-head attention in float64; returns (B, Hq, Nq, Dv), always finite.

    q: (B, Hq, Nq, Dk); k: (B, Hkv, Nkv, Dk); v: (B, Hkv, Nkv, Dv); Hq % Hkv == 0 and query
    head h reads KV head h // (Hq // Hkv). All three must be finite.

    mask: broadcastable to (B, Hq, Nq, Nkv). Float: added to the score times slope_h, -inf
    hides the key (NaN and +inf are rejected). Bool: True = attend, False = hidden (-inf).
    causal: key j is visible to query i iff j <= i + (Nkv - Nq) (the last query row sees
    every key; with Nq > Nkv the first Nq - Nkv rows see nothing).
    window: W >= 1 keeps only keys with i + (Nkv - Nq) - W < j <= i + (Nkv - Nq), the W keys
    ending at the causal diagonal. Decision: a window is always relative to the causal diagonal,
    so `window` implies the causal bound (causal=False with a window is the same as causal=True).
    kgen's kernels read the window only with their causal feature, so pass causal=True there.
    softcap > 0: score = softcap * tanh(score / softcap), before the mask is added.
    alibi_max_bias > 0: slope_h = alibi_slopes(Hq, alibi_max_bias)[h] scales the mask.
    sinks: (Hq,) finite logits, one per query head; each joins its rows' softmax max and
    denominator and contributes no value, so it only shrinks the output.
    A row with nothing visible yields zeros (with or without sinks), never NaN.
    """
    q, k, v = (_finite_4d(a, name) for a, name in ((q, "q"), (k, "k"), (v, "v")))
    B, Hq, Nq, Dk = q.shape
    _, Hkv, Nkv, Dv = v.shape
    _check_shapes(q.shape, k.shape, v.shape)
    full = (B, Hq, Nq, Nkv)
    mask = _additive_mask(mask, full)
    scale = _scale(scale, Dk)
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap={softcap}: must be finite and >= 0 (0 = off)")
    if window is not None and (int(window) != window or window < 1):
        raise ValueError(f"window={window}: must be an integer >= 1 (None = no window)")
    slopes = alibi_slopes(Hq, alibi_max_bias)
    sinks = _sinks(sinks, Hq)

    group = Hq // Hkv
    out = np.zeros((B, Hq, Nq, Dv))
    heads, rows = _chunks(Hkv, group, Nq, Nkv)
    for b in range(B):
        for hk0 in range(0, Hkv, heads):
            hk1 = min(hk0 + heads, Hkv)
            h0, h1 = hk0 * group, hk1 * group
            for r0 in range(0, Nq, rows):
                r1 = min(r0 + rows, Nq)
                qc = q[b, h0:h1, r0:r1].reshape(hk1 - hk0, group, r1 - r0, Dk)
                s = scale * (qc @ k[b, hk0:hk1, None].swapaxes(-1, -2))   # (nh, G, r, Nkv)
                if softcap > 0:
                    s = softcap * np.tanh(s / softcap)
                if mask is not None:
                    m = mask[b, h0:h1, r0:r1].reshape(hk1 - hk0, group, r1 - r0, Nkv)
                    s = s + _alibi_bias(slopes[h0:h1].reshape(hk1 - hk0, group, 1, 1), m)
                if causal or window is not None:
                    s = np.where(_visible(r0, r1, Nq, Nkv, window), s, -np.inf)
                sink = None if sinks is None else sinks[h0:h1].reshape(hk1 - hk0, group, 1)
                o = _softmax_v(s, sink, v[b, hk0:hk1, None])
                out[b, h0:h1, r0:r1] = o.reshape(h1 - h0, r1 - r0, Dv)
    if not np.isfinite(out).all():
        raise ValueError("scores overflow float64: q, k or v (or scale) are too large for a reference")
    return out


def _softmax_v(s: np.ndarray, sink: np.ndarray | None, v: np.ndarray) -> np.ndarray:
    """softmax(s) @ v over the last axis of s, hidden keys being -inf; empty rows give 0."""
    m = s.max(axis=-1)
    if sink is not None:
        m = np.maximum(m, sink)
    m = np.where(np.isfinite(m), m, 0.0)          # a row with nothing visible: any finite m
    p = np.exp(s - m[..., None])                  # exp(-inf) = 0 for hidden keys
    den = p.sum(axis=-1)
    if sink is not None:
        den = den + np.exp(sink - m)
    num = p @ v
    safe = np.where(den > 0, den, 1.0)
    return np.where((den > 0)[..., None], num / safe[..., None], 0.0)


def _visible(r0: int, r1: int, n_q: int, n_kv: int, window: int | None) -> np.ndarray:
    """Causal (and window) key visibility for query rows r0..r1, shape (r, Nkv)."""
    last = np.arange(r0, r1)[:, None] + (n_kv - n_q)
    j = np.arange(n_kv)[None, :]
    vis = j <= last
    if window is not None:
        vis &= j > last - window
    return vis


def _chunks(n_kv_heads: int, group: int, n_q: int, n_kv: int) -> tuple[int, int]:
    """(KV heads, query rows) per step so that heads * group * rows * Nkv <= _CHUNK_ELEMS."""
    per_row = group * n_kv
    rows = max(1, min(n_q, _CHUNK_ELEMS // max(per_row, 1)))
    heads = max(1, min(n_kv_heads, _CHUNK_ELEMS // max(per_row * rows, 1)))
    return heads, rows


# --- validation --------------------------------------------------------------------------------
def _finite_4d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"{name} has shape {a.shape}: expected 4 dimensions (B, H, N, D)")
    if 0 in a.shape:
        raise ValueError(f"{name} has shape {a.shape}: every dimension must be >= 1")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{name} has dtype {a.dtype}: expected a real numeric array")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values: q, k and v must be finite")
    return a


def _check_shapes(qs: tuple, ks: tuple, vs: tuple) -> None:
    (B, Hq, _, Dk), (Bk, Hkv, Nkv, Dkk), (Bv, Hv, Nv, _) = qs, ks, vs
    if Bk != B or Bv != B:
        raise ValueError(f"batch sizes differ: q {B}, k {Bk}, v {Bv}")
    if Dkk != Dk:
        raise ValueError(f"k has Dk={Dkk}, q has Dk={Dk}: q and k head sizes must match")
    if (Hv, Nv) != (Hkv, Nkv):
        raise ValueError(f"k has (Hkv, Nkv)=({Hkv}, {Nkv}), v has ({Hv}, {Nv}): they must match")
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}: each KV head serves "
                         f"Hq // Hkv query heads")


def _additive_mask(mask: np.ndarray | None, full: tuple) -> np.ndarray | None:
    """The mask as a float64 view broadcast to `full` (no copy of the broadcast)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    try:
        shape = np.broadcast_shapes(mask.shape, full)
    except ValueError:
        shape = None
    if shape != full:
        raise ValueError(f"mask has shape {mask.shape}: it must broadcast to (B, Hq, Nq, Nkv) = {full}")
    if mask.dtype == np.bool_:
        mask = np.where(mask, 0.0, -np.inf)
    elif np.issubdtype(mask.dtype, np.number) and not np.iscomplexobj(mask):
        mask = mask.astype(np.float64, copy=False)
        if np.isnan(mask).any() or np.isposinf(mask).any():
            raise ValueError("mask has NaN or +inf values: an additive mask may hold finite values "
                             "and -inf only")
    else:
        raise ValueError(f"mask has dtype {mask.dtype}: expected bool or a real float array")
    return np.broadcast_to(mask, full)


def _scale(scale: float | None, dk: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dk)
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale}: must be finite")
    return float(scale)


def _sinks(sinks: np.ndarray | None, n_head: int) -> np.ndarray | None:
    if sinks is None:
        return None
    sinks = np.asarray(sinks, dtype=np.float64)
    if sinks.shape != (n_head,):
        raise ValueError(f"sinks has shape {sinks.shape}: expected ({n_head},), one logit per query head")
    if not np.isfinite(sinks).all():
        raise ValueError("sinks has non-finite values: each sink logit must be finite")
    return sinks


# --- paged KV caches and ragged batches ---------------------------------------------------------
def paged_attention(q: np.ndarray, k_cache, v_cache, block_table: np.ndarray, seq_lens: np.ndarray,
                    cu_seqlens_q: np.ndarray | None = None, *, causal: bool = False, window: int | None = None,
                    scale: float | None = None, softcap: float = 0.0, sinks: np.ndarray | None = None,
                    layout: str = "NHD") -> np.ndarray:
    """attention() per sequence over a paged cache; returns (total_q, Hq, Dv) float64.

    q: (total_q, Hq, Dk); sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1] (None: one row
    each) and its keys are tokens 0..seq_lens[b]-1 of pages block_table[b, 0], [b, 1], ...
    Caches: float arrays (num_blocks, block_size, Hkv, D) for layout "NHD" or
    (num_blocks, Hkv, block_size, D) for "HND", or a kgen.paged.PagedKV, decoded (dequantized)
    by its values(). causal and window align per sequence, as attention() does for one batch
    entry. A sequence with seq_len 0 or no query rows gives zeros (no keys: nothing visible).
    No mask yet, so no ALiBi (its slopes scale the mask).
    """
    k_pages, v_pages = _pages(k_cache, "k_cache", layout), _pages(v_cache, "v_cache", layout)
    q = np.asarray(q, dtype=np.float64)
    table, lens = np.asarray(block_table), np.asarray(seq_lens)
    if q.ndim != 3 or table.ndim != 2 or lens.shape != table.shape[:1]:
        raise ValueError(f"q {q.shape}, block_table {table.shape}, seq_lens {lens.shape}: expected "
                         "(total_q, Hq, Dk), (B, max_blocks_per_seq), (B,)")
    cu = np.arange(len(lens) + 1) if cu_seqlens_q is None else np.asarray(cu_seqlens_q)
    if cu.shape != (len(lens) + 1,) or cu[0] != 0 or cu[-1] != q.shape[0] or (np.diff(cu) < 0).any():
        raise ValueError(f"cu_seqlens_q={cu.tolist()}: (B+1,), from 0, non-decreasing, to total_q={q.shape[0]}")
    if k_pages.shape[:3] != v_pages.shape[:3]:
        raise ValueError(f"k_cache pages {k_pages.shape[:3]}, v_cache pages {v_pages.shape[:3]}: must match")
    num_blocks, block_size = k_pages.shape[:2]
    out = np.zeros((q.shape[0], q.shape[1], v_pages.shape[3]))
    for b, (n, r0, r1) in enumerate(zip(lens.tolist(), cu[:-1].tolist(), cu[1:].tolist())):
        pages = table[b, :max(0, -(-n // block_size))]
        if not 0 <= n <= table.shape[1] * block_size or ((pages < 0) | (pages >= num_blocks)).any():
            raise ValueError(f"sequence {b}: seq_len {n} with pages {pages.tolist()} does not fit "
                             f"{table.shape[1]} pages of {block_size} among num_blocks={num_blocks}")
        if n == 0 or r1 == r0:
            continue
        k, v = (_gather(p, pages, n) for p in (k_pages, v_pages))
        out[r0:r1] = attention(q[None, r0:r1].swapaxes(1, 2), k, v, causal=causal, window=window, scale=scale,
                               softcap=softcap, sinks=sinks)[0].swapaxes(0, 1)
    return out


def _pages(cache, name: str, layout: str) -> np.ndarray:
    """A cache's values as float64 (num_blocks, block_size, Hkv, D)."""
    if hasattr(cache, "values") and hasattr(cache, "block_size"):
        return cache.values()
    if layout not in ("NHD", "HND"):
        raise ValueError(f"layout={layout!r}: NHD or HND")
    pages = np.asarray(cache, dtype=np.float64)
    if pages.ndim != 4:
        raise ValueError(f"{name} has shape {pages.shape}: expected 4 dims (num_blocks, block_size, Hkv, D)")
    return pages if layout == "NHD" else pages.swapaxes(1, 2)


def _gather(pages: np.ndarray, table_row: np.ndarray, n: int) -> np.ndarray:
    """Tokens 0..n-1 of the listed pages as one sequence, (1, Hkv, n, D)."""
    tokens = pages[table_row].reshape(-1, *pages.shape[2:])[:n]
    return tokens.swapaxes(0, 1)[None]
