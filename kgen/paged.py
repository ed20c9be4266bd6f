"""Paged KV caches and ragged batches, as serving engines (vLLM, SGLang, FlashInfer) keep them.

A cache is `num_blocks` pages of `block_size` tokens. Layout NHD stores a page as
(block_size, Hkv, D), HND as (Hkv, block_size, D); quantized types store each token's row of D
values as whole ggml blocks (kgen.quant), so a page holds whole blocks of every row. Sequence b
reads its first ceil(seq_lens[b] / block_size) pages through block_table[b]; its query rows are
q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]]. Entries of block_table past those pages are never read.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .kvtensor import check_data, parse_type, raw_bytes
from .quant import dequantize, quantize, row_bytes
from .shapes import as_flag
from .types import KvType

PAGE_SHAPES = {"NHD": "(num_blocks, block_size, Hkv, D)", "HND": "(num_blocks, Hkv, block_size, D)"}
LAYOUTS = tuple(PAGE_SHAPES)
BLOCK_SIZE_STEP = 16     # a page is whole 16-token tiles of the kernels' key loop
BLOCK_SIZE_MAX = 256
ELEMENT_INDEX_MAX = 2**32 - 1   # the kernels index elements as uint32


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: one of {', '.join(LAYOUTS)}")
    return layout


def why_block_size_invalid(block_size: int) -> str | None:
    """Why kgen cannot run pages of `block_size` tokens, or None when it can."""
    if block_size % BLOCK_SIZE_STEP or not BLOCK_SIZE_STEP <= block_size <= BLOCK_SIZE_MAX:
        return (f"must be a multiple of {BLOCK_SIZE_STEP} in {BLOCK_SIZE_STEP}..{BLOCK_SIZE_MAX} "
                "(vLLM's 16, 32, 64, 128, 256; FlashMLA's 64)")
    return None


def _count(name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < low:
        raise ValueError(f"PagedKV.{name}={value!r}: must be an integer >= {low}")
    return int(value)


@dataclass(frozen=True)
class PagedKV:
    """The raw bytes of a paged K or V cache of `type`. `strides` are (page, token, head) in
    elements of `type` (multiples of its block size for block types); None means dense in
    `layout`. An engine passes its own allocation with its strides and `offset`."""

    data: bytes | np.ndarray
    type: KvType
    num_blocks: int
    block_size: int
    heads: int
    head_dim: int
    layout: str = "NHD"
    strides: tuple[int, int, int] | None = None
    offset: int = 0

    def __post_init__(self):
        object.__setattr__(self, "type", parse_type("PagedKV", self.type))
        if self.layout not in LAYOUTS:
            raise ValueError(f"PagedKV.layout={self.layout!r}: one of {', '.join(LAYOUTS)}")
        check_data("PagedKV", self.data)
        for name in ("num_blocks", "block_size", "heads", "head_dim"):
            object.__setattr__(self, name, _count(name, getattr(self, name), 1))
        object.__setattr__(self, "offset", _count("offset", self.offset, 0))
        object.__setattr__(self, "strides", self._checked_strides())
        unit = self.type.block_size
        if any(s % unit for s in (*self.strides, self.offset)):
            raise ValueError(f"PagedKV.strides={self.strides}, offset={self.offset}: must be multiples "
                             f"of {unit} elements for {self.type} (whole blocks)")
        if self.end - 1 > ELEMENT_INDEX_MAX:
            raise ValueError(f"PagedKV: the cache reaches element {self.end - 1}; the kernels index "
                             f"elements as uint32 (at most {ELEMENT_INDEX_MAX})")
        have, need = len(self.raw), row_bytes(self.type, self.end)
        if have < need:
            raise ValueError(f"PagedKV.data has {have} bytes; {self.num_blocks} pages of {self.block_size} "
                             f"x {self.heads} x {self.head_dim} {self.type} with strides {self.strides} need {need}")

    def _checked_strides(self) -> tuple[int, int, int]:
        row = -(-self.head_dim // self.type.block_size) * self.type.block_size
        if self.strides is None:
            token, head = (self.heads * row, row) if self.layout == "NHD" else (row, self.block_size * row)
            return (self.block_size * self.heads * row, token, head)
        try:
            items = tuple(self.strides)
        except TypeError:
            items = ()
        if len(items) != 3 or not all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_))
                                      and s >= 0 for s in items):
            raise ValueError(f"PagedKV.strides={self.strides!r}: must be (page, token, head), 3 integers >= 0")
        if min(items[1], items[2]) < row:
            raise ValueError(f"PagedKV.strides={items}: token and head strides must be >= {row}, "
                             f"the elements of one row of D={self.head_dim}")
        return tuple(int(s) for s in items)

    @property
    def end(self) -> int:
        """One past the last element the cache addresses, in elements of its type."""
        page, token, head = self.strides
        return (self.offset + (self.num_blocks - 1) * page + (self.block_size - 1) * token
                + (self.heads - 1) * head + self.head_dim)

    @property
    def raw(self) -> bytes:
        return raw_bytes(self.data)

    def rows(self) -> np.ndarray:
        """The cache's bytes as uint8 (num_blocks, block_size, heads, row bytes), whatever its layout."""
        t = self.type
        flat = np.frombuffer(self.raw, np.uint8)
        start, page, token, head = (x // t.block_size * t.block_bytes for x in (self.offset, *self.strides))
        shape = (self.num_blocks, self.block_size, self.heads, row_bytes(t, self.head_dim))
        return np.lib.stride_tricks.as_strided(flat[start:], shape, (page, token, head, 1), writeable=False)

    def values(self, pages=None) -> np.ndarray:
        """The decoded float64 values of `pages` (default all) as (pages, block_size, heads, D)."""
        rows = self.rows() if pages is None else self.rows()[np.asarray(pages, dtype=np.int64)]
        return dequantize(np.ascontiguousarray(rows), self.type, self.head_dim)

    @classmethod
    def from_array(cls, x, t: "KvType | str", *, layout: str = "NHD", name: str = "x") -> "PagedKV":
        """Quantize float pages, (num_blocks, block_size, Hkv, D) for NHD or
        (num_blocks, Hkv, block_size, D) for HND, into a dense PagedKV of type `t`."""
        check_layout(layout)
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {x.shape}: expected 4 dims, {PAGE_SHAPES[layout]}")
        n, a, b, d = x.shape
        block_size, heads = (a, b) if layout == "NHD" else (b, a)
        return cls(quantize(x, t, name=name).tobytes(), t, n, block_size, heads, d, layout=layout)


def as_paged(x, name: str, layout: str = "NHD") -> PagedKV:
    """A PagedKV as given, or a float array (f16 stays f16, any other float is f32) made one."""
    if isinstance(x, PagedKV):
        return x
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        what = f"a {x.dtype} array" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"
        raise ValueError(f"{name}: {what}; expected a kgen.paged.PagedKV or a float numpy array")
    return PagedKV.from_array(x, KvType.F16 if x.dtype == np.float16 else KvType.F32, layout=layout, name=name)


@dataclass(frozen=True)
class PagedShapes:
    """What a checked paged call is: sizes, and per sequence its query rows and KV length."""

    batch: int
    total_q: int
    heads_q: int
    heads_kv: int
    head_k: int
    head_v: int
    block_size: int
    max_blocks_per_seq: int
    q_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]


