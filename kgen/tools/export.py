"""Export tuning winners for embedding: their SPIR-V plus a dispatch table a C/C++ engine can use.

Three formats: `json` (`spirv/<name>.spv` files and `kgen_dispatch.json`), `c-header` (the table
alone, one self-contained `kgen_fa_table.h`) and `c` (`kgen_fa.h` + `kgen_fa.c`: a dispatcher that
plans a call and records the entry's recipe into the engine's command buffer). All are written
from the same rows, and every interface number in
them (push-constant layout, bindings, KV types, features, bucket edges, workgroup grid) comes from
the module that owns it (`abi`, `types`, `variant`, `problem`), never restated here by hand.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .. import abi, extent
from ..errors import KgenError
from ..paths.coopmat1 import kv_rule
from ..paths.shared import FUSED_STATS_SLOTS
from ..planning.dispatch import BUCKET_FIELDS, NEAREST_TIERS
from ..shapes import ALIBI_MAX_BIAS_MAX
from ..planning.paged_plan import MIN_SPLIT_TILES, TARGET_WORKGROUPS, default_paged_variant, folded_shapes
from ..planning.recipe import CALLER_BUFFERS as RECIPE_BUFFERS
from ..planning.recipe import SPLIT_COUNT, Recipe, Step, fa_grid, recipe, split_kv
from ..problem import mismatch
from ..compile import compile_many, compile_source
from ..render import MASK_TO_F16_PER_THREAD, MASK_TO_F16_WG, reduce_chunks, reduce_grid, render_mask_to_f16
from ..identity import BuildIdentity, DeviceIdentity
from ..problem import BUCKETS, NKV_BUCKETS, NQ_BUCKETS, bucket_range
from ..tunedb import Winner
from ..paged import BLOCK_SIZE_MAX, BLOCK_SIZE_STEP, PagedShapes, why_block_size_invalid
from ..space import why_invalid
from ..types import KV_TYPES, KvType
from ..variant import FEATURES, HEAD_MAX, HEAD_MIN, HEAD_STEP, Variant

FORMAT_NAME = "kgen-fa-dispatch"
FORMAT_VERSION = 9  # 9: paged entries (`paged_entries`: `kgen export --paged`, the heuristic paged
                    # kernel per (n_q, n_kv) bucket of the folded rows, with and without split-k);
                    # 8: abi bindings 10-12 (paged KV's block table, sequence lengths and query
                    # starts);
                    # 7: O is a caller buffer ("o", bound at the recipe's `output` binding), not scratch;
                    # 6: every entry carries its recipe (kgen.planning.recipe: steps, scratch, result)
                    # and both alignment twins of its kernel; grids are kgen.extent formulas; the
                    # nearest-class tiers and the split values are written as the dispatcher's;
                    # 2: a grid axis has a scale (the reduce pass's column chunks); 3: fused_reduce entries;
                    # 4: passes before the kernel (kgen.passes), formulas as kgen.extent expressions;
                    # 5: builds are kgen version + compiler (no template hash); entries carry the
                    # kernel digest their timing was taken with (kgen.identity.kernel_digest)
FORMATS = ("json", "c-header", "c")
JSON_FILE, HEADER_FILE, SPIRV_DIR = "kgen_dispatch.json", "kgen_fa_table.h", "spirv"
API_HEADER, API_SOURCE = "kgen_fa.h", "kgen_fa.c"
SPIRV_MAGIC = 0x07230203
TEMPLATES = Path(__file__).resolve().parent / "export_templates"

# The caller's buffers a recipe's step may bind: a dense call's (kgen.planning.recipe), then a
# paged call's tables. The C dispatcher numbers them so, and its scratch buffers after them.
CALLER_BUFFERS = RECIPE_BUFFERS + abi.PAGED_BUFFERS
# Members of the C API's kgen_fa_buffers, in order: the dense call's, scratch and state, then the
# paged call's (appended, so that a dense engine's code is unchanged).
C_BUFFER_MEMBERS = RECIPE_BUFFERS + ("scratch", "state") + abi.PAGED_BUFFERS
# C type and size of each abi.PushField.glsl type.
PUSH_TYPES = {"uint": ("uint32_t", 4), "float": ("float", 4)}
# Element type of each abi binding ("k_type"/"v_type": the entry's KV types).
BINDING_ELEMENTS = {"q": "f32", "k": "k_type", "v": "v_type", "mask": "f16", "sinks": "f32",
                    "out": "f32", "stats": "vec2<f32> (max, sum)", "reduced": "f32",
                    "mask_tiles": "u32", "split_arrivals": "u32", "block_table": "i32",
                    "seq_lens": "i32", "cu_seqlens_q": "i32"}
assert set(BINDING_ELEMENTS) == set(abi.BINDING), "a new abi binding needs its element type here"
_PUSH_NAMES = {f.name for f in abi.PUSH_FIELDS}
# Per-entry values the shared formulas name (fa_grid("br"), split_kv("bc"), ...).
ENTRY_VALUES = ("br", "bc", "splits", "reduce_chunks")

NOTES = (
    "Pick an entry: same device identity (vendorID, deviceID, driverID, driverVersion, "
    "pipelineCacheUUID), head sizes, KV types, features (without split_k), acc and v_in_k; "
    "among those, the entry whose buckets are nearest by `nearest`: bucket-index distances "
    "summed per tier, tiers compared in order (the first tier weighs most), ties to the first "
    "entry in the table. No entry: use your own default kernel.",
    "Kernel: `shader` when n_kv % bc == 0 and `twin` otherwise if the entry is aligned; the "
    "other way round if it is not (`aligned` says which `shader` is). Both have the same recipe. "
    "An entry serves a call only where its kernel reads K and V with offsets and strides that "
    "are multiples of `kv_unit` elements (the f16 copy's, after a kv_to_f16 pass), and, with "
    "`kv_min_tile`, an unaligned n_kv of at least bc; otherwise take the next nearest entry.",
    "Pipeline: one descriptor set, the storage buffers of `bindings`, and one push-constant "
    "range of push_constants.bytes bytes (compute stage). Create the FA pipeline with "
    "VkPipelineShaderStageRequiredSubgroupSizeCreateInfo(required_subgroup_size) and, where the "
    "device has computeFullSubgroups, VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT. "
    "The other steps need neither.",
    "Push constants: fill every field (see each field's doc); split_kv and split_count from "
    "`split_values` with the entry's splits and bc (also for splits == 1). A step whose push is "
    "\"kernel\" takes them with the entry's kernel_push fields set instead (the f16 copy's layout "
    "after a kv_to_f16 pass).",
    "Run the entry's recipe: its steps in order, each binding `binds` (abi binding -> buffer: "
    "q, k, v, mask, sinks and o are yours, with V inside K's bytes give K's buffer for v; the "
    "others are its `scratch` buffers, sized by their formulas, kept between calls), dispatching "
    "`grid` workgroups, with a compute-to-compute barrier before each step whose `barrier` is true "
    "(false: it runs beside the step before). The last step writes O, (B, Hq, Nq, Dv) f32 "
    "by the o_stride push fields, into your buffer o (bound at `output`). Unused bindings are bound to any small "
    "dummy buffer.",
    "Zero a scratch buffer with zero_once (fused_reduce's split_arrivals) once when you "
    "create it: every run leaves it zero again, so two runs must not use one buffer at the "
    "same time. Run the steps at every call: they read Q, the mask or the cache as they are now.",
    "Paged entries (`paged_entries`, heuristic defaults: source \"default\"): pick by device, head "
    "sizes, KV types, page, features and the buckets of the folded rows: n_q = the longest "
    "sequence's query tokens x (Hq / Hkv), n_kv = max_blocks_per_seq x page. Splits: 1 where "
    "`splits_by` is \"one\"; else from the batch's work, w = Hkv x sum over sequences of "
    "ceil(q_len x Hq / Hkv / br) x seq_len, chunk = max(min_split_tiles x bc, ceil(w / "
    "target_workgroups / bc) x bc), splits = max(1, min(ceil(n_kv / chunk), floor(n_kv / bc))). "
    "splits > 1 takes the entry with split_k; split_kv and split_count from `split_values` over "
    "n_kv. Push fields as `paged_push` says; the steps bind block_table, seq_lens and "
    "cu_seqlens_q (int32) too.",
    "Formulas (grids, buffer sizes, kernel_push values, split values) are expressions: an int, a "
    "dimension name (a push-constant field, one of `dims`, or the entry's br, bc, splits, "
    "reduce_chunks), or [op, operand...] with op \"mul\" (the product) or \"ceil_div\" "
    "(ceil(a / b)). Each comes with its text.",
)


class ExportError(KgenError):
    """Nothing to export, or a winner that contradicts its own problem class."""


@dataclass(frozen=True)
class Shader:
    name: str                        # file stem and C identifier suffix
    spirv: bytes
    local_size_x: int
    required_subgroup_size: int | None

    def __post_init__(self):
        if len(self.spirv) % 4 or len(self.spirv) < 20 or struct.unpack_from("<I", self.spirv)[0] != SPIRV_MAGIC:
            raise ExportError(f"{self.name}: the compiler's output is not a SPIR-V module")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.spirv).hexdigest()

    @property
    def file(self) -> str:
        return f"{SPIRV_DIR}/{self.name}.spv"

    @property
    def words(self) -> tuple[int, ...]:
        return struct.unpack(f"<{len(self.spirv) // 4}I", self.spirv)


@dataclass(frozen=True)
class Row:
    """One dispatch-table entry: a winner with its compiled shaders."""
    device: DeviceIdentity
    build: BuildIdentity
    winner: Winner
    variant: Variant
    shader: Shader                   # the winner's kernel
    twin: Shader                     # the same kernel with the other `aligned`
    recipe: Recipe
    steps: tuple[tuple[Step, Shader], ...]   # the recipe's steps with their shaders (fa: `shader`)

    @property
    def reduce(self) -> Shader | None:
        return next((sh for st, sh in self.steps if st.role == "reduce"), None)

    @property
    def passes(self) -> tuple[tuple[Step, Shader], ...]:
        return tuple((st, sh) for st, sh in self.steps if st.role == "before")


DEFAULT_STRATEGY = "heuristic default"   # a Winner that `kgen export --cover` adds untimed


def eval_grid(grid: dict, dims: dict) -> tuple[int, int, int]:
    """Workgroup counts from a grid as written to the JSON, for a call's dimensions by name."""
    return tuple(extent.evaluate(grid[a]["expr"], dims) for a in "xyz")


