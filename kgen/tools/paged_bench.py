"""`kgen bench --paged`: the paged KV kernels timed on the batches of issue #32's speed section.

Each case is a decode batch (one query row per sequence) over a paged cache of shuffled pages,
run through kgen.paged_plan and timed as `kgen bench` times a dense plan (kgen.timing: warm-up,
then back-to-back runs in one submission, inputs rotated past the L2; median and p10/p90). Its
figures: GPU time, GB/s of the K and V bytes the batch holds (MLA: K's only, V lives inside
it) and that as % of the device's measured copy bandwidth. Beside it, as reference points,
kgen's dense plan runs the same sequences gathered into contiguous (B, Hkv, N, D) tensors
padded to the longest (the same bytes where no sequence is shorter), and torch's SDPA the
padded shape where torch has CUDA. A case may name a baseline case: `time_ratio` is its time
over the baseline's. Outputs are checked against kgen.reference.paged_attention on a few
sequences (all of a small batch): the reference runs on a cache of those sequences' pages only.
Targets are the issue's, judged on the H100 only.
"""
from __future__ import annotations

import datetime
import itertools
import operator
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import reference
from ..errors import KgenError
from ..paged import PagedKV
from ..quant import quantize
from ..reference import NMSE_MAX
from ..types import KvType
from . import bench
from .suites import Case

# Distinct random values per cache, at most: quantizing a 64 x 4096-key q8_0 cache on the host
# took about 20 s, so larger caches repeat a pool of random pages (in a shuffled table).
POOL_VALUES = 1 << 24
# The float64 reference runs on every sequence while the batch holds at most this many keys,
# else on the first, the last and the longest.
CHECK_KEYS = 1 << 14


@dataclass(frozen=True)
class Target:
    """The issue's bound on one figure of a case's result."""
    figure: str     # a key of the result: dense_pct, copy_pct, time_ratio
    op: str         # "<=" or ">="
    bound: float

    def met(self, value: float | None) -> bool | None:
        return None if value is None else {"<=": operator.le, ">=": operator.ge}[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.figure} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class PagedCase:
    """A decode batch over a paged cache: one query row per sequence, `seq_lens` keys each."""
    name: str
    seq_lens: tuple[int, ...]
    heads_kv: int = 8
    gqa: int = 4
    head_k: int = 128
    head_v: int = 128
    kv_type: str = "f16"
    block_size: int = 16
    mla: bool = False               # V is the first head_v columns of K's rows, in K's pages
    baseline: str | None = None     # another case: time_ratio = this case's time / the baseline's
    targets: tuple[Target, ...] = ()

    @property
    def batch(self) -> int:
        return len(self.seq_lens)

    @property
    def heads_q(self) -> int:
        return self.heads_kv * self.gqa

    @property
    def t(self) -> KvType:
        return KvType.parse(self.kv_type)

    @property
    def kv_bytes(self) -> int:
        """K and V bytes of the batch's tokens, each read once (MLA: K only)."""
        row = self.t.row_bytes(self.head_k) + (0 if self.mla else self.t.row_bytes(self.head_v))
        return sum(self.seq_lens) * self.heads_kv * row

    def padded(self) -> Case:
        """The dense decode of these sequences padded to the longest, as kgen.tools.suites spells it."""
        return Case(f"{self.name} dense", self.heads_kv, self.gqa, 1, max(self.seq_lens), self.head_k,
                    self.head_v, k_type=self.kv_type, v_type=self.kv_type, mla=self.mla, batch=self.batch)

    def describe(self) -> str:
        lens = "+".join(f"{len(list(run))}x{n}" for n, run in itertools.groupby(self.seq_lens))
        return (f"{lens} keys, Hkv {self.heads_kv} x GQA {self.gqa}, D {self.head_k}/{self.head_v}, "
                f"{self.kv_type} pages of {self.block_size}" + (" (V in K)" if self.mla else ""))


def spread(total: int, batch: int) -> tuple[int, ...]:
    """`batch` lengths as equal as can be, summing to `total`."""
    q, r = divmod(total, batch)
    return (q + 1,) * r + (q,) * (batch - r)


