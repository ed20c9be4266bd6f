"""The floor of a decode's split-k decomposition: how fast the GPU reads K and V when a grid of
(KV head x split) workgroups does nothing else, and what combining the splits adds to that.

    python lab/decode_floor.py "P3 " [--splits 16,32,64,128] [--wg 128,256] [--unroll 1,2,4,8] [--combine 0,1]

For a decode case of the h100-anchors suite, each workgroup of a kernel that only loads reads
its split's rows of K and V (V skipped where the case reads V from K) with 16-byte loads,
`unroll` loads in flight per thread, and folds them into one value it never stores. An "empty"
kernel with the same grid measures launch and scheduling alone. With `--combine 1` a third
kernel does the same loads and then what any split-k decode must add to them, with no attention
arithmetic: each workgroup writes a partial O (the KV head's query rows x Dv, f32) and its
(max, sum) per row, counts its arrival, and the last split of each KV head to arrive reads every
split's partials and writes the combined rows. Runs go back to back in one submission over
rotating input copies (more bytes than L2), after a warm-up that brings the clocks up; medians
of GPU microseconds. What an FA pass of the same grid loses against the read-only kernel is the
kernel design's cost; what the read-only kernel loses against the copy ceiling is the
decomposition's; the combine kernel is the floor of a whole split-k decode.
"""
import argparse
import math
import sys

import numpy as np

from kgen import abi
from kgen.compile import compile_source
from harness import bench_parser, require_f16_kv, require_workgroups_fit, warm_median

L2_BYTES = 50 << 20  # H100's L2; the rotation covers several times this
KINDS = ("empty", "read", "combine")
COMBINE_ROUND = 16  # partial rows a lane of the combine has in flight at most


def combine_lanes(wg: int, q_rows: int, hv4: int) -> int:
    """Lanes per output vec4 in the combine: the workgroup's threads spread over the KV head's
    outputs, a power of two within one subgroup (their sums are shuffles)."""
    lanes = 1
    while lanes < 8 and 2 * lanes * q_rows * hv4 <= wg:
        lanes *= 2
    return lanes


def source(*, kind: str, wg: int, unroll: int, rows: int, row_vec4: int, n_kv: int, read_v: bool,
           splits: int = 1, q_rows: int = 1, hv4: int = 1) -> str:
    """A kernel over grid (splits, heads): workgroup (s, h) reads rows [s*rows, (s+1)*rows) of
    head h's K (and V) as uvec4s; a row is row_vec4 uvec4s, rows of a head are contiguous.
    kind "combine" adds the split-k tail for q_rows query rows of hv4 f32 vec4s per KV head."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    per_split = rows * row_vec4
    loads = "" if kind == "empty" else f"""
    const uint base = gl_WorkGroupID.y * {n_kv * row_vec4}u + gl_WorkGroupID.x * {per_split}u;
    const uint end = min(base + {per_split}u, (gl_WorkGroupID.y + 1u) * {n_kv * row_vec4}u);
    for (uint i = base + gl_LocalInvocationID.x; i < end; i += {unroll * wg}u) {{
        uvec4 k[{unroll}];
        {"uvec4 v[%d];" % unroll if read_v else ""}
        [[unroll]] for (uint u = 0u; u < {unroll}u; ++u) {{
            const uint j = min(i + u * {wg}u, end - 1u);
            k[u] = ksrc[j];
            {"v[u] = vsrc[j];" if read_v else ""}
        }}
        [[unroll]] for (uint u = 0u; u < {unroll}u; ++u) {{
            acc ^= k[u]{" ^ v[u]" if read_v else ""};
        }}
    }}"""
    if kind != "combine":
        return f"""#version 450
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = {wg}) in;
{abi.glsl_push_block()}
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer K {{ uvec4 ksrc[]; }};
layout(std430, binding = {abi.BINDING["v"]}) readonly buffer V {{ uvec4 vsrc[]; }};
layout(std430, binding = {abi.BINDING["out"]}) writeonly buffer Out {{ uint dst[]; }};
void main() {{
    uvec4 acc = uvec4(0u);{loads}
    // Never true for random data in practice, but the compiler cannot know: the loads stay.
    if (acc.x == 0x9e3779b9u && acc.y == pc.n_q) dst[gl_WorkGroupID.x] = acc.z;
}}
"""
    outputs = q_rows * hv4
    lanes = combine_lanes(wg, q_rows, hv4)
    round_loads = min(COMBINE_ROUND, -(-splits // lanes))
    return f"""#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