# --- rows: winners -> compiled, deduplicated shaders ------------------------------------------------
def collect(entries, skipped: list | None = None) -> list[Row]:
    """Compile every winner's shaders once; rows sorted by (device key, class key). A winner the
    table cannot serve is left out, with the reason appended to `skipped` as (winner, reason):
    the C lookup then falls back to the nearest class or the engine's kernel for it."""
    entries = sorted(entries, key=lambda e: (e[0].key, e[2].problem.key, e[1].key))
    if not entries:
        raise ExportError("no tuning winners to export: run `kgen tune` first")
    by_sha: dict[str, Shader] = {}
    compiled: dict[tuple, Shader] = {}

    def shader(key: tuple, make) -> Shader:
        if key not in compiled:
            s = make()
            compiled[key] = by_sha.setdefault(s.sha256, s)  # same bytes: one shader
        return compiled[key]

    _compile_ahead(entries)
    rows = []
    for device, build, w in entries:
        if (reason := _unservable(w)) is not None:
            if skipped is not None:
                skipped.append((w, reason))
            continue
        v = Variant.parse(w.variant)
        rec = recipe(v)
        twin = v.replace(aligned=not v.aligned)
        fa = shader(("fa", v.uri), lambda: Shader(v.uri, rec.fa.spirv(), v.wg, v.subgroup))
        other = shader(("fa", twin.uri), lambda: Shader(twin.uri, recipe(twin).fa.spirv(), v.wg, v.subgroup))
        steps = tuple((st, fa if st.role == "fa" else shader(("step", st.name), functools.partial(_step_shader, st)))
                      for st in rec.steps)
        rows.append(Row(device, build, w, v, fa, other, rec, steps))
    if not rows:
        raise ExportError("no winner can be exported: " + "; ".join(f"{w.problem.key}: {r}" for w, r in skipped or ()))
    return rows


