"""The floor of a decode's split-k decomposition: how fast the GPU reads K and V when a grid of
(KV head x split) workgroups does nothing else.

    python benchmarks/decode_floor.py "P3 " [--splits 16,32,64,128] [--wg 128,256] [--unroll 1,2,4,8]

For a decode case of the h100-anchors suite, each workgroup of a kernel that only loads reads
its split's rows of K and V (V skipped where the case reads V from K) with 16-byte loads,
`unroll` loads in flight per thread, and folds them into one value it never stores. An "empty"
kernel with the same grid measures launch and scheduling alone. Runs go back to back in one
submission over rotating input copies (more bytes than L2), after a warm-up that brings the
clocks up; medians of GPU microseconds. What an FA pass of the same grid loses against the
read-only kernel is the kernel design's cost; what the read-only kernel loses against the copy
ceiling is the decomposition's.
"""
import argparse
import math
import statistics
import sys

import numpy as np

from kgen import abi
from kgen.compile import compile_source
from kgen.suites import case_arg

L2_BYTES = 50 << 20  # H100's L2; the rotation covers several times this
WARM_SECONDS = 0.3


def source(*, wg: int, unroll: int, rows: int, row_vec4: int, heads: int, n_kv: int, read_v: bool,
           empty: bool) -> str:
    """A kernel over grid (splits, heads): workgroup (s, h) reads rows [s*rows, (s+1)*rows) of
    head h's K (and V) as uvec4s; a row is row_vec4 uvec4s, rows of a head are contiguous."""
    per_split = rows * row_vec4
    body = "" if empty else f"""
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
    return f"""#version 450
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = {wg}) in;
{abi.glsl_push_block()}
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer K {{ uvec4 ksrc[]; }};
layout(std430, binding = {abi.BINDING["v"]}) readonly buffer V {{ uvec4 vsrc[]; }};
layout(std430, binding = {abi.BINDING["out"]}) writeonly buffer Out {{ uint dst[]; }};
void main() {{
    uvec4 acc = uvec4(0u);{body}
    // Never true for random data in practice, but the compiler cannot know: the loads stay.
    if (acc.x == 0x9e3779b9u && acc.y == pc.n_q) dst[gl_WorkGroupID.x] = acc.z;
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", type=case_arg("h100-anchors"))
    ap.add_argument("--splits", default="16,32,64,128")
    ap.add_argument("--wg", default="128,256")
    ap.add_argument("--unroll", default="1,2,4,8")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    case = args.case
    s = case.shapes()
    if s.k_type.label != "f16" or (s.v_type.label != "f16" and not s.v_in_k):
        raise SystemExit(f"{case.name}: the floor kernel reads f16 K/V only")
    from kgen.runtime import open_device
    dev = open_device()
    row_vec4 = s.head_k * 2 // 16
    heads, n_kv = s.heads_kv * s.batch, s.n_kv
    read_v = not s.v_in_k
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
    out = dev.buffer(1 << 16)
    push = abi.pack(**{f.name: 0 if f.glsl == "uint" else 0.0 for f in abi.PUSH_FIELDS})
    print(f"{case.name}: {heads} KV heads x {n_kv} rows x {s.head_k} f16 (V {'from K' if s.v_in_k else 'own'}); "
          f"{kv_bytes / 1e6:.1f} MB per run, {copies} rotating copies", flush=True)
    print("kernel\tsplits\twg\tunroll\tus\tGB/s", flush=True)
    for splits in (int(x) for x in args.splits.split(",")):
        rows = math.ceil(n_kv / splits)
        for wg in (int(x) for x in args.wg.split(",")):
            for unroll in [0] + [int(x) for x in args.unroll.split(",")]:
                name = f"floor_{'empty' if unroll == 0 else 'read'}_s{splits}_wg{wg}_u{unroll}"
                src = source(wg=wg, unroll=max(unroll, 1), rows=rows, row_vec4=row_vec4, heads=heads,
                             n_kv=n_kv, read_v=read_v, empty=unroll == 0)
                kernel = dev.pipeline(compile_source(src, name=name).spirv, name=name)
                steps = [(kernel, {abi.BINDING["k"]: k, abi.BINDING["v"]: v, abi.BINDING["out"]: out},
                          push, (splits, heads, 1)) for k, v in bufs]
                with dev.sequence(steps * math.ceil(args.runs / copies)) as seq:
                    # Compiling idles the GPU and its clock drops: warm up before every kernel.
                    spent = 0.0
                    while spent < WARM_SECONDS * 1e6:
                        spent += sum(seq.run(wait=True))
                    us = statistics.median(seq.run(wait=True))
                dev.drop_pipeline(kernel)
                gbps = 0.0 if unroll == 0 else kv_bytes / us / 1e3
                print(f"{'empty' if unroll == 0 else 'read'}\t{splits}\t{wg}\t{unroll}\t{us:.1f}\t{gbps:.0f}",
                      flush=True)
    for k, v in bufs:
        k.close()
        if read_v:
            v.close()
    out.close()


if __name__ == "__main__":
    sys.exit(main())
