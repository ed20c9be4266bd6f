"""Plan: one attention shape on one device, compiled, resident and recorded once, from its recipe."""
from __future__ import annotations

import math

import numpy as np

from .. import abi, knobs
from ..errors import OutOfResources, UnsupportedVariant
from ..extent import evaluate, names
from ..kvtensor import KVTensor, KvLayout, layout_of, views_k
from ..paths.shared import FUSED_STATS_SLOTS
from ..problem import mismatch
from ..quant import F16_MAX, check_stored
from ..render import MAX_GROUPS
from ..shapes import (Shapes, as_f32, as_inputs, as_int, check_strides, fold_for_layouts, stored_mask_shape,
                      strided_copy, strided_extent)
from ..space import why_invalid
from ..variant import PathKind, Variant
from .choose import (MAX_SUBMISSIONS, aligned_for, call_dims, call_reason, choose_variant, group_work,
                     groups_per_submission, kernel_layouts, split_values)
from .recipe import CALLER_BUFFERS, recipe

F32 = np.dtype("<f4")


class Resident:
    """What a plan holds on the device (`_sequence`, `_buffers`) and how it lets it go."""
    _sequence = None
    _buffers: dict = {}

    def close(self) -> None:
        """Free the plan's device objects once a call running in another thread has finished;
        later calls (and upload, run_device, result) raise kgen.runtime.ClosedError. The closed
        buffers stay in place, so each use names what is closed instead of a missing key."""
        from contextlib import nullcontext
        with self._sequence.lock if self._sequence is not None else nullcontext():
            if self._sequence is not None:
                self._sequence.close()
            for buf in self._buffers.values():
                buf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Plan(Resident):
    def __init__(self, shapes: Shapes, *, path: PathKind | None = None, device=None,
                 split_k: int | None = None, variant: Variant | None = None,
                 kv_layouts: dict[str, KvLayout] | None = None, q_strides=None, o_strides=None):
        from .probe import open_for_kernels  # the only place a plan reaches Vulkan from
        split_k, variant = as_int(split_k, "split_k", optional=True), _as_variant(variant)
        self.shapes = shapes               # what the caller passes and gets back
        # Q and O on the device by these (row, head, batch) strides (dense by default).
        self.q_strides = check_strides("q_strides", q_strides, shapes.batch, shapes.heads_q, shapes.n_q, shapes.head_k)
        self.o_strides = check_strides("o_strides", o_strides, shapes.batch, shapes.heads_q, shapes.n_q, shapes.head_v)
        # What the kernel computes (the same bytes), and how it addresses Q and O.
        self.kernel_shapes, self.kernel_q_strides, self.kernel_o_strides = fold_for_layouts(
            shapes, self.q_strides, self.o_strides)
        s = self.kernel_shapes
        self.kv_layouts = kv_layouts or {
            "k": layout_of(None, s.k_type, (s.batch, s.heads_kv, s.n_kv, s.head_k)),
            "v": layout_of(None, s.v_type, (s.batch, s.heads_kv, s.n_kv, s.head_v))}
        # V is a view of K's bytes (DeepSeek MLA): one device buffer serves both bindings, so
        # the V reads of a tile hit the cache lines its K reads just brought in.
        self.v_in_k = s.v_in_k
        if self.v_in_k:
            if not kv_layouts:   # no caller's view given: V addresses K's rows, first head_v columns
                self.kv_layouts["v"] = self.kv_layouts["k"]
            if self.kv_layouts["k"].nbytes != self.kv_layouts["v"].nbytes:
                raise ValueError("v_in_k: V must be a view of K's whole buffer (both KVTensors on the same data)")
        if split_k is not None and split_k < 1:
            raise ValueError(f"split_k={split_k}: must be >= 1")
        knobs.get("KGEN_MAX_SUBMIT_WORK")   # a bad value fails before the device opens
        self.device = open_for_kernels(device)
        caps = self.device.caps
        self.work_bound = knobs.max_submit_work(caps.vendor, caps.device_type)
        if variant is None:
            # The layout rules judge the twin the call runs (aligned_for), as the C lookup does.
            variant, splits, how = choose_variant(
                s, caps, path, split_k, fits_call=lambda v: call_reason(aligned_for(v, s.n_kv), s, self.kv_layouts),
                work_bound=self.work_bound)
        else:
            splits, how = split_k or 1, "given"
        if (reason := why_invalid(variant, caps) or call_reason(variant, s, self.kv_layouts)) is not None:
            raise UnsupportedVariant(variant.uri, reason)
        if (reason := mismatch(variant, s.problem(), splits)) is not None:
            raise ValueError(f"variant {reason}")
        if variant.aligned and s.n_kv % variant.bc:
            raise ValueError(f"variant {variant.uri} is aligned (Nkv % {variant.bc} == 0) but Nkv={s.n_kv}")
        self.variant, self.how = variant, how   # how: tuned exact / nearest class, heuristic, given
        self.split_kv, self.splits = split_values(s.n_kv, splits, variant.bc)
        if variant.fused_reduce and self.splits * min(variant.br, s.n_q) > FUSED_STATS_SLOTS:
            raise ValueError(f"split_k={splits}: {variant.uri} combines at most {FUSED_STATS_SLOTS} "
                             f"(row, split) pairs per row tile, here {min(variant.br, s.n_q)} rows x "
                             f"{self.splits} splits; use fewer splits or a variant without fused_reduce")
        self.recipe = recipe(variant)
        sizes = _buffer_sizes(self, self.dims())
        _check_device_limits(self, sizes)   # before any allocation or compile
        self.fa_per_submission = self._fa_per_submission()
        if knobs.debug(1):
            print(f"kgen: plan {s} -> {variant.uri} (splits {self.splits}; {how})")
        self._buffers = {}
        self._sequence = self.kernel = None
        try:
            self._build(sizes)
        except BaseException:
            self.close()
            raise

    # --- construction ----------------------------------------------------------------------
    def _build(self, sizes: dict[str, int]) -> None:
        """Buffers of `sizes` (_buffer_sizes), pipelines and the recorded sequence."""
        dev, r, dims = self.device, self.recipe, self.dims()
        groups = [step.groups(dims) for step in r.steps]
        self._buffers = {name: dev.buffer(n) for name, n in sizes.items()}
        for b in r.scratch:
            if b.zero_once:
                self._buffers[b.name].write(bytes(self._buffers[b.name].nbytes))
        push = {"caller": self._push(self.kv_layouts),
                "kernel": self._push(kernel_layouts(self.variant, self.kv_layouts, dims))}
        steps = []
        for i, (step, grid) in enumerate(zip(r.steps, groups)):
            if knobs.debug(4):
                print(f"kgen: glsl {step.name} {step.dump_glsl()}")
            pipeline = step.pipeline(dev, full_subgroups=bool(step.required_subgroup_size)
                                     and dev.caps.compute_full_subgroups)
            if step.role == "fa":
                self.kernel = pipeline
            binds = {abi.BINDING[binding]: self._buffer(name) for binding, name in step.binds}
            steps.append((pipeline, binds, push[step.push], grid, i > 0 and not step.barrier)
                         + ((self.fa_per_submission,) if step.role == "fa" and self.fa_per_submission else ()))
        self.steps = steps
        self._sequence = dev.sequence(steps)
        self.submissions = self._sequence.submissions

    def _fa_per_submission(self) -> int | None:
        """FA workgroups per submission under the work bound, None when the whole grid fits one;
        a ValueError naming KGEN_MAX_SUBMIT_WORK when the call would need over MAX_SUBMISSIONS."""
        from ..runtime.launch import box_count
        s, grid = self.kernel_shapes, self.recipe.fa.groups(self.dims())
        most = groups_per_submission(s, self.variant, self.split_kv, self.work_bound)
        if most is None or most >= math.prod(grid):
            return None
        if "gl_NumWorkGroups" in self.recipe.fa.source():   # a box's counts, not the grid's
            raise UnsupportedVariant(self.variant.uri, "its kernel reads gl_NumWorkGroups, so it cannot be "
                                     "dispatched in parts under KGEN_MAX_SUBMIT_WORK")
        if (count := box_count(grid, most)) > MAX_SUBMISSIONS:
            raise ValueError(f"KGEN_MAX_SUBMIT_WORK={self.work_bound:g}: this call's {self.fa_work()[1]:.3g} "
                             f"FLOPs of attention ({group_work(s, self.variant, self.split_kv):.3g} per "
                             f"workgroup) need {count} submissions, at most {MAX_SUBMISSIONS}; raise the "
                             "bound or split the call")
        return most

    def dims(self) -> dict[str, int]:
        """The call's dimensions the recipe's formulas take (kgen.extent), split values included."""
        return call_dims(self.kernel_shapes) | {"split_kv": self.split_kv, "split_count": self.splits}

    def _buffer(self, name: str):
        """The device buffer the recipe calls `name` (V inside K's bytes: K's buffer)."""
        return self._buffers["k" if name == "v" and self.v_in_k else name]

    def _push(self, kv_layouts: dict[str, KvLayout]) -> bytes:
        s = self.kernel_shapes
        kl, vl = kv_layouts["k"], kv_layouts["v"]
        mb, mh, mq, _ = s.mask_shape or (1, 1, 1, 1)
        n_kv = s.n_kv
        slopes_n2 = 1 << (s.heads_q.bit_length() - 1)
        m0 = 2.0 ** (-s.alibi_max_bias / slopes_n2)
        m1 = 2.0 ** (-s.alibi_max_bias / 2 / slopes_n2)
        return abi.pack(
            n_q=s.n_q, n_kv=n_kv, n_head_q=s.heads_q, gqa_ratio=s.heads_q // s.heads_kv, n_batch=s.batch,
            q_stride_row=self.kernel_q_strides[0], q_stride_head=self.kernel_q_strides[1],
            q_stride_batch=self.kernel_q_strides[2],
            k_stride_row=kl.strides[0], k_stride_head=kl.strides[1], k_stride_batch=kl.strides[2],
            v_stride_row=vl.strides[0], v_stride_head=vl.strides[1], v_stride_batch=vl.strides[2],
            k_offset=kl.offset, v_offset=vl.offset,
            mask_stride_row=n_kv if mq > 1 else 0,
            mask_stride_head=mq * n_kv if mh > 1 else 0,
            mask_stride_batch=mh * mq * n_kv if mb > 1 else 0,
            scale=s.scale if s.scale is not None else 1.0 / math.sqrt(s.head_k),
            softcap=s.softcap, alibi_m0=m0, alibi_m1=m1, alibi_n2=slopes_n2,
            window=s.window, split_kv=self.split_kv, split_count=self.splits,
            o_stride_row=self.kernel_o_strides[0], o_stride_head=self.kernel_o_strides[1],
            o_stride_batch=self.kernel_o_strides[2])

    # --- use -------------------------------------------------------------------------------
    def upload(self, q, k, v, mask=None, sinks=None) -> None:
        """Write a call's inputs to the plan's buffers. Every input is checked and converted
        first, so a refused one leaves the buffers as they were."""
        s = self.shapes
        q, k, v, mask, sinks = as_inputs(q, k, v, mask, sinks, data=True)
        _expect(q, "q", (s.batch, s.heads_q, s.n_q, s.head_k))
        payloads = {"q": strided_copy(as_f32(q, "q"), self.q_strides)}
        for name, x, t, d in (("k", k, s.k_type, s.head_k), ("v", v, s.v_type, s.head_v)):
            _expect(x, name, (s.batch, s.heads_kv, s.n_kv, d))
            planned, given = self.kv_layouts[name], layout_of(x, t, tuple(x.shape))
            if given != planned:
                raise ValueError(f"{name}: its layout {given} differs from the plan's {planned}; "
                                 f"make a plan with this {name}")
            if isinstance(x, KVTensor) and x.type != t:
                raise ValueError(f"{name}: a {x.type} KVTensor, the plan stores {t}")
            if name == "v" and self.v_in_k:
                if not views_k(k, x):
                    raise ValueError("v: this plan reads V inside K's bytes (v_in_k); pass V as a "
                                     "KVTensor view on K's data, or make a plan with this v")
                continue   # its bytes go up with K
            if isinstance(x, KVTensor):
                x.check_finite(name)
                payloads[name] = x.raw
            else:
                payloads[name] = KVTensor.from_array(as_f32(x, name), t, name=name).raw
        if s.mask_shape is not None:
            if mask is None:
                raise ValueError("this plan was made with a mask: pass mask=")
            payloads["mask"] = _mask_f16(mask, s)
        elif mask is not None:
            raise ValueError("this plan was made without a mask; make a plan with mask= to use one")
        if s.sinks:
            if sinks is None:
                raise ValueError("this plan was made with sinks: pass sinks=")
            _expect(sinks, "sinks", (s.heads_q,))
            payloads["sinks"] = as_f32(sinks, "sinks")
        elif sinks is not None:
            raise ValueError("this plan was made without sinks; make a plan with sinks= to use them")
        for name, data in payloads.items():
            self._buffers[name].write(data)

    def run_device(self) -> float:
        """Run on the resident buffers; returns GPU microseconds (all passes)."""
        times = self._sequence.run(wait=True)
        if knobs.debug(2):
            for line in self.dispatch_lines(times):
                print(line)
        return float(sum(times))

    def fa_work(self) -> tuple[int, int]:
        """(bytes, FLOPs) of the FA step on the caller's shapes: Q read, O written as f32, K and
        V as stored, the mask as f16; FLOPs 2*B*Hq*Nq*Nkv*(Dk+Dv) (the ggml convention)."""
        s = self.shapes
        rows = s.batch * s.heads_q * s.n_q
        kv = self.kv_layouts["k"].nbytes + (0 if self.v_in_k else self.kv_layouts["v"].nbytes)
        mask = 2 * math.prod(s.mask_shape) if s.mask_shape is not None else 0
        return rows * (s.head_k + s.head_v) * 4 + kv + mask, 2 * rows * s.n_kv * (s.head_k + s.head_v)

    def dispatch_lines(self, times: list[float]) -> list[str]:
        """KGEN_DEBUG=2: one line per dispatch of a run that took `times` (GPU us per step, 0.0 on
        a step recorded beside the one before it, [] when the device has no timer)."""
        lines = []
        for i, (step, recorded) in enumerate(zip(self.recipe.steps, self.steps)):
            grid, joins = recorded[3], recorded[4]
            line = f"kgen: dispatch {step.name} grid {'x'.join(map(str, grid))}"
            if len(recorded) > 5:   # split by KGEN_MAX_SUBMIT_WORK
                from ..runtime.launch import box_count
                line += f" in {box_count(grid, recorded[5])} submissions"
            if not times:
                line += " (untimed)"
            elif joins:
                line += " (timed with the step before)"
            else:
                us = times[i]
                line += f" {us:.1f} us"
                if step.role == "fa" and us > 0:
                    nbytes, flops = self.fa_work()
                    line += f" {nbytes / (us * 1e3):.4g} GB/s {flops / (us * 1e6):.4g} TFLOPS"
            lines.append(line)
        return lines

    def result(self, out: np.ndarray | None = None) -> np.ndarray:
        """O as (B, Hq, Nq, Dv) float32, read through the plan's o_strides; into `out` if given."""
        s = self.shapes
        shape = (s.batch, s.heads_q, s.n_q, s.head_v)
        if out is not None:
            _check_out(out, shape)
        raw = np.frombuffer(self._buffers["o"].read(self._buffers["o"].nbytes), dtype=F32)
        rows = np.lib.stride_tricks.as_strided(raw, shape, [4 * x for x in self.o_strides[::-1]] + [4])
        if out is None:
            return rows.copy()
        out[...] = rows
        return out

    def __call__(self, q, k, v, *, mask=None, sinks=None, out: np.ndarray | None = None) -> np.ndarray:
        """Upload, run and read back as one unit: threads sharing a plan take turns (its
        sequence's lock), since every call uses the plan's one set of device buffers."""
        if out is not None:   # checked before any device work
            _check_out(out, (self.shapes.batch, self.shapes.heads_q, self.shapes.n_q, self.shapes.head_v))
        with self._sequence.lock:
            if self._sequence.closed:
                from ..runtime.errors import ClosedError
                raise ClosedError(f"plan {self.variant.uri}")
            self.upload(q, k, v, mask=mask, sinks=sinks)
            self.run_device()
            return self.result(out)



