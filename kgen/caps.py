"""The device capability record: everything kgen needs to know about a Vulkan device.

A plain frozen dataclass so that tests, `kgen space --caps file.json` and the tuning DB can
build one by hand; `runtime.devices` fills it from a real device.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fragment:
    """One matrix's mapping as probed: rows[lane][i], cols[lane][i] of lane's element i.
    use "acc": the f32 m x n accumulator; use "a": the f16 m x k A operand."""

    m: int
    n: int
    k: int
    use: str
    rows: tuple[tuple[int, ...], ...]
    cols: tuple[tuple[int, ...], ...]

    @classmethod
    def from_dict(cls, d: dict) -> "Fragment":
        return cls(m=d["m"], n=d["n"], k=d["k"], use=d["use"],
                   rows=tuple(tuple(r) for r in d["rows"]), cols=tuple(tuple(c) for c in d["cols"]))


# VkComponentTypeKHR values (Vulkan spec, VK_KHR_cooperative_matrix) -> short names.
COMPONENT_TYPES = {
    0: "f16", 1: "f32", 2: "f64", 3: "s8", 4: "s16", 5: "s32", 6: "s64",
    7: "u8", 8: "u16", 9: "u32", 10: "u64",
    1000141000: "bf16",  # VK_COMPONENT_TYPE_BFLOAT16_KHR
    1000491002: "e4m3", 1000491003: "e5m2",  # float8 (VK_EXT_shader_float8)
}
# VkScopeKHR values.
SCOPES = {1: "device", 2: "workgroup", 3: "subgroup", 5: "queue_family"}


@dataclass(frozen=True)
class CoopMatShape:
    """One VkCooperativeMatrixPropertiesKHR entry: A(MxK) * B(KxN) + C(MxN) -> Result(MxN)."""

    m: int
    n: int
    k: int
    a_type: str
    b_type: str
    c_type: str
    result_type: str
    saturating: bool = False
    scope: str = "subgroup"


@dataclass(frozen=True)
class CoopMat2Features:
    """The seven VkPhysicalDeviceCooperativeMatrix2FeaturesNV bits, in spec order."""

    workgroup_scope: bool = False
    flexible_dimensions: bool = False
    reductions: bool = False
    conversions: bool = False
    per_element_operations: bool = False
    tensor_addressing: bool = False
    block_loads: bool = False

    def all(self) -> bool:
        return all(dataclasses.astuple(self))


@dataclass(frozen=True)
class Caps:
    """What one Vulkan physical device offers to kgen. Field names are the JSON keys."""

    name: str
    vendor_id: int
    device_id: int
    device_type: str  # "discrete" | "integrated" | "virtual" | "cpu" | "other"
    driver_id: int
    driver_name: str
    driver_info: str
    driver_version: int
    api_version: str  # "1.3.289"
    pipeline_cache_uuid: str  # 32 hex digits
    timestamp_period_ns: float
    timestamp_valid_bits: int
    subgroup_size: int
    min_subgroup_size: int
    max_subgroup_size: int
    subgroup_size_control: bool
    compute_full_subgroups: bool
    max_shared_memory: int  # maxComputeSharedMemorySize, bytes
    max_workgroup_invocations: int
    max_workgroup_size: tuple[int, int, int]
    max_workgroup_count: tuple[int, int, int]
    max_storage_buffer_range: int
    max_push_constants_size: int
    shader_float16: bool
    storage_buffer_16bit: bool
    shader_int8: bool
    storage_buffer_8bit: bool
    shader_bfloat16: bool
    integer_dot_product: bool
    buffer_device_address: bool
    extensions: tuple[str, ...] = ()
    coopmat_shapes: tuple[CoopMatShape, ...] = ()
    coopmat2: CoopMat2Features = field(default_factory=CoopMat2Features)
    coopmat2_max_workgroup_size: int = 0
    coopmat2_flexible_max_dimension: int = 0
    coopmat2_reserved_shared_memory: int = 0
    # Where coopmat1 fragments' elements live (kgen.planning.probe, run when a plan opens a device);
    # empty when not probed.
    coopmat1_fragments: tuple[Fragment, ...] = ()

    @property
    def has_coopmat1(self) -> bool:
        return "VK_KHR_cooperative_matrix" in self.extensions and bool(self.coopmat_shapes)

    @property
    def has_coopmat2(self) -> bool:
        return "VK_NV_cooperative_matrix2" in self.extensions and self.coopmat2.all()

    @property
    def vendor(self) -> str:
        return VENDOR_NAMES.get(self.vendor_id, f"0x{self.vendor_id:04x}")

    def to_json(self, **dump_kwargs) -> str:
        return json.dumps(dataclasses.asdict(self), **dump_kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "Caps":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"caps: unknown field(s) {unknown}; known fields: {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"caps: missing required field(s) {missing}")
        values = dict(data)
        for name in ("max_workgroup_size", "max_workgroup_count", "extensions"):
            if name in values:
                values[name] = tuple(values[name])
        if "coopmat_shapes" in values:
            values["coopmat_shapes"] = tuple(CoopMatShape(**s) for s in values["coopmat_shapes"])
        if "coopmat2" in values:
            values["coopmat2"] = CoopMat2Features(**values["coopmat2"])
        if "coopmat1_fragments" in values:
            values["coopmat1_fragments"] = tuple(Fragment.from_dict(f) for f in values["coopmat1_fragments"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Caps":
        return cls.from_dict(json.loads(text))


VENDOR_NAMES = {
    0x1002: "AMD", 0x1010: "ImgTec", 0x10DE: "NVIDIA", 0x13B5: "ARM", 0x5143: "Qualcomm",
    0x8086: "Intel", 0x10005: "Mesa",
}