def _compile_ahead(entries) -> None:
    """Compile every servable winner's kernel and its twin on all cores into the SPIR-V cache, so
    that collect's one-by-one loop only reads it (`--cover ggml` is ~3600 kernels: minutes apart
    from seconds). A kernel that fails is compiled again in the loop, which raises its error."""
    variants = []
    for _, _, w in entries:
        if _unservable(w) is None:
            v = Variant.parse(w.variant)
            variants += [v, v.replace(aligned=not v.aligned)]
    if len(variants) > 2:
        step = max(1, len(variants) // 10)
        compile_many(variants, progress=lambda done, total, _: done % step == 0 and print(
            f"kgen export: compiled {done}/{total} kernels", file=sys.stderr, flush=True))


def _step_shader(st: Step) -> Shader:
    return Shader(st.name, st.spirv(), st.local_size_x, st.required_subgroup_size)


def _unservable(w: Winner) -> str | None:
    """Why the table cannot carry winner `w` for every call of its class, or None."""
    try:
        v = Variant.parse(w.variant)
    except (KgenError, ValueError) as exc:
        return f"winner {w.variant!r} does not parse: {exc}"
    if (reason := mismatch(v, w.problem, w.splits)) is not None:
        return f"winner {w.variant} (splits {w.splits}): {reason}"
    if v.page:
        return f"winner {w.variant}: paged KV entries are not in the export format yet"
    if v.fused_reduce and w.splits * v.br > FUSED_STATS_SLOTS:
        return (f"winner {w.variant} with {w.splits} splits: its fused reduce combines at most "
                f"{FUSED_STATS_SLOTS} (row, split) pairs per row tile, and br {v.br} x {w.splits} "
                "splits can exceed that on a larger Nq of the bucket")
    return None


# --- paged entries: heuristic defaults per bucket of the folded rows ------------------------------
PAGED_FEATURES = ("causal", "softcap", "sinks")   # window: the causal feature with a run-time width
PAGED_ACC = 32


@dataclass(frozen=True)
class PagedSpec:
    """What `kgen export --paged` carries: `Dk,Dv,k_type,v_type,page[,feature...]`."""
    head_k: int
    head_v: int
    k_type: KvType
    v_type: KvType
    page: int
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "PagedSpec":
        form = "Dk,Dv,k_type,v_type,page[,feature...]"
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) < 5:
            raise ValueError(f"--paged {text!r}: expected {form}")
        try:
            head_k, head_v, page = int(parts[0]), int(parts[1]), int(parts[4])
        except ValueError:
            raise ValueError(f"--paged {text!r}: Dk, Dv and page are integers ({form})") from None
        try:
            k_type, v_type = KvType.parse(parts[2]), KvType.parse(parts[3])
        except (KgenError, ValueError) as exc:
            raise ValueError(f"--paged {text!r}: {exc}") from None
        if (reason := why_block_size_invalid(page)) is not None:
            raise ValueError(f"--paged {text!r}: page={page}: {reason}")
        extra = [f for f in parts[5:] if f not in PAGED_FEATURES]
        if extra or len(set(parts[5:])) < len(parts[5:]):
            raise ValueError(f"--paged {text!r}: features are distinct names of {', '.join(PAGED_FEATURES)} "
                             f"(window is causal with a run-time width){'; not ' + ', '.join(extra) if extra else ''}")
        features = tuple(f for f in FEATURES if f in parts[5:])
        return cls(head_k, head_v, k_type, v_type, page, features)

    @property
    def key(self) -> str:
        return (f"{self.head_k}/{self.head_v} {self.k_type.label}/{self.v_type.label} pg{self.page} "
                f"{'+'.join(self.features) or '-'}")

    def folded(self, n_q: int, n_kv: int):
        """folded_shapes of a batch whose folded rows are n_q and whose capacity is n_kv (rounded
        up to whole pages): its class is what PagedPlan picks tiles by."""
        pages = -(-n_kv // self.page)
        s = PagedShapes(batch=1, total_q=n_q, heads_q=1, heads_kv=1, head_k=self.head_k, head_v=self.head_v,
                        block_size=self.page, max_blocks_per_seq=pages, q_lens=(n_q,), seq_lens=(0,))
        return folded_shapes(s, self.k_type, self.v_type, causal="causal" in self.features, window=0, scale=None,
                             softcap=1.0 if "softcap" in self.features else 0.0, sinks="sinks" in self.features,
                             precision="f32")


@dataclass(frozen=True)
class PagedRow:
    """One paged entry: the heuristic paged kernel of `spec` for the (n_q, n_kv) buckets it
    serves, with split-k or without."""
    device: DeviceIdentity
    build: BuildIdentity
    spec: PagedSpec
    buckets: tuple[tuple[int, int], ...]
    variant: Variant
    one_split: bool                  # paged_splits gives 1 on this device (a CPU)
    recipe: Recipe
    steps: tuple[tuple[Step, Shader], ...]

    @property
    def shader(self) -> Shader:
        return next(sh for st, sh in self.steps if st.role == "fa")


def paged_rows(specs, caps) -> list[PagedRow]:
    """For each spec, default_paged_variant of folded_shapes for every (n_q, n_kv) bucket on the
    device `caps` describes, without and with split-k; buckets with the same kernel share a row.
    A bucket no variant serves is left out (the C dispatcher says it is not covered)."""
    device, build = DeviceIdentity.of(caps), BuildIdentity.current()
    rows = []
    for spec in specs:
        for split in (False, True):
            served: dict[str, list] = {}
            reasons = []
            for i in range(len(NQ_BUCKETS)):
                for j in range(len(NKV_BUCKETS)):
                    n_q = 1 if i == 0 else NQ_BUCKETS[i - 1] + 1
                    n_kv = 1 if j == 0 else NKV_BUCKETS[j - 1] + 1
                    try:
                        v = default_paged_variant(spec.folded(n_q, n_kv), caps, spec.page).replace(split_k=split)
                    except (KgenError, ValueError) as exc:
                        reasons.append(str(exc))
                        continue
                    if (reason := why_invalid(v, caps)) is None:
                        served.setdefault(v.uri, []).append((i, j))
                    else:
                        reasons.append(f"{v.uri}: {reason}")
            if not served and not split:
                raise ExportError(f"--paged {spec.key}: no paged kernel serves it on {caps.name}: {reasons[0]}")
            for uri, buckets in served.items():
                v = Variant.parse(uri)
                rec = recipe(v)
                steps = tuple((st, _step_shader(st)) for st in rec.steps)
                rows.append(PagedRow(device, build, spec, tuple(buckets), v, caps.device_type == "cpu", rec, steps))
    return rows


# --- interface tables ----------------------------------------------------------------------------
def push_layout() -> list[dict]:
    """The push-constant block of kgen/abi.py with byte offsets (std430 scalars, 4-byte aligned)."""
    fields, offset = [], 0
    for f in abi.PUSH_FIELDS:
        ctype, size = PUSH_TYPES[f.glsl]
        fields.append({"name": f.name, "offset": offset, "type": f.glsl, "c_type": ctype, "doc": f.doc})
        offset += size
    assert offset == abi.PUSH_BYTES
    return fields


def bindings() -> list[dict]:
    return [{"name": b.name, "binding": b.index, "element": BINDING_ELEMENTS[b.name], "doc": b.doc}
            for b in abi.BINDINGS]


def grid(axes: tuple) -> dict:
    """A step's workgroup grid as formulas, with its text."""
    return {**{a: formula(e) for a, e in zip("xyz", axes)},
            "text": ", ".join(f"{a} = {extent.text(e)}" for a, e in zip("xyz", axes))}


def _buckets(problem) -> dict:
    out = {}
    for name, edges, attr in BUCKETS:
        index = getattr(problem, attr)
        low = 1 if index == 0 else edges[index - 1] + 1
        out[name] = {"bucket": index, "min": low, "max": edges[index], "range": bucket_range(index, edges)}
    return out


def _identity(ident) -> dict:
    return {**ident.as_dict(), "key": ident.key}


# --- json ----------------------------------------------------------------------------------------
def _shader_entry(s: Shader) -> dict:
    return {"shader": s.name, "spv": s.file, "sha256": s.sha256, "bytes": len(s.spirv),
            "local_size_x": s.local_size_x, "required_subgroup_size": s.required_subgroup_size}


def _recipe_entry(rec: Recipe, steps) -> dict:
    return {"steps": [{**_shader_entry(s), "role": st.role, "binds": {b: buf for b, buf in st.binds}, "push": st.push,
                       "grid": grid(st.grid), "barrier": st.barrier} for st, s in steps],
            "scratch": [{"name": b.name, "bytes": formula(b.nbytes), "zero_once": b.zero_once} for b in rec.scratch],
            "output": rec.output}


def _paged_entry(r: PagedRow) -> dict:
    spec, v = r.spec, r.variant
    return {"device": r.device.key, "tuned_build": r.build.key, "source": "default", "spec": spec.key,
            "head_k": spec.head_k, "head_v": spec.head_v, "k_type": spec.k_type.label, "v_type": spec.v_type.label,
            "page": spec.page, "features": list(spec.features), "acc": PAGED_ACC,
            "buckets": [{"n_q": i, "n_kv": j} for i, j in r.buckets],
            "variant": v.uri, **_shader_entry(r.shader), "grid": grid(r.recipe.fa.grid), "br": v.br, "bc": v.bc,
            "split_k": v.split_k, "reduce_chunks": reduce_chunks(v.head_v),
            "splits_by": "one" if r.one_split else "work", "target_workgroups": TARGET_WORKGROUPS,
            "min_split_tiles": MIN_SPLIT_TILES, "recipe": _recipe_entry(r.recipe, r.steps)}


def _split(rows) -> tuple[list[Row], list[PagedRow]]:
    """A table's rows: the dense ones (Row) and the paged ones (PagedRow), each in order."""
    return [r for r in rows if isinstance(r, Row)], [r for r in rows if isinstance(r, PagedRow)]


def dispatch_table(rows: list) -> dict:
    """The JSON table of `rows`, dense and paged."""
    rows, paged = _split(rows)
    shader = _shader_entry

    def entry(r: Row) -> dict:
        p, v, w = r.winner.problem, r.variant, r.winner
        reduce = next(((st, s) for st, s in r.steps if st.role == "reduce"), None)
        return {"device": r.device.key, "tuned_build": r.build.key, "class": p.key,
                "head_k": p.head_k, "head_v": p.head_v, "k_type": p.k_type.label, "v_type": p.v_type.label,
                "features": list(p.features), "acc": p.acc, "v_in_k": p.v_in_k, **_buckets(p),
                "variant": v.uri, **shader(r.shader), "grid": grid(r.recipe.fa.grid), "br": v.br, "bc": v.bc,
                "splits": w.splits, "aligned": v.aligned, "twin": shader(r.twin),
                "fused_reduce": v.fused_reduce, "median_us": w.median_us, "kernel": w.kernel,
                "chosen_by": w.strategy if w.strategy == DEFAULT_STRATEGY else "tuned",
                "reduce_chunks": reduce_chunks(v.head_v), **_kv_rule(v),
                "reduce": reduce and {**shader(reduce[1]), "grid": grid(reduce[0].grid)},
                "passes_before": [pass_entry(r, st, s) for st, s in r.passes],
                "kernel_push": {name: formula(e) for name, e in r.recipe.kernel_push.items()},
                "recipe": _recipe_entry(r.recipe, r.steps)}

    def pass_entry(r: Row, st: Step, s: Shader) -> dict:
        """A step before the kernel as the table lists it: which binding it reads, and where the
        kernel takes the buffer it writes."""
        (reads, _), (writes, buffer) = st.binds
        return {**shader(s), "reads": reads, "writes": writes, "buffer": buffer,
                "buffer_bytes": formula(next(b.nbytes for b in r.recipe.scratch if b.name == buffer)),
                "kernel_binding": next(b for b, buf in r.recipe.fa.binds if buf == buffer),
                "push": st.push, "grid": grid(st.grid)}

    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "build": _identity(BuildIdentity.current()),
        "tuned_builds": _unique(_identity(r.build) for r in (*rows, *paged)),
        "devices": _unique(_identity(r.device) for r in (*rows, *paged)),
        "push_constants": {"bytes": abi.PUSH_BYTES, "fields": push_layout()},
        "bindings": bindings(),
        "kv_types": [{"name": t.label, "block_size": t.block_size, "block_bytes": t.block_bytes} for t in KV_TYPES],
        "features": list(FEATURES),
        "buckets": {name: list(edges) for name, edges, _ in BUCKETS},
        "split_values": {"split_kv": formula(split_kv("bc")), "split_count": formula(SPLIT_COUNT)},
        "nearest": [list(tier) for tier in NEAREST_TIERS],
        "dims": {**{f.name: "push constant" for f in abi.PUSH_FIELDS if f.glsl == "uint"}, **extent.DIMS},
        "notes": list(NOTES),
        "entries": [entry(r) for r in rows],
        "paged_push": dict(abi.PAGED_PUSH),
        "paged_entries": [_paged_entry(r) for r in paged],
    }