def _check_out(out, shape: tuple) -> None:
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out: a float32 array of shape {shape} (a numpy array), got "
                         f"{getattr(out, 'dtype', type(out))} {tuple(np.shape(out))}")
    if not out.flags.writeable:
        raise ValueError("out: a read-only array; pass a writeable one")


def _expect(x, name: str, shape: tuple) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; this plan was made for {shape}")


def _mask_f16(mask, s: Shapes) -> np.ndarray:
    """The mask as the f16 values the kernels read, in the plan's stored shape. Finite values
    below -65504 saturate to -65504, as the C dispatcher's f32-mask pass does (engines write
    -1e30 or f32's lowest for a hidden key); above +65504 they are refused, since saturating them
    would change which keys win."""
    full = (s.batch, s.heads_q, s.n_q, s.n_kv)
    if any(have not in (1, want) for have, want in zip(stored_mask_shape(mask, full), s.mask_shape)):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; this plan was made for a mask stored as "
                         f"{s.mask_shape} (broadcast to (B, Hq, Nq, Nkv)={full})")
    m = np.asarray(mask)
    if m.dtype == bool:
        m = np.where(m, 0.0, -np.inf)
    m = np.asarray(m, dtype=np.float64)
    if np.isnan(m).any() or np.isposinf(m).any():
        raise ValueError("mask has NaN or +inf entries: use finite values or -inf")
    m = np.where(np.isfinite(m), np.maximum(m, -F16_MAX), m)
    with np.errstate(over="ignore"):
        m16 = np.asarray(m, dtype=np.float16)
    check_stored(m, np.isfinite(m16) | np.isneginf(m), "mask", "f16", F16_MAX,
                 "the mask is stored as f16 (finite values below -65504 saturate, -inf hides a key)")
    m16 = m16.reshape((1,) * (4 - m16.ndim) + m16.shape)
    return np.ascontiguousarray(np.broadcast_to(m16, s.mask_shape))


