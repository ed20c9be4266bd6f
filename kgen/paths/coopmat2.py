"""The coopmat2 path: VK_NV_cooperative_matrix2, workgroup-scope matrices and tensor layouts.

The whole workgroup owns each matrix, so tiles are br x bc directly: no per-subgroup tiling, no
explicit shared memory. Per KV tile of `bc` columns (templates/fa_coopmat2.comp.j2):
  1. S = Q K^T (f32 accumulate). Q (br x head_k, f16, scale folded in) is loaded once; K is
     loaded as K^T through a transposing tensor view, decoded to f16 by a callback for every
     type but f16 (templates/coopmat2/decode.glsl).
  2. Score modifiers in one per-element operation (softcap, + slope * mask tile, causal/window,
     KV bounds), the row max with coopMatReduceNV, P = exp(S - m), the row sum as P x ones.
  3. O = diag(exp(m_old - m)) O + P V; V loaded through a tensor layout like K.
Head sizes are padded to multiples of 16 by the layouts' clamp-to-constant mode (zeros), and
query rows past Nq are neither read nor written the same way.

Tensors are addressed from element 0 of their binding: a per-head offset is split into whole
rows plus a column that the layout's dimensions and slices carry, because coopMatLoadTensorNV
wants its element offset 16-byte aligned and head offsets need not be (an H100 drops the low bits
of one that is not). f16 K, V and mask loads also have a path that passes the head offset itself
when it and the row stride are 16-byte aligned (checked at run time): the compiler then loads
wide, about 5x faster on an H100 (templates/coopmat2/tensor.glsl).

Device needs (supports()): VK_KHR_cooperative_matrix and VK_NV_cooperative_matrix2 with all seven
features, shaderFloat16, storageBuffer16BitAccess, bufferDeviceAddress (the decode callbacks take
buffer_reference blocks) and, like every cooperative-matrix module, vulkanMemoryModel.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields

from ..caps import Caps, CoopMat2Features
from ..problem import ProblemClass
from ..types import KvType
from ..variant import PathKind, Schedule, Variant
from .shared import coopmat1_knob_reason, fused_reduce_shared, schedule_reason

KIND = PathKind.COOPMAT2
# One schedule: K/V are loaded through tensor layouts and the driver stages them.
TEMPLATES = {Schedule.BASE: "fa_coopmat2.comp.j2"}

TILE_STEP = 16            # br, bc and padded head sizes: multiples of the matrix granularity
TILE_MAX = 256
REGISTER_BUDGET = 255     # 32-bit registers per invocation before a variant surely spills
CLAMP_CONSTANT = "gl_CooperativeMatrixClampModeConstantNV"
CLAMP_UNDEFINED = "gl_CooperativeMatrixClampModeUndefinedNV"

# Elements per decode block along a K/V row: f16 loads directly (no callback); f32 and bf16 are
# decoded from 4-element vectors (one 16- or 8-byte load; rows are 4-element aligned by the
# contract); ggml block types from their blocks.
_FLOAT_BLOCK = {KvType.F16: 1, KvType.F32: 4, KvType.BF16: 4}


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def check(v: Variant) -> str | None:
    """Device-independent rules of the coopmat2 template; the reason names the field and limit."""
    for name in ("d_split", "row_split", "mat_m", "mat_n", "mat_k"):
        if getattr(v, name):
            return (f"{name}={getattr(v, name)}: coopmat2 multiplies br x bc workgroup-scope "
                    "matrices directly and has no such knob (leave it 0)")
    if (reason := schedule_reason(v, TEMPLATES) or coopmat1_knob_reason(v)) is not None:
        return reason
    for name in ("br", "bc"):
        n = getattr(v, name)
        if n % TILE_STEP or not TILE_STEP <= n <= TILE_MAX:
            return f"{name}={n}: a multiple of {TILE_STEP} from {TILE_STEP} to {TILE_MAX}"
    return None


@dataclass(frozen=True)
class Layout:
    """Numbers derived from a valid coopmat2 variant; the template binds them as constants."""

    hsk_pad: int          # head_k rounded up to 16: the q.k depth; padding loads as zero
    hsv_pad: int          # head_v rounded up to 16: O columns; padding is never stored
    k_block: int          # K elements per decode block along a row (1: f16, no callback)
    v_block: int
    k_wide: bool          # f16 K: also a 16-byte aligned load path (see the template's tensor2d)
    v_wide: bool
    k_clamp: str          # clamp mode of the K layout: Constant (zeros) unless nothing is out
    v_clamp: str          # of bounds (aligned and a head multiple of 16), then Undefined
    o_type: str           # O accumulator component: float (acc 32) or float16_t (acc 16)
    row_max_offset: float  # added to the row max: 3 ln 2 with f16 O (every p <= 1/8), else 0
    score_op: bool        # a per-element score operation runs (softcap, mask, causal, bounds)
    mask_skip: bool       # skip KV tiles whose mask is all -inf (see _mask_skip)
    live_words: int       # estimate: 32-bit registers per invocation held by O, Q, K^T and V
    # Explicit `shared` arrays: fused_reduce's only. What the driver stages for workgroup-scope
    # matrices comes out of cooperativeMatrixWorkgroupScopeReservedSharedMemory (checked in
    # device_reason); it does not stage whole operand tiles there: llama.cpp's 32x32 tile for
    # 576/512 would need 2 * (576 + 512) * 32 = 69,632 bytes and runs within NVIDIA's 48 KiB.
    shared_bytes: int = 0

    @property
    def k_decode(self) -> bool:
        return self.k_block > 1

    @property
    def v_decode(self) -> bool:
        return self.v_block > 1


def _block(t: KvType) -> int:
    return _FLOAT_BLOCK.get(t, t.block_size)


def _mask_skip(v: Variant) -> bool:
    """The in-loop all--inf test (when no mask_tiles pass classified the tiles) reads element 0
    of a reduced matrix in every invocation, so each one must own elements of it: true with 4+
    elements per invocation (llama.cpp's smallest cm2 tile, 32x32 over 256 invocations, has 4)."""
    return v.mask and not v.mask_tiles and v.br * v.bc >= 4 * v.wg


# Query rows from which a masked class classifies its mask tiles in a pass before the kernel
# (mask_tiles): the in-loop all--inf test, a whole-tile reduction, cost 7-10% of masked prefill
# on an H100 (P2, P5); decode reads a one-row mask where a second pass would cost more.
MASK_TILES_MIN_NQ_BUCKET = 2  # n_q > 8


def _live_words(head_k: int, head_v: int, acc: int, br: int, bc: int, wg: int) -> int:
    """32-bit words per invocation of O (acc bits), Q, K^T and V (f16): a floor on registers,
    as the driver spreads each workgroup-scope matrix over all invocations."""
    hsk_pad, hsv_pad = _round_up(head_k, TILE_STEP), _round_up(head_v, TILE_STEP)
    o_words = br * hsv_pad * acc // 32
    operand_halves = br * hsk_pad + (hsk_pad + hsv_pad) * bc
    return -(-(o_words + operand_halves // 2) // wg)


def _clamp(v: Variant, head: int) -> str:
    """Undefined (no bounds checks) only when no K/V access can be out of bounds."""
    return CLAMP_UNDEFINED if v.aligned and head % TILE_STEP == 0 else CLAMP_CONSTANT


def layout(v: Variant) -> Layout:
    hsk_pad, hsv_pad = _round_up(v.head_k, TILE_STEP), _round_up(v.head_v, TILE_STEP)
    return Layout(
        hsk_pad=hsk_pad, hsv_pad=hsv_pad,
        k_block=_block(v.k_type), v_block=_block(v.v_type),
        k_wide=_block(v.k_type) == 1, v_wide=_block(v.v_type) == 1,
        k_clamp=_clamp(v, v.head_k), v_clamp=_clamp(v, v.head_v),
        o_type="float16_t" if v.acc == 16 else "float",
        row_max_offset=3 * math.log(2) if v.acc == 16 else 0.0,
        score_op=v.softcap or v.mask or v.causal or not v.aligned,
        mask_skip=_mask_skip(v),
        live_words=_live_words(v.head_k, v.head_v, v.acc, v.br, v.bc, v.wg),
        shared_bytes=sum(a.bytes for a in fused_reduce_shared(v)),
    )


# --- device ----------------------------------------------------------------------------------
def supports(caps: Caps) -> str | None:
    for ext in ("VK_KHR_cooperative_matrix", "VK_NV_cooperative_matrix2"):
        if ext not in caps.extensions:
            return f"no {ext}"
    missing = [f.name for f, on in zip(fields(CoopMat2Features), astuple(caps.coopmat2)) if not on]
    if missing:
        return f"VK_NV_cooperative_matrix2 lacks feature(s) {', '.join(missing)} (all seven are used)"
    if not caps.shader_float16:
        return "f16 matrix operands need shaderFloat16"
    if not caps.storage_buffer_16bit:
        return "f16 K/V/mask and 16-bit block words are read through storageBuffer16BitAccess"
    if not caps.buffer_device_address:
        return ("decode callbacks of coopMatLoadTensorNV take buffer_reference blocks: needs "
                "bufferDeviceAddress")
    return None


def _lists_f16_product(caps: Caps, acc_type: str) -> bool:
    return any(s.a_type == s.b_type == "f16" and s.c_type == s.result_type == acc_type
               for s in caps.coopmat_shapes)


def device_reason(v: Variant, caps: Caps) -> str | None:
    # Shared memory against the device total, workgroup and subgroup sizes and shaderFloat16 are
    # the common checks (kgen/space.py).
    if caps.coopmat2_max_workgroup_size and v.wg > caps.coopmat2_max_workgroup_size:
        return (f"wg={v.wg} exceeds cooperativeMatrixWorkgroupScopeMaxWorkgroupSize="
                f"{caps.coopmat2_max_workgroup_size}")
    if caps.coopmat_shapes:  # flexible workgroup-scope sizes are not in Caps: use the listing
        for acc_type in ("f32", "f16") if v.acc == 16 else ("f32",):
            if not _lists_f16_product(caps, acc_type):
                use = "S = Q K^T" if acc_type == "f32" else "O (acc=16)"
                return (f"the device lists no f16 x f16 -> {acc_type} cooperative matrix "
                        f"(needed for {use})")
    lay = layout(v)
    largest = max(v.br, v.bc, lay.hsk_pad, lay.hsv_pad)
    if caps.coopmat2_flexible_max_dimension and largest > caps.coopmat2_flexible_max_dimension:
        return (f"a {largest}-wide matrix exceeds cooperativeMatrixFlexibleDimensionsMaxDimension="
                f"{caps.coopmat2_flexible_max_dimension}")
    shared = lay.shared_bytes + caps.coopmat2_reserved_shared_memory
    if shared > caps.max_shared_memory:
        return (f"shared memory: {lay.shared_bytes} bytes + {caps.coopmat2_reserved_shared_memory} "
                f"reserved for workgroup-scope matrices exceeds {caps.max_shared_memory}")
    return _driver_reason(v, caps)


_NVIDIA = 0x10DE


def _driver_reason(v: Variant, caps: Caps) -> str | None:
    """Shapes NVIDIA's driver mishandles, found by checking every candidate on an H100 (driver
    580, scripts/probe_variants.py, docs/performance.md): a 16-row tile spread over
    more than 2 subgroups computes wrong results (NMSE 1), and 16-column tiles with 8
    subgroups crash pipeline creation unless the tile has 128 rows."""
    if caps.vendor_id != _NVIDIA:
        return None
    subgroups = v.wg // v.subgroup
    if v.br == 16 and subgroups > 2:
        return f"br=16 with {subgroups} subgroups: NVIDIA's workgroup-scope matrices compute it wrongly"
    if v.bc == 16 and subgroups >= 8 and v.br < 128:
        return f"bc=16, br={v.br} with {subgroups} subgroups: crashes NVIDIA's pipeline compiler"
    return None


def _driver_ok(caps: Caps, **knobs) -> bool:
    return _driver_reason(Variant(**knobs), caps) is None


# --- tuning space ----------------------------------------------------------------------------
def _common(problem: ProblemClass, caps: Caps) -> dict:
    flags = problem.feature_flags()
    return dict(path=KIND, head_k=problem.head_k, head_v=problem.head_v, k_type=problem.k_type,
                v_type=problem.v_type, acc=problem.acc, subgroup=caps.subgroup_size,
                aligned=False, **flags,
                mask_tiles=flags.get("mask", False) and problem.nq_bucket >= MASK_TILES_MIN_NQ_BUCKET)


def candidates(problem: ProblemClass, caps: Caps) -> Iterator[dict]:
    """br, bc in 16..128 and wg 64..256, less tiles of more query rows than the problem has
    (beyond 32, the default's), tiles whose O, Q, K^T and V alone need more registers per
    invocation than there are (they spill whatever the driver does) and shapes the driver
    mishandles (_driver_reason)."""
    common = _common(problem, caps)
    rows = max(32, _round_up(problem.n_q, TILE_STEP))
    for br, bc, wg in itertools.product((16, 32, 64, 128), (16, 32, 64, 128), (64, 128, 256)):
        if (br <= rows and _live_words(problem.head_k, problem.head_v, problem.acc, br, bc, wg) <= REGISTER_BUDGET
                and _driver_ok(caps, **common, br=br, bc=bc, wg=wg)):
            yield dict(common, br=br, bc=bc, wg=wg)


def default(problem: ProblemClass, caps: Caps) -> Variant:
    """llama.cpp's cm2 choice: 32x32 for few rows (wg 256 when heads are multiples of 32);
    64x32 for block-quantized K/V or heads of 256+ (32x32 from 512); else 64x64; wg 128."""
    head = max(problem.head_k, problem.head_v)
    if problem.n_q < 32:
        wg = 256 if (problem.head_k | problem.head_v) % 32 == 0 else 128
        br, bc = 32, 32
    elif problem.k_type.quantized or problem.v_type.quantized or head >= 256:
        br, bc, wg = (32 if head >= 512 else 64), 32, 128
    else:
        br, bc, wg = 64, 64, 128
    if caps.coopmat2_max_workgroup_size:
        wg = min(wg, caps.coopmat2_max_workgroup_size)
    return Variant(**_common(problem, caps), br=br, bc=bc, wg=wg)