def formula(e: extent.Expr) -> dict:
    return {"expr": extent.to_json(e), "text": extent.text(e)}


def _unique(items) -> list[dict]:
    return list({d["key"]: d for d in items}.values())


def _write_json(rows: list, out: Path) -> list[Path]:
    (out / SPIRV_DIR).mkdir()
    written = []
    for s in _shaders(rows):
        (out / s.file).write_bytes(s.spirv)
        written.append(out / s.file)
    (out / JSON_FILE).write_text(json.dumps(dispatch_table(rows), indent=1) + "\n")
    return written + [out / JSON_FILE]


def _kv_rule(v: Variant) -> dict:
    """kv_unit: K/V offsets and strides where the kernel reads them are multiples of it;
    kv_min_tile: the unaligned kernel needs n_kv >= bc."""
    unit, whole_tile = kv_rule(v)
    return {"kv_unit": unit, "kv_min_tile": int(whole_tile)}


def _shaders(rows: list) -> list[Shader]:
    """Every shader of the rows once: a dense row's kernel, its twin and steps; a paged row's steps."""
    each = (s for r in rows for s in ((r.shader, r.twin) if isinstance(r, Row) else ()) + tuple(s for _, s in r.steps))
    return list({s.sha256: s for s in each}.values())


# --- c-header ------------------------------------------------------------------------------------
@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["cstr"] = c_string
    return env


