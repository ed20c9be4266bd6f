"""PagedPlan: attention over a paged KV cache for a ragged batch, on one device, from the recipe of
a paged variant (Variant.page): the kernels read K and V through the block table, in place.

A plan is made for a batch's sizes: B sequences, the block table's width, total_q query tokens,
the caches' pages, types and strides, and the longest sequence's query tokens. Sequence lengths,
query starts, the table's entries and the data may change from call to call. The KV range is
split (split-k) by the work the batch holds, not by its longest sequence alone: one long
sequence among short ones gets many splits, the short ones one each, and splits past a
sequence's end leave at once (kgen/abi.py PAGED_PUSH says what the kernels are told).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import abi, knobs
from ..errors import UnsupportedVariant
from ..paged import PagedKV, PagedShapes, check_paged
from ..problem import ProblemClass
from ..shapes import Shapes, as_f32, as_int
from ..space import default_variant, why_invalid
from ..variant import PathKind, Variant
from . import dispatch
from .choose import split_values
from .plan import Resident
from .recipe import recipe

F32 = np.dtype("<f4")
TARGET_WORKGROUPS = 256   # as kgen.planning.choose.split_count: a few per compute unit
MIN_SPLIT_TILES = 4       # bc tiles a KV split holds at least (as choose.split_count's 4 * bc)


class PagedPlan(Resident):
    def __init__(self, q, k_cache: PagedKV, v_cache: PagedKV, *, block_table, seq_lens, cu_seqlens_q=None,
                 causal=False, window=None, scale=None, softcap=0.0, sinks=None, precision="f32",
                 path: PathKind | None = None, device=None, split_k: int | None = None,
                 variant: Variant | None = None):
        from .probe import open_for_kernels
        split_k = as_int(split_k, "split_k", optional=True)
        if split_k is not None and split_k < 1:
            raise ValueError(f"split_k={split_k}: must be >= 1")
        if path not in (None, PathKind.SCALAR):
            raise NotImplementedError(f"path={path}: the paged KV kernels exist on the scalar path only "
                                      "(coopmat1 and coopmat2 paged kernels are not built yet)")
        shapes = check_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, window=window,
                             scale=scale, softcap=softcap, sinks=sinks)
        self.shapes, self.k_layout, self.v_layout = shapes, _cache_layout(k_cache), _cache_layout(v_cache)
        self.k_type, self.v_type = k_cache.type, v_cache.type
        self.causal, self.window = bool(causal) or window is not None, int(window or 0)
        self.scale = 1.0 / math.sqrt(shapes.head_k) if scale is None else float(scale)
        self.softcap, self.sinks = float(softcap), sinks is not None
        self.gqa = shapes.heads_q // shapes.heads_kv
        self.max_q = max(shapes.q_lens)
        self.capacity = shapes.max_blocks_per_seq * shapes.block_size   # the longest KV a table can hold
        # V inside K's bytes (MLA): one device buffer serves both bindings.
        self.v_in_k = v_cache.data is k_cache.data and self.k_type == self.v_type
        dense = folded_shapes(shapes, self.k_type, self.v_type, causal=self.causal, window=self.window,
                              scale=scale, softcap=self.softcap, sinks=self.sinks, precision=precision)
        self.device = open_for_kernels(device)
        if variant is None:
            variant, how = choose_paged_variant(dense, self.device.caps, shapes.block_size)
        else:
            how = "given"
        splits = split_k or paged_splits(variant, shapes, self.device.caps)
        variant = variant.replace(split_k=splits > 1)
        if variant.page != shapes.block_size:
            raise ValueError(f"variant {variant.uri}: reads pages of {variant.page} tokens, the caches have "
                             f"block_size={shapes.block_size}")
        if (reason := why_invalid(variant, self.device.caps)) is not None:
            raise UnsupportedVariant(variant.uri, reason)
        self.variant, self.how = variant, how
        self.split_kv, self.splits = split_values(self.capacity, splits, variant.bc)
        self.recipe = recipe(variant)
        if knobs.debug(1):
            print(f"kgen: paged plan B={shapes.batch} max_q={self.max_q} capacity={self.capacity} -> "
                  f"{variant.uri} (split_kv {self.split_kv} x {self.splits}; {how})")
        self._buffers, self._sequence, self.kernel = {}, None, None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- construction ----------------------------------------------------------------------
    def dims(self) -> dict[str, int]:
        s = self.shapes
        return {"n_q": self.max_q * self.gqa, "n_kv": self.capacity, "n_head_q": s.heads_kv,
                "n_head_kv": s.heads_kv, "n_batch": s.batch, "split_kv": self.split_kv, "split_count": self.splits}

    def _sizes(self) -> dict[str, int]:
        s = self.shapes
        sizes = {"q": 4 * s.total_q * s.heads_q * s.head_k, "k": self.k_layout[1],
                 "block_table": 4 * s.batch * s.max_blocks_per_seq, "seq_lens": 4 * s.batch,
                 "cu_seqlens_q": 4 * (s.batch + 1), "o": 4 * s.total_q * s.heads_q * s.head_v}
        if not self.v_in_k:
            sizes["v"] = self.v_layout[1]
        if self.sinks:
            sizes["sinks"] = 4 * s.heads_q
        return sizes | self.recipe.sizes(self.dims())

    def _build(self) -> None:
        dev, dims, sizes = self.device, self.dims(), self._sizes()
        limit = dev.caps.max_storage_buffer_range
        for name, nbytes in sizes.items():
            if nbytes > limit:
                raise ValueError(f"{name}: {nbytes} bytes exceed this device's maxStorageBufferRange of "
                                 f"{limit} bytes; split the batch")
        groups = [step.groups(dims) for step in self.recipe.steps]   # ValueError past the grid limits
        self._buffers = {name: dev.buffer(n) for name, n in sizes.items()}
        push = self._push()
        steps = []
        for i, (step, grid) in enumerate(zip(self.recipe.steps, groups)):
            pipeline = step.pipeline(dev, full_subgroups=bool(step.required_subgroup_size)
                                     and dev.caps.compute_full_subgroups)
            if step.role == "fa":
                self.kernel = pipeline
            binds = {abi.BINDING[binding]: self._buffer(name) for binding, name in step.binds}
            steps.append((pipeline, binds, push, grid, i > 0 and not step.barrier))
        self.steps = steps   # what kgen.timing records back to back
        self._sequence = dev.sequence(steps)

    def _buffer(self, name: str):
        return self._buffers["k" if name == "v" and self.v_in_k else name]

    def _push(self) -> bytes:
        s = self.shapes
        (k_page, k_token, k_head), (v_page, v_token, v_head) = self.k_layout[0], self.v_layout[0]
        return abi.pack(
            n_q=self.max_q * self.gqa, n_kv=self.capacity, n_head_q=s.heads_kv, gqa_ratio=self.gqa,
            n_batch=s.batch, q_stride_row=s.heads_q * s.head_k, q_stride_head=s.head_k, q_stride_batch=0,
            k_stride_row=k_token, k_stride_head=k_head, k_stride_batch=k_page,
            v_stride_row=v_token, v_stride_head=v_head, v_stride_batch=v_page,
            k_offset=self.k_layout[2], v_offset=self.v_layout[2],
            mask_stride_row=s.max_blocks_per_seq, mask_stride_head=self.k_layout[3], mask_stride_batch=0,
            scale=self.scale, softcap=self.softcap, alibi_m0=1.0, alibi_m1=1.0, alibi_n2=1,
            window=self.window, split_kv=self.split_kv, split_count=self.splits,
            o_stride_row=s.heads_q * s.head_v, o_stride_head=s.head_v, o_stride_batch=0)

    # --- use -------------------------------------------------------------------------------
    def upload(self, q, k_cache: PagedKV, v_cache: PagedKV, *, block_table, seq_lens, cu_seqlens_q=None,
               sinks=None) -> None:
        """Check a call against the plan and write its inputs to the plan's buffers; a refused
        call leaves them as they were."""
        s = self.shapes
        call = check_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, sinks=sinks)
        for field, planned in (("batch", s.batch), ("total_q", s.total_q), ("heads_q", s.heads_q),
                               ("head_k", s.head_k), ("head_v", s.head_v),
                               ("max_blocks_per_seq", s.max_blocks_per_seq)):
            if getattr(call, field) != planned:
                raise ValueError(f"{field}={getattr(call, field)}: this plan was made for {planned}; make a "
                                 "plan for this batch")
        for name, cache, planned, t in (("k_cache", k_cache, self.k_layout, self.k_type),
                                        ("v_cache", v_cache, self.v_layout, self.v_type)):
            if _cache_layout(cache) != planned or cache.type != t:
                raise ValueError(f"{name}: its type, pages or strides differ from the plan's ({t}, "
                                 f"{planned[3]} pages, strides {planned[0]}); make a plan for this cache")
        if self.v_in_k and v_cache.data is not k_cache.data:
            raise ValueError("v_cache: this plan reads V inside K's bytes; pass v_cache on k_cache's data")
        if max(call.q_lens) > self.max_q:
            raise ValueError(f"cu_seqlens_q: a sequence has {max(call.q_lens)} query tokens, this plan was made "
                             f"for at most {self.max_q}; make a plan for this batch")
        if self.sinks != (sinks is not None):
            raise ValueError("sinks: pass them exactly when the plan was made with them")
        cu = np.arange(s.batch + 1, dtype=np.int32) if cu_seqlens_q is None else np.asarray(cu_seqlens_q)
        payloads = {"q": as_f32(q, "q").reshape(-1), "k": k_cache.raw,
                    "block_table": np.ascontiguousarray(block_table, dtype="<i4"),
                    "seq_lens": np.ascontiguousarray(seq_lens, dtype="<i4"),
                    "cu_seqlens_q": np.ascontiguousarray(cu, dtype="<i4")}
        if not self.v_in_k:
            payloads["v"] = v_cache.raw
        if self.sinks:
            payloads["sinks"] = as_f32(sinks, "sinks")
        for name, data in payloads.items():
            self._buffers[name].write(data)

    def run_device(self) -> float:
        """Run on the resident buffers; returns GPU microseconds (all passes)."""
        return float(sum(self._sequence.run(wait=True)))

    def result(self) -> np.ndarray:
        s = self.shapes
        raw = self._buffers["o"].read(self._buffers["o"].nbytes)
        return np.frombuffer(raw, dtype=F32).reshape(s.total_q, s.heads_q, s.head_v).copy()

    def __call__(self, q, k_cache, v_cache, *, block_table, seq_lens, cu_seqlens_q=None, sinks=None) -> np.ndarray:
        with self._sequence.lock:
            if self._sequence.closed:
                from ..runtime.errors import ClosedError
                raise ClosedError(f"paged plan {self.variant.uri}")
            self.upload(q, k_cache, v_cache, block_table=block_table, seq_lens=seq_lens,
                        cu_seqlens_q=cu_seqlens_q, sinks=sinks)
            self.run_device()
            return self.result()



def _cache_layout(c: PagedKV) -> tuple[tuple[int, int, int], int, int, int]:
    """(strides, device bytes, offset, pages) of a cache: what a plan is specialized on."""
    return c.strides, len(c.raw), c.offset, c.num_blocks


def folded_shapes(s: PagedShapes, k_type, v_type, *, causal: bool, window: int, scale, softcap: float,
                  sinks: bool, precision: str) -> Shapes:
    """The dense call whose class picks a paged call's tiles: each GQA group's query rows of the
    longest sequence stacked on one head, over the table's capacity (a ValueError names what
    kgen cannot run)."""
    gqa = s.heads_q // s.heads_kv
    dense = Shapes(batch=s.batch, heads_q=s.heads_kv, heads_kv=s.heads_kv, n_q=max(s.q_lens) * gqa,
                   n_kv=s.max_blocks_per_seq * s.block_size, head_k=s.head_k, head_v=s.head_v, k_type=k_type,
                   v_type=v_type, causal=causal, window=window, scale=scale, softcap=softcap, sinks=sinks,
                   precision=precision)
    dense.validate()
    return dense


def paged_class(folded: Shapes, page: int) -> ProblemClass:
    """The tuning class of a paged call whose folded class is `folded`: its page size joins the key."""
    return dataclasses.replace(folded.problem(), page=page)


def choose_paged_variant(folded: Shapes, caps, page: int) -> tuple[Variant, str]:
    """(variant, how it was chosen): the tuned decision for the paged class (exact, else the
    nearest tuned bucket with the same heads, types, features and page size; kgen tune --shape
    ...,page=N tunes one), else the heuristic default."""
    decision = dispatch.lookup(caps, paged_class(folded, page))
    if decision is not None:
        return decision.variant, f"tuned, {decision.level} class {decision.source}"
    return default_paged_variant(folded, caps, page), "heuristic default"


def default_paged_variant(dense: Shapes, caps, page: int) -> Variant:
    """The heuristic paged kernel: the scalar default of the folded class, reading pages of `page`."""
    base = default_variant(dense.problem(), caps, PathKind.SCALAR)
    return base.replace(page=page, aligned=False, fused_reduce=False, v_in_k=False, kv_f16=False)


def paged_splits(v: Variant, s: PagedShapes, caps) -> int:
    """KV splits from the batch's work: chunks of one size for every sequence, sized so that the
    work items (row tiles x keys, over sequences and KV heads) make about TARGET_WORKGROUPS,
    however the lengths are spread; at least MIN_SPLIT_TILES tiles a chunk. CPUs get 1. The C dispatcher
    computes the same from the lengths the engine passes."""
    if caps.device_type == "cpu":
        return 1
    gqa, capacity = s.heads_q // s.heads_kv, s.max_blocks_per_seq * s.block_size
    work = sum(math.ceil(n * gqa / v.br) * kv for n, kv in zip(s.q_lens, s.seq_lens)) * s.heads_kv
    chunk = max(MIN_SPLIT_TILES * v.bc, math.ceil(work / TARGET_WORKGROUPS / v.bc) * v.bc)
    return max(1, min(math.ceil(capacity / chunk), capacity // v.bc))
