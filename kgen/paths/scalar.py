"""The scalar path: FMA dot products and subgroup shuffles, no matrix units. Runs everywhere.

Thread layout (templates/fa_scalar.comp.j2): a workgroup of `wg` threads owns `br` query rows.
It is cut into `row_split` row groups of `wg / row_split` threads; each row group owns
`br / row_split` rows. Inside a row group, `d_split` consecutive lanes share one q.k dot
product (each takes every d_split-th vec4 of the head) and the resulting column groups take
the KV columns of a `bc` tile round-robin. Every thread keeps its own online-softmax state
(m, l, O slice) over its columns; after the KV loop the column groups merge, first by subgroup
shuffles, then through shared memory when a row group spans several subgroups.

K and V come straight from memory (schedule base), or staged through shared memory (stage: a
tile decoded once for all row groups), or streamed (stream): each thread holds its columns of
the current tile in registers while its loads of the next tile are in flight. A decode's
workgroups have little else to hide memory latency behind; without the stream each tile waits
for its loads (H100, 128/128 GQA 4 decode: the direct loads kept 1.95 TB/s of the 2.6 that a
load-only kernel of the same grid reaches).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ..caps import Caps
from ..problem import ProblemClass
from .shared import SharedArray, coopmat1_knob_reason, fused_reduce_shared, schedule_reason
from ..variant import PathKind, Schedule, Variant

KIND = PathKind.SCALAR
# One small template for the three schedules: they differ only in how a tile's K/V are read.
TEMPLATES = dict.fromkeys((Schedule.BASE, Schedule.STAGE, Schedule.STREAM), "fa_scalar.comp.j2")

_NVIDIA, _AMD, _INTEL = 0x10DE, 0x1002, 0x8086
# Vec4 operations in one thread's fully unrolled tile step (Layout.tile_work). Compile time and
# registers grow steeply with it: on lavapipe 64 compiles in 3.5 s, 512 in 94 s, and 2176
# (576/512, 2 rows x 32 columns) ran LLVM out of memory. 1152 admits llama.cpp's heaviest
# shape (576/512 prefill: 4 rows x 8 columns, 1088).
MAX_TILE_WORK = 1152
CPU_TILE_WORK = 96  # what the default aims at on CPU drivers: a few seconds per pipeline


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check(v: Variant) -> str | None:
    """Device-independent rules of the scalar template; the reason names the field and limit."""
    if v.mat_m or v.mat_n or v.mat_k:
        return f"mat_m/n/k={v.mat_m}/{v.mat_n}/{v.mat_k}: the scalar path uses no matrices (all 0)"
    if (reason := schedule_reason(v, TEMPLATES) or coopmat1_knob_reason(v)) is not None:
        return reason
    if v.mask_tiles:
        return "mask_tiles: a coopmat2 knob (leave it False)"
    if not _pow2(v.d_split) or v.subgroup % v.d_split:
        return f"d_split={v.d_split} must be a power of two dividing subgroup={v.subgroup}"
    for name in ("head_k", "head_v"):
        if getattr(v, name) % (4 * v.d_split):
            return (f"{name}={getattr(v, name)} must be a multiple of 4*d_split={4 * v.d_split} "
                    "(each lane reads whole vec4s)")
    if v.row_split < 1 or v.br % v.row_split:
        return f"row_split={v.row_split} must be >= 1 and divide br={v.br}"
    if (v.wg // v.d_split) % v.row_split:
        return f"row_split={v.row_split} must divide wg/d_split={v.wg // v.d_split}"
    rowgroup = v.wg // v.row_split
    if rowgroup % v.subgroup and v.subgroup % rowgroup:
        # The column merge shuffles within a row group and goes through shared memory across
        # whole subgroups; a row group straddling a subgroup boundary fits neither.
        return (f"wg/row_split={rowgroup} threads per row group must divide or be a multiple of "
                f"subgroup={v.subgroup}")
    cols_per_iter = rowgroup // v.d_split
    if v.bc % cols_per_iter:
        return (f"bc={v.bc} must be a multiple of the columns per iteration "
                f"wg/d_split/row_split={cols_per_iter}")
    work = _tile_work(v)
    if work > MAX_TILE_WORK:
        return (f"rows_per_thread*cols_per_thread*(head_k+head_v)/(4*d_split)={work} exceeds "
                f"{MAX_TILE_WORK}: the unrolled per-thread tile would not compile in reasonable "
                "time or registers (lower br/row_split, bc, or raise wg/d_split)")
    return None


def _tile_work(v: Variant) -> int:
    return _work(br=v.br, bc=v.bc, wg=v.wg, row_split=v.row_split, d_split=v.d_split,
                 head_k=v.head_k, head_v=v.head_v)


def _work(*, br: int, bc: int, wg: int, row_split: int, d_split: int, head_k: int,
          head_v: int) -> int:
    rows, cols = br // row_split, bc // (wg // row_split // d_split)
    return rows * cols * (head_k + head_v) // (4 * d_split)




@dataclass(frozen=True)
class Layout:
    """Numbers derived from a valid scalar variant; the template binds them as constants."""

    rows_per_thread: int       # br / row_split: query rows each thread keeps state for
    threads_per_rowgroup: int  # wg / row_split
    cols_per_iter: int         # column groups per row group: KV columns in flight at once
    cols_per_thread: int       # bc / cols_per_iter: KV columns of a tile per thread
    shuffle_lanes: int         # lanes merged by shuffles: min(subgroup, threads_per_rowgroup)
    dot_steps: int             # log2(d_split): shuffle-xor steps summing one dot product
    merge_steps: int           # log2(shuffle_lanes / d_split): steps merging column groups
    rowgroup_subgroups: int    # subgroups per row group merged through shared memory (1: none)
    hk4: int                   # head_k / 4
    hv4: int                   # head_v / 4
    hk4_per_thread: int        # head_k / 4 / d_split: vec4s of each q.k per lane
    hv4_per_thread: int        # head_v / 4 / d_split: vec4s of the O row per lane
    tile_work: int             # rows x cols x (hk4 + hv4) per thread: the unrolled tile's size
    q_stride4: int             # vec4s per Q row in shared memory (padded by one: banks)
    kv_stride4: int            # vec4s per staged K/V row (0 without staging)
    tile_type: str             # shared Q/K/V element: vec4 (acc 32) or f16vec4 (acc 16)
    acc_type: str              # O accumulator and P: vec4/float or f16vec4/float16_t
    acc_scalar: str
    k_reg_type: str            # stream: a K vec4 in registers (common/decode.glsl NAME_raw4)
    v_reg_type: str
    shared: tuple[SharedArray, ...]

    fused: tuple[SharedArray, ...] = ()  # fused_reduce's arrays (split_reduce.glsl declares them)

    @property
    def shared_bytes(self) -> int:
        """Bytes of every `shared` array the rendered template declares (exact: it declares
        exactly `shared` and `fused`)."""
        return sum(a.bytes for a in self.shared + self.fused)


def layout(v: Variant) -> Layout:
    rowgroup = v.wg // v.row_split
    cols_per_iter = rowgroup // v.d_split
    rowgroup_subgroups = max(1, rowgroup // v.subgroup)
    tile_type = "f16vec4" if v.acc == 16 else "vec4"
    q_stride4 = v.head_k // 4 + 1
    staged = v.schedule is Schedule.STAGE
    kv_stride4 = max(v.head_k, v.head_v) // 4 + 1 if staged else 0
    shared = [SharedArray("sh_q", tile_type, v.br * q_stride4,
                          "Q tile, one padded row per query row")]
    if staged:
        shared.append(SharedArray("sh_kv", tile_type, v.bc * kv_stride4,
                                  "K tile, then V tile, decoded; one padded row per KV column"))
    if rowgroup_subgroups > 1:
        shared.append(SharedArray("sh_o", tile_type, v.br * rowgroup_subgroups * (v.head_v // 4),
                                  "per-subgroup partial O rows for the final merge"))
        shared.append(SharedArray("sh_ml", "vec2", v.br * rowgroup_subgroups,
                                  "per-subgroup (m, l) for the final merge"))
    return Layout(
        rows_per_thread=v.br // v.row_split,
        threads_per_rowgroup=rowgroup,
        cols_per_iter=cols_per_iter,
        cols_per_thread=v.bc // cols_per_iter,
        shuffle_lanes=min(v.subgroup, rowgroup),
        dot_steps=v.d_split.bit_length() - 1,
        merge_steps=(min(v.subgroup, rowgroup) // v.d_split).bit_length() - 1,
        rowgroup_subgroups=rowgroup_subgroups,
        hk4=v.head_k // 4,
        hv4=v.head_v // 4,
        hk4_per_thread=v.head_k // 4 // v.d_split,
        hv4_per_thread=v.head_v // 4 // v.d_split,
        tile_work=_tile_work(v),
        q_stride4=q_stride4,
        kv_stride4=kv_stride4,
        tile_type=tile_type,
        acc_type="f16vec4" if v.acc == 16 else "vec4",
        acc_scalar="float16_t" if v.acc == 16 else "float",
        k_reg_type=_reg_type(v.k_type),
        v_reg_type=_reg_type(v.v_type),
        shared=tuple(shared),
        fused=fused_reduce_shared(v),
    )


def _reg_type(t) -> str:
    """What NAME_raw4 returns for KV type t (common/decode.glsl): f16 stays f16, exactly."""
    return "f16vec4" if t.label == "f16" else "vec4"


def supports(caps: Caps) -> str | None:
    # Every K/V type and the f16 mask are read through 16-bit storage. Subgroup shuffles are not
    # in Caps; every Vulkan 1.1+ driver kgen targets (lavapipe included) has them.
    if not caps.storage_buffer_16bit:
        return ("the scalar path reads K, V and the mask through 16-bit storage "
                "(storageBuffer16BitAccess)")
    return None


def device_reason(v: Variant, caps: Caps) -> str | None:
    # Shared memory, workgroup size, subgroup size and acc16 are the common checks (kgen/space.py).
    return None


# --- tuning space --------------------------------------------------------------------------
def _subgroups(caps: Caps) -> list[int]:
    """The device's size, and with size control the others from 16 up (8 lanes leave too few
    column groups per row group to be worth a pipeline)."""
    sizes = [caps.subgroup_size]
    if caps.subgroup_size_control:
        s = max(16, caps.min_subgroup_size)
        while s <= caps.max_subgroup_size:
            if s not in sizes:
                sizes.append(s)
            s *= 2
    return sizes


def _tile_rows(nq_bucket: int, big_head: bool) -> tuple[int, ...]:
    """br choices per nq bucket (kgen/problem.py NQ_BUCKETS: 1, 2-8, 9-64, 65-512, >512); heads
    of 256 and more never fit 32 rows in shared memory, so they get 4 instead."""
    many = (4, 8, 16) if big_head else (8, 16, 32)
    return ((1,), (1, 2, 4, 8), (4, 8, 16), many, many)[nq_bucket]


def _natural_d_split(head_k: int, head_v: int, subgroup: int) -> int:
    """llama.cpp: min(subgroup, 8, lowest set bit of (hk|hv) / 4)."""
    low = (head_k | head_v) & -(head_k | head_v)
    return max(1, min(subgroup, 8, low // 4))


def candidates(problem: ProblemClass, caps: Caps) -> Iterator[dict]:
    common = dict(path=KIND, head_k=problem.head_k, head_v=problem.head_v,
                  k_type=problem.k_type, v_type=problem.v_type, acc=problem.acc,
                  aligned=False, **problem.feature_flags())
    big_head = max(problem.head_k, problem.head_v) >= 256
    for sg in _subgroups(caps):
        nat = _natural_d_split(problem.head_k, problem.head_v, sg)
        # Half the natural split (more columns in flight); twice it for big heads and decodes
        # (fewer registers per lane). check() drops the ones that do not divide the heads.
        decode = problem.nq_bucket <= 1
        wide = big_head or decode
        d_splits = {max(1, nat // 2), nat} | ({2 * nat} if wide and 2 * nat <= sg else set())
        # Small subgroups give few column groups per row group: offer narrower tiles and 128
        # threads so that the unrolled tile stays under MAX_TILE_WORK. A decode also gets 8
        # subgroups and the stream schedule: more loads in flight per workgroup when few
        # workgroups share the GPU.
        small_sg = sg < 32
        bcs = (16,) * small_sg + (32, 64) + (128,) * (problem.nq_bucket == 0)
        wgs = {4 * sg, 128} if small_sg else {2 * sg, 4 * sg} | ({sg} if sg >= 64 else set())
        wgs |= {8 * sg} if decode and not small_sg else set()
        # K/V loaded straight, staged, and for a decode streamed.
        schedules = [Schedule.BASE, Schedule.STAGE] + [Schedule.STREAM] * decode
        for wg in sorted(wgs):
            if wg > caps.max_workgroup_invocations:
                continue
            for d_split, row_split, br in itertools.product(
                    sorted(d_splits), (1, 4), _tile_rows(problem.nq_bucket, big_head)):
                if row_split > br:
                    continue
                for bc in bcs:
                    for schedule in schedules:
                        yield dict(common, br=br, bc=bc, wg=wg, subgroup=sg, d_split=d_split,
                                   row_split=row_split, schedule=schedule)


def default(problem: ProblemClass, caps: Caps) -> Variant:
    """llama.cpp's scalar heuristic (get_fa_tuning_params_scalar), then shrink to fit."""
    n_rows, hk, hv = problem.n_q, problem.head_k, problem.head_v
    sg = caps.subgroup_size
    if (caps.vendor_id == _AMD and n_rows < 4 and caps.subgroup_size_control
            and caps.min_subgroup_size <= 32 <= caps.max_subgroup_size):
        sg = 32
    row_split = 1 if n_rows < 4 or hk <= 64 else 4
    small = n_rows < 4 or hk < (128 if row_split == 1 else 64)
    wg = 2 * sg if sg > 32 and small else 4 * sg
    while wg > caps.max_workgroup_invocations and wg > sg:
        wg //= 2
    reduce_rows = bool((hk | hv) & 8) or problem.n_kv < 1024 or caps.vendor_id == _INTEL
    if n_rows == 1:
        br, bc = 1, 64
    else:
        if row_split == 1:
            br = 2 if n_rows == 2 else 4 if n_rows <= 4 or reduce_rows else 8
        else:
            br = 4 if n_rows <= 4 else 8 if n_rows <= 8 or reduce_rows else 16
        bc = 64 if (hk | hv) % 16 else 32
    d_split = _natural_d_split(hk, hv, sg)
    # llama.cpp stages on NVIDIA below head 256. Not for one query row: nothing reuses the staged
    # tile there (H100, 128/128 f16 decode, Nkv 16384: 592 us staged, 97 us direct).
    staging = caps.vendor_id == _NVIDIA and hk < 256 and hv < 256 and br > 1
    common = dict(path=KIND, head_k=hk, head_v=hv, k_type=problem.k_type, v_type=problem.v_type,
                  wg=wg, acc=problem.acc, subgroup=sg, d_split=d_split, aligned=False,
                  **problem.feature_flags())
    row_split = min(row_split, br)
    bc = max(bc, wg // row_split // d_split)  # at least one column per column group
    limit = MAX_TILE_WORK
    if caps.device_type == "cpu":  # lavapipe: one row per thread and a small unrolled tile
        br, limit = row_split, CPU_TILE_WORK

    def work() -> int:
        return _work(br=br, bc=bc, wg=wg, row_split=row_split, d_split=d_split, head_k=hk,
                     head_v=hv)
    # Narrower tiles first (keeps rows per workgroup), then fewer rows.
    while work() > limit:
        if bc % (2 * (wg // row_split // d_split)) == 0:
            bc //= 2
        elif br > row_split:
            br //= 2
        else:
            break
    v = _tile(common, br=br, bc=bc, row_split=row_split,
              schedule=Schedule.STAGE if staging else Schedule.BASE)
    # Shared memory: drop staging first, then halve br (llama.cpp halves Br).
    while layout(v).shared_bytes > caps.max_shared_memory:
        if v.schedule is Schedule.STAGE:
            v = v.replace(schedule=Schedule.BASE)
        elif v.br > 1:
            v = _tile(common, br=v.br // 2, bc=bc, row_split=v.row_split, schedule=Schedule.BASE)
        else:
            break
    return v


def _tile(common: dict, *, br: int, bc: int, row_split: int, schedule: Schedule) -> Variant:
    """A Variant with row_split <= br and bc grown to a whole number of column groups."""
    row_split = min(row_split, br)
    cols_per_iter = common["wg"] // row_split // common["d_split"]
    bc = max(bc, cols_per_iter)
    return Variant(**common, br=br, bc=bc, row_split=row_split, schedule=schedule)