layout(local_size_x = {wg}) in;
{abi.glsl_push_block()}
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer K {{ uvec4 ksrc[]; }};
layout(std430, binding = {abi.BINDING["v"]}) readonly buffer V {{ uvec4 vsrc[]; }};
// Partial O rows [head][split][row][vec4] and (max, sum) [head][split][row]: written by every
// split, read by the last one (plain loads for the rows, each line has one writer; coherent
// for the stats, whose lines several splits share), as kgen's fused reduce does.
layout(std430, binding = {abi.BINDING["out"]}) buffer Part {{ vec4 part[]; }};
layout(std430, binding = {abi.BINDING["stats"]}) coherent buffer Stats {{ vec2 stats[]; }};
layout(std430, binding = {abi.BINDING["reduced"]}) writeonly buffer Reduced {{ vec4 reduced[]; }};
layout(std430, binding = {abi.BINDING["split_arrivals"]}) coherent buffer Arrivals {{ uint arrivals[]; }};
shared uint is_last;
shared vec2 sh_ml[{q_rows * splits}];
void main() {{
    const uint tid = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    const uint head = gl_WorkGroupID.y, split = gl_WorkGroupID.x;
    uvec4 acc = uvec4(0u);{loads}
    // The partial: values from the loads (so they stay), a max and a sum per row.
    const uint at = head * {splits}u + split;
    for (uint e = tid; e < {outputs}u; e += {wg}u) {{
        part[at * {outputs}u + e] = vec4(acc & 255u) + float(e);
    }}
    if (tid < {q_rows}u) stats[at * {q_rows}u + tid] = vec2(float(split % 3u), 1.0 + float(tid));
    memoryBarrierBuffer();
    barrier();
    if (tid == 0u) is_last = atomicAdd(arrivals[head], 1u) + 1u == {splits}u ? 1u : 0u;
    barrier();
    if (is_last == 0u) return;
    memoryBarrierBuffer();
    // The partial loads of this thread's first output go out before the stats round, so the
    // two memory round trips overlap; a round is up to {round_loads} loads in flight per lane.
    const uint lane = tid % {lanes}u;
    uint e = tid / {lanes}u;
    vec4 p[{round_loads}];
    bool loaded = false;
    if (e < {outputs}u) {{
        [[unroll]] for (uint u = 0u; u < {round_loads}u; ++u) {{
            p[u] = part[(head * {splits}u + min(lane + u * {lanes}u, {splits - 1}u)) * {outputs}u + e];
        }}
        loaded = true;
    }}
    for (uint x = tid; x < {q_rows * splits}u; x += {wg}u) {{
        sh_ml[x] = stats[(head * {splits}u + x % {splits}u) * {q_rows}u + x / {splits}u];  // [row][split]
    }}
    barrier();
    for (; e < {outputs}u; e += {wg // lanes}u) {{
        const uint r = e / {hv4}u;
        float m = sh_ml[r * {splits}u].x;
        for (uint s = 1u; s < {splits}u; ++s) m = max(m, sh_ml[r * {splits}u + s].x);
        vec4 o = vec4(0.0);
        float l = 0.0;
        for (uint s0 = lane; s0 < {splits}u; s0 += {round_loads * lanes}u) {{
            if (!loaded) {{
                [[unroll]] for (uint u = 0u; u < {round_loads}u; ++u) {{
                    p[u] = part[(head * {splits}u + min(s0 + u * {lanes}u, {splits - 1}u)) * {outputs}u + e];
                }}
            }}
            loaded = false;
            [[unroll]] for (uint u = 0u; u < {round_loads}u; ++u) {{
                const uint s = s0 + u * {lanes}u;
                if (s < {splits}u) {{
                    const vec2 ml = sh_ml[r * {splits}u + s];
                    const float w = exp(ml.x - m) * ml.y;
                    o += w * p[u];
                    l += w;
                }}
            }}
        }}
        [[unroll]] for (uint x = 1u; x < {lanes}u; x *= 2u) {{
            o += subgroupShuffleXor(o, x);
            l += subgroupShuffleXor(l, x);
        }}
        if (lane == 0u) reduced[head * {outputs}u + e] = o / l;
    }}
    if (tid == 0u) arrivals[head] = 0u;  // ready for the next run
}}
"""


def parser() -> argparse.ArgumentParser:
    return bench_parser(__doc__.split("\n\n")[0], "a decode case of suite h100-anchors with f16 K and V", (
        ("splits", "16,32,64,128", 1, "KV splits (workgroups per KV head)"),
        ("wg", "128,256", 32, "threads per workgroup"),
        ("unroll", "1,2,4,8", 1, "16-byte loads in flight per thread"),
        ("combine", "0", 0, "1: also time the kernel with the split-k tail")), runs=50)


def main() -> int:
    ap = parser()
    args = ap.parse_args()
    case = args.case
    require_f16_kv(ap, case, "floor")
    if case.n_q != 1:
        ap.error(f"{case.name}: a decode case (Nq 1) only; prefill_floor.py times prefill tilings")
    from kgen.runtime import open_device
    dev = open_device()
    require_workgroups_fit(ap, dev.caps, args.wg)
    row_vec4 = case.head_k * 2 // 16
    heads, n_kv = case.heads_kv * case.batch, case.n_kv
    q_rows = case.n_q * case.heads_q // case.heads_kv
    hv4 = case.head_v // 4
    read_v = not case.mla
    head_bytes = n_kv * row_vec4 * 16
    kv_bytes = heads * head_bytes * (2 if read_v else 1)
    copies = max(2, math.ceil(4 * L2_BYTES / kv_bytes))
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2**32, heads * head_bytes // 4, dtype=np.uint32)
    bufs = []
    for _ in range(copies):
        k = dev.buffer(data.nbytes)
        k.write(data)
        v = dev.buffer(data.nbytes) if read_v else k
        if read_v:
            v.write(data[::-1].copy())
        bufs.append((k, v))
    most_splits = max(args.splits)
    part = dev.buffer(heads * most_splits * q_rows * hv4 * 16)
    stats = dev.buffer(heads * most_splits * q_rows * 8)
    reduced = dev.buffer(heads * q_rows * hv4 * 16)
    arrivals = dev.buffer(max(16, heads * 4))
    arrivals.write(np.zeros(max(4, heads), np.uint32))
    print(f"{case.name}: {heads} KV heads x {n_kv} rows x {case.head_k} f16 (V {'from K' if case.mla else 'own'}); "
          f"{q_rows} query rows per KV head; {kv_bytes / 1e6:.1f} MB per run, {copies} rotating copies on "
          f"{dev.caps.name}", flush=True)
    print("kernel\tsplits\twg\tunroll\tus\tGB/s", flush=True)
    kinds = ["read"] + (["combine"] if 1 in args.combine else [])
    for splits in args.splits:
        rows = math.ceil(n_kv / splits)
        for wg in args.wg:
            runs = [("empty", 1)] + [(kind, unroll) for unroll in args.unroll for kind in kinds]
            for kind, unroll in runs:
                if kind == "combine" and q_rows * splits * 8 > dev.caps.max_shared_memory:
                    print(f"combine\t{splits}\t{wg}\t{unroll}\tskipped: {q_rows} rows x {splits} splits of "
                          f"(max, sum) over {dev.caps.max_shared_memory} bytes of shared memory", flush=True)
                    continue
                name = f"floor_{kind}_s{splits}_wg{wg}_u{unroll}"
                src = source(kind=kind, wg=wg, unroll=unroll, rows=rows, row_vec4=row_vec4, n_kv=n_kv,
                             read_v=read_v, splits=splits, q_rows=q_rows, hv4=hv4)
                kernel = dev.pipeline(compile_source(src, name=name).spirv, name=name)
                steps = [(kernel, {abi.BINDING["k"]: k, abi.BINDING["v"]: v, abi.BINDING["out"]: part,
                                   abi.BINDING["stats"]: stats, abi.BINDING["reduced"]: reduced,
                                   abi.BINDING["split_arrivals"]: arrivals},
                          abi.pack_some(), (splits, heads, 1)) for k, v in bufs]
                with dev.sequence(steps * math.ceil(args.runs / copies)) as seq:
                    us = warm_median(seq)
                dev.drop_pipeline(kernel)
                gbps = 0.0 if kind == "empty" else kv_bytes / us / 1e3
                print(f"{kind}\t{splits}\t{wg}\t{unroll if kind != 'empty' else 0}\t{us:.1f}\t{gbps:.0f}", flush=True)
    for k, v in bufs:
        k.close()
        if read_v:
            v.close()
    for b in (part, stats, reduced, arrivals):
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