def c_string(text: str) -> str:
    """A C string literal: printable ASCII as is, everything else as octal escapes of UTF-8."""
    out = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}" for b in text.encode())
    return f'"{out}"'


def _c_range(r: dict) -> str:
    return f"{{ {r['bucket']}u, {r['min']}u, {'UINT32_MAX' if r['max'] is None else str(r['max']) + 'u'} }}"


def _c_values(rows: list[Row], shaders: list[Shader]) -> dict:
    """What the C templates (table header and dispatcher) render alike: SPIR-V words, device
    UUIDs, feature flags, the split formulas' text, the nearest-class tiers and bucket edges."""
    return dict(
        words={s.sha256: [", ".join(f"0x{w:08x}u" for w in s.words[i:i + 6]) for i in range(0, len(s.words), 6)]
               for s in shaders},
        uuid={r.device.key: ", ".join(f"0x{b:02x}" for b in _uuid_bytes(r.device)) for r in rows},
        c_features=lambda names: " | ".join([f"KGEN_FA_FEATURE_{f.upper()}" for f in names] + ["0u"]),
        split_text=f"split_kv = {extent.text(split_kv('bc'))}, split_count = {extent.text(SPLIT_COUNT)}",
        tiers=[[(name, BUCKET_FIELDS[name]) for name in tier] for tier in NEAREST_TIERS],
        buckets=[(name, [e for e in edges if e is not None]) for name, edges, _ in BUCKETS],
        kv_types=KV_TYPES, features=FEATURES, push_fields=push_layout())


