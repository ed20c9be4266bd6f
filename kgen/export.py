"""Export tuning winners for embedding: their SPIR-V plus a dispatch table a C/C++ engine can use.

Two formats: `json` (`spirv/<name>.spv` files and `kgen_dispatch.json`) and `c-header` (one
self-contained `kgen_fa.h`). Both are written from the same rows, and every interface number in
them (push-constant layout, bindings, KV types, features, bucket edges, workgroup grid) comes from
the module that owns it (`abi`, `types`, `variant`, `problem`), never restated here by hand.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import abi, extent
from .compile import compile_source, compile_variant
from .errors import KgenError
from .prepasses import PrePass, kernel_push, passes_before
from .paths.shared import FUSED_STATS_SLOTS
from .identity import BuildIdentity, DeviceIdentity
from .problem import GQA_BUCKETS, NKV_BUCKETS, NQ_BUCKETS, bucket_range
from .render import REDUCE_WG, reduce_chunks, render_split_k_reduce
from .tunedb import Winner
from .types import KV_TYPES
from .variant import FEATURES, Variant

FORMAT_NAME = "kgen-fa-dispatch"
FORMAT_VERSION = 5  # 2: a grid axis has a scale (the reduce pass's column chunks); 3: fused_reduce entries;
                    # 4: passes before the kernel (kgen.prepasses), formulas as kgen.extent expressions;
                    # 5: builds are kgen version + compiler (no template hash); entries carry the
                    # kernel digest their timing was taken with (kgen.identity.kernel_digest)
FORMATS = ("json", "c-header")
JSON_FILE, HEADER_FILE, SPIRV_DIR = "kgen_dispatch.json", "kgen_fa.h", "spirv"
SPIRV_MAGIC = 0x07230203
TEMPLATES = Path(__file__).resolve().parent / "export_templates"

# C type and size of each abi.PushField.glsl type.
PUSH_TYPES = {"uint": ("uint32_t", 4), "float": ("float", 4)}
# Element type of each abi binding ("k_type"/"v_type": the entry's KV types).
BINDING_ELEMENTS = {"q": "f32", "k": "k_type", "v": "v_type", "mask": "f16", "sinks": "f32",
                    "out": "f32", "stats": "vec2<f32> (max, sum)", "reduced": "f32",
                    "mask_tiles": "u32", "split_arrivals": "u32"}
assert set(BINDING_ELEMENTS) == set(abi.BINDING), "a new abi binding needs its element type here"
# Bucketed problem dimensions: (name in the class key and entries, edges, ProblemClass field).
BUCKETS = (("n_q", NQ_BUCKETS, "nq_bucket"), ("n_kv", NKV_BUCKETS, "nkv_bucket"),
           ("gqa", GQA_BUCKETS, "gqa_bucket"))
# Workgroup grid per axis: ceil(push[field] / divide_by) * push[times] * scale; "br" means the
# entry's br, "chunks" its reduce shader's column chunks (kgen.render.reduce_chunks).
# The FA pass (templates/README.md, "Grid") and the split-k reduce pass (kgen.render.reduce_groups).
FA_GRID = (("n_q", "br", None, 1), ("n_head_q", 1, None, 1), ("n_batch", 1, "split_count", 1))
REDUCE_GRID = (("n_q", 1, None, 1), ("n_head_q", 1, None, "chunks"), ("n_batch", 1, None, 1))
_PUSH_NAMES = {f.name for f in abi.PUSH_FIELDS}
assert all(f in _PUSH_NAMES and t in _PUSH_NAMES | {None} for f, _, t, _ in FA_GRID + REDUCE_GRID)

NOTES = (
    "Pick an entry: same device identity (vendorID, deviceID, driverID, driverVersion, "
    "pipelineCacheUUID), head sizes, KV types, features (without split_k) and acc; prefer the "
    "entry whose n_q/n_kv/gqa buckets hold the call, else the nearest buckets; an aligned entry "
    "needs n_kv % bc == 0. No entry: use your own default kernel.",
    "Pipeline: one descriptor set, the storage buffers of `bindings`, and one push-constant "
    "range of push_constants.bytes bytes (compute stage). Create the FA pipeline with "
    "VkPipelineShaderStageRequiredSubgroupSizeCreateInfo(required_subgroup_size) and, where the "
    "device has computeFullSubgroups, VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT. "
    "The reduce pass needs neither.",
    "Push constants: fill every field (see each field's doc); split_kv = "
    "ceil(ceil(n_kv / splits) / bc) * bc and split_count = ceil(n_kv / split_kv) (both also for "
    "splits == 1). Unused inputs (mask, sinks, stats) are bound to any small dummy buffer.",
    "Dispatch the FA pass with `grid`. With a reduce shader (splits > 1): `out` holds "
    "split_count * B * Hq * Nq * Dv partial f32 values and `stats` split_count * B * Hq * Nq "
    "vec2s; put a compute-to-compute barrier after the FA pass, then dispatch the reduce pass "
    "with `reduce.grid` and the same bindings and push constants; the result is in `reduced`. "
    "Without one, the result is in `out`.",
    "fused_reduce entries have no reduce shader: the last split of each row tile to finish "
    "combines them all in the FA pass. Bind `out` and `stats` as for a reduce shader, `reduced` "
    "(B * Hq * Nq * Dv f32: the result, also with one split) and `split_arrivals` (B * Hq * Nq "
    "u32). Zero `split_arrivals` once when you create it: every dispatch leaves it zero again, so "
    "two dispatches must not use one buffer at the same time.",
    "passes_before (may be empty): run each before the FA pass, side by side (no barrier between "
    "them), then one compute-to-compute barrier. A pass binds the caller's buffer at `reads` and "
    "its own buffer `buffer` (buffer_bytes bytes, allocated by you, kept between calls) at "
    "`writes`, nothing else; it takes the caller's push constants when push is \"caller\", else "
    "the kernel's; no required subgroup size. The FA pass (and the reduce pass) then bind each "
    "pass's buffer at its kernel_binding instead of the caller's buffer there. Run them at every "
    "call: they read Q, the mask or the cache as they are now.",
    "kernel_push (may be empty): push-constant fields the FA pass and the reduce pass take "
    "instead of the caller's values (the f16 copy's layout after a kv_to_f16 pass).",
    "Formulas (grids and buffer_bytes of passes_before, kernel_push values) are expressions: an "
    "int, a dimension name (a push-constant field, or one of `dims`), or [op, operand...] with op "
    "\"mul\" (the product) or \"ceil_div\" (ceil(a / b)). Each comes with its text.",
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
    shader: Shader
    reduce: Shader | None
    passes: tuple[tuple[PrePass, Shader], ...] = ()   # run before the kernel, in this order


def eval_grid(grid: dict, push: dict) -> tuple[int, int, int]:
    """Workgroup counts from a grid as written to the JSON and push-constant values by name."""
    return tuple(math.ceil(push[a["field"]] / a["divide_by"]) * (push[a["times"]] if a["times"] else 1)
                 * a["scale"] for a in (grid["x"], grid["y"], grid["z"]))


# --- rows: winners -> compiled, deduplicated shaders ------------------------------------------------
def collect(entries) -> list[Row]:
    """Compile every winner's shaders once; rows sorted by (device key, class key)."""
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

    rows = []
    for device, build, w in entries:
        v = _checked_variant(w)
        if v.fused_reduce and w.splits * v.br > FUSED_STATS_SLOTS:
            raise ExportError(f"winner {w.variant} with {w.splits} splits: its fused reduce combines at most "
                              f"{FUSED_STATS_SLOTS} (row, split) pairs per row tile, and br {v.br} x {w.splits} "
                              "splits can exceed that on a larger Nq of the bucket")
        fa = shader(("fa", v.uri), lambda: Shader(
            v.uri, compile_variant(v).spirv, v.wg, v.subgroup))
        red = None
        if w.splits > 1 and not v.fused_reduce:
            name = f"fa_reduce_v{v.head_v}{'_sinks' if v.sinks else ''}"
            red = shader(("reduce", name), lambda: Shader(
                name, compile_source(render_split_k_reduce(v.head_v, v.sinks), name=name).spirv,
                REDUCE_WG, None))
        passes = tuple((p, shader(("pass", p.name), functools.partial(_pass_shader, p))) for p in passes_before(v))
        rows.append(Row(device, build, w, v, fa, red, passes))
    return rows


