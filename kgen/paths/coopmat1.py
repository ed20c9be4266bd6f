"""The coopmat1 path: VK_KHR_cooperative_matrix at subgroup scope, K/V decoded into shared memory.

One top template per schedule (TEMPLATES), each extending templates/coopmat1/frame.glsl.
Per KV tile of `bc` columns (the base and stage schedules, templates/coopmat1/fa_staged.comp.j2):
  1. S = Q K^T on matrix units, f32 accumulators. Q (f16) sits in shared memory for the whole
     kernel; K is decoded to f16 into shared memory `k_chunk` head columns at a time, and each
     subgroup keeps its S tiles in registers across the chunks.
  2. S goes to shared memory; `tpr` adjacent lanes of one subgroup own each row and run the
     online softmax in f32 (score modifiers, running max m and sum l), writing P (f16) and the
     row's rescale factor exp(m_old - m_new).
  3. O = diag(alpha) O + P V on matrix units. O stays in accumulator tiles owned by subgroups;
     the per-row rescale is a component-wise product with a tile loaded from a row-broadcast
     array. V is decoded `v_rows` KV rows at a time.
Head sizes are zero-padded to the matrix dimensions in shared memory. The stage schedule stages
whole K and V tiles at once (fewest barriers); the base schedule streams K over the head
dimension and V over KV rows, which is what lets 576/512 (MLA) fit in 48 KiB. Staging steps are
software-pipelined: each thread loads the next step into registers while the current one is
multiplied.

The direct schedule (f16 K and V only) skips the staging: every subgroup loads its K^T and V
operands straight from the buffers (16-byte elements), so a tile costs two barriers instead of
two per staging step and all of a tile's loads can be in flight at once: what decode, which is a
stream over K and V, needs. The V of MLA (the first head_v columns of K's rows) is then read
from the rows the same workgroup just read as K, from the cache. The last tile of an unaligned
range is read from Nkv - bc (the plan guarantees Nkv >= bc) and keys already seen are masked.

The stream schedule (f16 K/V, one row tile: decode) is a stream over K and V: every thread loads
its share of the whole next K and V tile (and mask) in 16-byte loads, issued before the current
tile's products, so a tile's bytes are in flight while the last one is worked on. S is split
over head depth (each subgroup keeps its Q operands in registers and multiplies its depth steps
for all columns; the softmax adds the partial sums), so no subgroup waits on Q in shared memory
and 576-wide heads (MLA) need no Q tile. With `v_in_k` (MLA) P V reads V's columns from the K
tile: nothing of V is loaded or staged.

The regs schedule (f16 K/V, f32 O: prefill) is FlashAttention-2 on coopmat1: each subgroup owns
one or two tiles of mat_m query rows (br = subgroups * mat_m * row tiles) and keeps their S, P
and O in registers; with two, every K and V operand read from shared memory serves both. The
softmax works on the accumulator elements themselves: a fragment scheme (`frag_scheme`,
kgen/paths/fragments.py, probed on the device) says which elements share a row and which lanes
hold the rest of it, so the row max is a few xor shuffles and P becomes the A operand of P V in
place. Only the K and V tiles go through shared memory (whole tiles as 16-byte elements; the
next K tile is loaded during P V, the V tile during S and the softmax), so a tile costs three
barriers and no S/P round trip. Q's operands stay in registers up to REGS_Q_STEPS of them, else
in shared memory. `split_sync` replaces those barriers: each subgroup counts its arrival (K tile
read, V tile stored, ...) in shared memory and waits only until the tile it reads next is
complete, so a subgroup can run a phase ahead of the slowest one (the H100 ran P1 with no
barriers at all in 411 us against 565: the cost was the lockstep, not the work). Waiting on
other subgroups needs them to make progress independently, which kgen relies on only on NVIDIA.

The osplit schedule (with `v_in_k`: MLA prefill, 576/512) is regs for V heads too wide for one
subgroup's O registers. Subgroup (row tile, column group) owns one mat_m x mat_k S block per KV
tile. The row tile's subgroups split the q.k depth instead of the columns while they compute S
(each sums its depth part of every block of the row tile, and the partial blocks go to their
owners through shared memory), so each Q operand is read once per row tile; the blocks' row
maxima meet in shared memory; P goes there in A-fragment order; each subgroup then multiplies
all br rows of P by its head_v / subgroups columns of V, read from the K tile already in shared
memory (V is K's first head_v columns). Q is read from the cache in A-fragment order (a pass
before the kernel writes it), since 64 rows of 576 halves would not fit in shared memory beside
the K tile.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from ..caps import Caps
from ..errors import InvalidVariant
from .fragments import SCHEMES, RegLayout, mask_frag_tiles, reg_layout, scheme_reason
from ..problem import ProblemClass
from ..types import KvType
from .shared import SharedArray, schedule_reason
from ..variant import PathKind, Schedule, Variant

KIND = PathKind.COOPMAT1
# Base and stage run one kernel: only the layout's chunk sizes differ.
TEMPLATES = {Schedule.BASE: "coopmat1/fa_staged.comp.j2",
             Schedule.STAGE: "coopmat1/fa_staged.comp.j2",
             Schedule.DIRECT: "coopmat1/fa_direct.comp.j2",
             Schedule.STREAM: "coopmat1/fa_stream.comp.j2",
             Schedule.REGS: "coopmat1/fa_regs.comp.j2",
             Schedule.OSPLIT: "coopmat1/fa_osplit.comp.j2"}

MAT_DIMS = (8, 16, 32)   # matrix dimensions the template accepts (devices list their own)
BR_MAX, BC_MAX = 128, 256
K_CHUNK = 64             # head columns of K per staging step of the base schedule
Q_BATCH = 8              # global vec4 loads of Q each thread keeps in flight
STAGED_MAX = 32          # vec4s per thread of one K/V staging step (held in registers)
STREAM_STAGED_MAX = 24   # stream: 16-byte K+V elements per thread of one tile in flight
REGS_STAGED_MAX = 16     # regs: 16-byte K (or V) elements per thread of one tile in flight
REGS_HSV_MAX = 256       # regs: O of mat_m rows x head_v stays in registers (128 per lane)
REGS_Q_STEPS = 16        # regs: Q operands kept in registers up to this many (row tiles x
                         # depth steps: 64 registers per lane), else read from Qsh every tile
REGS_ROW_TILES = (1, 2)  # regs: tiles of mat_m rows per subgroup; two reuse every K and V
                         # operand read from shared memory twice
NVIDIA = 0x10DE          # split_sync: the vendor whose subgroups kgen lets spin on each other
STREAM_MAX_ROWS = 64     # the stream schedule is offered up to this many (GQA-folded) query
                         # rows: every row tile streams all of K and V, the ones after the first
                         # from L2
F16_PAD, F32_PAD = 8, 4  # row padding in elements (16 bytes): rows stay 16-byte aligned, as
                         # coopMatLoad/Store require, and consecutive rows shift banks
# Bytes per element of the shared array types the template declares.


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def check(v: Variant) -> str | None:
    """Device-independent rules of the coopmat1 templates; the reason names the field and limit."""
    if (reason := schedule_reason(v, TEMPLATES)) is not None:
        return reason
    if v.d_split or v.row_split:
        return (f"d_split={v.d_split}, row_split={v.row_split}: the coopmat1 path splits work "
                "by matrix tiles and uses neither (both 0)")
    for name in ("mat_m", "mat_n", "mat_k"):
        if getattr(v, name) not in MAT_DIMS:
            return f"{name}={getattr(v, name)}: coopmat1 matrix dimensions are one of {MAT_DIMS}"
    if v.br % v.mat_m or v.br > BR_MAX:
        return f"br={v.br} must be a multiple of mat_m={v.mat_m} and at most {BR_MAX}"
    if v.bc % v.mat_n or v.bc % v.mat_k or v.bc > BC_MAX:
        return (f"bc={v.bc} must be a multiple of mat_n={v.mat_n} (S columns) and of "
                f"mat_k={v.mat_k} (P.V depth), and at most {BC_MAX}")
    if v.mask_tiles:
        return "mask_tiles: a coopmat2 knob (leave it False)"
    if v.fused_reduce:
        # Built and run on the H100 (tests/device/test_fused_reduce.py): with the call at the end of the
        # kernel, the coopmat1 staged and stream kernels wrote wrong partial rows and stats even
        # when the call returned at once; without it they were right. Until that is understood,
        # coopmat1 leaves splits to the reduce pass.
        return "fused_reduce: not on the coopmat1 path (leave it False; scalar and coopmat2 have it)"
    if v.v_in_k and v.schedule not in (Schedule.STREAM, Schedule.OSPLIT):
        return (f"v_in_k with schedule={v.schedule}: only the stream and osplit kernels read V "
                "from K's tile (leave it False)")
    if v.schedule is Schedule.OSPLIT:
        return _osplit_reason(v)
    if v.schedule is Schedule.REGS:
        return _regs_reason(v)  # its softmax works on the accumulators: no lanes-per-row rule
    # Softmax: each row is owned by tpr adjacent lanes that reduce by xor shuffles.
    if v.wg >= v.br:
        tpr = v.wg // v.br
        if v.wg % v.br or not _pow2(tpr) or v.subgroup % tpr:
            return (f"wg={v.wg}, br={v.br}: wg/br={v.wg / v.br:g} lanes per softmax row must be a "
                    f"power of two dividing subgroup={v.subgroup}")
        if v.bc % tpr:
            return f"bc={v.bc} must be a multiple of the lanes per softmax row wg/br={tpr}"
    elif v.br % v.wg:
        return f"br={v.br} must be a multiple of wg={v.wg} when wg < br (rows per thread)"
    if v.schedule is Schedule.STREAM:
        if v.k_type != KvType.F16 or v.v_type != KvType.F16:
            return (f"schedule=stream with {v.k_type}/{v.v_type} K/V: it copies f16 rows in "
                    "16-byte loads")
        if v.br != v.mat_m:
            return f"schedule=stream: br={v.br} must be mat_m={v.mat_m} (one row tile: decode)"
        if v.bc < v.br:
            return (f"schedule=stream: bc={v.bc} must be at least br={v.br} (Q is staged in K's "
                    "rows)")
        staged = layout(v).staged
        if staged > STREAM_STAGED_MAX:
            return (f"schedule=stream: bc={v.bc}, wg={v.wg}: a tile is {staged} 16-byte loads per "
                    f"thread, held in registers; at most {STREAM_STAGED_MAX}")
        return None
    if v.schedule is Schedule.DIRECT:
        if v.k_type != KvType.F16 or v.v_type != KvType.F16:
            return (f"schedule=direct with {v.k_type}/{v.v_type} K/V: only f16 loads straight into "
                    "matrix operands; other types are decoded through shared memory")
        if v.head_k % v.mat_k or v.head_v % v.mat_n:
            return (f"schedule=direct: head_k={v.head_k} must be a multiple of mat_k={v.mat_k} and "
                    f"head_v={v.head_v} of mat_n={v.mat_n}: operands come straight from K and V "
                    "rows, with no zero padding")
    staged = layout(v).staged
    if staged > STAGED_MAX:
        return (f"bc={v.bc}, wg={v.wg}, schedule={v.schedule}: a K/V staging step is {staged} "
                f"vec4 loads per thread, held in registers; at most {STAGED_MAX}")
    return None




def _regs_reason(v: Variant) -> str | None:
    if v.k_type != KvType.F16 or v.v_type != KvType.F16:
        return (f"schedule=regs with {v.k_type}/{v.v_type} K/V: it copies f16 rows in 16-byte "
                "loads (quantized caches: use kv_f16)")
    if v.acc != 32:
        return f"schedule=regs with acc={v.acc}: O is accumulated in f32 registers (acc=32)"
    nsg = v.wg // v.subgroup
    if v.br not in [nsg * v.mat_m * rt for rt in REGS_ROW_TILES]:
        return (f"schedule=regs: br={v.br} must be subgroups * mat_m * (1 or 2) = {nsg} * "
                f"{v.mat_m} * row tiles (each subgroup owns one or two tiles of mat_m rows)")
    row_tiles = v.br // (nsg * v.mat_m)
    if row_tiles * v.head_v > REGS_HSV_MAX:
        return (f"schedule=regs: head_v={v.head_v} with {row_tiles} row tile(s) per subgroup: O "
                f"stays in registers, row tiles * head_v at most {REGS_HSV_MAX}")
    if v.split_sync and row_tiles != 1:
        # Two row tiles per subgroup with split_sync gave wrong rows on the H100 (256/128 heads,
        # br 128, bc 16, a mask; both schemes), one row tile is right everywhere tested. Not
        # understood yet, and the tuner times one row tile only, so it is refused.
        return (f"split_sync with br={v.br}: one row tile per subgroup (br = subgroups * mat_m = "
                f"{nsg * v.mat_m}); two are not verified")
    return _scheme_and_staging_reason(v, "K or V tile")


def _scheme_and_staging_reason(v: Variant, tile: str) -> str | None:
    """The last rules of both register kernels: a fragment scheme defined for the matrix shape,
    and the next `tile` held in registers within REGS_STAGED_MAX 16-byte loads per thread."""
    try:
        reg_layout(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k)
    except ValueError as e:
        return str(e)
    staged = layout(v).staged
    if staged > REGS_STAGED_MAX:
        return (f"schedule={v.schedule}: bc={v.bc}, wg={v.wg}: a {tile} is {staged} 16-byte loads "
                f"per thread, held in registers; at most {REGS_STAGED_MAX}")
    return None


OSPLIT_O_MAX = 128  # osplit: f32 O elements per lane (all of the workgroup's rows, its columns)


def _osplit_reason(v: Variant) -> str | None:
    """osplit: subgroup (row tile, column group) owns one mat_m x mat_k S block per KV tile;
    O is split by columns over the subgroups; V is read from the K tile."""
    if not v.v_in_k:
        return ("schedule=osplit needs v_in_k: the kernel reads V from K's tile in shared memory "
                "(a separate V tile is not implemented)")
    if v.k_type != KvType.F16:
        return (f"schedule=osplit with {v.k_type} K: it copies f16 rows in 16-byte loads "
                "(quantized caches: use kv_f16)")
    if v.acc != 32:
        return f"schedule=osplit with acc={v.acc}: O is accumulated in f32 registers (acc=32)"
    if (v.mat_m, v.mat_k) != (16, 16):
        return (f"schedule=osplit: mat_m={v.mat_m}, mat_k={v.mat_k} must be 16 and 16 (a "
                "subgroup's S block is one P depth step, and Q, P and the mask are 16-byte "
                "fragments)")
    groups = (v.br // v.mat_m) * (v.bc // v.mat_k)
    if groups != v.wg // v.subgroup:
        return (f"schedule=osplit: br={v.br}, bc={v.bc}: subgroups must be (br / {v.mat_m}) * "
                f"(bc / {v.mat_k}) = {groups}, one per S block; wg={v.wg} has {v.wg // v.subgroup}")
    if v.head_v % (groups * v.mat_n):
        return (f"schedule=osplit: head_v={v.head_v} must be a multiple of subgroups * mat_n = "
                f"{groups * v.mat_n} (O columns are split evenly over the subgroups)")
    per_lane = v.br * v.head_v // v.wg
    if per_lane > OSPLIT_O_MAX:
        return (f"schedule=osplit: br={v.br}, head_v={v.head_v}, wg={v.wg}: O is {per_lane} f32 "
                f"registers per lane, at most {OSPLIT_O_MAX}")
    return _scheme_and_staging_reason(v, "K tile")


@dataclass(frozen=True)
class Layout:
    """Numbers derived from a valid coopmat1 variant; the template binds them as constants.
    Strides and chunk widths are in elements (f16 halves or f32 floats), never bytes."""

    subgroups: int        # wg / subgroup
    hsk_pad: int          # head_k rounded up to mat_k (q.k depth); padding is zero
    hsv_pad: int          # head_v rounded up to mat_n (O columns); padding is zero
    q_stride: int         # halves between Q rows in shared memory
    k_chunk: int          # K head columns decoded per staging step
    k_chunks: int         # staging steps per tile: ceil(hsk_pad / k_chunk); the last may be short
    k_stride: int         # halves between staged K rows
    v_rows: int           # V rows (KV columns) decoded per staging step
    v_chunks: int         # bc / v_rows
    v_stride: int         # halves between staged V rows
    s_stride: int         # floats between S rows
    p_stride: int         # halves between P rows
    s_cols: int           # S tiles per tile row: bc / mat_n
    s_tiles: int          # (br / mat_m) * s_cols, dealt round-robin to subgroups
    s_per_sg: int         # ceil(s_tiles / subgroups)
    o_cols: int           # O tiles per tile row: hsv_pad / mat_n
    o_tiles: int          # (br / mat_m) * o_cols, dealt round-robin to subgroups
    o_per_sg: int         # ceil(o_tiles / subgroups): accumulators each subgroup keeps
    tpr: int              # lanes per softmax row
    row_groups: int       # rows handled at once: wg / tpr
    rows_per_thread: int  # br / row_groups
    q_batch: int          # vec4 loads of Q in flight per thread: min(Q_BATCH, its share)
    k_step: int           # vec4s per thread of one K staging step: bc * k_chunk / 4 / wg
    v_step: int           # vec4s per thread of one V staging step: v_rows * hsv_pad / 4 / wg
    staged: int           # max(k_step, v_step): registers holding the step in flight
    k_batch: int          # direct: K operands loaded before their products (a divisor of
    v_batch: int          # the head's / the tile's depth steps): loads in flight per subgroup
    ks_steps: int         # stream: depth steps of q.k (hsk_pad / mat_k), dealt to subgroups
    ks_per_sg: int        # stream: ceil(ks_steps / subgroups): Q operands each subgroup holds
    s_parts: int          # stream: subgroups with depth steps (partial S tiles to add)
    m_step: int           # stream: mask values per thread of one tile
    o_type: str           # O accumulator component: float (acc 32) or float16_t (acc 16)
    row_max_offset: float  # added to the row max: 3 ln 2 with f16 O (every p <= 1/8), else 0
    shared: tuple[SharedArray, ...]
    q_regs: bool = False  # regs: Q's operands in registers (else read from Qsh per tile)
    row_tiles: int = 1    # regs: tiles of mat_m rows each subgroup owns
    frag: RegLayout | None = None  # regs, osplit: the fragment scheme's numbers
    mask_frag: int = 0             # regs, osplit with a mask: S tiles per 16-byte element of the
                                   # fragment-ordered mask (kgen.render.render_mask_frag); 0: scalars
    split_cols: int = 0            # osplit: O columns each subgroup owns
    depth_parts: int = 1           # osplit: subgroups of a row tile summing one S block's q.k depth

    @property
    def shared_bytes(self) -> int:
        """Bytes of every `shared` array the rendered template declares (it declares exactly
        `shared`, so this is exact)."""
        return sum(a.bytes for a in self.shared)


def _v_rows(v: Variant, k_buffer: int, v_stride: int) -> int:
    """The most V rows per staging step that divide bc and fit the K staging buffer (at least
    mat_k: one P.V depth step); the whole tile in the stage schedule."""
    if v.schedule is Schedule.STAGE:
        return v.bc
    budget = max(k_buffer, v.mat_k * v_stride)
    best = v.mat_k
    for rows in range(v.mat_k, v.bc + 1, v.mat_k):
        if v.bc % rows == 0 and rows * v_stride <= budget:
            best = rows
    return best


DIRECT_BATCH = 12  # direct: operands one subgroup loads before multiplying: each waits on
                   # memory, so they go out together (4 registers per 16x16 f16 operand)


def _batch(steps: int) -> int:
    """The largest divisor of `steps` up to DIRECT_BATCH: whole batches, no remainder code."""
    return max(d for d in range(1, min(steps, DIRECT_BATCH) + 1) if steps % d == 0)


def _per_thread(vec4s: int, wg: int) -> int:
    return -(-vec4s // wg)


def _stream_layout(v: Variant, nsg: int, hsk_pad: int, hsv_pad: int) -> dict:
    """The fields that differ for the stream schedule: whole K/V tiles in 16-byte elements, S
    partial tiles per subgroup, Q staged once in K's rows."""
    k_stride, v_stride, s_stride = hsk_pad + F16_PAD, hsv_pad + F16_PAD, v.bc + F32_PAD
    ks_steps = hsk_pad // v.mat_k
    k_step = _per_thread(v.bc * v.head_k // 8, v.wg)
    # v_in_k: P V reads V's columns from the K tile (MLA), so V is neither loaded nor staged.
    v_step = 0 if v.v_in_k else _per_thread(v.bc * v.head_v // 8, v.wg)
    shared = (
        SharedArray("Ksh", "uvec4", v.bc * k_stride // 8, "K tile (bc rows, 16-byte elements); Q before the loop"),
        *(() if v.v_in_k else (SharedArray("Vsh", "uvec4", v.bc * v_stride // 8,
                                           "V tile (bc rows, 16-byte elements)"),)),
        SharedArray("Ssh", "float", max(min(nsg, ks_steps) * v.br * s_stride, nsg * v.mat_m * v.mat_n),
                    "one partial S = Q K^T per subgroup (f32); per-subgroup output staging at the end"),
        SharedArray("Psh", "float16_t", v.br * (v.bc + F16_PAD), "P = exp(S - m), the A operand of P V"),
        SharedArray("Rsh", "float", v.br * v.mat_n,
                    "per-row factor repeated mat_n times: a coopmat load broadcasts it over a tile"),
        *((SharedArray("Msh", "float16_t", v.br * v.bc, "the tile's mask values"),) if v.mask else ()),
    )
    return dict(q_stride=k_stride, k_chunk=hsk_pad, k_chunks=1, k_stride=k_stride, v_rows=v.bc,
                v_chunks=1, v_stride=v_stride, s_stride=s_stride, k_step=k_step, v_step=v_step,
                staged=k_step + v_step, ks_steps=ks_steps, ks_per_sg=-(-ks_steps // nsg),
                s_parts=min(nsg, ks_steps), m_step=_per_thread(v.br * v.bc, v.wg), shared=shared)


def _regs_layout(v: Variant, hsk_pad: int, hsv_pad: int) -> dict:
    """regs: whole K and V tiles in 16-byte elements; Q in registers or in Qsh; no S, P
    or row-factor arrays."""
    k_stride, v_stride = hsk_pad + F16_PAD, hsv_pad + F16_PAD
    row_tiles = v.br // (v.wg // v.subgroup * v.mat_m)
    q_regs = row_tiles * hsk_pad // v.mat_k <= REGS_Q_STEPS
    k_step = _per_thread(v.bc * v.head_k // 8, v.wg)
    v_step = _per_thread(v.bc * v.head_v // 8, v.wg)
    shared = (
        SharedArray("Ksh", "uvec4", v.bc * k_stride // 8,
                    "K tile (bc rows, 16-byte elements); Q rows on their way to registers first"),
        SharedArray("Vsh", "uvec4", v.bc * v_stride // 8, "V tile (bc rows, 16-byte elements)"),
        *(() if q_regs else (SharedArray("Qsh", "uvec4", v.br * k_stride // 8,
                                         "Q tile (f16, 16-byte elements), read every tile"),)),
        *((SharedArray("sync_count", "uint", 4, "split_sync: subgroup arrivals per event"),)
          if v.split_sync else ()),
    )
    return dict(q_stride=k_stride, k_chunk=hsk_pad, k_chunks=1, k_stride=k_stride, v_rows=v.bc,
                v_chunks=1, v_stride=v_stride, k_step=k_step, v_step=v_step,
                staged=max(k_step, v_step), ks_steps=hsk_pad // v.mat_k, shared=shared,
                q_regs=q_regs, row_tiles=row_tiles,
                frag=reg_layout(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k),
                mask_frag=mask_frag_tiles(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k) if v.mask else 0)


def _osplit_layout(v: Variant, nsg: int, hsk_pad: int) -> dict:
    """osplit: the K tile (which holds V too), P in A-fragment order, per-row exchange."""
    k_stride = hsk_pad + F16_PAD
    k_step = _per_thread(v.bc * v.head_k // 8, v.wg)
    depth_parts = v.bc // v.mat_k  # a row tile's subgroups split its q.k depth this many ways
    part_vecs = v.mat_m * v.mat_k // v.subgroup // 4  # 16-byte elements per lane of one S block
    shared = (
        SharedArray("Ksh", "uvec4", v.bc * k_stride // 8, "K tile (bc rows, 16-byte elements); V is its first head_v columns"),
        SharedArray("Psh", "uvec4", nsg * v.subgroup * max(1, (depth_parts - 1) * part_vecs),
                    "P (f16) of every S block in A-fragment order: [row tile][column group][lane]; "
                    "before that, the partial S sums of the depth split"),
        SharedArray("Xsh", "float", v.bc // v.mat_k * v.br,
                    "per column group and row: the block's row max, at the end its row sum"),
    )
    return dict(q_stride=k_stride, k_chunk=hsk_pad, k_chunks=1, k_stride=k_stride, v_rows=v.bc,
                v_chunks=1, v_stride=k_stride, k_step=k_step, v_step=0, staged=k_step,
                ks_steps=hsk_pad // v.mat_k, shared=shared, row_tiles=v.br // v.mat_m,
                frag=reg_layout(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k),
                mask_frag=mask_frag_tiles(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k) if v.mask else 0,
                split_cols=v.head_v // nsg, depth_parts=depth_parts)


def layout(v: Variant) -> Layout:
    nsg = v.wg // v.subgroup
    hsk_pad = _round_up(v.head_k, v.mat_k)
    hsv_pad = _round_up(v.head_v, v.mat_n)
    direct = v.schedule is Schedule.DIRECT
    k_chunk = hsk_pad if v.schedule in (Schedule.STAGE, Schedule.DIRECT) else min(hsk_pad, K_CHUNK)
    q_stride, k_stride, v_stride = hsk_pad + F16_PAD, k_chunk + F16_PAD, hsv_pad + F16_PAD
    v_rows = v.bc if direct else _v_rows(v, v.bc * k_stride, v_stride)
    s_stride, p_stride = v.bc + F32_PAD, v.bc + F16_PAD
    s_cols, o_cols = v.bc // v.mat_n, hsv_pad // v.mat_n
    s_tiles, o_tiles = v.br // v.mat_m * s_cols, v.br // v.mat_m * o_cols
    tpr = max(1, v.wg // v.br)
    # direct: no staging step, no KVsh.
    k_step = 0 if direct else _per_thread(v.bc * k_chunk // 4, v.wg)
    v_step = 0 if direct else _per_thread(v_rows * hsv_pad // 4, v.wg)
    kv_halves = max(v.bc * k_stride, v_rows * v_stride)
    staging = () if direct else (
        SharedArray("KVsh", "f16vec4", kv_halves // 4,
                    "decoded K chunk (bc rows x k_chunk), then V chunk (v_rows x hsv_pad)"),)
    shared = (
        SharedArray("Qsh", "f16vec4", v.br * q_stride // 4, "Q tile (f16), rows padded"),
        *staging,
        # Scores, then in the epilogue one mat_m x mat_n output tile per subgroup.
        SharedArray("Ssh", "float", max(v.br * s_stride, nsg * v.mat_m * v.mat_n),
                    "S = Q K^T (f32); per-subgroup output staging at the end"),
        SharedArray("Psh", "float16_t", v.br * p_stride, "P = exp(S - m), the A operand of P V"),
        SharedArray("Rsh", "float", v.br * v.mat_n,
                    "per-row factor repeated mat_n times: a coopmat load broadcasts it over a tile"),
    )
    fields = dict(
        subgroups=nsg, hsk_pad=hsk_pad, hsv_pad=hsv_pad, q_stride=q_stride,
        k_chunk=k_chunk, k_chunks=-(-hsk_pad // k_chunk), k_stride=k_stride,
        v_rows=v_rows, v_chunks=v.bc // v_rows, v_stride=v_stride,
        s_stride=s_stride, p_stride=p_stride,
        s_cols=s_cols, s_tiles=s_tiles, s_per_sg=-(-s_tiles // nsg),
        o_cols=o_cols, o_tiles=o_tiles, o_per_sg=-(-o_tiles // nsg),
        tpr=tpr, row_groups=v.wg // tpr, rows_per_thread=max(1, v.br * tpr // v.wg),
        q_batch=min(Q_BATCH, _per_thread(v.br * hsk_pad // 4, v.wg)),
        k_step=k_step, v_step=v_step, staged=max(k_step, v_step),
        k_batch=_batch(hsk_pad // v.mat_k), v_batch=_batch(v.bc // v.mat_k),
        ks_steps=0, ks_per_sg=0, s_parts=0, m_step=0,
        o_type="float16_t" if v.acc == 16 else "float",
        row_max_offset=3 * math.log(2) if v.acc == 16 else 0.0,
        shared=shared,
    )
    # The stream and register schedules replace the staged kernel's arrays and steps.
    if v.schedule is Schedule.STREAM:
        fields.update(_stream_layout(v, nsg, hsk_pad, hsv_pad))
    elif v.schedule is Schedule.OSPLIT:
        fields.update(_osplit_layout(v, nsg, hsk_pad))
    elif v.schedule is Schedule.REGS:
        fields.update(_regs_layout(v, hsk_pad, hsv_pad))
    return Layout(**fields)


DIRECT_ELEMENT = 8  # halves per element of the K/V arrays read as 16-byte elements (uvec4)
# The schedules that read K and V as such elements (templates/coopmat1/kv_elements.glsl).
ELEMENT_SCHEDULES = (Schedule.DIRECT, Schedule.STREAM, Schedule.REGS, Schedule.OSPLIT)


def kv_rule(v: Variant) -> tuple[int, bool]:
    """(unit, whole_tile): where the kernel reads K and V, their offsets and strides are
    multiples of `unit` elements, and with `whole_tile` an unaligned Nkv holds at least one bc
    tile (the tail tile is read from Nkv - bc). direct_reason applies it; kgen export writes it."""
    if v.schedule not in ELEMENT_SCHEDULES:
        return 1, False
    return DIRECT_ELEMENT, v.schedule is Schedule.DIRECT


def direct_reason(v: Variant, n_kv: int, layouts) -> str | None:
    """Why a variant that reads K/V as 16-byte elements (ELEMENT_SCHEDULES) cannot run on this
    call's K/V (kv_rule), or None. `layouts` maps "k" and "v" to kgen.kvtensor.KvLayout."""
    if v.schedule not in ELEMENT_SCHEDULES:
        return None
    unit, whole_tile = kv_rule(v)
    for name in ("k", "v"):
        lay = layouts[name]
        if lay.offset % unit or any(st % unit for st in lay.strides):
            return (f"schedule={v.schedule} reads {name} in {unit}-element units: its "
                    f"offset {lay.offset} and strides {lay.strides} must be multiples of {unit}")
    if whole_tile and not v.aligned and n_kv < v.bc:
        return (f"schedule=direct: Nkv={n_kv} must be at least bc={v.bc} (the last tile is read "
                "whole)")
    k, vv = layouts["k"], layouts["v"]
    if v.v_in_k and (vv.offset, vv.strides) != (k.offset, k.strides):
        return (f"v_in_k reads V as the first head_v columns of K's rows: V's offset {vv.offset} and "
                f"strides {vv.strides} must be K's ({k.offset}, {k.strides})")
    return None


# --- device ----------------------------------------------------------------------------------
def _has_shape(caps: Caps, m: int, n: int, k: int, acc_type: str) -> bool:
    return any(s.scope == "subgroup" and (s.m, s.n, s.k) == (m, n, k)
               and s.a_type == s.b_type == "f16" and s.c_type == s.result_type == acc_type
               and not s.saturating
               for s in caps.coopmat_shapes)


def _acc_types(acc: int) -> tuple[str, ...]:
    """Accumulator types a variant multiplies with: S is always f32 (q.k in f16 overflows and
    loses the logits' precision); O is f32 or f16 by acc."""
    return ("f32",) if acc == 32 else ("f32", "f16")


def _shapes(caps: Caps, acc: int) -> list[tuple[int, int, int]]:
    """(m, n, k) the device lists for every accumulator type `acc` needs, in listing order."""
    out = []
    for s in caps.coopmat_shapes:
        shape = (s.m, s.n, s.k)
        if shape not in out and all(_has_shape(caps, *shape, t) for t in _acc_types(acc)):
            out.append(shape)
    return out


def supports(caps: Caps) -> str | None:
    if not caps.has_coopmat1:
        return "no VK_KHR_cooperative_matrix (cooperative matrix extension or shapes missing)"
    if not _shapes(caps, 32):
        return "no subgroup-scope f16 x f16 -> f32 cooperative matrix shape"
    if not caps.shader_float16:
        return "f16 shared tiles and matrix operands need shaderFloat16"
    if not caps.storage_buffer_16bit:
        return "K, V and the mask are read through 16-bit storage (storageBuffer16BitAccess)"
    if not (caps.subgroup_size_control and caps.compute_full_subgroups):
        # Matrix tiles are dealt per subgroup and softmax rows to lanes of one subgroup: the
        # template needs exactly wg / subgroup full subgroups of the required size.
        return "needs subgroup size control with computeFullSubgroups"
    return None


def device_reason(v: Variant, caps: Caps) -> str | None:
    # Shared memory, workgroup and subgroup sizes and shaderFloat16 are the common checks.
    for acc_type in _acc_types(v.acc):
        if not _has_shape(caps, v.mat_m, v.mat_n, v.mat_k, acc_type):
            use = "S = Q K^T" if acc_type == "f32" else "O (acc=16)"
            return (f"mat {v.mat_m}x{v.mat_n}x{v.mat_k}: the device lists no subgroup-scope "
                    f"f16 x f16 -> {acc_type} shape of that size (needed for {use})")
    if v.split_sync and caps.vendor_id != NVIDIA:
        return (f"split_sync={v.split_sync}: subgroups spin on each other's shared-memory counters, "
                f"which needs independent forward progress of a workgroup's subgroups; kgen relies "
                f"on that only on NVIDIA, and this device is {caps.vendor}")
    if v.frag_scheme:
        return scheme_reason(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k, caps.coopmat1_fragments,
                             caps.subgroup_size)
    return None


def device_schemes(caps: Caps, m: int, n: int, k: int) -> list[int]:
    """The fragment schemes the device's probed layout at (m, n, k) matches."""
    return [s for s in SCHEMES
            if scheme_reason(s, m, n, k, caps.coopmat1_fragments, caps.subgroup_size) is None]


# --- tuning space ----------------------------------------------------------------------------
def _tile_rows(problem: ProblemClass, m: int) -> list[int]:
    """br choices: multiples of mat_m up to 64, only the smallest when Nq fits in it."""
    rows = [br for br in (m, 16, 32, 64) if br % m == 0 and br >= m]
    rows = sorted(set(rows))
    return [br for br in rows if br == rows[0] or br <= _round_up(problem.n_q, m)]


def _common(problem: ProblemClass, caps: Caps) -> dict:
    return dict(path=KIND, head_k=problem.head_k, head_v=problem.head_v, k_type=problem.k_type,
                v_type=problem.v_type, acc=problem.acc, subgroup=caps.subgroup_size,
                aligned=False, **problem.feature_flags())


def _stage_same_as_base(knobs: dict) -> bool:
    """True when whole-tile staging gives the base schedule's chunks (small heads): the stage
    candidate would only time the same code twice."""
    try:
        whole, chunked = (layout(Variant(**dict(knobs, schedule=s)))
                          for s in (Schedule.STAGE, Schedule.BASE))
    except InvalidVariant:
        return False  # let the enumerator reject it with its reason
    return (whole.k_chunk, whole.v_rows) == (chunked.k_chunk, chunked.v_rows)


def candidates(problem: ProblemClass, caps: Caps) -> Iterator[dict]:
    common = _common(problem, caps)
    f16 = problem.k_type == KvType.F16 and problem.v_type == KvType.F16
    for (m, n, k) in _shapes(caps, problem.acc):
        # Half-depth shapes (k 8) double the direct loads per product: not worth timing.
        direct = f16 and k >= 16
        for br, bc, nsg in itertools.product(_tile_rows(problem, m), (16, 32, 64, 128), (2, 4, 8)):
            knobs = dict(common, br=br, bc=bc, wg=nsg * caps.subgroup_size, mat_m=m, mat_n=n,
                         mat_k=k, schedule=Schedule.BASE)
            yield knobs
            if not _stage_same_as_base(knobs):
                yield dict(knobs, schedule=Schedule.STAGE)
            if direct:
                yield dict(knobs, schedule=Schedule.DIRECT)
        if direct and problem.n_q <= STREAM_MAX_ROWS:
            # Decode (GQA-folded rows): the stream kernel, tiles of 16 to 64 keys.
            for bc, nsg, v_in_k in itertools.product((16, 32, 64), (2, 4, 8),
                                                     (False, True) if problem.v_in_k else (False,)):
                yield dict(common, br=m, bc=bc, wg=nsg * caps.subgroup_size, mat_m=m, mat_n=n,
                           mat_k=k, schedule=Schedule.STREAM, v_in_k=v_in_k)
        for scheme in (device_schemes(caps, m, n, k) if direct and problem.acc == 32 else ()):
            # FlashAttention-2 in registers: br = subgroups * m, one KV tile in shared memory.
            # One row tile per subgroup: two (REGS_ROW_TILES) ran 1.9x slower on the H100 (P1
            # 1191 vs 619 us: 32 rows of O, S and Q outgrow the registers), so they are not timed.
            for bc, nsg in itertools.product((16, 32, 64, 128), (2, 4, 8)):
                if nsg * m <= max(m, _round_up(problem.n_q, m)):
                    for sync in _sync_schemes(problem, caps):
                        yield dict(common, br=nsg * m, bc=bc, wg=nsg * caps.subgroup_size,
                                   mat_m=m, mat_n=n, mat_k=k, schedule=Schedule.REGS,
                                   frag_scheme=scheme, split_sync=sync)
        for scheme in (device_schemes(caps, m, n, k) if direct and problem.acc == 32
                       and problem.v_in_k else ()):
            # V inside K (MLA): O split by columns over one subgroup per S block of mat_m rows x
            # mat_k columns, V read from the K tile (the rules keep what fits: 576/512 -> br 64, bc 32).
            for br, bc in itertools.product((32, 64), (16, 32, 64)):
                nsg = br // m * (bc // k)
                if 2 <= nsg <= 16 and br <= max(m, _round_up(problem.n_q, m)):
                    yield dict(common, br=br, bc=bc, wg=nsg * caps.subgroup_size, mat_m=m, mat_n=n,
                               mat_k=k, schedule=Schedule.OSPLIT, frag_scheme=scheme, v_in_k=True)
        if direct:
            # Without staging buffers a wider KV tile fits: fewer softmax steps per key.
            for br, nsg in itertools.product(_tile_rows(problem, m), (2, 4, 8)):
                yield dict(common, br=br, bc=256, wg=nsg * caps.subgroup_size, mat_m=m, mat_n=n,
                           mat_k=k, schedule=Schedule.DIRECT)


def _sync_schemes(problem: ProblemClass, caps: Caps) -> tuple[int, ...]:
    """split_sync choices the tuner times: scheme 1 on NVIDIA without a mask, where it wins;
    barriers with a mask, where the schemes lost and tripled the space a tune must cover (the
    measurements: docs/performance.md, split_sync). Scheme 2 stays a knob to force."""
    if caps.vendor_id != NVIDIA or "mask" in problem.features:
        return (0,)
    return (0, 1)


def default(problem: ProblemClass, caps: Caps) -> Variant:
    """llama.cpp's cm1 choice: Br 16, Bc 64, 4 subgroups, 16x16x16, with K/V staged in chunks
    (the base schedule; on the H100 it beat whole-tile staging: 1.17 vs 1.88 ms at 128/128,
    Nq 512, Nkv 4096); a smaller Bc when that does not fit the device's shared memory."""
    shapes = _shapes(caps, problem.acc) or [(16, 16, 16)]
    m, n, k = (16, 16, 16) if (16, 16, 16) in shapes else shapes[0]
    common = dict(_common(problem, caps), br=_round_up(16, m), wg=4 * caps.subgroup_size,
                  mat_m=m, mat_n=n, mat_k=k, schedule=Schedule.BASE)
    first = None
    for bc in (64, 32, 16):
        try:
            v = Variant(**common, bc=bc)
        except InvalidVariant:
            continue
        first = first or v
        if layout(v).shared_bytes <= caps.max_shared_memory and device_reason(v, caps) is None:
            return v
    return first or Variant(**common, bc=64)  # the latter raises, naming the broken rule