def render_header(rows: list[Row]) -> str:
    shaders = _shaders(rows)
    dt = dispatch_table(rows)
    return _environment().get_template("kgen_fa_table.h.j2").render(
        **_c_values(rows, shaders), table=dt, pairs=list(zip(rows, dt["entries"])), shaders=shaders,
        c_name={s.sha256: f"kgen_fa_spv_{s.name}" for s in shaders},
        reduce_chunks=reduce_chunks,
        c_ranges=lambda e: ", ".join(_c_range(e[name]) for name, _, _ in BUCKETS),
        fa_grid=[extent.c_expr(e, _c_dim) for e in fa_grid("br")],
        reduce_grid=[extent.c_expr(e, _c_dim) for e in reduce_grid("reduce_chunks")],
        fa_grid_text=grid(fa_grid("br"))["text"], reduce_grid_text=grid(reduce_grid("reduce_chunks"))["text"],
        split_kv=extent.c_expr(split_kv("bc"), _c_split_dim), split_count=extent.c_expr(SPLIT_COUNT, _c_split_dim),
        passes={i: [_c_pass(r, st) for st, _ in r.passes] for i, r in enumerate(rows) if r.passes},
        kernel_push={i: fields for i, r in enumerate(rows)
                     if (fields := [(name, extent.c_expr(e, _c_dim)) for name, e in r.recipe.kernel_push.items()])},
        extra_dims=extent.DIMS)


