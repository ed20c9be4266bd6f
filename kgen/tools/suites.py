"""Named shape suites: what `kgen tune` tunes and what `kgen bench` times.

A case is one concrete attention shape; tuning a case tunes its problem class (and times the
case's own shape, shrunk on CPU devices), benchmarking it runs the dispatcher's choice.
Reference figures are the ones measured on the H100 (../shared/device/README.md) and are only
compared against on that GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from ..shapes import Shapes
from ..problem import ProblemClass
from ..types import KvType


# lavapipe on 2 cores runs ~1-5 GFLOP/s of attention: this keeps one timed run near 0.1 s.
CPU_MAX_FLOPS = 2e8


@dataclass(frozen=True)
class Case:
    name: str
    heads_kv: int
    gqa: int
    n_q: int
    n_kv: int
    head_k: int = 128
    head_v: int = 128
    k_type: str = "f16"
    v_type: str = "f16"
    mask: bool = False
    causal: bool = False
    mla: bool = False        # V is the first head_v columns of K (one buffer)
    batch: int = 1
    precision: str = "f32"
    # Reference GPU times on the H100, microseconds: {"llama.cpp": 945, "torch": 247}.
    reference_us: dict = field(default_factory=dict, compare=False, hash=False)
    target_us: float | None = None
    # Run-time values of the attention (kgen.attention's arguments): a model's sliding window,
    # logit softcap, score scale and attention sinks (kgen.models derives them from a config).
    window: int = 0
    softcap: float = 0.0
    scale: float | None = None
    sinks: bool = False
    # Paged KV: tokens per page (0 = dense). `kgen tune` then times a kgen.paged_plan batch of
    # `batch` sequences of n_q query tokens and n_kv keys each (kgen.tune.paged).
    page: int = 0

    @property
    def heads_q(self) -> int:
        return self.heads_kv * self.gqa

    def shapes(self) -> Shapes:
        mask_shape = (1, 1, self.n_q, self.n_kv) if self.mask else None
        return Shapes(self.batch, self.heads_q, self.heads_kv, self.n_q, self.n_kv, self.head_k,
                      self.head_v, KvType.parse(self.k_type), KvType.parse(self.v_type),
                      mask_shape=mask_shape, causal=self.causal, window=self.window, scale=self.scale,
                      softcap=self.softcap, sinks=self.sinks, precision=self.precision, v_in_k=self.mla)

    def problem(self) -> ProblemClass:
        return self.paged_batch().problem() if self.page else self.shapes().problem()

    def paged_batch(self):
        """The paged batch a paged case (page > 0) is timed on (kgen.tune.paged.PagedBatch)."""
        from ..tune.paged import PagedBatch
        return PagedBatch(self.batch, self.heads_q, self.heads_kv, self.n_q, self.n_kv, self.head_k, self.head_v,
                          self.page, self.k_type, self.v_type, causal=self.causal, window=self.window,
                          softcap=self.softcap, scale=self.scale, sinks=self.sinks, precision=self.precision)

    @property
    def flops(self) -> float:
        """The ggml convention: 2 * Hq * Nq * Nkv * (Dk + Dv) per batch."""
        return 2.0 * self.batch * self.heads_q * self.n_q * self.n_kv * (self.head_k + self.head_v)

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V the kernel must read once (MLA: K only, V lives inside it)."""
        k = KvType.parse(self.k_type).row_bytes(self.head_k)
        v = 0 if self.mla else KvType.parse(self.v_type).row_bytes(self.head_v)
        return self.batch * self.heads_kv * self.n_kv * (k + v)

    @property
    def min_bytes(self) -> int:
        """The fewest device bytes a run moves: Q read and O written (f32), K and V as stored,
        the f16 mask; the roofline's memory term."""
        rows = self.batch * self.heads_q * self.n_q
        mask = 2 * self.n_q * self.n_kv if self.mask else 0
        return rows * (self.head_k + self.head_v) * 4 + self.kv_bytes + mask

    def fitted(self, caps, max_flops: float = CPU_MAX_FLOPS) -> "Case":
        """This case, or on a CPU device a smaller one of the same problem class where possible
        (fewer heads, then shorter KV and query lengths) whose work stays under `max_flops`."""
        if caps.device_type != "cpu" or self.flops <= max_flops:
            return self
        case = self
        for name, floor in (("heads_kv", 1), ("n_kv", 64), ("n_q", 1)):
            while case.flops > max_flops and getattr(case, name) // 2 >= floor:
                smaller = {name: getattr(case, name) // 2}
                if name == "n_kv" and case.causal and smaller["n_kv"] < case.n_q:
                    # causal rows are the last Nq of Nkv positions: fewer keys than rows would
                    # leave the first rows nothing to see
                    smaller["n_q"] = max(1, case.n_q // 2)
                case = dataclasses.replace(case, **smaller, reference_us={}, target_us=None)
        return case

    def describe(self) -> str:
        kv = self.k_type if self.k_type == self.v_type else f"{self.k_type}/{self.v_type}"
        return (f"{self.head_k}/{self.head_v} {self.heads_kv}x{self.gqa} Nkv {self.n_kv} Nq {self.n_q} {kv}"
                + (" mask" if self.mask else "") + (" causal" if self.causal else "")
                + (f" window {self.window}" if self.window else "")
                + (f" softcap {self.softcap:g}" if self.softcap else "")
                + (f" scale {self.scale:.6g}" if self.scale is not None else "")
                + (" sinks" if self.sinks else "")
                + (" (V in K)" if self.mla else "")
                + (f" pages of {self.page}" if self.page else ""))


# The H100 anchors (issue 7's P1-P5) with llama.cpp's and torch's times on the same GPU.
P1 = Case("P1 prefill 128", 32, 1, 512, 16384, reference_us={"llama.cpp": 945, "torch": 247}, target_us=345)
P2 = Case("P2 prefill MLA", 1, 16, 512, 16384, 576, 512, mask=True, mla=True,
          reference_us={"llama.cpp": 3606, "torch": 9301}, target_us=1170)
P3 = Case("P3 decode 128", 8, 4, 1, 16384, mask=True, reference_us={"llama.cpp": 54, "torch": 64}, target_us=28)
P4 = Case("P4 decode MLA", 1, 16, 1, 16384, 576, 512, mla=True,
          reference_us={"llama.cpp": 52, "torch": 1830}, target_us=10)
P5 = Case("P5 prefill q8_0", 8, 4, 512, 16384, k_type="q8_0", v_type="q8_0", mask=True,
          reference_us={"llama.cpp": 4961}, target_us=460)
# The rest of the llama.cpp perf shapes measured on the H100.
L1 = Case("prefill 128 Nkv 4096", 32, 1, 512, 4096, reference_us={"llama.cpp": 264, "torch": 87})
L2 = Case("prefill 256 GQA 16", 2, 16, 512, 20000, 256, 256, mask=True,
          reference_us={"llama.cpp": 2246, "torch": 1446})

SUITES: dict[str, tuple[Case, ...]] = {
    # Small enough for lavapipe within minutes, yet the two regimes that matter: prefill, decode.
    "quick": (L1, P3),
    "llama": (P1, L1, L2, P5, P3,
              Case("decode 64", 8, 4, 1, 4096, 64, 64, mask=True),
              Case("prefill 64", 8, 4, 512, 4096, 64, 64, mask=True),
              Case("decode 128 q4_0", 8, 4, 1, 16384, k_type="q4_0", v_type="q4_0", mask=True)),
    "deepseek": (P2, P4, Case("decode MLA q8_0", 1, 16, 1, 16384, 576, 512, k_type="q8_0", v_type="q8_0")),
    "h100-anchors": (P1, P2, P3, P4, P5, L1, L2),
}
SUITES["all"] = tuple(dict.fromkeys(c for name in ("llama", "deepseek") for c in SUITES[name]))


def suite(name: str, only: list[str] | None = None) -> tuple[Case, ...]:
    """The suite's cases, or those whose name contains one of `only` (--case)."""
    try:
        cases = SUITES[name]
    except KeyError:
        raise ValueError(f"--suite {name!r}: one of {', '.join(SUITES)}") from None
    if not only:
        return cases
    picked = tuple(c for c in cases if any(o.lower() in c.name.lower() for o in only))
    if not picked:
        raise ValueError(f"--case {' '.join(only)}: no case of {name} matches; "
                         f"its cases: {', '.join(c.name for c in cases)}")
    return picked














def case_arg(suite_name: str):
    """The argparse type of a script's case argument: the first case of `suite_name` whose name
    contains the text; anything else is refused with suite()'s message."""
    def parse(text: str) -> Case:
        try:
            return suite(suite_name, [text])[0]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse
