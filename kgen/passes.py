"""The passes some variants run before the attention kernel, described once for both users: a
Plan evaluates them for its shapes and runs them; `kgen export` writes them into the dispatch
table for an engine to run. Each reads one of the caller's buffers and writes a buffer of its
own that the kernel then reads in its place (or beside it, for mask_tiles).

In the order a plan records them (all side by side, one barrier before the kernel):
- kv_to_f16_k, kv_to_f16_v (kv_f16 with a quantized cache): the cache decoded into a dense f16
  (B, Hkv, Nkv, head) copy; these read the caller's push constants (its cache layout), the
  kernel then reads the copy's layout (`kernel_push`);
- mask_tiles (coopmat2): each br x bc tile of the mask classified as all -inf, all zero or mixed;
- mask_frag (coopmat1 regs or osplit with a mask): the mask in the order the lanes hold S;
- q_frag (osplit): Q as f16 in the order the lanes hold their A operands.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from .extent import Expr, mul
from .paths.coopmat1 import layout
from .render import (KV_TO_F16_WG, MASK_FRAG_WG, MASK_TILES_WG, Q_FRAG_WG, kv_to_f16_grid,
                     mask_frag_grid, mask_tiles_grid, q_frag_grid, render_kv_to_f16, render_mask_frag,
                     render_mask_tiles, render_q_frag)
from .variant import PathKind, Schedule, Variant


@dataclass(frozen=True)
class PrePass:
    name: str                  # shader name: pipeline name and exported file stem
    render: Callable[[], str]  # its GLSL source
    local_size_x: int
    reads: str                 # abi binding of the caller's buffer it reads
    writes: str                # abi binding its output buffer takes in this pass
    buffer: str                # the output buffer's name
    kernel_binding: str        # abi binding the kernel (and the reduce pass) takes the output at
    grid: tuple[Expr, Expr, Expr]
    nbytes: Expr               # the output buffer's size
    caller_push: bool = False  # True: the caller's push constants (its cache layout); else the kernel's


def uses_frag_mask(v: Variant) -> bool:
    """Whether a pass rewrites the mask in the fragment order of variant `v`'s lanes before it."""
    return bool(v.path is PathKind.COOPMAT1 and v.frag_scheme and v.mask and layout(v).mask_frag)


def converted(v: Variant) -> tuple[str, ...]:
    """The tensors ("k", "v") a kv_f16 variant decodes to f16 before the kernel."""
    return tuple(t for t in "kv" if v.kv_f16 and getattr(v, f"{t}_type").quantized)


def passes_before(v: Variant) -> tuple[PrePass, ...]:
    out = []
    for t in converted(v):
        d, kv_type = getattr(v, f"head_{t}"), getattr(v, f"{t}_type")
        out.append(PrePass(
            f"kv_to_f16_{t}_{kv_type}_d{d}", functools.partial(render_kv_to_f16, t, kv_type, d),
            KV_TO_F16_WG, reads=t, writes="out", buffer=f"{t}_f16", kernel_binding=t, caller_push=True,
            grid=kv_to_f16_grid(d), nbytes=mul(2 * d, "n_kv", "n_head_kv", "n_batch")))
    if v.mask_tiles:
        grid = mask_tiles_grid(v.br, v.bc)
        out.append(PrePass(
            f"mask_tiles_br{v.br}_bc{v.bc}", functools.partial(render_mask_tiles, v.br, v.bc), MASK_TILES_WG,
            reads="mask", writes="mask_tiles", buffer="mask_tiles", kernel_binding="mask_tiles",
            grid=grid, nbytes=mul(4, *grid)))
    if uses_frag_mask(v):
        grid = mask_frag_grid(v.bc, v.subgroup)
        out.append(PrePass(
            f"mask_frag_regs{v.frag_scheme}_m{v.mat_m}n{v.mat_n}k{v.mat_k}_bc{v.bc}",
            functools.partial(render_mask_frag, v), MASK_FRAG_WG,
            reads="mask", writes="out", buffer="mask_frag", kernel_binding="mask",
            grid=grid, nbytes=mul(16 * MASK_FRAG_WG, *grid)))
    if v.schedule is Schedule.OSPLIT:
        grid = q_frag_grid(v.head_k)
        out.append(PrePass(
            f"q_frag_regs{v.frag_scheme}_k{v.head_k}", functools.partial(render_q_frag, v), Q_FRAG_WG,
            reads="q", writes="out", buffer="q_frag", kernel_binding="q",
            grid=grid, nbytes=mul(16 * v.subgroup * layout(v).ks_steps, grid[1], grid[2])))
    return tuple(out)


def kernel_push(v: Variant) -> dict[str, Expr]:
    """Push-constant fields the kernel (and the reduce pass) take instead of the caller's: the
    dense f16 copy's layout, in elements, for each converted tensor."""
    out: dict[str, Expr] = {}
    for t in converted(v):
        d = getattr(v, f"head_{t}")
        out |= {f"{t}_stride_row": d, f"{t}_stride_head": mul(d, "n_kv"),
                f"{t}_stride_batch": mul(d, "n_kv", "n_head_kv"), f"{t}_offset": 0}
    return out
