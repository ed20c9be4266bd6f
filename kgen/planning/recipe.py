"""A plan's pipelines as data: for a variant, the ordered steps a call runs (the passes before
the kernel, the FA kernel, the split-k reduce), each with its shader, the buffers it binds, where
its push constants come from, its workgroup grid, and whether a barrier precedes it; and the
scratch buffers the steps share, with their sizes.

Every number that depends on the call is a kgen.extent formula over the call's dimensions (the
push-constant fields plus extent.DIMS), so one recipe serves every shape of its variant:
`Plan` evaluates it for its shapes and records it, `kgen export` writes it into the dispatch
table and renders it as C, and an engine that follows the table runs what a Plan runs.

Buffer names are the caller's tensors (CALLER_BUFFERS: the output "o" among them, bound where the
last step writes O) or a scratch buffer of the recipe. With V inside K's bytes (v_in_k) the caller
gives K's buffer for "v". A paged variant's steps also bind the caller's block table, sequence
lengths and query starts (abi.PAGED_BUFFERS).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from .. import abi
from ..compile import Compiled, compile_source, create_with, dump_glsl
from ..errors import KgenError
from ..extent import Expr, ceil_div, evaluate, mul
from ..passes import kernel_push, passes_before
from ..render import REDUCE_WG, _within_group_limit, reduce_chunks, reduce_grid, render, render_split_k_reduce
from ..variant import Variant

CALLER_BUFFERS = ("q", "k", "v", "mask", "sinks", "o")
ROWS = mul("n_batch", "n_head_q", "n_q")   # output rows of a call

# Split-k push values for `splits` KV splits requested: each split is whole bc-column tiles, so
# the count may round down and no split is empty (n_kv >= 1 makes split_kv >= bc).
SPLITS = "splits"


def split_kv(bc: int) -> Expr:
    return mul(ceil_div(ceil_div("n_kv", SPLITS), bc), bc)


SPLIT_COUNT: Expr = ceil_div("n_kv", "split_kv")


@dataclass(frozen=True)
class Step:
    name: str                           # pipeline name and exported shader stem
    role: str                           # "before" (a pass before the kernel), "fa" or "reduce"
    source: Callable[[], str]           # its GLSL
    local_size_x: int
    binds: tuple[tuple[str, str], ...]  # (abi binding, buffer name)
    push: str                           # "caller": the caller's push constants; "kernel": with kernel_push applied
    grid: tuple[Expr, Expr, Expr]
    barrier: bool                       # a compute-to-compute barrier before it (False: beside the step before)
    required_subgroup_size: int | None = None   # with full subgroups where the device has them

    def spirv(self) -> bytes:
        return _compiled(self.name, self.source()).spirv

    def pipeline(self, device: Any, *, full_subgroups: bool) -> Any:
        """The device's pipeline of this step (compile.create_with): a cached binary that the
        driver refuses is dropped, here and on disk, and built once more."""
        source = self.source()

        def create(spirv: bytes) -> Any:
            try:
                return device.pipeline(spirv, name=self.name, required_subgroup_size=self.required_subgroup_size,
                                       full_subgroups=full_subgroups)
            except KgenError:
                _compiled.cache_clear()   # lru_cache forgets no single entry; a refusal is rare
                raise

        return create_with(source, create, name=self.name, compiled=_compiled(self.name, source))

    def dump_glsl(self):
        """Its rendered GLSL, written under knobs.glsl_dir() (KGEN_DEBUG=4); returns the path."""
        return dump_glsl(self.source(), name=self.name)

    def groups(self, dims: dict[str, int]) -> tuple[int, int, int]:
        """Workgroup counts for a call, or a ValueError naming an axis over the Vulkan limit."""
        groups = tuple(evaluate(e, dims) for e in self.grid)
        return _within_group_limit(groups, self.name, ", ".join(f"{k}={dims[k]}" for k in sorted(dims)))


@dataclass(frozen=True)
class Scratch:
    name: str
    nbytes: Expr
    zero_once: bool = False   # zeroed when created; the steps leave it zero (fused_reduce's arrivals)


@dataclass(frozen=True)
class Recipe:
    variant: Variant
    steps: tuple[Step, ...]
    scratch: tuple[Scratch, ...]
    kernel_push: dict[str, Expr]   # push fields the "kernel" steps take instead of the caller's
    output: str                    # the abi binding the caller's O, (B, Hq, Nq, Dv) f32, is bound to

    @property
    def fa(self) -> Step:
        return next(s for s in self.steps if s.role == "fa")

    def sizes(self, dims: dict[str, int]) -> dict[str, int]:
        return {b.name: evaluate(b.nbytes, dims) for b in self.scratch}


def fa_grid(br: Expr) -> tuple[Expr, Expr, Expr]:
    """One workgroup per br query rows of a head, per batch and KV split (templates/README.md).
    `br` is the variant's, or the name "br" for the formula every entry of an export shares."""
    return ceil_div("n_q", br), "n_head_q", mul("n_batch", "split_count")


