"""Tuning a paged-KV class: the scalar variants of its folded class reading pages of its size,
each checked on a small ragged batch (shuffled and shared pages, an empty sequence, a partly
filled last page) against the float64 paged reference, then timed on the class's batch.

A paged class (ProblemClass.page > 0) is the folded dense class of kgen.planning.paged_plan
(each GQA group's query rows stacked, over the block table's capacity) with the page size in
its key. The KV split count is not tuned: a plan derives it from each call's lengths
(paged_plan.paged_splits), so a decision is a kernel, stored with splits 1.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import reference
from ..paged import PagedKV, PagedShapes
from ..planning.paged_plan import PagedPlan, default_paged_variant, folded_shapes, paged_class
from ..problem import ProblemClass
from ..reference import NMSE_MAX
from ..shapes import Shapes
from ..space import enumerate_space, why_invalid
from ..timing import rotation_sets
from ..types import KvType
from ..variant import PathKind
from .candidates import Candidate
from .measure import SOFTCAP, PlanTimer, failure_types
from .search import Outcome


@dataclass(frozen=True)
class PagedBatch:
    """What a paged class is timed on: `batch` sequences of `n_q` query tokens and `n_kv` keys
    each, in pages of `block_size` tokens."""
    batch: int
    heads_q: int
    heads_kv: int
    n_q: int
    n_kv: int
    head_k: int
    head_v: int
    block_size: int
    k_type: KvType = KvType.F16
    v_type: KvType = KvType.F16
    causal: bool = False
    window: int = 0
    softcap: float = 0.0
    scale: float | None = None
    sinks: bool = False
    precision: str = "f32"

    def __post_init__(self):
        object.__setattr__(self, "k_type", KvType.parse(self.k_type))
        object.__setattr__(self, "v_type", KvType.parse(self.v_type))

    @property
    def max_blocks(self) -> int:
        return math.ceil(self.n_kv / self.block_size)

    def paged_shapes(self) -> PagedShapes:
        return PagedShapes(batch=self.batch, total_q=self.batch * self.n_q, heads_q=self.heads_q,
                           heads_kv=self.heads_kv, head_k=self.head_k, head_v=self.head_v,
                           block_size=self.block_size, max_blocks_per_seq=self.max_blocks,
                           q_lens=(self.n_q,) * self.batch, seq_lens=(self.n_kv,) * self.batch)

    def folded(self) -> Shapes:
        return folded_shapes(self.paged_shapes(), self.k_type, self.v_type, causal=self.causal or self.window > 0,
                             window=self.window, scale=self.scale, softcap=self.softcap, sinks=self.sinks,
                             precision=self.precision)

    def problem(self) -> ProblemClass:
        return paged_class(self.folded(), self.block_size)

    def describe(self) -> str:
        return (f"paged B{self.batch} Hq{self.heads_q} Hkv{self.heads_kv} Nq{self.n_q} Nkv{self.n_kv} "
                f"page{self.block_size}")


def paged_candidates(batch: PagedBatch, caps) -> tuple[list[Candidate], Candidate]:
    """The scalar variants of the folded class, reading pages; the heuristic default first."""
    folded = batch.folded()
    default = Candidate(default_paged_variant(folded, caps, batch.block_size))
    found = {default.name: default}
    for v in enumerate_space(folded.problem(), caps, (PathKind.SCALAR,)).valid:
        pv = v.replace(page=batch.block_size, aligned=False, fused_reduce=False, v_in_k=False, kv_f16=False,
                       split_k=False)
        if why_invalid(pv, caps) is None:
            found.setdefault(pv.uri, Candidate(pv))
    return list(found.values()), default


@dataclass
class Call:
    """One paged call's inputs (q, caches, table, lengths) and its float64 reference."""
    q: np.ndarray
    k: PagedKV
    v: PagedKV
    table: np.ndarray
    seq_lens: np.ndarray
    cu: np.ndarray
    sinks: np.ndarray | None

    def run(self, plan: PagedPlan) -> np.ndarray:
        return plan(self.q, self.k, self.v, block_table=self.table, seq_lens=self.seq_lens, cu_seqlens_q=self.cu,
                    sinks=self.sinks)

    def upload(self, plan: PagedPlan) -> None:
        plan.upload(self.q, self.k, self.v, block_table=self.table, seq_lens=self.seq_lens, cu_seqlens_q=self.cu,
                    sinks=self.sinks)