def _c_dim(name: str, cast: str = "") -> str:
    if name in ENTRY_VALUES:
        return f"{cast}e->{name}"
    return f"{cast}pc->{name}" if name in _PUSH_NAMES else f"{cast}d->{name}"


def _c_split_dim(name: str) -> str:
    """kgen_fa_splits' names: its n_kv argument and its local split_kv."""
    return {"split_kv": "kv", "n_kv": "n_kv"}.get(name) or _c_dim(name)


def _c_pass(r: Row, st: Step) -> dict:
    nbytes = next(b.nbytes for b in r.recipe.scratch if b.name == st.binds[1][1])
    return {"groups": [extent.c_expr(e, _c_dim) for e in st.grid],
            "bytes": extent.c_expr(nbytes, lambda n: _c_dim(n, "(uint64_t)"), "ull")}


def _uuid_bytes(device: DeviceIdentity) -> bytes:
    try:
        raw = bytes.fromhex(device.pipeline_cache_uuid)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise ExportError(f"device {device.name or device.key}: pipeline_cache_uuid "
                          f"{device.pipeline_cache_uuid!r} is not 32 hex digits")
    return raw


def _write_header(rows: list, out: Path) -> list[Path]:
    if _split(rows)[1]:
        raise ExportError("--paged: the c-header format carries dense entries only; paged entries are in "
                          "the json and c formats")
    (out / HEADER_FILE).write_text(render_header(rows))
    return [out / HEADER_FILE]


# --- c: the dispatcher ---------------------------------------------------------------------------
def _c_dims(name: str) -> str:
    return f"d->{name}"


def _c_binds(rec: Recipe, st: Step) -> str:
    """Per abi binding, the buffer a step binds: a caller buffer (CALLER_BUFFERS index), a scratch
    buffer (after them) or none."""
    index = {name: i for i, name in enumerate(CALLER_BUFFERS)}
    index |= {b.name: len(CALLER_BUFFERS) + i for i, b in enumerate(rec.scratch)}
    bound = {abi.BINDING[b]: index[buf] for b, buf in st.binds}
    return ", ".join(f"{bound[b.index]}u" if b.index in bound else "KGEN_FA_UNBOUND_" for b in abi.BINDINGS)


def _c_recipe(rec: Recipe) -> dict:
    """A recipe's formulas as C over a kgen_fa_dims_ `d`: grids, scratch sizes, kernel_push, binds."""
    return {"grids": [[extent.c_expr(e, _c_dims, "ull") for e in st.grid] for st in rec.steps],
            "scratch": [extent.c_expr(b.nbytes, _c_dims, "ull") for b in rec.scratch],
            "kernel_push": [(name, extent.c_expr(e, _c_dims, "ull")) for name, e in rec.kernel_push.items()],
            "binds": [_c_binds(rec, st) for st in rec.steps]}


def _bucket_mask(buckets) -> int:
    bits = [i * len(NKV_BUCKETS) + j for i, j in buckets]
    assert max(bits) < 32, "the (n_q, n_kv) bucket grid outgrew a uint32_t mask"
    return sum(1 << b for b in set(bits))