def _int32(x, name: str, ndim: int, meaning: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.int32:
        raise ValueError(f"{name} has dtype {a.dtype}: must be int32 {meaning}")
    if a.ndim != ndim:
        raise ValueError(f"{name} has shape {a.shape}: must be {meaning}")
    return a


def _check_caches(k: PagedKV, v: PagedKV, heads_q: int, head_k: int) -> None:
    reason = why_block_size_invalid(k.block_size)
    if reason:
        raise ValueError(f"k_cache.block_size={k.block_size}: {reason}")
    for field in ("num_blocks", "block_size", "heads"):
        if getattr(k, field) != getattr(v, field):
            raise ValueError(f"k_cache.{field}={getattr(k, field)}, v_cache.{field}={getattr(v, field)}: "
                             "K and V caches must match")
    if heads_q % k.heads:
        raise ValueError(f"q has Hq={heads_q}, k_cache.heads={k.heads}: Hq must be a multiple of Hkv")
    if k.head_dim != head_k:
        raise ValueError(f"q has Dk={head_k}, k_cache.head_dim={k.head_dim}: they must match")


def _check_tables(block_table, seq_lens, cu_seqlens_q, total_q: int, k: PagedKV):
    table = _int32(block_table, "block_table", 2, "(B, max_blocks_per_seq)")
    lens = _int32(seq_lens, "seq_lens", 1, "(B,), the KV length of each sequence")
    batch, max_blocks = table.shape
    if batch < 1 or max_blocks < 1:
        raise ValueError(f"block_table has shape {table.shape}: B and max_blocks_per_seq must be >= 1")
    if lens.shape != (batch,):
        raise ValueError(f"seq_lens has shape {lens.shape}: block_table has B={batch}, so ({batch},)")
    if cu_seqlens_q is None:
        if total_q != batch:
            raise ValueError(f"cu_seqlens_q=None means one query row per sequence: q has total_q={total_q}, "
                             f"B={batch}; pass cu_seqlens_q")
        cu = np.arange(batch + 1, dtype=np.int32)
    else:
        cu = _int32(cu_seqlens_q, "cu_seqlens_q", 1, f"(B+1,) = ({batch + 1},)")
        if cu.shape != (batch + 1,):
            raise ValueError(f"cu_seqlens_q has shape {cu.shape}: block_table has B={batch}, so ({batch + 1},)")
        if cu[0] != 0 or cu[-1] != total_q or (np.diff(cu) < 0).any():
            raise ValueError(f"cu_seqlens_q={cu.tolist()}: must start at 0, never decrease and end at "
                             f"total_q={total_q} (q's first dimension)")
    limit = max_blocks * k.block_size
    for b, n in enumerate(lens.tolist()):
        if not 0 <= n <= limit:
            raise ValueError(f"seq_lens[{b}]={n}: must be 0..{limit}; block_table has max_blocks_per_seq="
                             f"{max_blocks} pages of block_size={k.block_size} per sequence")
        used = table[b, :-(-n // k.block_size)]
        bad = np.flatnonzero((used < 0) | (used >= k.num_blocks))
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"block_table[{b}, {j}]={int(used[j])}: sequence {b} reads this page, so it must "
                             f"be 0..{k.num_blocks - 1} (num_blocks={k.num_blocks})")
    return table, lens, cu


def _check_features(heads_q: int, *, window, scale, softcap, sinks) -> None:
    if window is not None and (not isinstance(window, numbers.Integral) or isinstance(window, bool) or window < 1):
        raise ValueError(f"window={window!r}: must be an integer >= 1 (None = no window)")
    if not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap={softcap!r}: must be finite and >= 0 (0 = off)")
    if scale is not None and (not isinstance(scale, numbers.Real) or not math.isfinite(scale)):
        raise ValueError(f"scale={scale!r}: must be finite (None = 1/sqrt(Dk))")
    if sinks is not None:
        s = np.asarray(sinks)
        if s.shape != (heads_q,) or s.dtype.kind not in "iuf" or not np.isfinite(s).all():
            raise ValueError(f"sinks has shape {s.shape}, dtype {s.dtype}: must be ({heads_q},) finite "
                             "logits, one per query head")


def check_paged(q, k_cache: PagedKV, v_cache: PagedKV, block_table, seq_lens, cu_seqlens_q=None, *,
                window=None, scale=None, softcap=0.0, sinks=None) -> PagedShapes:
    """Every rule a paged call must meet, or a ValueError naming the argument and the limit.
    q: (total_q, Hq, Dk) finite; caches: PagedKV; block_table int32 (B, max_blocks_per_seq);
    seq_lens int32 (B,); cu_seqlens_q int32 (B+1,) or None (one query row per sequence)."""
    q = np.asarray(q)
    if q.ndim != 3 or 0 in q.shape:
        raise ValueError(f"q has shape {q.shape}: expected (total_q, Hq, Dk), all >= 1")
    if q.dtype.kind not in "iuf" or not np.isfinite(q).all():
        raise ValueError(f"q has dtype {q.dtype}: expected finite real values")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(cache, PagedKV):
            raise ValueError(f"{name}: a {type(cache).__name__}; expected a kgen.paged.PagedKV")
    total_q, heads_q, head_k = q.shape
    _check_caches(k_cache, v_cache, heads_q, head_k)
    _check_features(heads_q, window=window, scale=scale, softcap=softcap, sinks=sinks)
    table, lens, cu = _check_tables(block_table, seq_lens, cu_seqlens_q, total_q, k_cache)
    used = np.unique(np.concatenate([table[b, :-(-int(n) // k_cache.block_size)] for b, n in enumerate(lens)]))
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if used.size and not np.isfinite(cache.values(used)).all():
            raise ValueError(f"{name}: a page that block_table reads holds NaN or Inf; kgen computes on "
                             "finite inputs only")
    return PagedShapes(batch=table.shape[0], total_q=total_q, heads_q=heads_q, heads_kv=k_cache.heads,
                       head_k=head_k, head_v=v_cache.head_dim, block_size=k_cache.block_size,
                       max_blocks_per_seq=table.shape[1], q_lens=tuple(np.diff(cu).tolist()),
                       seq_lens=tuple(lens.tolist()))
