"""Human-readable text for `Caps`: what `kgen devices` prints. No Vulkan here, so a saved
caps JSON can be shown on any machine."""
from __future__ import annotations

import dataclasses

from kgen.caps import Caps, CoopMatShape

# (label, Caps field) for the yes/no features, in the order they are printed.
FEATURES = (
    ("fp16", "shader_float16"), ("int8", "shader_int8"), ("bf16", "shader_bfloat16"),
    ("storage16", "storage_buffer_16bit"), ("storage8", "storage_buffer_8bit"),
    ("int-dot", "integer_dot_product"), ("bda", "buffer_device_address"),
    ("subgroup-size-control", "subgroup_size_control"), ("full-subgroups", "compute_full_subgroups"),
)


def format_shape(shape: CoopMatShape) -> str:
    """'16x16x16 f16*f16+f32->f32 subgroup' (M x N x K, A*B+C->Result, scope)."""
    text = (f"{shape.m}x{shape.n}x{shape.k} {shape.a_type}*{shape.b_type}+{shape.c_type}"
            f"->{shape.result_type} {shape.scope}")
    return text + " saturating" if shape.saturating else text


def _flags(pairs: list[tuple[str, bool]]) -> str:
    return " ".join(("+" if on else "-") + label for label, on in pairs)


def _coopmat2_lines(caps: Caps) -> list[str]:
    if "VK_NV_cooperative_matrix2" not in caps.extensions:
        return ["coopmat2    not listed"]
    bits = [(f.name, getattr(caps.coopmat2, f.name)) for f in dataclasses.fields(caps.coopmat2)]
    return [f"coopmat2    {_flags(bits)}",
            f"            workgroup scope max {caps.coopmat2_max_workgroup_size} invocations, flexible max "
            f"dimension {caps.coopmat2_flexible_max_dimension}, reserved shared memory "
            f"{caps.coopmat2_reserved_shared_memory} B"]


def _coopmat_lines(caps: Caps) -> list[str]:
    if not caps.coopmat_shapes:
        listed = "VK_KHR_cooperative_matrix" in caps.extensions
        return ["coopmat     " + ("listed, no shapes" if listed else "not listed")]
    labels = ["coopmat     "] + [" " * 12] * (len(caps.coopmat_shapes) - 1)
    return [label + format_shape(s) for label, s in zip(labels, caps.coopmat_shapes)]


def format_caps(caps: Caps) -> str:
    """A multi-line block for one device: identity, driver, limits, features, coopmat."""
    wg, count = caps.max_workgroup_size, caps.max_workgroup_count
    lines = [
        f"{caps.name}",
        f"  device      {caps.device_type}, vendor {caps.vendor} (0x{caps.vendor_id:04x}), "
        f"device 0x{caps.device_id:04x}, Vulkan {caps.api_version}",
        f"  driver      {caps.driver_name} (id {caps.driver_id}) {caps.driver_info}, "
        f"version 0x{caps.driver_version:08x}",
        f"  cache uuid  {caps.pipeline_cache_uuid}",
        f"  timestamps  {caps.timestamp_valid_bits} valid bits, {caps.timestamp_period_ns:g} ns per tick",
        f"  subgroup    {caps.subgroup_size} (min {caps.min_subgroup_size}, max {caps.max_subgroup_size})",
        f"  workgroup   {caps.max_workgroup_invocations} invocations, size {wg[0]}x{wg[1]}x{wg[2]}, "
        f"count {count[0]}x{count[1]}x{count[2]}",
        f"  memory      shared {caps.max_shared_memory} B, storage buffer range "
        f"{caps.max_storage_buffer_range} B, push constants {caps.max_push_constants_size} B",
        f"  features    {_flags([(label, getattr(caps, name)) for label, name in FEATURES])}",
        f"  extensions  {len(caps.extensions)}",
    ]
    return "\n".join(lines + [f"  {line}" for line in _coopmat_lines(caps) + _coopmat2_lines(caps)])


def format_devices(devices: list[Caps]) -> str:
    """format_caps for each device, numbered in enumeration order."""
    if not devices:
        return "no Vulkan device found"
    return "\n\n".join(f"[{i}] {format_caps(caps)}" for i, caps in enumerate(devices))
