"""The GPU side of tuning: check a candidate once against the float64 reference on a small
problem of its class, then time it on the class's timing shape with GPU timestamps."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import reference
from ..reference import NMSE_MAX
from ..shapes import Shapes
from ..errors import CompileError, UnsupportedVariant
from ..kvtensor import KVTensor
from ..planning.plan import Plan
from ..timing import rotation_sets, time_back_to_back, warm_up
from ..quant import roundtrip
from .candidates import Candidate
from .search import CandidateFailed, Outcome

# GPUs drop their clocks while the tuner builds the next pipeline: each candidate runs back to
# back for at least this much GPU time (and WARMUP_MIN_RUNS), then until the clock probe says
# the clock is back up (planning.warm_up), before its timed runs.
WARMUP_GPU_US = 25_000
WARMUP_MIN_RUNS, WARMUP_MAX_RUNS = 2, 2000
# The first candidate of a tune meets a GPU that may have idled for a while: warm longer.
WARMUP_FIRST_GPU_US = 300_000
# Feature values of the check problem: non-trivial, so a kernel that ignores one is caught.
SOFTCAP, ALIBI_MAX_BIAS = 20.0, 8.0
CHECK_MAX_NQ = 40


def failure_types() -> tuple[type, ...]:
    """Failures that make a candidate lose with a reason; anything else is a bug and propagates."""
    from ..runtime.vk import VulkanError
    return (CompileError, UnsupportedVariant, VulkanError)


@dataclass
class Inputs:
    """Random (never zero) inputs for one shape, K and V already in their storage types."""
    q: np.ndarray
    k: KVTensor
    v: KVTensor
    k_f32: np.ndarray      # what K and V hold after quantization: the reference's inputs
    v_f32: np.ndarray
    mask: np.ndarray | None
    sinks: np.ndarray | None

    @classmethod
    def random(cls, s: Shapes, rng: np.random.Generator) -> "Inputs":
        q = rng.standard_normal((s.batch, s.heads_q, s.n_q, s.head_k), dtype=np.float32)
        k = rng.standard_normal((s.batch, s.heads_kv, s.n_kv, s.head_k), dtype=np.float32)
        v = rng.standard_normal((s.batch, s.heads_kv, s.n_kv, s.head_v), dtype=np.float32)
        mask = None
        if s.mask_shape is not None:
            mask = rng.uniform(-2.0, 0.0, s.mask_shape).astype(np.float32)
            mask[..., ::7, 3::5] = -np.inf   # hidden keys, as a padding mask has them
        sinks = rng.standard_normal(s.heads_q).astype(np.float32) if s.sinks else None
        kt = KVTensor.from_array(k, s.k_type)
        if s.v_in_k:   # V is the view of K's first head_v columns (MLA), as the caller has it
            return cls(q, kt, KVTensor(kt.data, kt.type, kt.shape[:3] + (s.head_v,), kt.strides),
                       k, k[..., :s.head_v], mask, sinks)
        return cls(q, kt, KVTensor.from_array(v, s.v_type), k, v, mask, sinks)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + len(self.k.raw) + (0 if self.v.data is self.k.data else len(self.v.raw))


def check_shapes(timed: Shapes, c: Candidate) -> Shapes:
    """A small problem of the timed shape's class that runs the candidate's exact variant:
    same heads, types, features, precision and GQA ratio; Nkv a whole number of tiles iff the
    variant is the aligned one, and long enough for its KV splits."""
    v = c.variant
    tiles = max(3, c.splits)
    n_kv = tiles * v.bc - (0 if v.aligned else 3)
    n_q = min(timed.n_q, CHECK_MAX_NQ)
    gqa = timed.heads_q // timed.heads_kv
    mask_shape = (1, 1, n_q, n_kv) if timed.mask_shape is not None else None
    # A window narrower than the check's keys, so that a kernel ignoring it is caught.
    window = min(timed.window, max(1, n_kv // 2)) if timed.window else 0
    return dataclasses.replace(
        timed, batch=1, heads_kv=1, heads_q=gqa, n_q=n_q, n_kv=n_kv, mask_shape=mask_shape, window=window,
        softcap=SOFTCAP if timed.softcap > 0 else 0.0,
        alibi_max_bias=ALIBI_MAX_BIAS if timed.alibi_max_bias > 0 else 0.0)


class PlanTimer:
    """Times a candidate's plans as the tuner does; the first candidate of a tune warms longer."""
    _warmup_us = WARMUP_FIRST_GPU_US

    def time_plans(self, make, copies: int, runs: int) -> list[float]:
        """`copies` uploaded plans from `make()` timed back to back for `runs` runs after the
        warm-up; CandidateFailed on a named failure. The plans are closed and their pipeline
        dropped (rebuilt from the pipeline cache if a later round re-times it), so a tune holds
        one at a time, not hundreds."""
        plans = []
        try:
            for _ in range(copies):
                plans.append(make())
            warm_up(plans, self._warmup_us, min_runs=WARMUP_MIN_RUNS, max_batch=WARMUP_MAX_RUNS)
            self._warmup_us = WARMUP_GPU_US
            return time_back_to_back(plans, runs)
        except failure_types() as exc:
            raise CandidateFailed(f"{type(exc).__name__}: {exc}"[:2000]) from exc
        finally:
            for plan in plans:
                plan.close()
            if plans:
                plans[0].device.drop_pipeline(plans[0].kernel)