def reduce_name(head_v: int, sinks: bool, page: int = 0) -> str:
    return f"fa_reduce_v{head_v}{'_sinks' if sinks else ''}{f'_pg{page}' if page else ''}"


@functools.lru_cache(maxsize=512)
def recipe(v: Variant) -> Recipe:
    """The steps of variant `v` (its split_k and fused_reduce say whether a reduce runs)."""
    # The split rows go to scratch and a reduce (or the fused kernel) writes O; fused, the kernel
    # writes `reduced` even for one split.
    output = "reduced" if v.split_k or v.fused_reduce else "out"
    scratch = []
    if output == "reduced":
        scratch += [Scratch("out", mul(4 * v.head_v, "split_count", ROWS)), Scratch("stats", mul(8, "split_count", ROWS))]
    if v.fused_reduce:
        scratch.append(Scratch("split_arrivals", mul(4, ROWS), zero_once=True))
    kernel_binds = {name: name for name in CALLER_BUFFERS[:-1] if _reads(v, name)}
    if v.page:
        kernel_binds |= {name: name for name in abi.PAGED_BUFFERS}
    kernel_binds |= {b.name: b.name for b in scratch} | {output: "o"}
    steps = []
    for i, p in enumerate(passes_before(v)):
        # Each reads one caller buffer and writes its own, which the kernel then takes instead:
        # side by side, one barrier before the kernel.
        steps.append(Step(p.name, "before", p.render, p.local_size_x, ((p.reads, p.reads), (p.writes, p.buffer)),
                          "caller" if p.caller_push else "kernel", p.grid, barrier=False))
        scratch.append(Scratch(p.buffer, p.nbytes))
        kernel_binds[p.kernel_binding] = p.buffer
    binds = tuple(sorted(kernel_binds.items(), key=lambda kv: abi.BINDING[kv[0]]))
    steps.append(Step(v.kernel.uri, "fa", functools.partial(render, v), v.wg, binds, "kernel", fa_grid(v.br),
                      barrier=bool(steps), required_subgroup_size=v.subgroup))
    if v.split_k and not v.fused_reduce:
        steps.append(Step(reduce_name(v.head_v, v.sinks, v.page), "reduce",
                          functools.partial(render_split_k_reduce, v.head_v, v.sinks, REDUCE_WG, v.page), REDUCE_WG,
                          binds, "kernel", reduce_grid(reduce_chunks(v.head_v)), barrier=True))
    return Recipe(v, tuple(steps), tuple(scratch), kernel_push(v), output)


@functools.lru_cache(maxsize=256)
def _compiled(name: str, source: str) -> Compiled:
    return compile_source(source, name=name)


def _reads(v: Variant, name: str) -> bool:
    return {"mask": v.mask, "sinks": v.sinks}.get(name, True)
