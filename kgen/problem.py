"""Problem classes: what a kernel must compute, independent of how (the tuning key's shape part)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .types import KvType
from .variant import FEATURES, HEAD_MAX, HEAD_MIN, HEAD_STEP

# Bucket edges (inclusive upper bounds); a shape maps to the first bucket that holds it.
NQ_BUCKETS = (1, 8, 64, 512, None)            # 1, 2-8, 9-64, 65-512, >512
NKV_BUCKETS = (256, 1024, 4096, 16384, None)
GQA_BUCKETS = (1, 2, 4, 8, 16, None)
V_IN_K = "v_in_k"  # listed after the features in a class key
PAGE_TOKEN = re.compile(r"pg(?P<page>[1-9][0-9]{0,3})")   # a paged class's page size, after v_in_k
# The bucketed dimensions: (name in export tables and the C lookup, edges, ProblemClass field).
BUCKETS = (("n_q", NQ_BUCKETS, "nq_bucket"), ("n_kv", NKV_BUCKETS, "nkv_bucket"),
           ("gqa", GQA_BUCKETS, "gqa_bucket"))


def bucket(value: int, edges: tuple) -> int:
    """Index of the first bucket whose upper edge holds `value` (None = unbounded)."""
    for index, edge in enumerate(edges):
        if edge is None or value <= edge:
            return index
    raise AssertionError("the last bucket edge is None")


def bucket_rep(index: int, edges: tuple) -> int:
    """A representative size for a bucket: its upper edge, or twice the last finite one."""
    edge = edges[index]
    return edge if edge is not None else 2 * edges[index - 1]


def bucket_range(index: int, edges: tuple) -> str:
    low = 1 if index == 0 else edges[index - 1] + 1
    high = edges[index]
    if high is None:
        return f">{low - 1}"
    return str(low) if low == high else f"{low}-{high}"


_KEY_RE = re.compile(r"(?P<hk>\d{1,4})/(?P<hv>\d{1,4}) (?P<kt>[a-z0-9_]{1,8})/(?P<vt>[a-z0-9_]{1,8}) "
                     r"acc(?P<acc>16|32) (?P<features>-|[a-z0-9_]+(?:\+[a-z0-9_]+)*) "
                     r"nq(?P<nq>\d) nkv(?P<nkv>\d) gqa(?P<gqa>\d)")


@dataclass(frozen=True)
class ProblemClass:
    head_k: int
    head_v: int
    k_type: KvType = KvType.F16
    v_type: KvType = KvType.F16
    features: tuple[str, ...] = ()   # subset of FEATURES, in FEATURES order
    acc: int = 32
    nq_bucket: int = 3
    nkv_bucket: int = 3
    gqa_bucket: int = 0
    v_in_k: bool = False             # V is the first head_v columns of K's rows (MLA): kernels may
                                     # read it from K's tile, so it is part of the class
    page: int = 0                    # paged KV (kgen.planning.paged_plan): tokens per page; its
                                     # buckets are the GQA-folded rows of a sequence and its KV length

    def __post_init__(self):
        object.__setattr__(self, "k_type", KvType.parse(self.k_type))
        object.__setattr__(self, "v_type", KvType.parse(self.v_type))
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"features: unknown {sorted(unknown)}; known: {', '.join(FEATURES)}")
        object.__setattr__(self, "features", tuple(f for f in FEATURES if f in self.features))
        if self.acc not in (16, 32):
            raise ValueError(f"acc={self.acc}: 16 or 32")
        for name in ("head_k", "head_v"):
            h = getattr(self, name)
            if not (HEAD_MIN <= h <= HEAD_MAX and h % HEAD_STEP == 0):
                raise ValueError(f"{name}={h}: head sizes are multiples of {HEAD_STEP} "
                                 f"from {HEAD_MIN} to {HEAD_MAX}")

    @classmethod
    def of(cls, *, head_k: int, head_v: int, n_q: int, n_kv: int, gqa: int = 1, **rest) -> "ProblemClass":
        return cls(head_k=head_k, head_v=head_v, nq_bucket=bucket(n_q, NQ_BUCKETS),
                   nkv_bucket=bucket(n_kv, NKV_BUCKETS), gqa_bucket=bucket(gqa, GQA_BUCKETS), **rest)

    @property
    def n_q(self) -> int:
        return bucket_rep(self.nq_bucket, NQ_BUCKETS)

    @property
    def n_kv(self) -> int:
        return bucket_rep(self.nkv_bucket, NKV_BUCKETS)

    @property
    def gqa(self) -> int:
        return bucket_rep(self.gqa_bucket, GQA_BUCKETS)

    @property
    def key(self) -> str:
        """Stable text form, e.g. `128/128 f16/f16 acc32 mask+causal nq3 nkv3 gqa0`: the tuning
        DB's class column and what reports print. `ProblemClass.parse(key)` round-trips."""
        feats = "+".join(self.key_features) or "-"
        return (f"{self.head_k}/{self.head_v} {self.k_type.label}/{self.v_type.label} acc{self.acc} "
                f"{feats} nq{self.nq_bucket} nkv{self.nkv_bucket} gqa{self.gqa_bucket}")

    @classmethod
    def parse(cls, key: str) -> "ProblemClass":
        match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise ValueError(f"problem class key {key!r}: expected e.g. "
                             "'128/128 f16/f16 acc32 mask nq3 nkv3 gqa0'")
        g = match.groupdict()
        buckets = {"nq_bucket": (int(g["nq"]), NQ_BUCKETS), "nkv_bucket": (int(g["nkv"]), NKV_BUCKETS),
                   "gqa_bucket": (int(g["gqa"]), GQA_BUCKETS)}
        for name, (index, edges) in buckets.items():
            if index >= len(edges):
                raise ValueError(f"problem class key {key!r}: {name}={index}, at most {len(edges) - 1}")
        features = () if g["features"] == "-" else tuple(g["features"].split("+"))
        pages = [int(m["page"]) for f in features if (m := PAGE_TOKEN.fullmatch(f))]
        problem = cls(head_k=int(g["hk"]), head_v=int(g["hv"]), k_type=g["kt"], v_type=g["vt"],
                      features=tuple(f for f in features if f != V_IN_K and not PAGE_TOKEN.fullmatch(f)),
                      acc=int(g["acc"]), v_in_k=V_IN_K in features, page=pages[0] if pages else 0,
                      **{name: index for name, (index, _) in buckets.items()})
        if problem.key != key:
            raise ValueError(f"problem class key {key!r} is not canonical (expected {problem.key!r})")
        return problem

    @property
    def key_features(self) -> tuple[str, ...]:
        """The features as the key and the tuning DB list them: v_in_k and a paged class's page
        size (`pg16`) join them (such classes are tuned apart, and so are their nearest ones)."""
        return self.features + ((V_IN_K,) if self.v_in_k else ()) + ((f"pg{self.page}",) if self.page else ())

    @property
    def describe(self) -> str:
        """Human ranges, e.g. `Nq 65-512, Nkv 1025-4096, GQA 1`."""
        return (f"Nq {bucket_range(self.nq_bucket, NQ_BUCKETS)}, Nkv {bucket_range(self.nkv_bucket, NKV_BUCKETS)}, "
                f"GQA {bucket_range(self.gqa_bucket, GQA_BUCKETS)}")

    def feature_flags(self) -> dict[str, bool]:
        """Variant keyword arguments for this class's features."""
        return {f: f in self.features for f in FEATURES}


