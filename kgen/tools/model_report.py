"""`kgen bench --model`'s report: for each class of a model (layer kind x phase x context x KV
types x precision) the dispatcher's kernel against the heuristic default an empty tuning DB
would run, both timed with GPU timestamps (kgen.tools.bench), and per step (one prefill ubatch,
one decode step of each width) the attention time over all the model's layers: the sum over
layer kinds of the class's median time times the layers of that kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import KgenError
from ..models import ModelAttention, ModelCase
from . import bench
from .bench import CaseResult


@dataclass
class ClassTiming:
    """One class of the model: the dispatcher's run and the heuristic default's, which is the
    same CaseResult object where the dispatcher runs the default kernel (timed once)."""
    mc: ModelCase
    tuned: CaseResult
    default: CaseResult

    @property
    def same_kernel(self) -> bool:
        return self.default is self.tuned

    @property
    def step(self) -> str:
        return step_name(self.mc)

    def as_dict(self) -> dict:
        case, t, d = self.mc.case, self.tuned, self.default
        return {"case": case.name, "step": self.step, "phase": self.mc.phase, "n_q": case.n_q,
                "context": self.mc.context, "k_type": case.k_type, "v_type": case.v_type,
                "precision": case.precision, "layer_kind": self.mc.kind.name, "layers": self.mc.layers,
                "class": case.problem().key, "shape": t.shape, "fitted": t.fitted,
                "tuned_us": _us(t), "default_us": _us(d), "default_is_tuned": self.same_kernel,
                "default_over_tuned": _ratio(_us(d), _us(t)),
                "tuned_roofline_pct": t.roofline_pct, "default_roofline_pct": d.roofline_pct,
                "tuned_variant": t.variant, "tuned_path": t.path, "tuned_splits": t.splits,
                "chosen_by": t.chosen_by, "default_variant": d.variant, "default_path": d.path,
                "default_splits": d.splits, "tuned_error": t.error, "default_error": d.error}


def step_name(mc: ModelCase) -> str:
    """The step a class's time counts toward: its case name without model and layer kind."""
    case = mc.case
    kv = case.k_type if case.k_type == case.v_type else f"{case.k_type}/{case.v_type}"
    label = "prefill" if mc.phase == "prefill" else f"decode{case.n_q}"
    return f"{label} ctx{mc.context} {kv}" + ("" if case.precision == "f32" else f" {case.precision}")


@dataclass
class StepTotal:
    """One prefill ubatch or one decode step over all the model's layers."""
    step: str
    terms: list[ClassTiming]
    missing: list[str] = field(default_factory=list)   # layer kinds with no class timed here

    @property
    def layers(self) -> int:
        return sum(t.mc.layers for t in self.terms)

    @property
    def why_no_total(self) -> str:
        if self.missing:
            return f"no class of layer kind(s) {', '.join(self.missing)} timed (--case)"
        failed = [t.mc.case.name for t in self.terms if _us(t.tuned) is None or _us(t.default) is None]
        return f"no time for {', '.join(failed)}" if failed else ""

    def total(self, which: str) -> float | None:
        """Sum over the step's classes of (median us) x (layers of the kind); None without a
        time for every layer kind of the model."""
        if self.why_no_total:
            return None
        return sum(_us(getattr(t, which)) * t.mc.layers for t in self.terms)

    def as_dict(self) -> dict:
        first = self.terms[0].mc
        return {"step": self.step, "phase": first.phase, "n_q": first.case.n_q, "context": first.context,
                "k_type": first.case.k_type, "v_type": first.case.v_type, "precision": first.case.precision,
                "layers": self.layers, "tuned_us": self.total("tuned"), "default_us": self.total("default"),
                "default_over_tuned": _ratio(self.total("default"), self.total("tuned")),
                "terms": [{"case": t.mc.case.name, "layer_kind": t.mc.kind.name, "layers": t.mc.layers,
                           "tuned_us": _us(t.tuned), "default_us": _us(t.default)} for t in self.terms],
                "missing_layer_kinds": self.missing, "note": self.why_no_total or None}


