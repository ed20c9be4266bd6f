"""The device's measured ceilings: copy bandwidth and peak matrix throughput per code path.

`kgen roofline` measures them once per device identity through Vulkan and caches the record, so
that a report can show a kernel's speed as a fraction of what this device reached:

    ceil = ceilings(device)                       # cached, or measured and cached
    ceil.fraction(flops, nbytes, seconds, PathKind.COOPMAT2)

Every measurement is a kernel of templates/roofline/ (kernels() names them) timed with GPU
timestamps: one warm-up launch, then the work (loop trips, or copy dispatches per sequence) is
scaled until one launch lasts at least Budget.target_s, it runs Budget.warm_s longer so the GPU's
clocks come up, and the median of Budget.repeats launches counts. A path with several kernel shapes reports the fastest. The matrix kernels keep their
operands in registers and store their accumulators only when a push constant is 1, which it
never is: the compiler cannot drop the work, and no memory traffic competes with it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import abi, knobs
from ..caps import Caps
from ..compile import create_with
from ..errors import CompileError, KgenError, UnsupportedVariant
from ..identity import DeviceIdentity
from ..render import environment
from ..variant import PathKind

CACHE_FORMAT = 1
MATRIX_KEYS = ("scalar_f32", "scalar_f16", "coopmat1", "coopmat2")

# The roofline kernels borrow the shared push block (kgen/abi.py): role -> abi field. The
# templates read the roles as PC_<ROLE> (templates/roofline/common.glsl).
PUSH_ROLES = {
    "count": "n_kv",        # copy: uvec4 elements
    "iters": "n_q",         # matrix kernels: loop trips
    "guard": "split_count",  # 1 would store the results; always 0
    "x": "scale",           # FMA multiplier
    "y": "softcap",         # FMA addend
}
FMA_X, FMA_Y = 0.5, 0.5  # a = a * x + y converges to 1: no overflow, no denormals, in f16 too

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """How much work one measurement does on a kind of device."""

    copy_bytes: int   # each of the two copy buffers (clamped to the device's limits)
    target_s: float   # one timed launch lasts at least this long
    repeats: int      # timed launches; their median counts
    groups: int       # workgroups of the matrix kernels (many waves: a small tail)
    warm_s: float     # GPU seconds of the sized launch before timing: an idle GPU's clocks are low


# warm_s: a roofline measured first thing after idle read 1.67 TB/s and 398 TFLOPS on the H100
# that gives 2.98 TB/s and 652 TFLOPS warm.
GPU_BUDGET = Budget(copy_bytes=1 << 30, target_s=0.010, repeats=7, groups=65535, warm_s=0.5)
CPU_BUDGET = Budget(copy_bytes=64 << 20, target_s=0.020, repeats=5, groups=32, warm_s=0.0)


def budget_for(caps: Caps) -> Budget:
    return CPU_BUDGET if caps.device_type == "cpu" else GPU_BUDGET


# --- the record --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roofline:
    """Measured ceilings of one device identity. copy_gbps counts bytes read + written (1e9 B/s);
    matrix_tflops maps keys of MATRIX_KEYS to 1e12 FLOP/s (a path the device lacks is absent)."""

    device_key: str
    device_name: str
    copy_gbps: float
    matrix_tflops: dict[str, float]
    measured_at: str  # ISO 8601, UTC

    def peak_tflops(self, path: PathKind | str, *, acc: int = 32) -> float | None:
        """The ceiling for a code path (scalar: scalar_f32, or scalar_f16 with acc=16); None when
        it was not measured."""
        path = PathKind.parse(path)
        if path is PathKind.SCALAR:
            key = "scalar_f16" if acc == 16 else "scalar_f32"
        else:
            key = path.value
        return self.matrix_tflops.get(key)

    def fraction(self, flops: float, nbytes: float, seconds: float, path: PathKind | str, *,
                 acc: int = 32) -> float:
        """Achieved / attainable, where attainable = min(peak FLOP/s, flops / nbytes * copy
        bandwidth) (the roofline model). Equivalently: the time the ceilings allow,
        max(flops / peak, nbytes / bandwidth), over the time taken; flops or nbytes may be 0."""
        if not seconds > 0 or flops < 0 or nbytes < 0:
            raise ValueError(f"fraction: need seconds > 0 and flops, nbytes >= 0; got "
                             f"flops={flops}, nbytes={nbytes}, seconds={seconds}")
        bound = nbytes / (self.copy_gbps * 1e9)
        if flops > 0:
            peak = self.peak_tflops(path, acc=acc)
            if peak is None:
                raise ValueError(f"fraction: no {PathKind.parse(path)} ceiling measured on "
                                 f"{self.device_name}; measured: {sorted(self.matrix_tflops)}")
            bound = max(bound, flops / (peak * 1e12))
        return bound / seconds

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "matrix_tflops": dict(self.matrix_tflops)}

    @classmethod
    def from_dict(cls, data: dict) -> "Roofline":
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ValueError(f"roofline record: want exactly the fields {names}")
        tflops = data["matrix_tflops"]
        if not isinstance(tflops, dict) or set(tflops) - set(MATRIX_KEYS):
            raise ValueError(f"roofline record: matrix_tflops keys must be among {MATRIX_KEYS}")
        values = [data["copy_gbps"], *tflops.values()]
        if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in values):
            raise ValueError("roofline record: ceilings must be positive finite numbers")
        return cls(device_key=str(data["device_key"]), device_name=str(data["device_name"]),
                   copy_gbps=float(data["copy_gbps"]),
                   matrix_tflops={k: float(v) for k, v in tflops.items()},
                   measured_at=str(data["measured_at"]))


# --- the kernels -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    """One matrix-throughput kernel: its source and what one loop trip of one workgroup does."""

    key: str                 # the matrix_tflops entry it measures
    label: str               # shown in progress lines
    source: str
    wg: int
    flops_per_trip: int      # per workgroup and loop trip
    operand_halves: int      # f16 operands loaded once (binding q)
    out_floats: int          # the guarded store's extent (binding out)
    subgroup: int | None     # required subgroup size, or None
    full_subgroups: bool


COPY_WG, COPY_UNROLL = 256, 4
FMA_WG, FMA_CHAINS, FMA_UNROLL = 256, 8, 4
COOPMAT1_SUBGROUPS = 4                      # subgroups per workgroup
COOPMAT1_BLOCKS = ((2, 4), (4, 4))          # (A, B) operands per subgroup: A * B accumulators
COOPMAT1_SHAPE = (16, 16, 16)               # preferred when the device lists it
# (m, n, k, threads, accumulators) of the workgroup-scope tiles.
COOPMAT2_TILES = ((64, 64, 32, 128, 1), (128, 128, 32, 256, 1), (64, 64, 32, 128, 2))


def _render(template: str, **params: Any) -> str:
    return environment().get_template(f"roofline/{template}").render(
        push_fields=abi.PUSH_FIELDS, binding=abi.BINDING, roles=PUSH_ROLES, **params)


def copy_source() -> str:
    return _render("copy.comp.j2", wg=COPY_WG, unroll=COPY_UNROLL)


def _fma(key: str, scalar: str) -> Bench:
    vec = "vec4" if scalar == "float" else "f16vec4"
    source = _render("fma.comp.j2", scalar=scalar, vec=vec, wg=FMA_WG, chains=FMA_CHAINS, unroll=FMA_UNROLL)
    return Bench(key, f"{key} ({vec} FMA, {FMA_CHAINS} chains per thread)", source, FMA_WG,
                 flops_per_trip=2 * 4 * FMA_CHAINS * FMA_UNROLL * FMA_WG, operand_halves=0,
                 out_floats=FMA_WG, subgroup=None, full_subgroups=False)


def coopmat1_shape(caps: Caps) -> tuple[int, int, int] | None:
    """A subgroup-scope f16 x f16 -> f32 shape the device lists: 16x16x16 if there, else the first."""
    shapes = [(s.m, s.n, s.k) for s in caps.coopmat_shapes
              if s.scope == "subgroup" and s.a_type == s.b_type == "f16"
              and s.c_type == s.result_type == "f32" and not s.saturating]
    return COOPMAT1_SHAPE if COOPMAT1_SHAPE in shapes else (shapes[0] if shapes else None)


def _subgroup_options(caps: Caps) -> dict:
    return {"subgroup": caps.subgroup_size if caps.subgroup_size_control else None,
            "full_subgroups": caps.compute_full_subgroups}


def _coopmat1(caps: Caps, shape: tuple[int, int, int], na: int, nb: int) -> Bench:
    m, n, k = shape
    wg = COOPMAT1_SUBGROUPS * caps.subgroup_size
    source = _render("coopmat1.comp.j2", m=m, n=n, k=k, na=na, nb=nb, wg=wg)
    return Bench("coopmat1", f"coopmat1 ({m}x{n}x{k}, {na}x{nb} accumulators per subgroup)", source, wg,
                 flops_per_trip=COOPMAT1_SUBGROUPS * na * nb * 2 * m * n * k,
                 operand_halves=na * m * k + nb * k * n, out_floats=na * nb * m * n,
                 **_subgroup_options(caps))


def _coopmat2(caps: Caps, m: int, n: int, k: int, wg: int, nacc: int) -> Bench:
    source = _render("coopmat2.comp.j2", m=m, n=n, k=k, wg=wg, nacc=nacc)
    return Bench("coopmat2", f"coopmat2 ({m}x{n}x{k}, {wg} threads, {nacc} accumulator(s))", source, wg,
                 flops_per_trip=nacc * 2 * m * n * k, operand_halves=m * k + k * n,
                 out_floats=nacc * m * n, **_subgroup_options(caps))


def unavailable(caps: Caps) -> dict[str, str]:
    """matrix_tflops keys this device cannot measure, with the reason."""
    out = {}
    if not caps.shader_float16:
        out["scalar_f16"] = "no shaderFloat16"
    if not caps.has_coopmat1 or coopmat1_shape(caps) is None or not caps.storage_buffer_16bit:
        out["coopmat1"] = "no VK_KHR_cooperative_matrix f16 x f16 -> f32 subgroup shape with 16-bit storage"
    if not caps.has_coopmat2 or not caps.storage_buffer_16bit:
        out["coopmat2"] = "no VK_NV_cooperative_matrix2 with all its features and 16-bit storage"
    return out


def kernels(caps: Caps) -> list[Bench]:
    """The matrix-throughput kernels for this device, grouped by key in MATRIX_KEYS order."""
    skip = unavailable(caps)
    out = [_fma("scalar_f32", "float")]
    if "scalar_f16" not in skip:
        out.append(_fma("scalar_f16", "float16_t"))
    if "coopmat1" not in skip:
        out += [_coopmat1(caps, coopmat1_shape(caps), na, nb) for na, nb in COOPMAT1_BLOCKS]
    if "coopmat2" not in skip:
        out += [_coopmat2(caps, *tile) for tile in COOPMAT2_TILES
                if not caps.coopmat2_max_workgroup_size or tile[3] <= caps.coopmat2_max_workgroup_size]
    return out


# --- timing --------------------------------------------------------------------------------------
def _push(**roles: float) -> bytes:
    values = {f.name: 0.0 if f.glsl == "float" else 0 for f in abi.PUSH_FIELDS}
    values.update({PUSH_ROLES[role]: value for role, value in roles.items()})
    return abi.pack(**values)


def _scaled_median(launch: Callable[[int], float], budget: Budget, *, most: int) -> tuple[int, float]:
    """(scale, median seconds): launch(scale) runs scale units of work and returns GPU seconds.
    One warm-up launch, then the scale grows until a launch lasts budget.target_s, then it runs
    for budget.warm_s more before the timed launches."""
    scale = 1
    launch(scale)
    seconds = launch(scale)
    while seconds < budget.target_s and scale < most:
        want = math.ceil(scale * 1.2 * budget.target_s / max(seconds, 1e-9))
        scale = min(most, max(2 * scale, min(want, 1000 * scale)))
        seconds = launch(scale)
    warm = seconds
    while warm < budget.warm_s:
        warm += launch(scale)
    return scale, statistics.median([launch(scale) for _ in range(budget.repeats)])


def _gpu_seconds(us: float | None, what: str) -> float:
    if us is None:
        raise KgenError(f"roofline {what}: the device's compute queue has no timestamps to time it with")
    return us * 1e-6


def _random_halves(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1.0, 1.0, n).astype(np.float16)


def _copy_buffers(device: Any, nbytes: int) -> tuple[Any, Any]:
    """Two buffers of nbytes, halving nbytes while the device cannot allocate them."""
    from ..runtime import VulkanError
    while True:
        src = dst = None
        try:
            src, dst = device.buffer(nbytes), device.buffer(nbytes)
            return src, dst
        except VulkanError:
            for buf in (src, dst):
                if buf is not None:
                    buf.close()
            if nbytes <= 1 << 20:
                raise
            nbytes //= 2


def measure_copy(device: Any, budget: Budget | None = None) -> float:
    """Copy bandwidth in GB/s (bytes read + written) over two large device buffers."""
    caps = device.caps
    budget = budget or budget_for(caps)
    nbytes = min(budget.copy_bytes, caps.max_storage_buffer_range) // 16 * 16
    src, dst = _copy_buffers(device, nbytes)
    try:
        block = np.random.default_rng(0).integers(0, 2**32, min(src.nbytes, 16 << 20) // 4, dtype=np.uint32)
        for offset in range(0, src.nbytes, block.nbytes):
            src.write(block[:(src.nbytes - offset) // 4], offset)
        n = src.nbytes // 16
        kernel = create_with(copy_source(), functools.partial(device.pipeline, name="roofline copy"),
                             name="roofline_copy")
        groups = (min(caps.max_workgroup_count[0], math.ceil(n / (COPY_WG * COPY_UNROLL))), 1, 1)
        step = (kernel, {abi.BINDING["q"]: src, abi.BINDING["out"]: dst}, _push(count=n), groups)

        def launch(dispatches: int) -> float:
            with device.sequence([step] * dispatches) as seq:
                return _gpu_seconds(sum(seq.run()), "copy")

        scale, seconds = _scaled_median(launch, budget, most=256)
        return 2 * src.nbytes * scale / seconds / 1e9
    finally:
        src.close()
        dst.close()


def measure_bench(device: Any, bench: Bench, budget: Budget | None = None) -> float:
    """TFLOPS of one matrix kernel."""
    budget = budget or budget_for(device.caps)
    kernel = create_with(bench.source, functools.partial(
        device.pipeline, name=f"roofline {bench.label}", required_subgroup_size=bench.subgroup,
        full_subgroups=bench.full_subgroups), name=f"roofline_{bench.key}")
    groups = (min(budget.groups, device.caps.max_workgroup_count[0]), 1, 1)
    buffers = []
    try:
        buffers.append(device.buffer(4 * bench.out_floats))
        binds = {abi.BINDING["out"]: buffers[0]}
        if bench.operand_halves:
            buffers.append(device.buffer(2 * bench.operand_halves))
            buffers[-1].write(_random_halves(bench.operand_halves))
            binds[abi.BINDING["q"]] = buffers[-1]

        def launch(iters: int) -> float:
            us = kernel(binds, _push(iters=iters, x=FMA_X, y=FMA_Y), groups, timed=True)
            return _gpu_seconds(us, bench.label)

        iters, seconds = _scaled_median(launch, budget, most=1 << 24)
        return bench.flops_per_trip * groups[0] * iters / seconds / 1e12
    finally:
        for buf in buffers:
            buf.close()


def measure(device: Any, progress: Progress | None = None) -> Roofline:
    """Measure every ceiling of an open runtime Device (a few seconds on a GPU)."""
    from ..runtime import VulkanError
    say = progress or (lambda message: None)
    caps = device.caps
    copy_gbps = measure_copy(device)
    say(f"copy: {copy_gbps:.1f} GB/s")
    tflops: dict[str, float] = {}
    for bench in kernels(caps):
        try:
            value = measure_bench(device, bench)
        except (CompileError, UnsupportedVariant, VulkanError) as exc:
            say(f"{bench.label}: failed, not counted: {exc}")  # the path's other shapes still count
            continue
        say(f"{bench.label}: {value:.3f} TFLOPS")
        tflops[bench.key] = max(value, tflops.get(bench.key, 0.0))
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Roofline(device_key=DeviceIdentity.of(caps).key, device_name=caps.name, copy_gbps=copy_gbps,
                    matrix_tflops=tflops, measured_at=measured_at)


# --- the cache -----------------------------------------------------------------------------------
def cache_path(device_key: str) -> Path:
    """Where a device's record lives: next to the SPIR-V cache, under roofline/."""
    return knobs.cache_dir().parent / "roofline" / f"{device_key}.json"


def load(device_key: str) -> Roofline | None:
    """The cached record, or None when missing, corrupt, of another format or another device."""
    try:
        data = json.loads(cache_path(device_key).read_text())
        if data.pop("format") != CACHE_FORMAT:
            return None
        record = Roofline.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record if record.device_key == device_key else None


def save(record: Roofline) -> Path:
    path = cache_path(record.device_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, **record.to_dict()}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ceilings(device: Any, refresh: bool = False, progress: Progress | None = None) -> Roofline:
    """The device's cached record, or (when missing, corrupt or refresh) a new measurement, cached."""
    key = DeviceIdentity.of(device.caps).key
    if not refresh and (record := load(key)) is not None:
        return record
    record = measure(device, progress)
    save(record)
    return record