def mismatch(v, problem: ProblemClass, splits: int | None = None) -> str | None:
    """Why variant `v` (run with `splits` KV splits; None: any count) does not compute `problem`,
    or None. The one statement of that rule: the dispatcher, Plan, the tuning DB's import check
    and the export all ask it. Same head sizes, KV types, accumulator and features (split_k
    aside: it follows the split count), and a kernel reading V from K's tile only where V is
    inside K."""
    wrong = [name for name, ok in (
        ("head_k", v.head_k == problem.head_k), ("head_v", v.head_v == problem.head_v),
        ("k_type", v.k_type == problem.k_type), ("v_type", v.v_type == problem.v_type),
        ("acc", v.acc == problem.acc),
        ("features", {*v.features} - {"split_k"} == {*problem.features} - {"split_k"}),
        ("v_in_k", problem.v_in_k or not v.v_in_k), ("page", v.page == problem.page)) if not ok]
    if wrong:
        reason = f"{v.uri} does not compute class {problem.key!r}: its {', '.join(wrong)} differ"
        if "v_in_k" in wrong:
            reason += " (it reads V from K's tile; the class's V is its own)"
        return reason
    if splits is not None and (splits < 1 or v.split_k != (splits > 1)):
        return f"splits={splits} with {v.uri}: splits >= 1, and > 1 exactly for split_k variants"
    return None
