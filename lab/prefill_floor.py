"""The floor of a prefill FA pass's memory traffic: how fast the GPU feeds a grid of (row tile x KV
head) workgroups when they do nothing but the loads an FA kernel of that tiling must do.

    python lab/prefill_floor.py "P2 " [--br 32,64] [--bc 32] [--wg 256] [--q 0,1] [--stage 0,1] [--stagger 0,1]

Every workgroup walks all keys of its KV head in tiles of BC rows (BC must divide Nkv), as a
prefill kernel without KV splits does: K (and V, unless the case reads V from K) with 16-byte loads, the next tile's loads
issued before this tile is consumed. Options (comma-separated lists; every combination is timed):
- q 1: every tile also reads the workgroup's BR rows of Q again (a kernel that cannot hold Q in
  registers or shared memory, such as kgen's osplit kernel, reads each Q operand once per tile);
- stage 1: each tile is stored to shared memory between two barriers, as a kernel that shares
  one tile between its subgroups does;
- stagger 1: row tile x starts at key tile x * tiles / row tiles and wraps around, so the row
  tiles of one KV head do not all read the same keys at the same time.
Rows per KV head are Nq x (Hq / Hkv): grouped query heads fold into the rows. "L2 bytes" counts
what the workgroups request (each reads its head's whole K and V); K and V themselves come from
DRAM about once, since a head's rows are read by all its row tiles at about the same time. Runs
go back to back over rotating input copies after a warm-up; medians of GPU microseconds.
"""
import argparse
import itertools
import math
import sys

import numpy as np

from kgen import abi
from kgen.compile import compile_source
from harness import bench_parser, require_f16_kv, require_workgroups_fit, warm_median

L2_BYTES = 50 << 20  # H100's L2; the rotation covers several times this