def paged_suite(*, batch: int, keys: int, long: int, short: int, mla_batch: int,
                mla_keys: int) -> tuple[PagedCase, ...]:
    """The speed section's cases at these sizes; baselines come before the cases that name them."""
    mixed = (long,) + (short,) * (batch - 1)
    mla = dict(heads_kv=1, head_k=576, head_v=512, block_size=64, mla=True)
    return (
        PagedCase("decode-f16", (keys,) * batch,
                  targets=(Target("dense_pct", ">=", 80), Target("copy_pct", ">=", 70))),
        PagedCase("decode-q8_0", (keys,) * batch, kv_type="q8_0", baseline="decode-f16",
                  targets=(Target("time_ratio", "<=", 0.6),)),
        PagedCase("uniform-decode", spread(sum(mixed), batch)),
        PagedCase("mixed-decode", mixed, baseline="uniform-decode", targets=(Target("time_ratio", "<=", 1.3),)),
        PagedCase("mla-h16", (mla_keys,) * mla_batch, gqa=16, **mla),
        PagedCase("mla-h128", (mla_keys,) * mla_batch, gqa=128, **mla),   # DeepSeek-V3's 128 heads
    )


# The sizes (Llama-3-8B-like heads; DeepSeek MLA), and small ones of the same kinds
# that lavapipe runs in seconds.
FULL = paged_suite(batch=64, keys=4096, long=32768, short=512, mla_batch=32, mla_keys=4096)
SMALL = paged_suite(batch=4, keys=256, long=512, short=32, mla_batch=2, mla_keys=256)


def pick(cases: tuple[PagedCase, ...], only: list[str] | None) -> tuple[PagedCase, ...]:
    """The cases whose name contains one of `only` (all when None), with the baselines they name."""
    if not only:
        return cases
    chosen = {c.name for c in cases if any(o.lower() in c.name.lower() for o in only)}
    if not chosen:
        raise ValueError(f"--case {' '.join(only)}: no paged case matches; the cases: "
                         f"{', '.join(c.name for c in cases)}")
    chosen |= {c.baseline for c in cases if c.name in chosen and c.baseline}
    return tuple(c for c in cases if c.name in chosen)