def render_c(rows: list) -> tuple[str, str]:
    """kgen_fa.h and kgen_fa.c: the dispatcher API and its implementation with the table (dense and
    paged rows)."""
    mask_to_f16 = Shader("mask_to_f16", compile_source(render_mask_to_f16(), name="mask_to_f16").spirv,
                         MASK_TO_F16_WG, None)
    shaders = [*(s for s in _shaders(rows) if s.sha256 != mask_to_f16.sha256), mask_to_f16]
    dt = dispatch_table(rows)
    rows, paged = _split(rows)
    pairs = list(zip(rows, dt["entries"]))
    devices = list({r.device.key: r.device for r in (*rows, *paged)}.values())
    call_features = [f for f in FEATURES if f != "split_k"]
    dense_c = [_c_recipe(r.recipe) for r in rows]
    uint_push = [f.name for f in abi.PUSH_FIELDS if f.glsl == "uint"]
    c_split = lambda name: {"split_kv": "split_kv", "n_kv": "pc->n_kv"}.get(name) or f"e->{name}"
    paged_split = lambda name: {"split_kv": "split_kv", "n_kv": "capacity", "splits": "splits"}.get(name) or f"e->{name}"
    env = _environment()
    values = dict(
        **_c_values([*rows, *paged], shaders), table=dt, pairs=pairs, shaders=shaders, devices=devices,
        call_features=call_features, call_mask=" | ".join(f"KGEN_FA_FEATURE_{f.upper()}" for f in call_features),
        paged_mask=" | ".join(f"KGEN_FA_FEATURE_{f.upper()}" for f in PAGED_FEATURES),
        shader_index={s.sha256: i for i, s in enumerate(shaders)}, mask_to_f16_shader=len(shaders) - 1,
        mask_to_f16_per_group=MASK_TO_F16_WG * MASK_TO_F16_PER_THREAD,
        device_index={d.key: i for i, d in enumerate(devices)},
        twin_uri=[r.variant.replace(aligned=not r.variant.aligned).uri for r in rows],
        caller_buffers=CALLER_BUFFERS, buffer_members=C_BUFFER_MEMBERS,
        member_of=[C_BUFFER_MEMBERS.index(b) for b in CALLER_BUFFERS],
        push_words=abi.PUSH_BYTES // 4, binding=abi.BINDING,
        dim_names=uint_push + list(extent.DIMS) + list(ENTRY_VALUES), push_dim_names=uint_push,
        c_grids=[c["grids"] for c in dense_c], c_scratch=[c["scratch"] for c in dense_c],
        c_kernel_push=[c["kernel_push"] for c in dense_c], c_binds=[c["binds"] for c in dense_c],
        zero_once=[next((i for i, b in enumerate(r.recipe.scratch) if b.zero_once), -1) for r in rows],
        max_steps=max(len(r.recipe.steps) for r in (*rows, *paged)),
        max_scratch=max(1, max(len(r.recipe.scratch) for r in (*rows, *paged))),
        c_split_kv=extent.c_expr(split_kv("bc"), c_split), c_split_count=extent.c_expr(SPLIT_COUNT, c_split),
        bucket_names=[name for name, _, _ in BUCKETS],
        head_min=HEAD_MIN, head_max=HEAD_MAX, head_step=HEAD_STEP, alibi_max_bias_max=f"{ALIBI_MAX_BIAS_MAX:.1f}",
        paged_pairs=list(zip(paged, dt["paged_entries"])), paged_recipes=[_c_recipe(r.recipe) for r in paged],
        paged_buckets=[_bucket_mask(r.buckets) for r in paged], nq_edges=len(NQ_BUCKETS) - 1,
        nkv_edges=len(NKV_BUCKETS) - 1, nkv_count=len(NKV_BUCKETS), paged_features=PAGED_FEATURES,
        page_step=BLOCK_SIZE_STEP, page_max=BLOCK_SIZE_MAX, min_split_tiles=MIN_SPLIT_TILES,
        target_workgroups=TARGET_WORKGROUPS,
        p_split_kv=extent.c_expr(split_kv("bc"), paged_split, "ull"),
        p_split_count=extent.c_expr(SPLIT_COUNT, paged_split, "ull"))
    return (env.get_template("kgen_fa_api.h.j2").render(**values), env.get_template("kgen_fa.c.j2").render(**values))


def _write_c(rows: list, out: Path) -> list[Path]:
    header, source = render_c(rows)
    (out / API_HEADER).write_text(header)
    (out / API_SOURCE).write_text(source)
    return [out / API_HEADER, out / API_SOURCE]


WRITERS = {"json": _write_json, "c-header": _write_header, "c": _write_c}


# --- publishing ----------------------------------------------------------------------------------
def export(entries, out_dir, fmt: str, paged: list[PagedRow] = ()) -> list[Path]:
    """Write `entries` ((DeviceIdentity, BuildIdentity, Winner) tuples) and the `paged` rows
    (paged_rows()) to `out_dir` in `fmt`.

    Everything is compiled and written into a temporary folder beside `out_dir` first, then moved
    in: a failure leaves `out_dir` as it was (absent if it was). Into an existing folder, the files
    of this format (and the whole `spirv/` folder, for json) are replaced; others are left alone.
    Returns the paths written, under `out_dir`."""
    if fmt not in WRITERS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    skipped: list = []
    rows = collect(entries, skipped)
    for w, reason in skipped:
        print(f"kgen export: left out class {w.problem.key}: {reason}", file=sys.stderr)
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        written = WRITERS[fmt]([*rows, *paged], stage)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / p.relative_to(stage) for p in written]


def _publish(stage: Path, out: Path) -> None:
    if not out.exists():
        os.rename(stage, out)
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    for item in sorted(stage.iterdir()):
        target = out / item.name
        if item.is_dir() and target.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, target)