def _pass_shader(p: PrePass) -> Shader:
    return Shader(p.name, p.spirv(), p.local_size_x, None)


def _checked_variant(w: Winner) -> Variant:
    v, p = Variant.parse(w.variant), w.problem
    want = (p.head_k, p.head_v, p.k_type, p.v_type, p.acc, p.features + (("split_k",) if w.splits > 1 else ()))
    have = (v.head_k, v.head_v, v.k_type, v.v_type, v.acc, v.features)
    if want != have or w.splits < 1 or (v.v_in_k and not p.v_in_k):
        raise ExportError(f"winner {w.variant} (splits {w.splits}) does not compute class {p.key}: "
                          f"(head_k, head_v, k_type, v_type, acc, features) {have}, the class needs {want}"
                          + ("; it reads V from K's tile (v_in_k), the class's V is its own" if v.v_in_k and not p.v_in_k else ""))
    return v


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


def grid(axes: tuple, br: "int | str", chunks: "int | str" = 1) -> dict:
    names = ("x", "y", "z")
    out = {n: {"field": f, "divide_by": br if d == "br" else d, "times": t,
               "scale": chunks if s == "chunks" else s} for n, (f, d, t, s) in zip(names, axes)}
    out["text"] = ", ".join(f"{n} = {_grid_text(out[n])}" for n in names)
    return out


def _grid_text(a: dict) -> str:
    text = a["field"] if a["divide_by"] == 1 else f"ceil({a['field']} / {a['divide_by']})"
    text = f"{text} * {a['times']}" if a["times"] else text
    return text if a["scale"] == 1 else f"{text} * {a['scale']}"


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
def dispatch_table(rows: list[Row]) -> dict:
    def shader(s: Shader | None, axes: tuple, br: int, chunks: int = 1) -> dict | None:
        return s and {"shader": s.name, "spv": s.file, "sha256": s.sha256, "bytes": len(s.spirv),
                      "local_size_x": s.local_size_x, "required_subgroup_size": s.required_subgroup_size,
                      "grid": grid(axes, br, chunks)}

    def entry(r: Row) -> dict:
        p, v, w = r.winner.problem, r.variant, r.winner
        return {"device": r.device.key, "tuned_build": r.build.key, "class": p.key,
                "head_k": p.head_k, "head_v": p.head_v, "k_type": p.k_type.label, "v_type": p.v_type.label,
                "features": list(p.features), "acc": p.acc, **_buckets(p),
                "variant": v.uri, **shader(r.shader, FA_GRID, v.br), "br": v.br, "bc": v.bc,
                "splits": w.splits, "aligned": v.aligned, "fused_reduce": v.fused_reduce, "median_us": w.median_us,
                "kernel": w.kernel,
                "reduce": shader(r.reduce, REDUCE_GRID, 1, reduce_chunks(v.head_v)),
                "passes_before": [pass_entry(p, s) for p, s in r.passes],
                "kernel_push": {name: formula(e) for name, e in kernel_push(v).items()}}

    def pass_entry(p: PrePass, s: Shader) -> dict:
        return {"shader": s.name, "spv": s.file, "sha256": s.sha256, "bytes": len(s.spirv),
                "local_size_x": s.local_size_x, "reads": p.reads, "writes": p.writes, "buffer": p.buffer,
                "buffer_bytes": formula(p.nbytes), "kernel_binding": p.kernel_binding,
                "push": "caller" if p.caller_push else "kernel",
                "grid": {**{axis: formula(e) for axis, e in zip("xyz", p.grid)},
                         "text": ", ".join(f"{axis} = {extent.text(e)}" for axis, e in zip("xyz", p.grid))}}

    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "build": _identity(BuildIdentity.current()),
        "tuned_builds": _unique(_identity(r.build) for r in rows),
        "devices": _unique(_identity(r.device) for r in rows),
        "push_constants": {"bytes": abi.PUSH_BYTES, "fields": push_layout()},
        "bindings": bindings(),
        "kv_types": [{"name": t.label, "block_size": t.block_size, "block_bytes": t.block_bytes} for t in KV_TYPES],
        "features": list(FEATURES),
        "buckets": {name: list(edges) for name, edges, _ in BUCKETS},
        "split_values": "split_kv = ceil(ceil(n_kv / splits) / bc) * bc; split_count = ceil(n_kv / split_kv)",
        "grid_schema": "per axis: ceil(push[field] / divide_by) * (push[times] if times else 1) * scale",
        "dims": {**{f.name: "push constant" for f in abi.PUSH_FIELDS if f.glsl == "uint"}, **extent.DIMS},
        "notes": list(NOTES),
        "entries": [entry(r) for r in rows],
    }


def formula(e: extent.Expr) -> dict:
    return {"expr": extent.to_json(e), "text": extent.text(e)}


def _unique(items) -> list[dict]:
    return list({d["key"]: d for d in items}.values())


