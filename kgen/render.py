"""Variant -> GLSL. Templates bind constants and choose code blocks; arithmetic stays in Python."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import jinja2

from . import abi
from .extent import Expr, ceil_div, evaluate, mul
from .paths.fragments import MASK_FRAG_CHUNK, SCHEMES, expected, mask_frag_tiles, reg_layout
from .paths import path_spec
from .paths.shared import fused_reduce_shared
from .types import KvType
from .variant import Schedule, Variant

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
if not (TEMPLATE_DIR / "common").is_dir():  # installed (not editable): templates ship as kgen.templates
    import kgen.templates
    TEMPLATE_DIR = Path(kgen.templates.__file__).resolve().parent


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, never ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(v: Variant) -> str:
    """The GLSL compute shader for `v`: readable, self-contained, deterministic."""
    spec = path_spec(v.path)
    v = v.kernel  # kv_f16 runs the f16 kernel (the same module, one cache entry)
    template = environment().get_template(spec.TEMPLATES[v.schedule])
    text = template.render(
        v=v,
        L=spec.layout(v),
        push_fields=abi.PUSH_FIELDS,
        binding=abi.BINDING,
        fused_lanes=fused_reduce_lanes(v),
        fused_shared=fused_reduce_shared(v),
    )
    return _tidy(text)


FUSED_MAX_LANES = 16


def fused_reduce_lanes(v: Variant) -> int:
    """fused_reduce: lanes that share one output vec4 (each takes every n-th split), so that the
    last workgroup's threads all have loads in flight when its tile has few outputs: a power of
    two, at most a subgroup and FUSED_MAX_LANES."""
    outputs = v.br * (v.head_v // 4)
    lanes = 1 << ((v.wg // outputs).bit_length() - 1) if v.wg >= outputs else 1
    return min(lanes, v.subgroup, FUSED_MAX_LANES)


REDUCE_WG = 128
REDUCE_LANES = 16  # vec4 columns per reduce workgroup: a decode's few rows still fill the GPU


def reduce_lanes(head_v: int) -> int:
    """vec4 columns per reduce workgroup: head_v / 4 rounded up to a power of two, at most
    REDUCE_LANES."""
    return min(REDUCE_LANES, 1 << (head_v // 4 - 1).bit_length())


def reduce_chunks(head_v: int) -> int:
    """Reduce workgroups per output row (the grid's y is heads_q times this)."""
    return -(-(head_v // 4) // reduce_lanes(head_v))


def render_split_k_reduce(head_v: int, sinks: bool, wg: int = REDUCE_WG, page: int = 0) -> str:
    """The pass that combines split-k partial outputs (see templates/README.md, split_k); `wg`
    threads (a power of two, at least reduce_lanes(head_v)); grid from `reduce_groups`. `page`:
    the paged kernels' reduce (ragged rows through cu_seqlens_q, common/paged.glsl)."""
    template = environment().get_template("fa_split_k_reduce.comp.j2")
    lanes = reduce_lanes(head_v)
    if wg & (wg - 1) or lanes > wg:
        raise ValueError(f"head_v={head_v}, wg={wg}: the reduce pass needs a power-of-two "
                         f"workgroup of at least {lanes} threads (one per 4 columns of its chunk)")
    paged = {"page": page}   # what common/paged.glsl reads of a variant
    return _tidy(template.render(head_v=head_v, sinks=sinks, wg=wg, lanes=lanes, v=paged,
                                 chunks=reduce_chunks(head_v),
                                 push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


KV_TO_F16_WG = 256
KV_TENSORS = ("k", "v")
MAX_GROUPS = 65535  # the maxComputeWorkGroupCount every Vulkan device allows in each dimension


def render_kv_to_f16(tensor: str, t: KvType, head: int, wg: int = KV_TO_F16_WG) -> str:
    """The pass that decodes a `t` K or V cache (`tensor`, read by its own strides and offset)
    into a dense f16 (B, Hkv, Nkv, head) copy; grid from `kv_to_f16_groups` with the same `wg`."""
    if tensor not in KV_TENSORS:
        raise ValueError(f"tensor={tensor!r}: must be one of {KV_TENSORS}")
    if head < 8 or head % 8:
        raise ValueError(f"head={head}: must be a positive multiple of 8 (8 elements per store)")
    if wg < 1:
        raise ValueError(f"wg={wg}: must be >= 1")
    template = environment().get_template("kv_to_f16.comp.j2")
    return _tidy(template.render(tensor=tensor, t=KvType.parse(t), head=head, head8=head // 8, wg=wg,
                                 push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


def kv_to_f16_grid(head: int, wg: int = KV_TO_F16_WG) -> tuple[Expr, Expr, Expr]:
    """Grid of render_kv_to_f16(..., head, wg) over a call's dimensions (kgen.extent):
    (row chunks of 8 / wg, KV heads, batch)."""
    return ceil_div(mul("n_kv", head // 8), wg), "n_head_kv", "n_batch"


def kv_to_f16_groups(n_kv: int, head: int, heads_kv: int, batch: int,
                     wg: int = KV_TO_F16_WG) -> tuple[int, int, int]:
    """Dispatch grid of render_kv_to_f16(..., head, wg): (row chunks of 8 / wg, heads, batch)."""
    for name, value in (("n_kv", n_kv), ("head", head), ("heads_kv", heads_kv), ("batch", batch), ("wg", wg)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    groups = _evaluate(kv_to_f16_grid(head, wg), n_kv=n_kv, n_head_kv=heads_kv, n_batch=batch)
    return _within_group_limit(groups, "kv_to_f16",
                               f"n_kv={n_kv}, head={head}, heads_kv={heads_kv}, batch={batch}, wg={wg}")


def _evaluate(grid: tuple[Expr, Expr, Expr], **dims: int) -> tuple[int, int, int]:
    return tuple(evaluate(e, dims) for e in grid)


def mask_dims(mask_shape: tuple[int, int, int, int]) -> dict[str, int]:
    """The call dimensions (kgen.extent) a stored (B, H, rows, Nkv) mask gives the mask passes."""
    return {"mask_planes": mask_shape[0] * mask_shape[1], "mask_rows": mask_shape[2], "n_kv": mask_shape[3]}


def _within_group_limit(groups: tuple[int, int, int], what: str, inputs: str) -> tuple[int, int, int]:
    """`groups`, or a ValueError naming the axis over maxComputeWorkGroupCount and the inputs."""
    for axis, count in zip("xyz", groups):
        if count > MAX_GROUPS:
            raise ValueError(f"{what} grid {axis}={count} ({inputs}): exceeds maxComputeWorkGroupCount {MAX_GROUPS}")
    return groups


def reduce_grid(chunks: Expr) -> tuple[Expr, Expr, Expr]:
    """Grid of the split-k reduce pass: one workgroup per output row and column chunk
    (`chunks`: reduce_chunks(head_v), or the name "reduce_chunks" for a formula every entry of
    an export shares)."""
    return "n_q", mul("n_head_q", chunks), "n_batch"


def reduce_groups(n_q: int, heads_q: int, batch: int, head_v: int) -> tuple[int, int, int]:
    """reduce_grid's workgroup counts for a call."""
    return _within_group_limit(_evaluate(reduce_grid(reduce_chunks(head_v)), n_q=n_q, n_head_q=heads_q, n_batch=batch),
                               "split-k reduce", f"n_q={n_q}, heads_q={heads_q}, batch={batch}, head_v={head_v}")


MASK_TILES_WG = 256


def render_mask_tiles(br: int, bc: int, wg: int = MASK_TILES_WG) -> str:
    """The pass that classifies every br x bc tile of the mask (all -inf, all zero, mixed) for
    a coopmat2 mask_tiles kernel of those tiles; grid from `mask_tiles_groups`."""
    for name, value in (("br", br), ("bc", bc), ("wg", wg)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    template = environment().get_template("mask_tiles.comp.j2")
    return _tidy(template.render(br=br, bc=bc, wg=wg, push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


def mask_tiles_grid(br: int, bc: int) -> tuple[Expr, Expr, Expr]:
    """Grid of the mask-tile pass over a call's dimensions (kgen.extent), one workgroup per
    tile: (KV tiles, row tiles, planes); also the shape of the class array the kernel reads."""
    return ceil_div("n_kv", bc), ceil_div("mask_rows", br), "mask_planes"


def mask_tiles_groups(mask_shape: tuple[int, int, int, int], br: int, bc: int) -> tuple[int, int, int]:
    """Grid of the mask-tile pass, one workgroup per tile: (KV tiles, row tiles, planes) of a
    stored (B, H, rows, Nkv) mask; also the shape of the class array the kernel reads."""
    return _within_group_limit(_evaluate(mask_tiles_grid(br, bc), **mask_dims(mask_shape)), "mask_tiles",
                               f"mask {mask_shape}, br={br}, bc={bc}")


MASK_FRAG_WG = 256


MASK_TO_F16_WG, MASK_TO_F16_PER_THREAD = 256, 4


def render_mask_to_f16(wg: int = MASK_TO_F16_WG, per_thread: int = MASK_TO_F16_PER_THREAD) -> str:
    """The C dispatcher's pass for an f32 mask: f16 copies of its elements at the same offsets
    (templates/mask_to_f16.comp.j2); a grid-stride loop, so any x grid covers the mask."""
    template = environment().get_template("mask_to_f16.comp.j2")
    return _tidy(template.render(wg=wg, per_thread=per_thread, push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


def render_mask_frag(v: Variant, wg: int = MASK_FRAG_WG) -> str:
    """The pass that rewrites the mask in the order the lanes of variant `v` (schedule regs or
    osplit) hold S (templates/mask_frag.comp.j2); grid from `mask_frag_groups`."""
    f = reg_layout(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k)
    tiles = mask_frag_tiles(v.frag_scheme, v.mat_m, v.mat_n, v.mat_k)
    if not tiles:
        raise ValueError(f"{v.uri}: no fragment-ordered mask for {v.mat_m}x{v.mat_n} tiles with "
                         f"{f.acc_len} accumulator elements per lane")
    lanes = len(f.rows)
    if wg < lanes or wg % lanes:
        raise ValueError(f"wg={wg}: must be a multiple of the subgroup size {lanes}")
    template = environment().get_template("mask_frag.comp.j2")
    return _tidy(template.render(scheme=v.frag_scheme, m=v.mat_m, n=v.mat_n, bc=v.bc, wg=wg, lanes=lanes,
                                 acc_len=f.acc_len, slots=f.slots, tiles=tiles, chunk=MASK_FRAG_CHUNK,
                                 slot_of=f.slot_of, rows=f.rows, cols=f.cols,
                                 push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


def mask_frag_grid(bc: int, lanes: int = 32, wg: int = MASK_FRAG_WG) -> tuple[Expr, Expr, Expr]:
    """Grid of the mask-fragment pass over a call's dimensions (kgen.extent): (chunk groups,
    row tiles of 16, planes); its output holds wg 16-byte elements per workgroup."""
    chunks = mul(ceil_div("n_kv", bc), bc // MASK_FRAG_CHUNK)
    return ceil_div(chunks, wg // lanes), ceil_div("mask_rows", 16), "mask_planes"


def mask_frag_groups(mask_shape: tuple[int, int, int, int], bc: int, lanes: int = 32,
                     wg: int = MASK_FRAG_WG) -> tuple[int, int, int]:
    """Grid of the mask-fragment pass: (chunk groups, row tiles of 16, planes) of a stored
    (B, H, rows, Nkv) mask; the output holds prod(grid) * wg 16-byte elements."""
    return _within_group_limit(_evaluate(mask_frag_grid(bc, lanes, wg), **mask_dims(mask_shape)), "mask_frag",
                               f"mask {mask_shape}, bc={bc}")


Q_FRAG_WG = 128


def render_q_frag(v: Variant, wg: int = Q_FRAG_WG) -> str:
    """The pass that writes Q (f32) as f16 in the A-fragment order of osplit variant `v`
    (templates/q_frag.comp.j2); grid from `q_frag_groups`."""
    if v.schedule is not Schedule.OSPLIT:
        raise ValueError(f"{v.uri}: only osplit variants read a fragment-ordered Q")
    a = expected(SCHEMES[v.frag_scheme], v.mat_m, v.mat_n, v.mat_k)[1]
    lanes, a_len = len(a.rows), len(a.rows[0])
    if (v.mat_m, v.mat_k, a_len) != (16, 16, 8):
        raise ValueError(f"{v.uri}: a fragment-ordered Q needs 16x16 A operands of 8 halves per lane")
    if wg < 1:
        raise ValueError(f"wg={wg}: must be >= 1")
    template = environment().get_template("q_frag.comp.j2")
    return _tidy(template.render(scheme=v.frag_scheme, head_k=v.head_k,
                                 ksteps=path_spec(v.path).layout(v).ks_steps,
                                 lanes=lanes, wg=wg, a_rows=a.rows, a_cols=a.cols,
                                 push_fields=abi.PUSH_FIELDS, binding=abi.BINDING))


def q_frag_grid(head_k: int) -> tuple[Expr, Expr, Expr]:
    """Grid of the Q-fragment pass over a call's dimensions (kgen.extent): (chunks of 64 head
    columns, row tiles of 16, batch x heads)."""
    return ceil_div(head_k, 64), ceil_div("n_q", 16), mul("n_batch", "n_head_q")


def q_frag_groups(n_q: int, heads_q: int, batch: int, head_k: int) -> tuple[int, int, int]:
    """Grid of the Q-fragment pass: (chunks of 64 head columns, row tiles of 16, batch x heads);
    its output holds 32 lanes x ceil(head_k / 16) depth steps of 16 bytes per row tile and head."""
    for name, value in (("n_q", n_q), ("heads_q", heads_q), ("batch", batch), ("head_k", head_k)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    return _within_group_limit(_evaluate(q_frag_grid(head_k), n_q=n_q, n_head_q=heads_q, n_batch=batch),
                               "q_frag", f"n_q={n_q}, heads_q={heads_q}, batch={batch}, head_k={head_k}")


def _tidy(text: str) -> str:
    """Collapse runs of blank lines left by skipped template blocks; strip trailing spaces."""
    lines, blank = [], 0
    for line in text.splitlines():
        line = line.rstrip()
        blank = blank + 1 if not line else 0
        if blank <= 1:
            lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def template_hash() -> str:
    """sha256 over every template file. Schema-1 tuning DBs keyed their builds by it; an upgrade
    keeps their timings as current only where it equals today's (kgen.tunedb)."""
    h = hashlib.sha256()
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        if path.is_file() and path.suffix in (".j2", ".glsl", ".comp"):
            h.update(path.relative_to(TEMPLATE_DIR).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