def source(*, wg: int, bc: int, br: int, k_vec4: int, v_vec4: int, n_kv: int, row_tiles: int,
           q_reread: bool, stage: bool, stagger: bool) -> str:
    """The load-only kernel over grid (row_tiles, kv heads); rows are k_vec4 (v_vec4) uvec4s."""
    tile = bc * (k_vec4 + v_vec4)
    steps = -(-tile // wg)
    q_vec4 = br * k_vec4
    q_steps = -(-q_vec4 // wg)
    tiles = -(-n_kv // bc)

    def load(into: str, t: str) -> str:
        # A tile's K rows, then its V rows: slot e < bc * k_vec4 is K's, the rest V's.
        return f"""[[unroll]] for (uint u = 0u; u < {steps}u; ++u) {{
            const uint e = min(tid + u * {wg}u, {tile - 1}u);
            {into}[u] = e < {bc * k_vec4}u ? ksrc[kbase + {t} * {bc * k_vec4}u + e]
                                          : vsrc[vbase + {t} * {max(bc * v_vec4, 1)}u + e - {bc * k_vec4}u];
        }}"""
    q_body = f"""
        [[unroll]] for (uint u = 0u; u < {q_steps}u; ++u) {{
            acc ^= qsrc[qbase + min(tid + u * {wg}u, {q_vec4 - 1}u)];
        }}""" if q_reread else ""
    consume = f"""
        [[unroll]] for (uint u = 0u; u < {steps}u; ++u) {{
            sh[min(tid + u * {wg}u, {tile - 1}u)] = cur[u];
        }}
        barrier();
        acc ^= sh[(tid * 37u + t) % {tile}u];
        barrier();""" if stage else f"""
        [[unroll]] for (uint u = 0u; u < {steps}u; ++u) {{
            acc ^= cur[u];
        }}"""
    return f"""#version 450
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = {wg}) in;
{abi.glsl_push_block()}
layout(std430, binding = {abi.BINDING["q"]}) readonly buffer Q {{ uvec4 qsrc[]; }};
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer K {{ uvec4 ksrc[]; }};
layout(std430, binding = {abi.BINDING["v"]}) readonly buffer V {{ uvec4 vsrc[]; }};
layout(std430, binding = {abi.BINDING["out"]}) writeonly buffer Out {{ uint dst[]; }};
{f"shared uvec4 sh[{tile}];" if stage else ""}
void main() {{
    const uint tid = gl_LocalInvocationID.x;
    const uint kbase = gl_WorkGroupID.y * {n_kv * k_vec4}u, vbase = gl_WorkGroupID.y * {n_kv * v_vec4}u;
    const uint qbase = (gl_WorkGroupID.y * {row_tiles}u + gl_WorkGroupID.x) * {q_vec4}u;
    uvec4 acc = uvec4(0u), cur[{steps}], nxt[{steps}];
    // stagger: row tile x starts at tile x * tiles / row_tiles and wraps around.
    const uint first = {"gl_WorkGroupID.x * " + str(tiles) + "u / " + str(row_tiles) + "u" if stagger else "0u"};
    {load("cur", "first")}
    for (uint t = 0u; t < {tiles}u; ++t) {{
        if (t + 1u < {tiles}u) {{
            {load("nxt", f"((first + t + 1u) % {tiles}u)")}
        }}{q_body}{consume}
        cur = nxt;
    }}
    // Never true for random data in practice, but the compiler cannot know: the loads stay.
    if (acc.x == 0x9e3779b9u && acc.y == pc.n_q) dst[gl_WorkGroupID.x] = acc.z;
}}
"""


def time_kernel(dev, src: str, name: str, inputs: list, out, grid: tuple, runs: int) -> float:
    """Median GPU microseconds of kernel `src` over `grid`, rotating over (q, k, v) buffer sets."""
    kernel = dev.pipeline(compile_source(src, name=name).spirv, name=name)
    try:
        steps = [(kernel, {abi.BINDING["q"]: q, abi.BINDING["k"]: k, abi.BINDING["v"]: v, abi.BINDING["out"]: out},
                  abi.pack_some(), grid) for q, k, v in inputs]
        with dev.sequence(steps * math.ceil(runs / len(inputs))) as seq:
            return warm_median(seq)
    finally:
        dev.drop_pipeline(kernel)


def parser() -> argparse.ArgumentParser:
    return bench_parser(__doc__.split("\n\n")[0], "a prefill case of suite h100-anchors with f16 K and V", (
        ("br", "64", 1, "query rows per workgroup"), ("bc", "32", 1, "keys per tile"),
        ("wg", "256", 1, "threads per workgroup"),
        ("q", "0,1", 0, "1: the workgroup's Q rows read again every tile"),
        ("stage", "0,1", 0, "1: each tile stored to shared memory between two barriers"),
        ("stagger", "0,1", 0, "1: row tiles start at different key tiles")), runs=20)


def main() -> int:
    ap = parser()
    args = ap.parse_args()
    case = args.case
    require_f16_kv(ap, case, "floor")
    from kgen.runtime import open_device
    dev = open_device()
    require_workgroups_fit(ap, dev.caps, args.wg)
    k_vec4 = case.head_k * 2 // 16
    v_vec4 = 0 if case.mla else case.head_v * 2 // 16
    heads = case.batch * case.heads_kv
    rows = case.n_q * case.heads_q // case.heads_kv
    head_bytes = case.n_kv * (k_vec4 + v_vec4) * 16
    q_bytes = heads * rows * k_vec4 * 16
    copies = max(2, math.ceil(4 * L2_BYTES / (heads * head_bytes + q_bytes)))
    rng = np.random.default_rng(0)
    bufs = []
    for _ in range(copies):
        sizes = (q_bytes, heads * case.n_kv * k_vec4 * 16, max(16, heads * case.n_kv * v_vec4 * 16))
        made = [dev.buffer(n) for n in sizes]
        for b, n in zip(made, sizes):
            b.write(rng.integers(0, 2**32, n // 4, dtype=np.uint32))
        bufs.append(made)
    out = dev.buffer(1 << 16)
    print(f"{case.name}: {heads} KV heads x {rows} query rows, Nkv {case.n_kv}, {case.head_k}/{case.head_v} f16 "
          f"(V {'from K' if case.mla else 'own'}); {copies} rotating copies on {dev.caps.name}", flush=True)
    print("br\tbc\twg\tq\tstage\tstagger\tshared KB\tus\tL2 GB\tL2 TB/s", flush=True)
    for br, bc, wg, q_reread, stage, stagger in itertools.product(args.br, args.bc, args.wg, args.q, args.stage,
                                                                  args.stagger):
        row_tiles = -(-rows // br)
        tile_bytes = bc * (k_vec4 + v_vec4) * 16
        shared = tile_bytes if stage else 0
        label = f"{br}\t{bc}\t{wg}\t{q_reread}\t{stage}\t{stagger}\t{shared / 1024:.1f}"
        if shared > dev.caps.max_shared_memory:
            print(f"{label}\tskipped: over {dev.caps.max_shared_memory} bytes of shared memory", flush=True)
            continue
        if case.n_kv % bc:
            # The kernel has no ragged last tile: it would read past the head's rows.
            print(f"{label}\tskipped: bc={bc} does not divide Nkv {case.n_kv}", flush=True)
            continue
        name = f"prefill_floor_br{br}_bc{bc}_wg{wg}_q{q_reread}_stage{stage}_stagger{stagger}"
        src = source(wg=wg, bc=bc, br=br, k_vec4=k_vec4, v_vec4=v_vec4, n_kv=case.n_kv, row_tiles=row_tiles,
                     q_reread=bool(q_reread), stage=bool(stage), stagger=bool(stagger))
        us = time_kernel(dev, src, name, [(q, k, v if v_vec4 else k) for q, k, v in bufs], out,
                         (row_tiles, heads, 1), args.runs)
        tiles = -(-case.n_kv // bc)
        l2 = row_tiles * heads * tiles * (tile_bytes + (br * k_vec4 * 16 if q_reread else 0))
        print(f"{label}\t{us:.1f}\t{l2 / 1e9:.2f}\t{l2 / us / 1e6:.2f}", flush=True)
    for b in itertools.chain.from_iterable(bufs):
        b.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
