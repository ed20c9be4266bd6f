"""`kgen bench`: the dispatcher's kernel for each case of a shape suite, timed on the GPU.

For a case, bench builds the plan `kgen.plan` would build (the variant and split count the
dispatcher picks, unchanged), uploads random inputs in the case's KV types (MLA: V is a view of
K's bytes), checks the output against the float64 reference, and times `run_device()` with GPU
timestamps after warm-up, rotating among copies of the inputs when they would sit in the L2.
Host costs (making a plan, a whole call, the submit-and-wait around a run) are measured apart
from the GPU time. torch's SDPA runs on the same shapes where torch has CUDA.
See benchmarks/README.md for what each figure means.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import statistics
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import knobs, reference
from ..version import __version__
from ..reference import NMSE_MAX
from ..shapes import PRECISIONS
from ..errors import KgenError
from ..kvtensor import KVTensor
from ..timing import rotation_sets
from ..quant import roundtrip
from ..variant import Variant
from .suites import Case

REPEATS_MAX = 10_000
# The float64 reference runs at a few GFLOP/s on the host: check a sub-problem above this.
CHECK_MAX_FLOPS = 4e9
REFERENCE_DEVICE = "H100"  # reference_us and target_us were measured on this GPU
TORCH_SPIN_CYCLES = 1_000_000  # about 0.5 ms at an H100's clock


class PlotUnavailable(KgenError):
    """The PNG needs matplotlib, which is not importable here."""


class NothingToPlot(KgenError, ValueError):
    """A results file without the times a chart draws (every case failed)."""


@dataclass
class Timing:
    """GPU microseconds of the timed runs (all passes of one run), over `sets` input copies."""
    median_us: float
    p10_us: float
    p90_us: float
    runs: int
    sets: int

    @classmethod
    def of(cls, samples: list[float], sets: int) -> "Timing":
        p10, p90 = np.percentile(samples, [10, 90])
        return cls(statistics.median(samples), float(p10), float(p90), len(samples), sets)


@dataclass
class Check:
    """The output against the float64 reference: `scope` says which part was compared."""
    scope: str                 # "full", "sub: ...", or "not checked (why)"
    nmse: float | None = None

    @property
    def ok(self) -> bool | None:
        return None if self.nmse is None else self.nmse <= NMSE_MAX


@dataclass
class CaseResult:
    case: str                  # the suite's name for it
    requested: str             # the case as the suite defines it
    shape: str                 # the shape actually run (smaller on a CPU device)
    fitted: bool
    dims: dict                 # the fields of the case as run
    device: str
    variant: str | None = None
    chosen_by: str = ""        # tuned decision or heuristic default, as the dispatcher decided
    path: str | None = None
    splits: int | None = None
    gpu: Timing | None = None
    flops: float = 0.0
    kv_bytes: int = 0          # K and V, read once
    min_bytes: int = 0         # Q, K, V, mask read once and O written once, as kgen stores them
    tflops: float | None = None
    kv_gbps: float | None = None
    roofline_pct: float | None = None   # achieved / roofline-attainable, in %
    copy_pct: float | None = None       # K+V GB/s over the device's copy bandwidth, in %
    roofline_note: str = ""
    reference_us: dict = field(default_factory=dict)
    vs_reference: dict = field(default_factory=dict)   # reference_us / ours (> 1: kgen faster)
    target_us: float | None = None
    meets_target: bool | None = None
    torch_us: float | None = None
    torch_note: str = ""
    vs_torch: float | None = None                      # torch_us / ours, this run
    host: dict = field(default_factory=dict)
    check: Check | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.check is not None:
            d["check"]["ok"] = self.check.ok
        return d


def check_counts(repeats: int, warmup: int) -> None:
    """Raise ValueError naming the limit; called before anything touches a device."""
    if not 1 <= repeats <= REPEATS_MAX:
        raise ValueError(f"--repeats {repeats}: must be 1..{REPEATS_MAX}")
    if not 0 <= warmup <= REPEATS_MAX:
        raise ValueError(f"--warmup {warmup}: must be 0..{REPEATS_MAX}")


# --- inputs -----------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Random (never zero) inputs; K and V already in their storage types, V inside K for MLA."""
    q: np.ndarray
    k: np.ndarray          # float32 values before quantization
    v: np.ndarray | None   # None for MLA: V is K's first head_v columns
    kt: KVTensor
    vt: KVTensor
    mask: np.ndarray | None   # f16 values, as the device stores them
    sinks: np.ndarray | None = None   # (Hq,) logits of a case with attention sinks

    @classmethod
    def random(cls, case: Case, seed: int) -> "Inputs":
        rng = np.random.default_rng(seed)
        b, hq, hkv = case.batch, case.heads_q, case.heads_kv
        q = rng.standard_normal((b, hq, case.n_q, case.head_k), dtype=np.float32)
        k = rng.standard_normal((b, hkv, case.n_kv, case.head_k), dtype=np.float32)
        kt = KVTensor.from_array(k, case.k_type)
        if case.mla:
            v, vt = None, KVTensor(kt.data, kt.type, (b, hkv, case.n_kv, case.head_v), kt.strides)
        else:
            v = rng.standard_normal((b, hkv, case.n_kv, case.head_v), dtype=np.float32)
            vt = KVTensor.from_array(v, case.v_type)
        # Finite (no -inf): every key is worked on, as in llama.cpp's perf runs.
        mask = (rng.uniform(-1.0, 0.0, (1, 1, case.n_q, case.n_kv)).astype(np.float16).astype(np.float32)
                if case.mask else None)
        sinks = rng.standard_normal(hq).astype(np.float32) if case.sinks else None
        return cls(q, k, v, kt, vt, mask, sinks)