def _as_variant(variant) -> Variant | None:
    """plan()'s `variant`: a Variant, its uri (Variant.parse) or None; anything else by name."""
    if variant is None or isinstance(variant, Variant):
        return variant
    if not isinstance(variant, str):
        raise ValueError(f"variant={variant!r}: a kgen Variant, its uri string, or None")
    try:
        return Variant.parse(variant)
    except ValueError as exc:
        raise ValueError(f"variant={variant!r}: {exc}") from None


def _buffer_sizes(p: Plan, dims: dict[str, int]) -> dict[str, int]:
    """Bytes of every buffer a plan allocates: the caller's tensors, then the recipe's scratch."""
    s, c = p.kernel_shapes, p.shapes
    sizes = {"q": 4 * strided_extent(p.q_strides, c.batch, c.heads_q, c.n_q, c.head_k),
             "k": p.kv_layouts["k"].nbytes}
    if not p.v_in_k:
        sizes["v"] = p.kv_layouts["v"].nbytes
    if s.mask_shape is not None:
        sizes["mask"] = max(4, 2 * math.prod(s.mask_shape))
    if s.sinks:
        sizes["sinks"] = s.heads_q * 4
    sizes["o"] = 4 * strided_extent(p.o_strides, c.batch, c.heads_q, c.n_q, c.head_v)
    return sizes | p.recipe.sizes(dims)


