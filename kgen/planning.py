"""Plan: one attention shape on one device, compiled, resident and recorded once."""
from __future__ import annotations

import math
import statistics

import numpy as np

from . import abi, dispatch, knobs
from .api import PRECISIONS, Shapes, fold_gqa
from .compile import compile_source, compile_variant
from .errors import UnsupportedVariant
from .kvtensor import KVTensor, KvLayout, layout_of, views_k
from .paths.coopmat1 import direct_reason
from .extent import evaluate
from .prepasses import converted, kernel_push, passes_before
from .render import REDUCE_WG, mask_dims, reduce_groups, render_split_k_reduce
from .paths.shared import FUSED_STATS_SLOTS
from .space import default_variant, why_invalid
from .variant import PathKind, Variant

F32 = np.dtype("<f4")


def split_count(shapes: Shapes, caps, br: int, bc: int) -> int:
    """KV splits that fill a GPU whose row tiles alone leave it idle (decode). CPUs get 1."""
    if caps.device_type == "cpu":
        return 1
    groups = math.ceil(shapes.n_q / br) * shapes.heads_q * shapes.batch
    target = 256  # a few workgroups per compute unit on current GPUs (132 SMs on an H100)
    return max(1, min(math.ceil(target / groups), shapes.n_kv // (4 * bc)))


def choose_variant(shapes: Shapes, caps, path: PathKind | None, splits: int | None, *,
                   tuned: bool = True) -> tuple[Variant, int, str]:
    """(variant, KV splits, how it was chosen) for these shapes: a tuned decision (see
    kgen.dispatch) unless a path is forced or `tuned` is False, else the heuristic default."""
    problem = shapes.problem()
    decision = dispatch.lookup(caps, problem) if tuned and path is None else None
    if decision is not None:
        v, how = decision.variant, f"tuned, {decision.level} class {decision.source}"
        guess = decision.splits
    else:
        v, how, guess = default_variant(problem, caps, path), "heuristic default", None
    if splits is None:
        # A stored count was tuned for this class; it still leaves each split whole tiles.
        splits = guess or split_count(shapes, caps, v.br, v.bc)
        splits = max(1, min(splits, shapes.n_kv // v.bc))
    if (splits > 1) != v.split_k:
        v = v.replace(split_k=splits > 1, fused_reduce=v.fused_reduce and splits > 1)
    return v.replace(aligned=shapes.n_kv % v.bc == 0), splits, how


def split_values(n_kv: int, splits: int, bc: int) -> tuple[int, int]:
    """(split_kv, split_count) push values for `splits` requested: each split is whole KV tiles,
    so the count may round down and no split is empty."""
    split_kv = max(bc, math.ceil(math.ceil(n_kv / splits) / bc) * bc)
    return split_kv, max(1, math.ceil(n_kv / split_kv))


# Inputs smaller than ROTATE_BELOW would sit in a GPU's L2 (50 MB on an H100) from one run to
# the next: timing then keeps several copies (separate plans sharing the one pipeline) and runs
# them in turn, enough to cover ROTATE_SPAN bytes.
ROTATE_BELOW = 64 << 20
ROTATE_SPAN = 256 << 20
ROTATE_MAX = 8


def rotation_sets(nbytes: int) -> int:
    """Input copies to run in turn so that no run reads what the previous one left in the L2."""
    if nbytes > ROTATE_BELOW:
        return 1
    return min(ROTATE_MAX, max(2, math.ceil(ROTATE_SPAN / max(nbytes, 1))))


def _run_steps(plans: list["Plan"], runs: int) -> list:
    """The steps of `runs` runs, taking the plans in turn."""
    return [step for i in range(runs) for step in plans[i % len(plans)]._steps]


def step_times(plans: list["Plan"], runs: int, tail: tuple = ()) -> list[float]:
    """GPU microseconds of every step of `runs` runs recorded into one submission, taking the
    plans in turn, followed by those of the `tail` steps."""
    with plans[0].device.sequence(_run_steps(plans, runs) + list(tail)) as seq:
        return seq.run(wait=True)


def time_back_to_back(plans: list["Plan"], runs: int) -> list[float]:
    """GPU microseconds of `runs` runs recorded into one submission, taking the plans in turn
    (separate buffers, so small inputs do not stay in L2 between runs). With no host round trip
    between runs the GPU never idles, so its clocks stay where a busy inference engine keeps
    them: timing run by run measured some kernels at a third of their speed on an H100."""
    if runs < 1:
        raise ValueError(f"runs={runs}: >= 1")
    times = step_times(plans, runs)
    out, at = [], 0
    for i in range(runs):
        n = len(plans[i % len(plans)]._steps)
        out.append(float(sum(times[at:at + n])))
        at += n
    return out


# Warm-up: runs back to back in batches of about WARM_BATCH_US of GPU time, each ending with the
# clock probe (kgen/clocks.py), until the floor has passed and the probe runs within
# CLOCK_TOLERANCE of the fastest it ever ran in this process, at most WARM_MAX_US. A fixed
# warm-up was not enough: an H100 idled by host work between candidates sat at 345-645 MHz
# (nvidia-smi: "GPU idle") and timed every later candidate of a tune 2-4x slow.
WARM_BATCH_US = 5_000
CLOCK_TOLERANCE = 0.03
WARM_MAX_US = 2_000_000
WARM_FIRST_US = 500_000  # the first warm-up of a process: long enough to reach the full clock


def _warm_batch(plans: list["Plan"], runs: int, probe, recorded: dict) -> tuple[list[float], float | None]:
    """GPU us of `runs` back-to-back runs' steps, and of the clock probe right after them (or None).
    `recorded` (batch size -> Sequence) keeps each size's recording to resubmit: recording a
    batch of a fast decode's 2000 runs took longer than running it (a tune's warm-ups spent
    most of their time recording)."""
    seq = recorded.get(runs)
    if seq is None:
        tail = [probe.step] if probe is not None else []
        seq = recorded[runs] = plans[0].device.sequence(_run_steps(plans, runs) + tail)
    times = seq.run(wait=True)
    return times, (times.pop() if probe is not None else None)


def warm_up(plans: list["Plan"], gpu_us: float, *, min_runs: int = 2, max_batch: int = 2000) -> float:
    """Run back to back for at least `gpu_us` of GPU time (and `min_runs` per plan), then on
    until the GPU's clock is up: the probe within CLOCK_TOLERANCE of its fastest time in this
    process and no longer getting faster. Returns the GPU microseconds spent."""
    from .clocks import probe_for
    dev = plans[0].device
    # A CPU device has no idle clock to wait out: the floor alone.
    probe = probe_for(dev) if dev.caps.device_type != "cpu" else None
    if probe is not None and probe.best_us == float("inf"):
        gpu_us = max(gpu_us, WARM_FIRST_US)  # no full-clock reference yet: make one
    runs = min_runs * len(plans)
    spent, last_us = 0.0, float("inf")
    recorded: dict = {}
    try:
        while True:
            times, probe_us = _warm_batch(plans, runs, probe, recorded)
            spent += sum(times)
            up = True
            if probe_us is not None:
                probe.saw(probe_us)
                climbing = probe_us < last_us * (1 - CLOCK_TOLERANCE)
                up = probe_us <= probe.best_us * (1 + CLOCK_TOLERANCE) and not climbing
                last_us = probe_us
            if spent >= WARM_MAX_US or (spent >= gpu_us and up):
                return spent
            per_run = max(statistics.median(times), 1e-3)
            wanted = max(len(plans), min(max_batch, int(WARM_BATCH_US / per_run) + 1))
            if not wanted / 2 <= runs <= 2 * wanted:   # a new recording only when 2x off
                runs = wanted
    finally:
        for seq in recorded.values():
            seq.close()


def _autotune(shapes: Shapes, device) -> None:
    """Tune the class of `shapes` now, timing these very shapes, and store the decision."""
    from .tune import tune
    from .tunedb import open_default
    if knobs.get("KGEN_DEBUG") >= 1:
        print(f"kgen: no tuned decision for {shapes.problem().key}: tuning it now")
    tune(shapes, open_default(), device=device)


class Plan:
    def __init__(self, shapes: Shapes, *, path: PathKind | None = None, device=None,
                 split_k: int | None = None, variant: Variant | None = None,
                 kv_layouts: dict[str, KvLayout] | None = None, autotune: bool | None = None):
        from .runtime import open_device  # the only place kgen reaches Vulkan from
        self.shapes = shapes               # what the caller passes and gets back
        self.kernel_shapes = s = fold_gqa(shapes)  # what the kernel computes (same bytes)
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
        self.device = open_device(device)
        caps = self.device.caps
        if split_k is not None and split_k < 1:
            raise ValueError(f"split_k={split_k}: must be >= 1")
        if variant is None:
            variant, splits, how = choose_variant(s, caps, path, split_k)
            if path is None and not how.startswith("tuned, exact") and (
                    autotune if autotune is not None else knobs.get("KGEN_AUTOTUNE")):
                _autotune(s, device)
                variant, splits, how = choose_variant(s, caps, path, split_k)
            if direct_reason(variant, s.n_kv, self._kernel_layouts(variant)) is not None:
                # A kv_direct pick tuned on dense caches; these K/V are laid out otherwise.
                variant, splits, how = choose_variant(s, caps, path, split_k, tuned=False)
        else:
            splits, how = split_k or 1, "given"
        if (reason := why_invalid(variant, caps)
                or direct_reason(variant, s.n_kv, self._kernel_layouts(variant))) is not None:
            raise UnsupportedVariant(variant.uri, reason)
        self._check_variant(variant, splits)
        # Splits are whole KV tiles: the count may round down so none is empty.
        self.variant, self.how = variant, how   # how: tuned exact / nearest class, heuristic, given
        self.split_kv, self.splits = split_values(s.n_kv, splits, variant.bc)
        if variant.fused_reduce and self.splits * min(variant.br, s.n_q) > FUSED_STATS_SLOTS:
            raise ValueError(f"split_k={splits}: {variant.uri} combines at most {FUSED_STATS_SLOTS} "
                             f"(row, split) pairs per row tile, here {min(variant.br, s.n_q)} rows x "
                             f"{self.splits} splits; use fewer splits or a variant without fused_reduce")
        if knobs.get("KGEN_DEBUG") >= 1:
            print(f"kgen: plan {s} -> {variant.uri} (splits {self.splits}; {how})")
        self._buffers = {}
        self._sequence = self.kernel = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _check_variant(self, v: Variant, splits: int) -> None:
        s = self.kernel_shapes
        want = (s.head_k, s.head_v, s.k_type, s.v_type, PRECISIONS[s.precision])
        have = (v.head_k, v.head_v, v.k_type, v.v_type, v.acc)
        if want != have:
            raise ValueError(f"variant {v.uri} computes (head_k, head_v, k_type, v_type, acc)={have}, "
                             f"the call needs {want}")
        if v.features != s.features + (("split_k",) if splits > 1 else ()):
            raise ValueError(f"variant {v.uri} has features {v.features}; the call needs "
                             f"{s.features + (('split_k',) if splits > 1 else ())}")
        if v.v_in_k and not self.v_in_k:
            raise ValueError(f"variant {v.uri} reads V from K's tile (v_in_k); this call's V is not "
                             "a view of K's rows")
        if v.aligned and s.n_kv % v.bc:
            raise ValueError(f"variant {v.uri} is aligned (Nkv % {v.bc} == 0) but Nkv={s.n_kv}")

    def _kernel_layouts(self, v: Variant) -> dict[str, KvLayout]:
        """Where the attention kernel reads K and V: the caller's layouts, or for tensors that
        kv_f16 converts, the dense f16 copy."""
        out, dims = dict(self.kv_layouts), self._dims()
        # The copy's layout and size as kgen export writes them (kernel_push, the pass's buffer).
        push = {name: evaluate(e, dims) for name, e in kernel_push(v).items()}
        sizes = {p.kernel_binding: evaluate(p.nbytes, dims) for p in passes_before(v) if p.kernel_binding in ("k", "v")}
        for t in converted(v):
            out[t] = KvLayout(tuple(push[f"{t}_stride_{axis}"] for axis in ("row", "head", "batch")),
                              push[f"{t}_offset"], sizes[t])
        return out

    # --- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        s, v, dev = self.kernel_shapes, self.variant, self.device
        caps = dev.caps
        fa = dev.pipeline(compile_variant(v).spirv, name=v.kernel.uri, required_subgroup_size=v.subgroup,
                          full_subgroups=caps.compute_full_subgroups)
        kernel_layouts = self._kernel_layouts(v)
        rows = s.batch * s.heads_q * s.n_q
        sizes = {
            "q": rows * s.head_k * 4,
            "k": self.kv_layouts["k"].nbytes,
            **({} if self.v_in_k else {"v": self.kv_layouts["v"].nbytes}),
            "out": self.splits * rows * s.head_v * 4,
        }
        if s.mask_shape is not None:
            sizes["mask"] = max(4, 2 * math.prod(s.mask_shape))
        if s.sinks:
            sizes["sinks"] = s.heads_q * 4
        if self.splits > 1 or v.fused_reduce:  # fused: the kernel writes `reduced` even for one split
            sizes["stats"] = self.splits * rows * 8
            sizes["reduced"] = rows * s.head_v * 4
        if v.fused_reduce:
            sizes["split_arrivals"] = rows * 4
        passes = passes_before(v)
        dims = self._dims()
        pass_groups = [p.groups(dims) for p in passes]
        for p in passes:
            sizes[p.buffer] = evaluate(p.nbytes, dims)
        self.kernel = fa
        self._buffers = {name: dev.buffer(n) for name, n in sizes.items()}
        if v.fused_reduce:
            self._buffers["split_arrivals"].write(np.zeros(rows, dtype=np.uint32))  # the kernel keeps it zero
        binds = {abi.BINDING[name]: buf for name, buf in self._buffers.items() if name in abi.BINDING}
        if self.v_in_k:
            binds[abi.BINDING["v"]] = self._buffers["k"]
        push = self._push(kernel_layouts)
        steps = []
        for p, groups in zip(passes, pass_groups):
            # Each reads the caller's buffer (a converted V inside K's bytes: K's buffer) and
            # writes its own, which the kernel then takes at p.kernel_binding.
            source = self._stored(p.reads) if p.reads in ("k", "v") else self._buffers[p.reads]
            pipeline = dev.pipeline(p.spirv(), name=p.name)
            steps.append((pipeline, {abi.BINDING[p.reads]: source, abi.BINDING[p.writes]: self._buffers[p.buffer]},
                          self._push(self.kv_layouts) if p.caller_push else push, groups))
            binds[abi.BINDING[p.kernel_binding]] = self._buffers[p.buffer]
        # The passes before the kernel read only the caller's inputs and each writes its own
        # buffer: they join each other (no barrier between them, so the GPU may overlap them);
        # one barrier before the kernel.
        steps = [step + (i > 0,) for i, step in enumerate(steps)]
        groups = (math.ceil(s.n_q / v.br), s.heads_q, s.batch * self.splits)
        steps.append((fa, binds, push, groups))
        if self.splits > 1 and not v.fused_reduce:
            wg = min(REDUCE_WG, 1 << (caps.max_workgroup_invocations.bit_length() - 1))
            reduce = dev.pipeline(compile_source(render_split_k_reduce(s.head_v, s.sinks, wg),
                                                 name=f"fa_reduce_v{s.head_v}{'_sinks' if s.sinks else ''}_wg{wg}").spirv,
                                  name="split_k_reduce")
            steps.append((reduce, binds, push, reduce_groups(s.n_q, s.heads_q, s.batch, s.head_v)))
        self._steps = steps
        self._sequence = dev.sequence(steps)

    def _dims(self) -> dict[str, int]:
        """The call's dimensions the passes before the kernel are sized by (kgen.extent)."""
        s = self.kernel_shapes
        return dict(mask_dims(s.mask_shape or (1, 1, 1, s.n_kv)), n_q=s.n_q, n_kv=s.n_kv, n_head_q=s.heads_q,
                    n_head_kv=s.heads_kv, n_batch=s.batch)

    def _stored(self, t: str):
        """The device buffer holding tensor `t` ("k" or "v") as the caller stores it."""
        return self._buffers["k" if t == "v" and self.v_in_k else t]

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
            q_stride_row=s.head_k, q_stride_head=s.n_q * s.head_k, q_stride_batch=s.heads_q * s.n_q * s.head_k,
            k_stride_row=kl.strides[0], k_stride_head=kl.strides[1], k_stride_batch=kl.strides[2],
            v_stride_row=vl.strides[0], v_stride_head=vl.strides[1], v_stride_batch=vl.strides[2],
            k_offset=kl.offset, v_offset=vl.offset,
            mask_stride_row=n_kv if mq > 1 else 0,
            mask_stride_head=mq * n_kv if mh > 1 else 0,
            mask_stride_batch=mh * mq * n_kv if mb > 1 else 0,
            scale=s.scale if s.scale is not None else 1.0 / math.sqrt(s.head_k),
            softcap=s.softcap, alibi_m0=m0, alibi_m1=m1, alibi_n2=slopes_n2,
            window=s.window, split_kv=self.split_kv, split_count=self.splits)

    # --- use -------------------------------------------------------------------------------
    def upload(self, q, k, v, mask=None, sinks=None) -> None:
        s = self.shapes
        _expect(q, "q", (s.batch, s.heads_q, s.n_q, s.head_k))
        for name, x in (("q", q), ("k", k), ("v", v), ("sinks", sinks)):
            if x is not None and not isinstance(x, KVTensor) and not np.isfinite(np.asarray(x)).all():
                raise ValueError(f"{name} has NaN or Inf values: kgen computes on finite inputs only")
        self._buffers["q"].write(np.ascontiguousarray(q, dtype=F32))
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
                continue   # its bytes went up with K
            raw = x.raw if isinstance(x, KVTensor) else KVTensor.from_array(np.asarray(x), t).raw
            self._buffers[name].write(raw)
        if s.mask_shape is not None:
            if mask is None:
                raise ValueError("this plan was made with a mask: pass mask=")
            self._buffers["mask"].write(_mask_f16(mask, s.mask_shape))
        elif mask is not None:
            raise ValueError("this plan was made without a mask; make a plan with mask= to use one")
        if s.sinks:
            if sinks is None:
                raise ValueError("this plan was made with sinks: pass sinks=")
            self._buffers["sinks"].write(np.ascontiguousarray(sinks, dtype=F32))
        elif sinks is not None:
            raise ValueError("this plan was made without sinks; make a plan with sinks= to use them")

    def run_device(self) -> float:
        """Run on the resident buffers; returns GPU microseconds (all passes)."""
        return float(sum(self._sequence.run(wait=True)))

    def result(self) -> np.ndarray:
        s = self.shapes
        name = "reduced" if self.splits > 1 or self.variant.fused_reduce else "out"
        n = s.batch * s.heads_q * s.n_q * s.head_v
        out = np.frombuffer(self._buffers[name].read(n * 4), dtype=F32).copy()
        return out.reshape(s.batch, s.heads_q, s.n_q, s.head_v)

    def __call__(self, q, k, v, *, mask=None, sinks=None) -> np.ndarray:
        self.upload(q, k, v, mask=mask, sinks=sinks)
        self.run_device()
        return self.result()

    def close(self) -> None:
        if self._sequence is not None:
            self._sequence.close()
            self._sequence = None
        for buf in self._buffers.values():
            buf.close()
        self._buffers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()




def _expect(x, name: str, shape: tuple) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; this plan was made for {shape}")


def _mask_f16(mask, stored: tuple) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        m = np.where(m, 0.0, -np.inf)
    m = np.asarray(m, dtype=np.float64)
    if np.isnan(m).any() or np.isposinf(m).any():
        raise ValueError("mask has NaN or +inf entries: use finite values or -inf")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    return np.ascontiguousarray(np.broadcast_to(m, stored), dtype=np.float16)