def working_bytes(case: Case, splits: int = 1) -> int:
    """Device bytes one run touches: case.min_bytes plus the split-k partial outputs."""
    return case.min_bytes + (splits - 1) * case.batch * case.heads_q * case.n_q * case.head_v * 4


# --- the kgen measurement ---------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """A variant and the KV splits asked of it; `split_count`: the splits a plan then runs
    (CaseResult.splits), from kgen.planning.recipe's formulas."""
    variant: Variant
    splits: int
    split_count: int


HEURISTIC_FORCED = "heuristic default (forced: tuning DB not read)"   # CaseResult.chosen_by


def heuristic_choice(case: Case, caps) -> Choice:
    """What kgen runs for `case` (as run, i.e. fitted) with an empty tuning DB: the dispatcher's
    heuristic default (kgen.planning.choose, tuned=False) for the shapes its plan computes, GQA
    folded as dense layouts allow, under KGEN_PATH where set. Raises InvalidVariant when no
    path can run the class."""
    from ..api import resolve_path
    from ..planning.choose import choose_variant, split_values
    from ..shapes import dense_strides, fold_for_layouts
    s = case.shapes()
    kernel, _, _ = fold_for_layouts(s, dense_strides(s.n_q, s.heads_q, s.head_k),
                                    dense_strides(s.n_q, s.heads_q, s.head_v))
    v, splits, _ = choose_variant(kernel, caps, resolve_path(None), None, tuned=False)
    return Choice(v, splits, split_values(kernel.n_kv, splits, v.bc)[1])