def _us(r: CaseResult) -> float | None:
    return r.gpu.median_us if r.error is None and r.gpu is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


# --- measuring --------------------------------------------------------------------------------
def same_choice(choice: bench.Choice, r: CaseResult) -> bool:
    """Whether run `r` ran the kernel and split count of `choice`."""
    return r.variant == choice.variant.uri and r.splits == choice.split_count


def time_defaults(timed: list[tuple[ModelCase, CaseResult]], dev, *, repeats: int, warmup: int, roofline,
                  progress=None) -> list[ClassTiming]:
    """Each class's heuristic default beside its dispatcher run (`timed`): the same result where
    the dispatcher ran the default kernel, else the case timed again with the default forced.
    `progress(case, result | None)` is told before (None) and after each default timed apart."""
    out = []
    for mc, tuned in timed:
        try:
            choice = bench.heuristic_choice(mc.case.fitted(dev.caps), dev.caps)
        except KgenError:
            choice = None   # bench_case records the same error for the default
        if choice is not None and same_choice(choice, tuned):
            out.append(ClassTiming(mc, tuned, tuned))
            continue
        if progress:
            progress(mc.case, None)
        default = bench.bench_case(mc.case, dev, repeats=repeats, warmup=warmup, roofline=roofline,
                                   torch=False, heuristic=True)
        if progress:
            progress(mc.case, default)
        out.append(ClassTiming(mc, tuned, default))
    return out


def totals(model: ModelAttention, timings: list[ClassTiming]) -> list[StepTotal]:
    """The steps in the order their classes come, each with the layer kinds it has no class of."""
    steps: dict[str, StepTotal] = {}
    for t in timings:
        steps.setdefault(t.step, StepTotal(t.step, [])).terms.append(t)
    for s in steps.values():
        have = {t.mc.kind.name for t in s.terms}
        s.missing = [k.name for k in model.kinds if k.name not in have]
    return list(steps.values())


@dataclass
class Report:
    model: ModelAttention
    timings: list[ClassTiming]
    steps: list[StepTotal]

    @classmethod
    def of(cls, model: ModelAttention, timings: list[ClassTiming]) -> "Report":
        return cls(model, timings, totals(model, timings))

    @property
    def timed_apart(self) -> list[CaseResult]:
        """The defaults that ran a kernel of their own (not the dispatcher's)."""
        return [t.default for t in self.timings if not t.same_kernel]

    def document(self) -> dict:
        """The results file's "model_report": the layer kinds with their layer counts, a row per
        class, the totals per step and every figure of the defaults timed apart."""
        return {**self.model.as_dict(), "fitted": any(t.tuned.fitted for t in self.timings),
                "classes": [t.as_dict() for t in self.timings], "summary": [s.as_dict() for s in self.steps],
                "default_results": [r.as_dict() for r in self.timed_apart]}


# --- text -------------------------------------------------------------------------------------
def _fmt(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1e3:.4g} ms" if us >= 1e4 else f"{us:.4g} us"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _kernel(r: CaseResult) -> str:
    return r.error or f"{r.path} x{r.splits} {r.variant}"


def table(model: ModelAttention, timings: list[ClassTiming]):
    """A rich Table: one row per class, tuned against the heuristic default."""
    from rich.table import Table
    t = Table(title=f"{model.name}: attention per class, dispatcher's kernel vs heuristic default "
                    "(median GPU time of one run)")
    for col in ("class", "layers", "shape run", "tuned", "default", "default / tuned", "% roof tuned",
                "% roof default", "winner (tuned)", "heuristic default"):
        t.add_column(col, overflow="fold")
    for c in timings:
        ratio = _ratio(_us(c.default), _us(c.tuned))
        t.add_row(c.mc.case.name, str(c.mc.layers), c.tuned.shape, _fmt(_us(c.tuned)), _fmt(_us(c.default)),
                  "-" if ratio is None else f"{ratio:.2f}x", _pct(c.tuned.roofline_pct),
                  _pct(c.default.roofline_pct), f"{_kernel(c.tuned)} ({c.tuned.chosen_by or 'not planned'})",
                  "the same kernel (timed once)" if c.same_kernel else _kernel(c.default))
    return t