# --- inputs -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One call's inputs: q (B, Hq, Dk) float32, the caches, the shuffled table and the lengths."""
    q: np.ndarray
    k: PagedKV
    v: PagedKV
    table: np.ndarray
    lens: np.ndarray

    def pages(self, b: int) -> np.ndarray:
        return self.table[b, :-(-int(self.lens[b]) // self.k.block_size)]


def _random_cache(rng, t: KvType, num_blocks: int, page: tuple[int, int, int]) -> PagedKV:
    """`num_blocks` NHD pages of `page` (block_size, heads, D) random values stored as `t`."""
    pool = max(1, min(num_blocks, POOL_VALUES // int(np.prod(page))))
    stored = quantize(rng.standard_normal((pool, *page), dtype=np.float32), t).reshape(pool, -1)
    data = np.resize(stored, (num_blocks, stored.shape[1])).tobytes()   # bytes: PagedKV.raw copies nothing
    return PagedKV(data, t, num_blocks, page[0], page[1], page[2])


def make_batch(case: PagedCase, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    need = [-(-n // case.block_size) for n in case.seq_lens]
    order = rng.permutation(sum(need)).astype(np.int32)
    table = np.zeros((case.batch, max(need)), np.int32)
    for b, (start, n) in enumerate(zip(itertools.accumulate([0] + need), need)):
        table[b, :n] = order[start:start + n]
    k = _random_cache(rng, case.t, sum(need), (case.block_size, case.heads_kv, case.head_k))
    if case.mla:
        v = PagedKV(k.data, case.t, k.num_blocks, case.block_size, 1, case.head_v, strides=k.strides)
    else:
        v = _random_cache(rng, case.t, sum(need), (case.block_size, case.heads_kv, case.head_v))
    q = rng.standard_normal((case.batch, case.heads_q, case.head_k), dtype=np.float32)
    return Batch(q, k, v, table, np.array(case.seq_lens, np.int32))


def _compact(cache: PagedKV, pages: np.ndarray) -> PagedKV:
    """A dense NHD cache of just `pages` of `cache`, in that order."""
    rows = np.ascontiguousarray(cache.rows()[pages])
    return PagedKV(rows.tobytes(), cache.type, len(pages), cache.block_size, cache.heads, cache.head_dim)


def _dense(x: Batch, case: PagedCase):
    """K and V as (B, Hkv, N, D) KVTensors of the same bytes, N the longest sequence; a shorter
    one's padding holds other keys of the cache (its rows are never checked); V inside K for MLA."""
    from ..kvtensor import KVTensor
    n = max(case.seq_lens)
    tensors = []
    for cache in (x.k,) if case.mla else (x.k, x.v):
        rows = cache.rows()[x.table]                       # (B, pages, block_size, heads, row bytes)
        rows = rows.reshape(case.batch, -1, *rows.shape[3:])[:, :n]
        row = rows.shape[-1] // case.t.block_bytes * case.t.block_size   # elements of one row
        strides = (case.heads_kv * row, row, n * case.heads_kv * row)
        tensors.append(KVTensor(rows.tobytes(), case.t, (case.batch, case.heads_kv, n, cache.head_dim), strides))
    if case.mla:
        k = tensors[0]
        tensors.append(KVTensor(k.data, case.t, (case.batch, 1, n, case.head_v), k.strides))
    return tensors


# --- checking ---------------------------------------------------------------------------------
def checked_sequences(case: PagedCase) -> list[int]:
    if sum(case.seq_lens) <= CHECK_KEYS:
        return list(range(case.batch))
    return sorted({0, case.batch - 1, int(np.argmax(case.seq_lens))})


def reference_rows(x: Batch, seqs: list[int]) -> np.ndarray:
    """kgen.reference.paged_attention's rows of sequences `seqs`, on a cache of their pages only."""
    pages = [x.pages(b) for b in seqs]
    table = np.zeros((len(seqs), max(len(p) for p in pages)), np.int32)
    for i, (start, p) in enumerate(zip(itertools.accumulate([0] + [len(p) for p in pages]), pages)):
        table[i, :len(p)] = np.arange(start, start + len(p))
    used = np.concatenate(pages)
    return reference.paged_attention(x.q[seqs], _compact(x.k, used), _compact(x.v, used), table, x.lens[seqs])


def _check(out: np.ndarray, want: np.ndarray, seqs: list[int], batch: int) -> dict:
    nmse = float(reference.nmse(out, want))
    scope = "full" if len(seqs) == batch else "sequences " + ", ".join(map(str, seqs))
    return {"scope": scope, "nmse": nmse, "ok": bool(np.isfinite(out).all()) and nmse <= NMSE_MAX}


# --- timing -----------------------------------------------------------------------------------
def time_plans(plans: list, repeats: int, warmup: int) -> bench.Timing:
    """As `kgen bench` times: warm-up (at least `warmup` runs), then `repeats` runs back to back."""
    from ..timing import time_back_to_back, warm_up
    warm_up(plans, bench.WARMUP_GPU_US, min_runs=max(1, -(-warmup // len(plans))))
    return bench.Timing.of(time_back_to_back(plans, repeats), len(plans))


def _timed(make: Callable, upload: Callable, nbytes: int, repeats: int, warmup: int) -> tuple[np.ndarray, dict]:
    """The first plan's output, and its variant, how it was chosen, its splits and the GPU
    times over enough plans to rotate `nbytes` of inputs past the L2; every plan is closed."""
    from ..timing import rotation_sets
    plans = [make()]
    try:
        plans += [make() for _ in range(rotation_sets(nbytes) - 1)]
        for p in plans:
            upload(p)
        timing = time_plans(plans, repeats, warmup)
        first = plans[0]
        first.run_device()
        return first.result(), {"variant": first.variant.uri, "chosen_by": first.how, "splits": first.splits,
                                "gpu": asdict(timing)}
    finally:
        for p in plans:
            p.close()


def _figures(us: float, nbytes: int, copy_gbps: float | None) -> dict:
    gbps = nbytes / (us * 1e3)
    return {"kv_gbps": gbps, "copy_pct": None if copy_gbps is None else 100 * gbps / copy_gbps}


# --- the cases --------------------------------------------------------------------------------
def copy_bandwidth(device) -> tuple[float | None, str]:
    """The device's copy GB/s (`kgen roofline`'s cached record, else measured now) and its source."""
    from ..identity import DeviceIdentity
    from ..timing import roofline
    record = roofline.load(DeviceIdentity.of(device.caps).key)
    if record is not None:
        return record.copy_gbps, f"kgen roofline record of {record.measured_at}"
    try:
        return roofline.measure_copy(device), "measured now (kgen roofline caches a record)"
    except KgenError as exc:   # recorded in the results; the kernels' figures stand without it
        return None, f"n/a ({type(exc).__name__}: {exc})"


def run_paged(case: PagedCase, x: Batch, dev, repeats: int, warmup: int) -> tuple[np.ndarray, dict]:
    """The paged plan's output and _timed's figures."""
    from ..api import paged_plan
    args = dict(block_table=x.table, seq_lens=x.lens)
    return _timed(
        lambda: paged_plan(x.q, x.k, x.v, device=dev, **args),
        lambda p: p.upload(x.q, x.k, x.v, **args),
        len(x.k.raw) + (0 if case.mla else len(x.v.raw)) + 4 * x.q.size, repeats, warmup)


def run_dense(case: PagedCase, x: Batch, dev, repeats: int, warmup: int, copy_gbps: float | None,
              checked: dict[int, np.ndarray]) -> dict:
    """kgen's dense plan on the batch's sequences padded to the longest, checked on those of
    `checked` (sequence -> its reference rows) that padding leaves exact; its figures, or a note."""
    from ..api import plan
    padded = case.padded()
    limit = dev.caps.max_storage_buffer_range
    per_tensor = padded.batch * padded.heads_kv * padded.n_kv * case.t.row_bytes(case.head_k)
    if per_tensor > limit:
        return {"note": f"n/a (padded K is {per_tensor} bytes, over maxStorageBufferRange {limit})"}
    k, v = _dense(x, case)
    q = x.q[:, :, None, :]
    try:
        out, figures = _timed(lambda: plan(q, k, v, device=dev), lambda p: p.upload(q, k, v),
                              padded.kv_bytes, repeats, warmup)
    except (KgenError, ValueError) as exc:   # refused or failed by name: the paged figures stand
        return {"note": f"n/a ({type(exc).__name__}: {exc})"}
    exact = [b for b in checked if case.seq_lens[b] == padded.n_kv]
    check = (_check(out[exact, :, 0], np.stack([checked[b] for b in exact]), exact, case.batch) if exact else
             {"scope": "not checked (every checked sequence is padded)", "nmse": None, "ok": None})
    return {"shape": padded.describe(), **figures, **_figures(figures["gpu"]["median_us"], padded.kv_bytes, copy_gbps),
            "check": check}


def _blank(case: PagedCase) -> dict:
    """A case's result with every figure still None."""
    figures = ("variant", "chosen_by", "splits", "gpu", "check", "dense", "torch", "kv_gbps", "copy_pct", "dense_pct",
               "vs_dense", "vs_torch", "time_ratio")
    return {"case": case.name, "shape": case.describe(), "batch": case.batch, "keys": sum(case.seq_lens),
            "kv_bytes": case.kv_bytes, "kv_type": case.kv_type, "block_size": case.block_size,
            "heads_q": case.heads_q, "heads_kv": case.heads_kv, "head_k": case.head_k, "head_v": case.head_v,
            "mla": case.mla, "baseline": case.baseline, "error": None, **dict.fromkeys(figures), "targets": []}


def bench_paged_case(case: PagedCase, dev, *, repeats: int, warmup: int, copy_gbps: float | None,
                     torch: bool = True) -> dict:
    """One case's result dict (see run); a named failure fills `error` and the rest stays None."""
    result = _blank(case)
    x = make_batch(case, zlib.crc32(case.name.encode()))
    seqs = checked_sequences(case)
    want = reference_rows(x, seqs)
    try:
        out, figures = run_paged(case, x, dev, repeats, warmup)
    except (KgenError, ValueError) as exc:   # refused or failed by name: this case only
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    us = figures["gpu"]["median_us"]
    result |= figures | _figures(us, case.kv_bytes, copy_gbps) | {"check": _check(out[seqs], want, seqs, case.batch)}
    dense = result["dense"] = run_dense(case, x, dev, repeats, warmup, copy_gbps, dict(zip(seqs, want)))
    if "gpu" in dense:
        result["vs_dense"] = dense["gpu"]["median_us"] / us
        result["dense_pct"] = 100 * result["kv_gbps"] / dense["kv_gbps"]
    if torch:
        torch_us, note = bench.torch_sdpa_us(case.padded(), repeats=repeats, warmup=warmup)
        result["torch"] = {"shape": case.padded().describe(), "median_us": torch_us, "note": note}
        result["vs_torch"] = torch_us / us if torch_us else None
    return result


Progress = Callable[[PagedCase, "dict | None"], None]


def run(cases, device=None, *, repeats: int = 100, warmup: int = 10, progress: Progress | None = None,
        torch: bool = True, copy: tuple[float | None, str] | None = None) -> list[dict]:
    """Every case's result dict: the paged plan's variant, splits, GPU time (median, p10/p90),
    K+V GB/s and % of copy, its check; kgen's dense plan on the padded sequences (`dense`, or its
    note) with vs_dense (dense time / ours) and dense_pct (our GB/s as % of dense's); torch on
    the padded shape (`torch`) with vs_torch; time_ratio to the baseline case; each target's
    figure and verdict (None off the H100). `progress(case, None)` before a case and
    `progress(case, result)` after it. `copy`: copy_bandwidth(device)'s answer, asked when None."""
    from ..planning.probe import open_for_kernels
    bench.check_counts(repeats, warmup)
    dev = open_for_kernels(device)
    copy_gbps, _ = copy or copy_bandwidth(dev)
    results = {}
    for case in cases:
        if progress:
            progress(case, None)
        results[case.name] = bench_paged_case(case, dev, repeats=repeats, warmup=warmup, copy_gbps=copy_gbps,
                                              torch=torch)
        _judge(case, results, on_reference_gpu=bench.REFERENCE_DEVICE in dev.caps.name)
        if progress:
            progress(case, results[case.name])
    return list(results.values())


def _judge(case: PagedCase, results: dict, *, on_reference_gpu: bool) -> None:
    r = results[case.name]
    base = results.get(case.baseline)
    if r["gpu"] and base and base["gpu"]:
        r["time_ratio"] = r["gpu"]["median_us"] / base["gpu"]["median_us"]
    r["targets"] = [{"target": str(t), "value": r[t.figure],
                     "met": t.met(r[t.figure]) if on_reference_gpu else None} for t in case.targets]


def failures(results: list[dict]) -> list[str]:
    """Names of the cases that failed or whose output (or their dense reference's) is wrong."""
    def wrong(r):
        dense = (r["dense"] or {}).get("check") or {}
        return r["error"] or not (r["check"] or {}).get("ok") or dense.get("ok") is False
    return [r["case"] for r in results if wrong(r)]


# --- reporting --------------------------------------------------------------------------------
def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(results: list[dict]) -> str:
    """The figures as fixed-width text, one row per case (every figure is in the JSON too)."""
    head = ("case", "GPU us", "p10-p90", "K+V GB/s", "% copy", "dense us", "% dense", "torch us",
            "vs base", "NMSE", "targets")
    rows = []
    for r in results:
        if r["error"]:
            rows.append((r["case"], r["error"]))
            continue
        g, dense, torch = r["gpu"], r["dense"] or {}, r["torch"] or {}
        dense_us = dense["gpu"]["median_us"] if dense.get("gpu") else None
        targets = ", ".join(f"{t['target']}: " + {True: "met", False: "MISSED", None: "H100 only"}[t["met"]]
                            for t in r["targets"])
        nmse = _num(r["check"]["nmse"], ".1e") + ("" if r["check"]["ok"] else " WRONG")
        rows.append((r["case"], f"{g['median_us']:.1f}", f"{g['p10_us']:.1f}-{g['p90_us']:.1f}",
                     f"{r['kv_gbps']:.4g}", _num(r["copy_pct"], ".0f"), _num(dense_us, ".1f"),
                     _num(r["dense_pct"], ".0f"), _num(torch.get("median_us"), ".1f"),
                     _num(r["time_ratio"], ".2f"), nmse, targets or "-"))
    # An error row is the case and its message: its message sets no column's width.
    widths = [max(len(row[i]) for row in [head, *rows] if len(row) == len(head) or i == 0) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [_notes(r) for r in results if not r["error"]])


def _notes(r: dict) -> str:
    dense, torch = r["dense"], r["torch"]
    line = f"  {r['case']}: {r['shape']}; {r['variant']} x{r['splits']} ({r['chosen_by']})"
    if dense:
        line += f"; dense {dense['note']}" if "note" in dense else f"; dense {dense['variant']} x{dense['splits']}"
    if torch and torch["note"]:
        line += f"; torch {torch['note']}"
    return line


def write_json(results: list[dict], path, *, caps, command: str, copy: tuple[float | None, str], sizes: str) -> Path:
    """One results file: the command, date, device, kgen build, copy bandwidth and every case."""
    from ..identity import BuildIdentity, DeviceIdentity
    from ..version import __version__
    doc = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "suite": f"paged ({sizes})", "kgen_version": __version__,
           "device": bench._caps_summary(caps) | {"identity": DeviceIdentity.of(caps).as_dict()},
           "build": BuildIdentity.current().as_dict(), "copy_gbps": copy[0], "copy_source": copy[1],
           "results": results}
    return bench.write_document(doc, path)