def bench_case(case: Case, device=None, *, repeats: int = 100, warmup: int = 10, roofline=None,
               torch: bool = True, seed: int | None = None, heuristic: bool = False,
               forced: "tuple[Choice, str] | None" = None) -> CaseResult:
    """Bench one case on `device` (an index, a runtime Device or None for the default): the case
    itself on a GPU, `case.fitted(caps)` on a CPU device. `roofline`: a kgen.timing.roofline.Roofline,
    a string saying why there is none, or None to ask kgen.timing.roofline for the device's ceilings.
    `heuristic`: run the heuristic default (`heuristic_choice`) instead of the dispatcher's
    decision, as if the tuning DB were empty. `forced`: (a Choice, what chose it) to run instead,
    e.g. another device's decision (kgen.tools.cross_matrix)."""
    check_counts(repeats, warmup)
    from ..planning.probe import open_for_kernels
    dev = open_for_kernels(device)
    caps = dev.caps
    run = case.fitted(caps)
    result = CaseResult(case=case.name, requested=case.describe(), shape=run.describe(),
                        fitted=run != case, dims=_dims(run), device=caps.name, flops=run.flops,
                        kv_bytes=run.kv_bytes, min_bytes=run.min_bytes,
                        reference_us=dict(run.reference_us), target_us=run.target_us)
    x = Inputs.random(run, zlib.crc32(case.name.encode()) if seed is None else seed)
    try:
        if heuristic:
            forced = heuristic_choice(run, caps), HEURISTIC_FORCED
        path = _run_kgen(result, run, x, dev, repeats, warmup, *(forced or (None, "")))
    except KgenError as exc:  # a named failure (unsupported, out of resources, compile): this case only
        result.error = f"{type(exc).__name__}: {exc}"
    if result.error:
        return result
    _figures(result, run, caps, roofline if roofline is not None else ceilings_of(dev), path)
    if torch:
        result.torch_us, result.torch_note = torch_sdpa_us(run, repeats=repeats, warmup=warmup)
        if result.torch_us:
            result.vs_torch = result.torch_us / result.gpu.median_us
    return result


def _run_kgen(result: CaseResult, case: Case, x: Inputs, dev, repeats: int, warmup: int,
              forced: Choice | None = None, forced_by: str = ""):
    """Plan (as the dispatcher chooses, or `forced`), time, check; fills `result` and returns the path."""
    from ..api import plan
    given = {} if forced is None else {"variant": forced.variant, "split_k": forced.splits}

    def make():
        t0 = time.perf_counter()
        p = plan(x.q, x.kt, x.vt, mask=x.mask, causal=case.causal, window=case.window or None,
                 scale=case.scale, softcap=case.softcap, sinks=x.sinks, precision=case.precision, device=dev,
                 **given)
        return p, (time.perf_counter() - t0) * 1e3

    first, first_ms = make()
    plans = [first]
    try:
        result.variant, result.path, result.splits = first.variant.uri, str(first.variant.path), first.splits
        result.chosen_by = first.how if forced is None else forced_by
        for _ in range(rotation_sets(working_bytes(case, first.splits)) - 1):
            plans.append(make()[0])
        for p in plans:
            p.upload(x.q, x.kt, x.vt, mask=x.mask, sinks=x.sinks)
        samples, overhead = _time_runs(plans, repeats, warmup)
        out = first.result()
        if not np.isfinite(out).all():
            result.error = "the output has NaN or Inf: no time reported"
            return first.variant.path
        result.check = _check(case, x, out)
        p, plan_ms = make()  # a second plan: the pipeline is cached now
        p.close()
        t0 = time.perf_counter()
        first(x.q, x.kt, x.vt, mask=x.mask, sinks=x.sinks)
        call_ms = (time.perf_counter() - t0) * 1e3
    finally:
        for p in plans:
            p.close()
    result.gpu = Timing.of(samples, len(plans))
    result.host = {"plan_first_ms": first_ms, "plan_ms": plan_ms, "call_ms": call_ms, "run_overhead_us": overhead}
    return first.variant.path


# Case fields a results file lists only when a case sets them, so that the suites' results keep
# the keys they had before kgen.models gave cases these features.
RUNTIME_FEATURES = {"window": 0, "softcap": 0.0, "scale": None, "sinks": False, "page": 0}


def _dims(case: Case) -> dict:
    d = dataclasses.asdict(case)
    for key in ("name", "reference_us", "target_us"):
        d.pop(key)
    for key, unset in RUNTIME_FEATURES.items():
        if d[key] == unset:
            d.pop(key)
    return d


# Each case warms the GPU for this much GPU time first: clocks come up slowly from idle (one
# bench measured P1 at 1.4 and 4.4 ms within the same 100 runs before this).
WARMUP_GPU_US = 200_000