def _write_json(rows: list[Row], out: Path) -> list[Path]:
    (out / SPIRV_DIR).mkdir()
    written = []
    for s in _shaders(rows):
        (out / s.file).write_bytes(s.spirv)
        written.append(out / s.file)
    (out / JSON_FILE).write_text(json.dumps(dispatch_table(rows), indent=1) + "\n")
    return written + [out / JSON_FILE]


def _shaders(rows: list[Row]) -> list[Shader]:
    return list({s.sha256: s for r in rows for s in (r.shader, r.reduce, *(s for _, s in r.passes))
                 if s is not None}.values())


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


def _c_axis(axis: tuple, br: str, chunks: str = "1u") -> str:
    field, divide, times, scale = axis
    text = f"pc->{field}" if divide == 1 else f"(pc->{field} + {br} - 1u) / {br}"
    text = f"{text} * pc->{times}" if times else text
    return text if scale == 1 else f"{text} * {chunks if scale == 'chunks' else f'{scale}u'}"


def render_header(rows: list[Row]) -> str:
    shaders = _shaders(rows)
    dt = dispatch_table(rows)
    return _environment().get_template("kgen_fa.h.j2").render(
        table=dt, pairs=list(zip(rows, dt["entries"])), shaders=shaders,
        words={s.sha256: [", ".join(f"0x{w:08x}u" for w in s.words[i:i + 6]) for i in range(0, len(s.words), 6)]
               for s in shaders},
        c_name={s.sha256: f"kgen_fa_spv_{s.name}" for s in shaders},
        uuid={r.device.key: ", ".join(f"0x{b:02x}" for b in _uuid_bytes(r.device)) for r in rows},
        c_features=lambda names: " | ".join([f"KGEN_FA_FEATURE_{f.upper()}" for f in names] + ["0u"]),
        c_ranges=lambda e: ", ".join(_c_range(e[name]) for name, _, _ in BUCKETS),
        fa_grid=[_c_axis(a, "e->br") for a in FA_GRID], reduce_grid=[_c_axis(a, "1u", "e->reduce_chunks") for a in REDUCE_GRID],
        fa_grid_text=grid(FA_GRID, "br")["text"], reduce_grid_text=grid(REDUCE_GRID, 1, "chunks")["text"],
        buckets=[(name, [e for e in edges if e is not None]) for name, edges, _ in BUCKETS],
        kv_types=KV_TYPES, features=FEATURES, push_fields=push_layout(),
        passes={i: [_c_pass(p) for p, _ in r.passes] for i, r in enumerate(rows) if r.passes},
        kernel_push={i: fields for i, r in enumerate(rows)
                     if (fields := [(name, extent.c_expr(e, _c_dim)) for name, e in kernel_push(r.variant).items()])},
        extra_dims=extent.DIMS)


def _c_dim(name: str, cast: str = "") -> str:
    return f"{cast}pc->{name}" if name in _PUSH_NAMES else f"{cast}d->{name}"


def _c_pass(p: PrePass) -> dict:
    return {"groups": [extent.c_expr(e, _c_dim) for e in p.grid],
            "bytes": extent.c_expr(p.nbytes, lambda n: _c_dim(n, "(uint64_t)"), "ull")}


def _uuid_bytes(device: DeviceIdentity) -> bytes:
    try:
        raw = bytes.fromhex(device.pipeline_cache_uuid)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise ExportError(f"device {device.name or device.key}: pipeline_cache_uuid "
                          f"{device.pipeline_cache_uuid!r} is not 32 hex digits")
    return raw


def _write_header(rows: list[Row], out: Path) -> list[Path]:
    (out / HEADER_FILE).write_text(render_header(rows))
    return [out / HEADER_FILE]


WRITERS = {"json": _write_json, "c-header": _write_header}


# --- publishing ----------------------------------------------------------------------------------
def export(entries, out_dir, fmt: str) -> list[Path]:
    """Write `entries` ((DeviceIdentity, BuildIdentity, Winner) tuples) to `out_dir` in `fmt`.

    Everything is compiled and written into a temporary folder beside `out_dir` first, then moved
    in: a failure leaves `out_dir` as it was (absent if it was). Into an existing folder, the files
    of this format (and the whole `spirv/` folder, for json) are replaced; others are left alone.
    Returns the paths written, under `out_dir`."""
    if fmt not in WRITERS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    rows = collect(entries)
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        written = WRITERS[fmt](rows, stage)
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