# The call's dimensions as the API names them, for errors about the grid a dimension sizes.
_DIMENSION_WORDS = {"n_batch": "batch", "n_head_q": "heads", "n_head_kv": "heads_kv", "n_q": "n_q",
                    "n_kv": "n_kv", "split_count": "KV splits", "mask_planes": "mask planes",
                    "mask_rows": "mask rows"}


def _tensor_words(p: Plan, name: str) -> str:
    c = p.shapes
    return {"q": f"f32 (B, Hq, Nq, Dk)={(c.batch, c.heads_q, c.n_q, c.head_k)} by q_strides {p.q_strides}",
            "k": f"{c.k_type} (B, Hkv, Nkv, Dk)={(c.batch, c.heads_kv, c.n_kv, c.head_k)}",
            "v": f"{c.v_type} (B, Hkv, Nkv, Dv)={(c.batch, c.heads_kv, c.n_kv, c.head_v)}",
            "mask": f"f16, stored as {c.mask_shape}", "sinks": f"f32 ({c.heads_q},)",
            "o": f"f32 (B, Hq, Nq, Dv)={(c.batch, c.heads_q, c.n_q, c.head_v)} by o_strides {p.o_strides}"}[name]


def _check_device_limits(p: Plan, sizes: dict[str, int]) -> None:
    """A ValueError naming the tensor or dimension that exceeds the device's
    maxStorageBufferRange or maxComputeWorkGroupCount (OutOfResources for a scratch buffer,
    which the variant sizes), before anything is allocated or compiled."""
    caps, dims = p.device.caps, p.dims()
    limit = caps.max_storage_buffer_range
    for name, nbytes in sizes.items():
        if nbytes <= limit:
            continue
        if name in CALLER_BUFFERS:
            raise ValueError(f"{name}: {nbytes} bytes ({_tensor_words(p, name)}) exceed this device's "
                             f"maxStorageBufferRange of {limit} bytes; split the call (batch, heads or rows)")
        raise OutOfResources(p.variant.uri, f"bytes in scratch buffer {name!r} (maxStorageBufferRange)", nbytes, limit)
    folded = p.kernel_shapes is not p.shapes
    for step in p.recipe.steps:
        for axis, (expr, most) in enumerate(zip(step.grid, caps.max_workgroup_count)):
            count, most = evaluate(expr, dims), min(most, MAX_GROUPS)
            if count <= most:
                continue
            named = ", ".join(f"{_DIMENSION_WORDS.get(d, d)}={dims[d]}" for d in names(expr))
            note = (" (GQA folded: each group's Hq/Hkv query heads are rows of one head, so n_q is "
                    "Nq x Hq/Hkv and heads is Hkv)") if folded else ""
            raise ValueError(f"{named}: the {step.name} step needs {count} workgroups along grid "
                             f"{'xyz'[axis]}, this device allows {most} (maxComputeWorkGroupCount"
                             f"[{axis}], at most {MAX_GROUPS} for kgen's grids){note}; split the call")