def _time_runs(plans: list, repeats: int, warmup: int) -> tuple[list[float], float]:
    """GPU us of `repeats` back-to-back runs in one submission taking the plans in turn (see
    planning.time_back_to_back), and the median host time around a single run beyond its GPU
    time (submit, wait, timestamp read-back), measured separately."""
    from ..timing import time_back_to_back, warm_up
    warm_up(plans, WARMUP_GPU_US, min_runs=max(1, -(-warmup // len(plans))))
    gpu = time_back_to_back(plans, repeats)
    extra = []
    for i in range(min(repeats, 20)):
        t0 = time.perf_counter()
        us = plans[i % len(plans)].run_device()
        extra.append((time.perf_counter() - t0) * 1e6 - us)
    return gpu, statistics.median(extra)


def _check(case: Case, x: Inputs, out: np.ndarray) -> Check:
    """Batch 0, KV head 0 (its query heads) and the last query rows: the rows keep their causal
    diagonal (key j visible to row i iff j <= i + Nkv - Nq), so the sub-problem is exact."""
    g = case.gqa
    per_row = 2.0 * g * case.n_kv * (case.head_k + case.head_v)
    whole = case.flops <= CHECK_MAX_FLOPS
    rows = case.n_q if whole else min(case.n_q, int(CHECK_MAX_FLOPS // per_row))
    if rows < 1:
        return Check(f"not checked (one query row costs {per_row:.2g} FLOPs in float64)")
    b, h, r0 = (case.batch, case.heads_kv, 0) if whole else (1, 1, case.n_q - rows)
    k = roundtrip(x.k[:b, :h], case.k_type)
    v = k[..., :case.head_v] if case.mla else roundtrip(x.v[:b, :h], case.v_type)
    mask = None if x.mask is None else x.mask[..., r0:, :]
    sinks = None if x.sinks is None else x.sinks[:h * g]
    ref = reference.attention(x.q[:b, :h * g, r0:], k, v, mask=mask, causal=case.causal,
                              window=case.window or None, scale=case.scale, softcap=case.softcap, sinks=sinks)
    scope = "full" if whole else f"sub: batch 0, query heads 0-{g - 1}, rows {r0}-{case.n_q - 1}"
    return Check(scope, reference.nmse(out[:b, :h * g, r0:], ref))


def _figures(result: CaseResult, case: Case, caps, roofline, path) -> None:
    us = result.gpu.median_us
    seconds = us * 1e-6
    result.tflops = case.flops / seconds / 1e12
    result.kv_gbps = case.kv_bytes / seconds / 1e9
    if isinstance(roofline, str):
        result.roofline_note = roofline
    else:
        result.copy_pct = 100.0 * result.kv_gbps / roofline.copy_gbps
        try:
            result.roofline_pct = 100.0 * roofline.fraction(case.flops, result.min_bytes, seconds, path,
                                                            acc=PRECISIONS[case.precision])
        except ValueError as exc:  # no ceiling measured for this path
            result.roofline_note = f"n/a ({exc})"
    on_reference_gpu = REFERENCE_DEVICE in caps.name
    if on_reference_gpu:
        result.vs_reference = {who: ref / us for who, ref in case.reference_us.items()}
        if case.target_us is not None:
            result.meets_target = us <= case.target_us and result.check.ok is not False


def ceilings_of(device) -> "object | str":
    """kgen.timing.roofline's ceilings for this device, or a string saying why there are none. A
    failure here is recorded with its reason: a bench run outlives a broken roofline."""
    try:
        from ..timing.roofline import ceilings
    except ImportError as exc:
        return f"n/a (kgen.timing.roofline not importable: {exc})"
    try:
        return ceilings(device)
    except Exception as exc:  # noqa: BLE001 - recorded in the result, not hidden
        return f"n/a (roofline failed: {type(exc).__name__}: {exc})"


# --- torch, side by side ----------------------------------------------------------------------
def torch_sdpa_us(case: Case, *, repeats: int, warmup: int) -> tuple[float | None, str]:
    """Median CUDA-event microseconds of torch's scaled_dot_product_attention on the case's
    shape in f16, or (None, "n/a (why)"). Never raises."""
    for t in {case.k_type, case.v_type}:
        if t not in ("f16", "bf16", "f32"):
            return None, f"n/a ({t} KV: no torch equivalent)"
    for feature in ("softcap", "sinks"):
        if getattr(case, feature):
            return None, f"n/a ({feature}: SDPA has no equivalent)"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "no torch here"
        return None, f"n/a (torch not importable: {type(exc).__name__}: {exc})"
    try:
        if not torch.cuda.is_available():
            return None, "n/a (torch has no CUDA device)"
        return _torch_time(torch, case, repeats, warmup), ""
    except Exception as exc:  # noqa: BLE001 - torch's failure is reported, never a crash
        note = f"n/a ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"
    # Past the except block its traceback, and the tensors it held, are gone: give their memory
    # back to the device, where the next case's Vulkan buffers need it.
    try:
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - already reporting a failure
        pass
    return None, note


def _torch_time(torch, case: Case, repeats: int, warmup: int) -> float:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gen = torch.Generator(device="cuda").manual_seed(0)
    f16 = dict(device="cuda", dtype=torch.float16)
    b, hq, hkv, nq, nkv = case.batch, case.heads_q, case.heads_kv, case.n_q, case.n_kv
    mask = None
    if case.mask or case.causal:
        mask = (-torch.rand(1, 1, nq, nkv, generator=gen, **f16) if case.mask
                else torch.zeros(1, 1, nq, nkv, **f16))
        if case.causal:  # kgen's diagonal: key j visible to row i iff j <= i + Nkv - Nq
            hidden = torch.ones(nq, nkv, dtype=torch.bool, device="cuda").triu(nkv - nq + 1)
            if case.window:  # and the window: only the `window` keys ending at the diagonal
                hidden |= torch.ones(nq, nkv, dtype=torch.bool, device="cuda").tril(nkv - nq - case.window)
            mask = mask.masked_fill(hidden, float("-inf"))

    def one_set():
        q = torch.randn(b, hq, nq, case.head_k, generator=gen, **f16)
        k = torch.randn(b, hkv, nkv, case.head_k, generator=gen, **f16)
        v = k[..., :case.head_v] if case.mla else torch.randn(b, hkv, nkv, case.head_v, generator=gen, **f16)
        return q, k, v

    def expanded(q, k, v):  # every query head its own K/V copy, made before timing
        k = k.repeat_interleave(case.gqa, 1)
        return q, k, (k[..., :case.head_v] if case.mla else v.repeat_interleave(case.gqa, 1))

    sets = [one_set() for _ in range(rotation_sets(working_bytes(case)))]
    scale = {} if case.scale is None else {"scale": case.scale}   # torch < 2.1 has no scale argument
    call = lambda q, k, v: sdpa(q, k, v, attn_mask=mask, **scale)  # noqa: E731
    if case.gqa > 1:
        try:
            out = sdpa(*sets[0], attn_mask=mask, enable_gqa=True, **scale)
            call = lambda q, k, v: sdpa(q, k, v, attn_mask=mask, enable_gqa=True, **scale)  # noqa: E731
        except TypeError:  # torch < 2.5 has no enable_gqa
            sets = [expanded(*s) for s in sets]
    out = call(*sets[0])
    if not bool(torch.isfinite(out).all()):
        raise ArithmeticError("torch's output has NaN or Inf")
    for i in range(max(warmup, len(sets))):
        call(*sets[i % len(sets)])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # A spin kernel ahead of the start event keeps the GPU busy while the host queues the
    # call, so that (as with kgen's timestamps) host launch gaps stay out of the GPU time.
    spin = getattr(torch.cuda, "_sleep", None)
    times = []
    for i in range(repeats):
        if spin is not None:
            spin(TORCH_SPIN_CYCLES)
        start.record()
        call(*sets[i % len(sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    del sets, out
    torch.cuda.empty_cache()
    return statistics.median(times)


# --- files ------------------------------------------------------------------------------------
def write_json(results: list[CaseResult], path, *, caps=None, command: str = "", suite: str = "",
               roofline=None, model_report: dict | None = None) -> Path:
    """One results file: the command, date, device, kgen build, ceilings and every case (and
    with --model, kgen.tools.model_report's document under "model_report")."""
    from ..identity import BuildIdentity, DeviceIdentity
    doc = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite,
        "kgen_version": __version__,
        "settings": {name: str(knob.get()) for name, knob in knobs.KNOBS.items() if knob.get() != knob.default},
        "device": _caps_summary(caps) if caps is not None else None,
        "roofline": _roofline_summary(roofline),
        "results": [r.as_dict() for r in results],
    }
    if model_report is not None:
        doc["model_report"] = model_report
    if caps is not None:
        doc["device"]["identity"] = DeviceIdentity.of(caps).as_dict()
        doc["build"] = BuildIdentity.current().as_dict()
    return write_document(doc, path)


def write_document(doc: dict, path) -> Path:
    """`doc` as indented JSON at `path`, whole or not at all (written aside, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _caps_summary(caps) -> dict:
    keys = ("name", "vendor", "device_type", "driver_name", "driver_info", "api_version", "subgroup_size",
            "max_shared_memory", "has_coopmat1", "has_coopmat2")
    return {k: getattr(caps, k) for k in keys}


def _roofline_summary(roofline) -> dict | str | None:
    if roofline is None or isinstance(roofline, str):
        return roofline
    return roofline.to_dict()


def plot(json_path, png_path=None, draw=None) -> Path:
    """A bar chart per case (log-scale GPU microseconds): kgen, the reference figures of
    llama.cpp and torch (hatched) and torch in this run; `draw(plt, doc, json_path)` -> figure
    replaces it (kgen.tools.model_report.draw_results: a model report's tuned-vs-default chart).
    Raises PlotUnavailable without matplotlib. png_path defaults to the JSON's name with .png."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(f"matplotlib is not importable ({exc}): no PNG written; install it "
                              f"(pip install 'kgen[bench]') and run `kgen bench --plot {json_path}`") from None
    json_path = Path(json_path)
    png_path = Path(png_path) if png_path else json_path.with_suffix(".png")
    doc = json.loads(json_path.read_text())
    fig = (draw or draw_cases)(plt, doc, json_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.name + ".tmp")   # a failed save leaves no half-written chart
    try:
        fig.savefig(tmp, dpi=120, format=png_path.suffix.lstrip(".") or "png")
        tmp.replace(png_path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png_path


def draw_cases(plt, doc: dict, json_path: Path):
    cases = [r for r in doc["results"] if r.get("gpu")]
    if not cases:
        raise NothingToPlot(f"{json_path}: no case with a GPU time to plot")
    cols = min(4, len(cases))
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, r in zip(axes.flat, cases):
        bars = {"kgen": r["gpu"]["median_us"]}
        bars.update({f"{who} (ref)": us for who, us in r["reference_us"].items()})
        if r.get("torch_us"):
            bars["torch (run)"] = r["torch_us"]
        colors = ["tab:blue" if n == "kgen" else "tab:orange" if n.startswith("llama") else "tab:green"
                  for n in bars]
        drawn = ax.bar(list(bars), list(bars.values()), color=colors,
                       hatch=[("//" if n.endswith("(ref)") else "") for n in bars])
        ax.bar_label(drawn, labels=[f"{us:.4g}" for us in bars.values()], fontsize=6)
        ax.set_yscale("log")
        ax.set_ylim(min(bars.values()) / 4, max(bars.values()) * 3)  # every bar visibly above the floor
        ax.set_title(f"{r['case']}\n{r['shape']}", fontsize=7)
        ax.set_ylabel("GPU us (log)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    device = (doc.get("device") or {}).get("name", "")
    fig.suptitle(f"kgen bench {doc.get('suite', '')} on {device} ({doc.get('date', '')})", fontsize=9)
    fig.tight_layout()
    return fig