def summary_lines(model: ModelAttention, steps: list[StepTotal]) -> list[str]:
    """Per step: the total over all layers, tuned and default, and the sum it comes from."""
    lines = []
    for s in steps:
        first = s.terms[0].mc
        what = (f"one prefill ubatch ({first.case.n_q} rows)" if first.phase == "prefill"
                else "one decode token" if first.case.n_q == 1 else f"one decode step ({first.case.n_q} rows)")
        head = f"{model.name} {s.step}: {what} over {s.layers} layers"
        if s.why_no_total:
            lines.append(f"{head}: no total, {s.why_no_total}")
            continue
        tuned, default = s.total("tuned"), s.total("default")
        same = all(t.same_kernel for t in s.terms)
        terms = " + ".join(f"{t.mc.kind.name} {t.mc.layers} x {_fmt(_us(t.tuned))}" for t in s.terms)
        lines.append(f"{head}: tuned {_fmt(tuned)}, heuristic default {_fmt(default)} "
                     f"(default / tuned {default / tuned:.2f}x" + ("; the same kernels" if same else "")
                     + f"); tuned = {terms}")
    if any(t.tuned.fitted for s in steps for t in s.terms):
        lines.append("shapes fitted to this CPU device (Case.fitted): the times are of the shrunk shapes")
    return lines


# --- chart ------------------------------------------------------------------------------------
def draw_results(plt, doc: dict, json_path):
    """kgen bench --plot's figure: a model report's chart where the file has one, else bench's."""
    return draw(plt, doc) if "model_report" in doc else bench.draw_cases(plt, doc, json_path)


def draw(plt, doc: dict):
    """Tuned against default per class, and per step over all layers (log-scale GPU time)."""
    report = doc["model_report"]
    classes = [c for c in report["classes"] if c["tuned_us"] and c["default_us"]]
    steps = [s for s in report["summary"] if s["tuned_us"] and s["default_us"]]
    if not classes:
        raise bench.NothingToPlot(f"model report of {report['model']}: no class with a tuned and a "
                                  "default time to plot")
    fig, axes = plt.subplots(1, 2 if steps else 1, squeeze=False,
                             figsize=(13 if steps else 8, 1.2 + 0.45 * max(len(classes), len(steps))))
    _bars(axes[0][0], [c["case"] for c in classes], classes, "per class (one layer)")
    if steps:
        _bars(axes[0][1], [s["step"] for s in steps], steps, "per step, all layers")
    device = (doc.get("device") or {}).get("name", "")
    fitted = " (shapes fitted to a CPU device)" if report.get("fitted") else ""
    fig.suptitle(f"kgen bench --model {report['model']} on {device}{fitted} ({doc.get('date', '')})", fontsize=9)
    fig.tight_layout()
    return fig


def _bars(ax, labels: list[str], rows: list[dict], title: str) -> None:
    ys = range(len(rows))
    height = 0.4
    for offset, key, color in ((-height / 2, "tuned_us", "tab:blue"), (height / 2, "default_us", "tab:gray")):
        values = [r[key] for r in rows]
        drawn = ax.barh([y + offset for y in ys], values, height, color=color,
                        label="tuned (dispatcher)" if key == "tuned_us" else "heuristic default")
        ax.bar_label(drawn, labels=[_fmt(v) for v in values], fontsize=6, padding=2)
    ax.set_yticks(list(ys), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low = min(min(r["tuned_us"], r["default_us"]) for r in rows)
    high = max(max(r["tuned_us"], r["default_us"]) for r in rows)
    ax.set_xlim(low / 3, high * 6)   # room for the labels right of the bars
    ax.set_xlabel("GPU us (log)", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="lower right")