class GpuEvaluator(PlanTimer):
    """Checks and times candidates of one class on one device (the tuner's Evaluator)."""

    def __init__(self, timed: Shapes, *, device=None, seed: int = 0):
        self.timed, self.device = timed, device
        self.rng = np.random.default_rng(seed)
        self._inputs: Inputs | None = None   # made on first timing: a check needs none of it

    @property
    def inputs(self) -> Inputs:
        if self._inputs is None:
            self._inputs = Inputs.random(self.timed, self.rng)
        return self._inputs

    @property
    def copies(self) -> int:
        s = self.timed
        per_copy = self.inputs.nbytes + s.batch * s.heads_q * s.n_q * s.head_v * 4
        return rotation_sets(per_copy)

    def check(self, c: Candidate) -> Outcome:
        s = check_shapes(self.timed, c)
        x = Inputs.random(s, self.rng)
        try:
            with Plan(s, variant=c.variant, split_k=c.splits, device=self.device) as plan:
                out = plan(x.q, x.k, x.v, mask=x.mask, sinks=x.sinks)
        except failure_types() as exc:
            return Outcome(c, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
        outcome = self._judge(c, s, x, out)
        if outcome.status != "ok":
            plan.device.drop_pipeline(plan.kernel)   # never timed: do not keep it alive
        return outcome

    def _judge(self, c: Candidate, s: Shapes, x: "Inputs", out: np.ndarray) -> Outcome:
        ref = reference.attention(x.q, roundtrip(x.k_f32, s.k_type), roundtrip(x.v_f32, s.v_type),
                                  mask=x.mask, causal=s.causal, window=s.window or None, scale=s.scale,
                                  softcap=s.softcap, alibi_max_bias=s.alibi_max_bias, sinks=x.sinks)
        if not np.isfinite(out).all():
            return Outcome(c, "wrong", reason="NaN or Inf in the output of the check problem")
        err = reference.nmse(out, ref)
        if not err <= NMSE_MAX:
            return Outcome(c, "wrong", nmse=err, reason=f"NMSE {err:.3g} > {NMSE_MAX} on {describe_shape(s)}")
        return Outcome(c, "ok", nmse=err)

    def time(self, c: Candidate, runs: int) -> list[float]:
        """GPU microseconds of `runs` runs (all passes), after warm-up, rotating input copies."""
        x = self.inputs

        def make() -> Plan:
            plan = Plan(self.timed, variant=c.variant, split_k=c.splits, device=self.device)
            plan.upload(x.q, x.k, x.v, mask=x.mask, sinks=x.sinks)
            return plan
        return self.time_plans(make, self.copies, runs)


def describe_shape(s: Shapes) -> str:
    return f"B{s.batch} Hq{s.heads_q} Hkv{s.heads_kv} Nq{s.n_q} Nkv{s.n_kv}"
