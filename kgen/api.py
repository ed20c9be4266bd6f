"""The public API: kgen.attention() and kgen.plan().

Everything is validated here, before anything reaches the GPU; a plan then does a lookup, an
upload, one recorded submission and a download per call.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import knobs
from .shapes import Shapes, as_flag, as_inputs, check_strides, fold_for_layouts, shapes_of
from .variant import PathKind


def _tune_if_untuned(kernel_shapes: Shapes, device) -> None:
    """Tune the class of `kernel_shapes` now, timing these very shapes, and store the decision,
    unless the tuning DB holds one for the exact class."""
    from .planning import dispatch
    from .tune import tune
    from .tunedb import open_default
    decision = dispatch.lookup(device.caps, kernel_shapes.problem())
    if decision is not None and decision.level == "exact":
        return
    if knobs.debug(1):
        print(f"kgen: no tuned decision for {kernel_shapes.problem().key}: tuning it now")
    tune(kernel_shapes, open_default(), device=device)


def resolve_path(path: "str | PathKind | None") -> PathKind | None:
    chosen = path if path is not None else knobs.get("KGEN_PATH")
    if chosen is None:
        return None
    try:
        return PathKind.parse(chosen)
    except ValueError:
        raise ValueError(f"path={chosen!r}: one of scalar, coopmat1, coopmat2 (or None)") from None


def check_device(device) -> None:
    """`device` as the API takes it, or a ValueError naming it: None (KGEN_DEVICE, else the best
    device), a device index or an open kgen.runtime Device."""
    from .runtime.context import Device
    if device is None or isinstance(device, Device):
        return
    if isinstance(device, bool) or not isinstance(device, numbers.Integral) or device < 0:
        raise ValueError(f"device={device!r}: a device index >= 0 (`kgen devices` lists them), a "
                         "kgen.runtime Device, or None (KGEN_DEVICE, an index or a name substring, picks)")


def plan(q, k, v, *, mask=None, causal=False, window=None, scale=None, softcap=0.0,
         alibi_max_bias=0.0, sinks=None, k_type=None, v_type=None, precision="f32", path=None,
         device=None, split_k: int | None = None, variant=None, autotune: bool | None = None,
         q_strides=None, o_strides=None):
    """A reusable, device-resident attention for these shapes and features. q, k, v (and mask)
    may be arrays or anything with `.shape`; the data is given to the call. Close it when done
    (or use it as a context manager). The variant is the tuned decision for the shapes' class
    (see `kgen tune`), else the heuristic default; `autotune=True` (or KGEN_AUTOTUNE=1) tunes
    a class with no exact decision first, on these shapes, and stores the result. `q_strides`,
    `o_strides`: (row, head, batch) element strides of Q and O on the device (an engine's layout,
    e.g. ggml's (B, Nq, Hq, D) output); the call still takes and returns (B, Hq, Nq, D) arrays."""
    from .planning.plan import Plan
    q, k, v, mask, sinks = as_inputs(q, k, v, mask, sinks)   # lists to arrays; the rest refused
    check_device(device)
    autotune = as_flag(autotune, "autotune", optional=True)
    shapes = shapes_of(q, k, v, mask=mask, causal=causal, window=window, scale=scale, softcap=softcap,
                       alibi_max_bias=alibi_max_bias, sinks=sinks, k_type=k_type, v_type=v_type,
                       precision=precision)
    from .kvtensor import layout_of
    kv_layouts = {"k": layout_of(k, shapes.k_type, tuple(k.shape)), "v": layout_of(v, shapes.v_type, tuple(v.shape))}
    path = resolve_path(path)
    b, hq, nq = shapes.batch, shapes.heads_q, shapes.n_q
    q_strides = check_strides("q_strides", q_strides, b, hq, nq, shapes.head_k)
    o_strides = check_strides("o_strides", o_strides, b, hq, nq, shapes.head_v)
    if path is None and variant is None and (autotune if autotune is not None else knobs.get("KGEN_AUTOTUNE")):
        from .planning.probe import open_for_kernels
        device = open_for_kernels(device)
        _tune_if_untuned(fold_for_layouts(shapes, q_strides, o_strides)[0], device)
    return Plan(shapes, path=path, device=device, split_k=split_k, variant=variant, kv_layouts=kv_layouts,
                q_strides=q_strides, o_strides=o_strides)


def attention(q, k, v, *, mask=None, causal=False, window=None, scale=None, softcap=0.0,
              alibi_max_bias=0.0, sinks=None, k_type=None, v_type=None, precision="f32",
              path=None, device=None, autotune: bool | None = None, out=None) -> np.ndarray:
    """Flash attention on a Vulkan device; returns (B, Hq, Nq, Dv) float32 (written into `out`
    if given). See README: Quick start."""
    q, k, v, mask, sinks = as_inputs(q, k, v, mask, sinks, data=True)   # before any device work
    with plan(q, k, v, mask=mask, causal=causal, window=window, scale=scale, softcap=softcap,
              alibi_max_bias=alibi_max_bias, sinks=sinks, k_type=k_type, v_type=v_type,
              precision=precision, path=path, device=device, autotune=autotune) as p:
        return p(q, k, v, mask=mask, sinks=sinks, out=out)


def paged_plan(q, k_cache, v_cache, *, block_table, seq_lens, cu_seqlens_q=None, causal=False, window=None,
               scale=None, softcap=0.0, sinks=None, precision="f32", layout: str = "NHD", path=None,
               device=None, split_k: int | None = None, variant=None):
    """A reusable, device-resident attention over a paged KV cache (kgen.PagedKV, or float pages
    in `layout`) for a ragged batch of this call's sizes; docs/paged.md. Later calls may change
    the lengths, the table and the data (kgen.planning.paged_plan says what must stay)."""
    from .paged import as_paged, check_layout
    from .planning.paged_plan import PagedPlan
    from .planning.plan import _as_variant
    as_flag(causal, "causal")
    check_layout(layout)
    check_device(device)
    k_cache, v_cache = as_paged(k_cache, "k_cache", layout), as_paged(v_cache, "v_cache", layout)
    return PagedPlan(q, k_cache, v_cache, block_table=block_table, seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q,
                     causal=causal, window=window, scale=scale, softcap=softcap, sinks=sinks,
                     precision=precision, path=resolve_path(path), device=device, split_k=split_k,
                     variant=_as_variant(variant))


def paged_attention(q, k_cache, v_cache, *, block_table, seq_lens, cu_seqlens_q=None, causal=False,
                    window=None, scale=None, softcap=0.0, sinks=None, precision="f32", layout: str = "NHD",
                    path=None, device=None) -> np.ndarray:
    """Attention over a paged KV cache for a ragged batch; returns (total_q, Hq, Dv) float32.
    Every input is checked before any device work (kgen.paged.check_paged); docs/paged.md."""
    from .paged import as_paged
    k_cache, v_cache = as_paged(k_cache, "k_cache", layout), as_paged(v_cache, "v_cache", layout)
    with paged_plan(q, k_cache, v_cache, block_table=block_table, seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q,
                    causal=causal, window=window, scale=scale, softcap=softcap, sinks=sinks,
                    precision=precision, path=path, device=device) as p:
        return p(q, k_cache, v_cache, block_table=block_table, seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q,
                 sinks=sinks)