def random_call(b: PagedBatch, q_lens, seq_lens, rng: np.random.Generator, *, share: bool = False) -> Call:
    """Random (never zero) pages in shuffled order; with `share`, sequence 1 starts with
    sequence 0's pages (a shared prefix)."""
    need = [math.ceil(n / b.block_size) for n in seq_lens]
    width, pages = max(need + [1]), max(sum(need), 1) + 1
    order = rng.permutation(pages).astype(np.int32)
    table = np.full((len(seq_lens), width), -1, np.int32)
    at = 0
    for i, n in enumerate(need):
        table[i, :n], at = order[at:at + n], at + n
    if share and len(seq_lens) > 1:
        common = min(need[0], need[1])
        table[1, :common] = table[0, :common]
    k = PagedKV.from_array(rng.standard_normal((pages, b.block_size, b.heads_kv, b.head_k)), b.k_type)
    v = PagedKV.from_array(rng.standard_normal((pages, b.block_size, b.heads_kv, b.head_v)), b.v_type)
    q = rng.standard_normal((sum(q_lens), b.heads_q, b.head_k)).astype(np.float32)
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    sinks = rng.standard_normal(b.heads_q).astype(np.float32) if b.sinks else None
    return Call(q, k, v, table, np.array(seq_lens, np.int32), cu, sinks)


class PagedEvaluator(PlanTimer):
    """Checks and times paged candidates of one class on one device (the tuner's Evaluator)."""

    def __init__(self, batch: PagedBatch, *, device=None, seed: int = 0):
        self.batch, self.device = batch, device
        self.rng = np.random.default_rng(seed)
        self._timed: Call | None = None

    def _features(self, b: PagedBatch) -> dict:
        return dict(causal=b.causal, window=b.window or None, scale=b.scale, softcap=b.softcap)

    def check(self, c: Candidate) -> Outcome:
        b = self.batch
        # Three sequences: one over two pages and a part, an empty one, a short one; query rows
        # of the class (capped) and a single decode row.
        page = b.block_size
        check = dataclasses.replace(b, softcap=SOFTCAP if b.softcap > 0 else 0.0,
                                    window=min(b.window, page) if b.window else 0)
        q_lens = [min(b.n_q, 5), 1, min(b.n_q, 3)]
        call = random_call(check, q_lens, [2 * page + 5, 0, 37], self.rng, share=True)
        try:
            with self._plan(check, call, c) as plan:
                out = call.run(plan)
        except failure_types() as exc:
            return Outcome(c, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
        ref = reference.paged_attention(call.q, call.k, call.v, call.table, call.seq_lens, call.cu,
                                        sinks=call.sinks, **self._features(check))
        if not np.isfinite(out).all():
            return Outcome(c, "wrong", reason="NaN or Inf in the output of the check batch")
        err = reference.nmse(out, ref) if np.abs(ref).max() > 0 else float(np.abs(out).max())
        if not err <= NMSE_MAX:
            return Outcome(c, "wrong", nmse=err, reason=f"NMSE {err:.3g} > {NMSE_MAX} on the paged check batch")
        return Outcome(c, "ok", nmse=err)

    def _plan(self, b: PagedBatch, call: Call, c: Candidate) -> PagedPlan:
        return PagedPlan(call.q, call.k, call.v, block_table=call.table, seq_lens=call.seq_lens, cu_seqlens_q=call.cu,
                         sinks=call.sinks, precision=b.precision, device=self.device, variant=c.variant,
                         **self._features(b))

    @property
    def timed(self) -> Call:
        if self._timed is None:
            b = self.batch
            self._timed = random_call(b, [b.n_q] * b.batch, [b.n_kv] * b.batch, self.rng)
        return self._timed

    def time(self, c: Candidate, runs: int) -> list[float]:
        """GPU microseconds of `runs` runs (all passes), after warm-up, rotating input copies."""
        call = self.timed

        def make() -> PagedPlan:
            plan = self._plan(self.batch, call, c)
            call.upload(plan)
            return plan
        nbytes = call.q.nbytes + len(call.k.raw) + len(call.v.raw)
        return self.time_plans(make, rotation_sets(nbytes), runs)
