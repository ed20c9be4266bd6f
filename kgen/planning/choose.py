"""Which variant and how many KV splits a call runs: the tuned decision or the heuristic default."""
from __future__ import annotations

import math
from typing import Callable

from . import dispatch
from ..extent import evaluate
from ..kvtensor import KvLayout
from ..passes import converted, kernel_push, passes_before
from ..paths.coopmat1 import direct_reason
from ..paths.shared import FUSED_STATS_SLOTS
from ..render import MAX_GROUPS, mask_dims
from .recipe import SPLIT_COUNT, SPLITS, split_kv
from ..shapes import Shapes
from ..space import default_variant, why_invalid
from ..variant import PathKind, Variant


# A few workgroups per compute unit on current GPUs (132 SMs on an H100): the count that fills
# one, and so the smallest share of a GPU's throughput a workgroup running alone gets.
GROUPS_TO_FILL = 256
MAX_SUBMISSIONS = 4096   # command buffers one plan records under KGEN_MAX_SUBMIT_WORK


def split_count(shapes: Shapes, caps, br: int, bc: int) -> int:
    """KV splits that fill a GPU whose row tiles alone leave it idle (decode). CPUs get 1."""
    if caps.device_type == "cpu":
        return 1
    groups = math.ceil(shapes.n_q / br) * shapes.heads_q * shapes.batch
    return max(1, min(math.ceil(GROUPS_TO_FILL / groups), shapes.n_kv // (4 * bc)))


def group_work(shapes: Shapes, v: Variant, split_kv: int) -> int:
    """FLOPs of one FA workgroup: its row tile over its KV split, counted as KGEN_DEBUG=2 and
    fa_work count them (2 * rows * keys * (Dk + Dv)); a causal or windowed tile may do less."""
    return 2 * min(v.br, shapes.n_q) * split_kv * (shapes.head_k + shapes.head_v)


def groups_per_submission(shapes: Shapes, v: Variant, split_kv: int, work_bound: float) -> int | None:
    """How many FA workgroups one submission may hold under `work_bound` FLOPs (at least one),
    or None without a bound."""
    if not work_bound:
        return None
    return max(1, int(work_bound // group_work(shapes, v, split_kv)))


def bounded_splits(shapes: Shapes, caps, v: Variant, splits: int, work_bound: float,
                   fits_call: Callable[[Variant], "str | None"] | None = None) -> tuple[Variant, int]:
    """(variant, splits) with enough KV splits that one workgroup's FA work stays within
    work_bound / GROUPS_TO_FILL: a workgroup running alone (decode: few row tiles over a long
    KV) takes as long as the whole GPU would on GROUPS_TO_FILL of it. A variant without split_k
    turns into its split_k twin without fused_reduce where that twin is valid and fits the call;
    the count stops at the device's grid z and scratch limits. Unchanged without a bound."""
    if not work_bound:
        return v, splits
    keys = int(work_bound / GROUPS_TO_FILL // group_work(shapes, v, 1)) // v.bc * v.bc
    rows = shapes.batch * shapes.heads_q * shapes.n_q
    most = min(min(MAX_GROUPS, caps.max_workgroup_count[2]) // shapes.batch,
               caps.max_storage_buffer_range // (4 * shapes.head_v * rows), -(-shapes.n_kv // v.bc))
    want = min(-(-shapes.n_kv // max(keys, v.bc)), most)
    if want <= splits:
        return v, splits
    twin = v if v.split_k and not fused_reason(v, shapes, want) else v.replace(split_k=True, fused_reduce=False)
    twin = aligned_for(twin, shapes.n_kv)
    if why_invalid(twin, caps) is not None or (fits_call is not None and fits_call(twin) is not None):
        return v, splits
    return twin, want


def choose_variant(shapes: Shapes, caps, path: PathKind | None, splits: int | None, *,
                   tuned: bool = True, fits_call: Callable[[Variant], "str | None"] | None = None,
                   work_bound: float = 0.0) -> tuple[Variant, int, str]:
    """(variant, KV splits, how it was chosen) for these shapes: a tuned decision (see
    kgen.planning.dispatch; `fits_call` names the call's own objections to a variant) unless a
    path is forced or `tuned` is False, else the heuristic default. A tuned decision runs its
    kernel with the split count it was tuned with, as an exported table's entry does; `splits`
    given overrides it. Under `work_bound` (KGEN_MAX_SUBMIT_WORK) the count may rise further
    (bounded_splits)."""
    problem = shapes.problem()

    def fits(v: Variant, tuned_splits: int) -> str | None:
        # A bucket spans many Nq: a decision tuned on a smaller one may not serve this call.
        runs = aligned_for(v, shapes.n_kv)
        return (fused_reason(runs, shapes, splits or tuned_splits)
                or (fits_call(runs) if fits_call is not None else None))

    decision = dispatch.lookup(caps, problem, fits) if tuned and path is None else None
    if decision is not None:
        v, how = decision.variant, f"tuned, {decision.level} class {decision.source}"
        splits = splits or decision.splits
    else:
        v, how = default_variant(problem, caps, path), "heuristic default"
        if splits is None:  # whole tiles per split
            splits = max(1, min(split_count(shapes, caps, v.br, v.bc), shapes.n_kv // v.bc))
    if (splits > 1) != v.split_k:
        v = v.replace(split_k=splits > 1, fused_reduce=v.fused_reduce and splits > 1)
    v = aligned_for(v, shapes.n_kv)
    bounded, more = bounded_splits(shapes, caps, v, splits, work_bound, fits_call)
    if more != splits:
        how += f"; {more} KV splits for KGEN_MAX_SUBMIT_WORK={work_bound:g}"
    return bounded, more, how


def fused_reason(v: Variant, shapes: Shapes, splits: int) -> str | None:
    """Why `v`'s fused reduce cannot combine this call's partial rows in its shared stats, or None."""
    if not (v.fused_reduce and splits > 1):
        return None
    runs = split_values(shapes.n_kv, splits, v.bc)[1]
    rows = min(v.br, shapes.n_q)
    if runs * rows <= FUSED_STATS_SLOTS:
        return None
    return (f"split_k={splits}: {v.uri} combines at most {FUSED_STATS_SLOTS} (row, split) pairs per row "
            f"tile, here {rows} rows x {runs} splits; use fewer splits or a variant without fused_reduce")


def aligned_for(v: Variant, n_kv: int) -> Variant:
    """The twin of `v` that the call runs: without KV bounds checks exactly when Nkv is whole
    bc tiles (kgen export carries both twins of an entry and says the same)."""
    return v.replace(aligned=n_kv % v.bc == 0)


def split_values(n_kv: int, splits: int, bc: int) -> tuple[int, int]:
    """(split_kv, split_count) push values for `splits` requested (kgen.planning.recipe's
    formulas, which the export writes too)."""
    dims = {"n_kv": n_kv, SPLITS: splits}
    dims["split_kv"] = evaluate(split_kv(bc), dims)
    return dims["split_kv"], evaluate(SPLIT_COUNT, dims)


def call_dims(s: Shapes) -> dict[str, int]:
    """The call's dimensions the recipe's formulas take (kgen.extent), before the split values."""
    return dict(mask_dims(s.mask_shape or (1, 1, 1, s.n_kv)), n_q=s.n_q, n_kv=s.n_kv, n_head_q=s.heads_q,
                n_head_kv=s.heads_kv, n_batch=s.batch)


def kernel_layouts(v: Variant, kv_layouts: dict[str, KvLayout], dims: dict[str, int]) -> dict[str, KvLayout]:
    """Where the attention kernel reads K and V: the caller's layouts, or for tensors that
    kv_f16 converts, the dense f16 copy (its layout as kernel_push states it)."""
    out = dict(kv_layouts)
    push = {name: evaluate(e, dims) for name, e in kernel_push(v).items()}
    sizes = {p.kernel_binding: evaluate(p.nbytes, dims) for p in passes_before(v) if p.kernel_binding in ("k", "v")}
    for t in converted(v):
        out[t] = KvLayout(tuple(push[f"{t}_stride_{axis}"] for axis in ("row", "head", "batch")),
                          push[f"{t}_offset"], sizes[t])
    return out


def call_reason(v: Variant, s: Shapes, kv_layouts: dict[str, KvLayout]) -> str | None:
    """Why `v` cannot run on this call's K/V layouts (the direct, stream, regs and osplit
    schedules read whole 16-byte elements), or None."""
    return direct_reason(v, s.n_kv, kernel_layouts(v, kv_layouts, call_dims(s)))
