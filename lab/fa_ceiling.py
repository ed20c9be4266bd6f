"""The ceiling of a prefill FA kernel's inner loop on KHR cooperative matrices, measured: what
the loop reaches with its data already in shared memory, and what each piece of a real kernel
costs when added back one at a time.

    python lab/fa_ceiling.py [--case "P1 "] [--mat 16x8x16,16x16x16] [--rt 1,2] [--bc 32,64]
        [--nsg 8] [--sync 0,2] [--stage 0,1,2] [--softmax 0,1,2,3,4,5] [--mask 0,1]
        [--pingpong 0,1] [--overlap 0,1] [--q-shared 0,1,2] [--splits 1,2,4]
        [--heads 288/256 --row-copies 2]

Each subgroup owns RT row tiles of MM query rows and keeps their Q operands in registers, as
kgen's regs kernels do. Per KV tile of BC keys it computes S = Q K^T with each K^T
operand loaded from shared memory once and used by its RT row tiles, then O += P V with each V
operand loaded from shared memory once; P is a constant built from one S element. The K and V
tiles are put in shared memory once, before the loop: no global memory traffic in the loop
(unless stage 2).
Every option is a comma-separated list; the script times every combination. What they add:
- sync 2: two workgroup barriers per tile (after S and after P V), the classic FA2 lockstep
  (1: the second one only);
- stage 1: every thread stores its share of a K and a V tile into shared memory per tile
  (from registers: still no global loads); stage 2: and loads the next tile's share from a
  global K/V buffer of Nkv keys first, as a real kernel does (16-byte loads issued at the top
  of the tile, stored where stage 1 stores them);
- softmax: 1 a row max, exp2 of every S element and a row sum; 2 a row max and O scaled by
  one factor; 3 both; 4 both with exp2 on f16 pairs; 5 both with the max and the sum as
  pairwise trees. Per lane, no shuffles;
- mask 1 (with a softmax): every lane loads its mask values of the tile as 16-byte elements
  (one f16 plane of Nq x Nkv, as kgen's fragment-ordered mask) and adds them to the scores;
- pingpong 1 (with sync 2): the second half of the subgroups runs a phase later: while one
  half computes S, the other does its softmax and P V;
- overlap 1: the next tile's S is computed beside this tile's softmax and P V (independent
  work the compiler may interleave); 2 (with rt 1, softmax 3): the softmax written between the
  next tile's depth steps in the source;
- q-shared 1: Q's operands are read from shared memory at every use instead of registers; 2:
  from global memory (L1), as kgen's osplit kernel reads its Q fragments;
- splits N: N workgroups per row block, each walking Nkv / N keys (more workgroups; the
  partial results' reduce is not included).
Two options model a kernel that splits the head dimensions between subgroups (the case's FLOPs
stay the same): --heads K/V gives each subgroup K and V columns instead of the case's, and
--row-copies N has N subgroups work on every query row (e.g. "P2 " --heads 288/256 --row-copies
2: two subgroups per row, each summing half of Q K^T's depth and owning half of O; the exchange
of their partial sums is not included).

The grid is the case's: its query rows (batch x heads x Nq) over BR = NSG x RT x MM rows per
workgroup. FLOPs = 2 x rows x Nkv x (Dk + Dv), as the bench counts them; "case us" is the case's
FLOPs at the measured rate: the time a kernel with exactly this inner loop and nothing else
would take. Registers (and spilled bytes) come from the driver
(VK_KHR_pipeline_executable_properties). Kernels over the shared-memory limit are skipped.
"""
import argparse
import itertools
import math
import sys

import numpy as np

from kgen import abi
from kgen.compile import compile_source
from kgen.errors import CompileError
from kgen.timing.roofline import unavailable
from kgen.runtime.context import Device
from kgen.runtime.pipeline_stats import statistics_problem
from kgen.runtime.vk import VulkanError
from kgen.tools.suites import case_arg
from harness import warm_median

SUBGROUP = 32  # NVIDIA's; the kernels require full subgroups of this size


def source(*, head_k: int, head_v: int, rt: int, bc: int, mat: tuple[int, int, int], nsg: int,
           sync: int, stage: int, softmax: int, pingpong: bool = False, overlap: int = 0,
           q_shared: int = 0, mask: bool = False, mask_blocks: int = 1) -> str:
    """The inner-loop kernel; pc.n_kv keys per workgroup, pc.n_q == 0 (its output store never
    runs); mask_blocks: row blocks of the mask plane the grid's workgroups take turns on."""
    mm, mn, mk = mat
    ksteps, s_n, o_n, psteps = head_k // mk, bc // mn, head_v // mn, bc // mk
    ksh_row, vsh_row = row_vecs(head_k), row_vecs(head_v)
    k_step = -(-bc * ksh_row // (nsg * SUBGROUP))
    v_step = -(-bc * vsh_row // (nsg * SUBGROUP))
    barrier_after_s = "barrier();" if sync >= 2 else ""
    barrier_after_pv = "barrier();" if sync >= 1 else ""
    store_k = f"""[[unroll]] for (uint n = 0u; n < {k_step}u; ++n) {{
            const uint e = tid + n * WG;
            if (e < {bc * ksh_row}u) Ksh[e] = k_reg[n] ^ uvec4(kv0);
        }}""" if stage else ""
    store_v = f"""[[unroll]] for (uint n = 0u; n < {v_step}u; ++n) {{
            const uint e = tid + n * WG;
            if (e < {bc * vsh_row}u) Vsh[e] = v_reg[n] ^ uvec4(kv0);
        }}""" if stage else ""
    max_sum = """float mx = m_run;
            [[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < S[t][c].length(); ++i) mx = max(mx, S[t][c][i]);
            const float alpha = exp2(m_run - mx);
            m_run = mx;"""
    if softmax == 5:
        # Pairwise trees instead of one chain per lane for the max and the sum: fewer steps
        # each waiting on the last.
        max_sum = """float v[S_N * LEN];
            [[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < LEN; ++i) v[c * LEN + i] = S[t][c][i];
            [[unroll]] for (uint w = S_N * LEN / 2u; w > 0u; w /= 2u)
                [[unroll]] for (uint i = 0u; i < w; ++i) v[i] = max(v[i], v[i + w]);
            const float mx = max(m_run, v[0]);
            const float alpha = exp2(m_run - mx);
            m_run = mx;"""
        elementwise = """[[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < LEN; ++i) {
                    S[t][c][i] = exp2(S[t][c][i] - mx);
                    v[c * LEN + i] = S[t][c][i];
                }
            [[unroll]] for (uint w = S_N * LEN / 2u; w > 0u; w /= 2u)
                [[unroll]] for (uint i = 0u; i < w; ++i) v[i] += v[i + w];
            l_run += v[0];"""
    elif softmax == 4:
        # exp2 on f16 pairs (P is f16 anyway); the row sum in f32.
        elementwise = """[[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < S[t][c].length(); i += 2u) {
                    const f16vec2 p = exp2(f16vec2(S[t][c][i] - mx, S[t][c][i + 1u] - mx));
                    S[t][c][i] = float(p.x);
                    S[t][c][i + 1u] = float(p.y);
                    l_run += float(p.x) + float(p.y);
                }"""
    else:
        elementwise = """[[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < S[t][c].length(); ++i) {
                    S[t][c][i] = exp2(S[t][c][i] - mx);
                    l_run += S[t][c][i];
                }"""
    rescale = "[[unroll]] for (uint j = 0u; j < O_N; ++j) O[t][j] = O[t][j] * alpha;"
    if mask:
        # Each lane's mask values of the tile as whole 16-byte loads (kgen's fragment-ordered
        # mask), added with the score scale: one plane of Nq x Nkv f16 serves every head, as in
        # the P cases, so the loads hit L2.
        max_sum = """uvec4 mv[S_N * LEN / 8u];
            [[unroll]] for (uint n = 0u; n < S_N * LEN / 8u; ++n)
                mv[n] = mask4[((((gl_WorkGroupID.x % MASK_BLOCKS) * (pc.n_kv / BC) + kv0 / BC) * RT + t) * WG + tid) * (S_N * LEN / 8u) + n];
            [[unroll]] for (uint c = 0u; c < S_N; ++c)
                [[unroll]] for (uint i = 0u; i < LEN; ++i) {
                    const uint e = c * LEN + i;
                    const vec2 h = unpackHalf2x16(mv[e / 8u][(e % 8u) / 2u]);
                    S[t][c][i] = S[t][c][i] * 0.125 + ((e % 2u) == 0u ? h.x : h.y);
                }
            """ + max_sum
    parts = {0: (), 1: (max_sum, elementwise), 2: (max_sum, rescale)}.get(softmax, (max_sum, elementwise, rescale))
    soft = ("[[unroll]] for (uint t = 0u; t < RT; ++t) {\n            " + "\n            ".join(parts) + "\n        }") if parts else ""
    if q_shared == 2:
        # Q's operands loaded from global memory at every use (the workgroup's rows stay in L1).
        q_decl, q_setup, q_op = "", "", "qs[t]"
        q_load = f"""MatA qs[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t)
                coopMatLoad(qs[t], src, ((sg * RT + t) * MM) * {head_k}u + ks * MK + gl_WorkGroupID.x * 64u, {head_k}u, ROW_MAJOR);"""
    elif q_shared:
        # Q's operands read from shared memory at every use (fewer registers, more reads).
        q_decl = f"shared uvec4 Qsh[{nsg * rt * mm * ksh_row}];"
        q_setup = f"""for (uint e = tid; e < {nsg * rt * mm * ksh_row}u; e += WG) Qsh[e] = src4[e + 11u];
    barrier();"""
        q_op = "qs[t]"
        q_load = """MatA qs[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t)
                coopMatLoad(qs[t], Qsh, (sg * RT + t) * MM * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);"""
    else:
        q_decl = ""
        q_setup = f"""MatA qm[RT][KSTEPS];
    [[unroll]] for (uint t = 0u; t < RT; ++t)
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks)
            coopMatLoad(qm[t][ks], src, ((sg * RT + t) * MM) * {head_k}u + ks * MK + gl_WorkGroupID.x * 64u, {head_k}u, ROW_MAJOR);"""
        q_op = "qm[t][ks]"
        q_load = ""
    qk = f"""[[unroll]] for (uint t = 0u; t < RT; ++t)
            [[unroll]] for (uint c = 0u; c < S_N; ++c) S[t][c] = MatF32(0.0);
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {{
            {q_load}
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {{
                MatB kb;
                coopMatLoad(kb, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) S[t][c] = coopMatMulAdd({q_op}, kb, S[t][c]);
            }}
        }}"""
    pv = """[[unroll]] for (uint d = 0u; d < PSTEPS; ++d) {
            MatA pa[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) pa[t] = MatA(float16_t(S[t][d * (S_N / PSTEPS)][0]));
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Vsh, d * MK * VSH_ROW + j * MN / 8u, VSH_ROW, ROW_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) O[t][j] = coopMatMulAdd(pa[t], vb, O[t][j]);
            }
        }"""
    load_next = f"""const uint next_kv = (kv0 + BC) % pc.n_kv;  // the last tile loads the first again
        [[unroll]] for (uint n = 0u; n < {k_step}u; ++n)
            k_reg[n] = kv4[next_kv * KSH_ROW + min(tid + n * WG, {bc * ksh_row - 1}u)];
        [[unroll]] for (uint n = 0u; n < {v_step}u; ++n)
            v_reg[n] = kv4[V_AT + next_kv * VSH_ROW + min(tid + n * WG, {bc * vsh_row - 1}u)];
        """ if stage == 2 else ""
    # The overlap bodies end alike: the next tile's S becomes this one's, then its K and V go in.
    next_tile = f"""S = Sn;
        {barrier_after_pv}
        {store_v}
        {store_k}
        {barrier_after_s}"""
    if overlap == 2:
        # As overlap 1, with the softmax written between the next tile's Q K^T depth steps in the
        # source: the row max beside the first half of the steps, exp2 and the sum beside the
        # second (one row tile per subgroup).
        if rt != 1 or softmax != 3:
            raise ValueError("overlap 2: one row tile and softmax 3")
        per = s_n * (mm * mn // SUBGROUP) // (ksteps // 2)
        body = f"""MatF32 Sn[1][S_N];
        [[unroll]] for (uint c = 0u; c < S_N; ++c) Sn[0][c] = MatF32(0.0);
        float mx = m_run, alpha = 1.0;
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {{
            {q_load.replace("RT", "1")}
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {{
                MatB kb;
                coopMatLoad(kb, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                Sn[0][c] = coopMatMulAdd({q_op.replace("[t]", "[0]")}, kb, Sn[0][c]);
            }}
            if (ks < KSTEPS / 2u) {{
                [[unroll]] for (uint e = ks * {per}u; e < (ks + 1u) * {per}u; ++e) mx = max(mx, S[0][e / LEN][e % LEN]);
                if (ks == KSTEPS / 2u - 1u) {{
                    alpha = exp2(m_run - mx);
                    m_run = mx;
                }}
            }} else {{
                [[unroll]] for (uint e = (ks - KSTEPS / 2u) * {per}u; e < (ks - KSTEPS / 2u + 1u) * {per}u; ++e) {{
                    S[0][e / LEN][e % LEN] = exp2(S[0][e / LEN][e % LEN] - mx);
                    l_run += S[0][e / LEN][e % LEN];
                }}
            }}
        }}
        [[unroll]] for (uint j = 0u; j < O_N; ++j) O[0][j] = O[0][j] * alpha;
        {pv}
        {next_tile}"""
    elif overlap:
        # S of the next tile is computed beside this tile's softmax and P V: independent work
        # the compiler can interleave within one subgroup. Ksh holds the next tile's K.
        qk_next = qk.replace("S[t][c]", "Sn[t][c]")
        body = f"""MatF32 Sn[RT][S_N];
        {qk_next}
        {soft}
        {pv}
        {next_tile}"""
    elif pingpong:
        # Two halves of the subgroups a phase apart: while one computes S, the other does its
        # softmax and P V; a barrier between phases keeps them apart.
        body = f"""if (!second) {{ {qk} }} else {{ {soft} {pv} }}
        barrier();
        {store_v}
        {store_k}
        if (!second) {{ {soft} {pv} }} else {{ {qk} }}
        barrier();"""
    else:
        body = f"""{qk}
        {barrier_after_s}
        {store_v}
        {soft}
        {pv}
        {barrier_after_pv}
        {store_k}"""
    return f"""#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
layout(local_size_x = {nsg * SUBGROUP}) in;
{abi.glsl_push_block()}
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer Src {{ float16_t src[]; }};
layout(std430, binding = {abi.BINDING["k"]}) readonly buffer Src4 {{ uvec4 src4[]; }};
layout(std430, binding = {abi.BINDING["out"]}) writeonly buffer Out {{ float dst[]; }};
layout(std430, binding = {abi.BINDING["mask"]}) readonly buffer Mask {{ uvec4 mask4[]; }};
// stage 2: K rows (KSH_ROW elements each) for pc.n_kv keys, then V rows from V_AT.
layout(std430, binding = {abi.BINDING["v"]}) readonly buffer KV {{ uvec4 kv4[]; }};
#define V_AT (pc.n_kv * KSH_ROW)
const uint MASK_BLOCKS = {mask_blocks}u;  // row blocks of one mask plane
const uint WG = {nsg * SUBGROUP}u, RT = {rt}u, MM = {mm}u, MN = {mn}u, MK = {mk}u;
const uint KSTEPS = {ksteps}u, S_N = {s_n}u, O_N = {o_n}u, PSTEPS = {psteps}u;
const uint KSH_ROW = {ksh_row}u, VSH_ROW = {vsh_row}u, BC = {bc}u;
const uint LEN = {mm * mn // SUBGROUP}u;  // accumulator elements per lane
shared uvec4 Ksh[{bc * ksh_row}];
shared uvec4 Vsh[{bc * vsh_row}];
{q_decl}
#define MatA coopmat<float16_t, gl_ScopeSubgroup, MM, MK, gl_MatrixUseA>
#define MatB coopmat<float16_t, gl_ScopeSubgroup, MK, MN, gl_MatrixUseB>
#define MatF32 coopmat<float, gl_ScopeSubgroup, MM, MN, gl_MatrixUseAccumulator>
#define ROW_MAJOR gl_CooperativeMatrixLayoutRowMajor
#define COL_MAJOR gl_CooperativeMatrixLayoutColumnMajor
void main() {{
    const uint sg = gl_SubgroupID, tid = sg * gl_SubgroupSize + gl_SubgroupInvocationID;
    for (uint e = tid; e < {bc * ksh_row}u; e += WG) Ksh[e] = src4[e];
    for (uint e = tid; e < {bc * vsh_row}u; e += WG) Vsh[e] = src4[e + 7u];
    {"uvec4 k_reg[%d]; uvec4 v_reg[%d];" % (k_step, v_step) if stage else ""}
    {"[[unroll]] for (uint n = 0u; n < %du; ++n) { k_reg[n] = src4[tid + n * WG]; v_reg[n] = src4[tid + n * WG + 3u]; }" % max(k_step, v_step) if stage else ""}
    {q_setup}
    MatF32 O[RT][O_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t)
        [[unroll]] for (uint j = 0u; j < O_N; ++j) O[t][j] = MatF32(0.0);
    float m_run = -1e30, l_run = 0.0;
    barrier();
    const bool second = sg >= {nsg // 2}u;
    MatF32 S[RT][S_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t)
        [[unroll]] for (uint c = 0u; c < S_N; ++c) S[t][c] = MatF32(0.0);
    for (uint kv0 = 0u; kv0 < pc.n_kv; kv0 += BC) {{
        {load_next}{body}
    }}
    // Never true (pc.n_q is 0): the products stay, nothing is written.
    if (pc.n_q == 12345u) {{
        [[unroll]] for (uint t = 0u; t < RT; ++t)
            [[unroll]] for (uint j = 0u; j < O_N; ++j) coopMatStore(O[t][j], dst, (t * O_N + j) * MM * MN, MN, ROW_MAJOR);
        dst[tid] = l_run;
    }}
}}
"""


def row_vecs(head: int) -> int:
    """uvec4s per shared-memory row of a head: 16 bytes of padding against bank conflicts."""
    return (head + 8) // 8


# Every option takes a comma-separated list of values; the script times every combination.
OPTION_TABLE = (
    ("mat", "16x8x16,16x16x16", "MMxMNxMK matrix shapes"),
    ("rt", "1,2", "row tiles per subgroup"),
    ("bc", "32,64", "keys per tile"),
    ("nsg", "8", "subgroups per workgroup"),
    ("sync", "0,2", "workgroup barriers per tile (0, 1 or 2)"),
    ("pingpong", "0", "1 (with sync 2): two halves of the subgroups a phase apart"),
    ("overlap", "0", "1: the next tile's S beside this tile's softmax and P V; 2: interleaved in the source"),
    ("stage", "0", "1: store a K and a V tile to shared memory per tile; 2: loaded from global memory a tile ahead"),
    ("softmax", "0", "0-5, see above"),
    ("mask", "0", "1 (with a softmax): add each lane's mask values, loaded per tile"),
    ("q_shared", "0", "1: Q's operands from shared memory at every use; 2: from global memory (L1)"),
    ("splits", "1", "workgroups per row block, each walking Nkv / splits keys"),
)
OPTIONS = tuple(name for name, _, _ in OPTION_TABLE)


def value_list(option: str):
    """The argparse type of `option`: its comma-separated values (ints; MxNxK triples for mat)."""
    def parse(text: str) -> list:
        try:
            values = [tuple(int(x) for x in v.split("x")) if option == "mat" else int(v)
                      for v in text.split(",") if v]
        except ValueError:
            values = []
        if not values or (option == "mat" and any(len(m) != 3 for m in values)):
            raise argparse.ArgumentTypeError(
                f"{text!r}: comma-separated {'MxNxK shapes' if option == 'mat' else 'integers'}")
        return values
    return parse


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="P1 ", type=case_arg("h100-anchors"), help="a case of suite h100-anchors (its grid and head sizes)")
    for name, default, text in OPTION_TABLE:
        ap.add_argument("--" + name.replace("_", "-"), default=default, type=value_list(name), help=text)
    ap.add_argument("--heads", type=heads_arg, default=None,
                    help="K/V head columns per subgroup instead of the case's (e.g. 288/256)")
    ap.add_argument("--row-copies", type=row_copies_arg, default=1,
                    help="subgroups working on each query row (with --heads: a split of the head dims)")
    ap.add_argument("--runs", type=int, default=30)
    return ap


def row_copies_arg(text: str) -> int:
    """One whole number of subgroups per query row, at least 1."""
    if not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"--row-copies {text!r}: expected one whole number >= 1")
    return int(text)


def heads_arg(text: str) -> tuple[int, int]:
    """K/V as two multiples of 16 (the matrix shapes' depth)."""
    k, sep, v = text.partition("/")
    if not (sep and k.isdigit() and v.isdigit() and int(k) % 16 == 0 == int(v) % 16 and int(k) and int(v)):
        raise argparse.ArgumentTypeError(f"--heads {text!r}: expected K/V, two positive multiples of 16")
    return int(k), int(v)


def combinations(args) -> list[dict]:
    """Every combination of the option lists that makes a kernel."""
    out = []
    for values in itertools.product(*(getattr(args, o) for o in OPTIONS)):
        c = dict(zip(OPTIONS, values))
        if (c["mask"] and not c["softmax"]) or (c["pingpong"] and (c["overlap"] or c["sync"] != 2)) \
                or (c["overlap"] == 2 and (c["rt"] != 1 or c["softmax"] != 3 or c["mask"])):
            continue  # the mask goes into the softmax; ping-pong is its own two-barrier scheme
        out.append(c)
    return out


def grid(s, c: dict, row_copies: int = 1) -> tuple[int, int]:
    """(workgroups, keys each walks) of combination `c` on case shapes `s`: the case's query rows,
    each `row_copies` times, in blocks of NSG x RT x MM rows, times the KV splits."""
    br = c["nsg"] * c["rt"] * c["mat"][0]
    return math.ceil(s.batch * s.heads_q * s.n_q * row_copies / br) * c["splits"], s.n_kv // c["splits"]


def time_one(dev, s, c: dict, src, out, runs: int, heads: tuple[int, int] | None = None,
             row_copies: int = 1) -> tuple[str, float, int] | str:
    """(registers, median us, rows done) of one combination on case shapes `s` (head sizes
    `heads` if given; every row `row_copies` times), or why not run."""
    head_k, head_v = heads or (s.head_k, s.head_v)
    br = c["nsg"] * c["rt"] * c["mat"][0]
    mask_blocks = math.ceil(s.n_q / br)
    groups, keys = grid(s, c, row_copies)
    q_rows = br if c["q_shared"] == 1 else 0
    shared = 16 * (c["bc"] * (row_vecs(head_k) + row_vecs(head_v)) + q_rows * row_vecs(head_k))
    if shared > dev.caps.max_shared_memory:
        return f"skipped: {shared} bytes of shared memory, over {dev.caps.max_shared_memory}"
    text = source(head_k=head_k, head_v=head_v, mask_blocks=mask_blocks,
                  **{k: v for k, v in c.items() if k != "splits"})
    name = "ceiling_" + "_".join(f"{k}{'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in c.items())
    kernel = dev.pipeline(compile_source(text, name=name).spirv, name=name,
                          required_subgroup_size=SUBGROUP, full_subgroups=True)
    regs = "?"
    if statistics_problem(dev) is None:
        st = kernel.statistics()
        # NVIDIA sets bit 36 of Local Memory Size on every kernel; the bits below are the
        # spilled bytes per thread.
        spill = st.get("Local Memory Size", 0) & ((1 << 36) - 1)
        regs = f"{st.get('Register Count', '?')}" + (f"+{spill}B" if spill else "")
    # The mask as the lanes load it: 16 bytes per 8 S elements of their row tiles, per tile.
    mask_bytes = max(16, mask_blocks * (keys // c["bc"]) * br * c["bc"] * 2)
    mask_buf = dev.buffer(mask_bytes)
    # stage 2's K and V rows in global memory: every workgroup walks all `keys` of them.
    kv_bytes = keys * (row_vecs(head_k) + row_vecs(head_v)) * 16 if c["stage"] == 2 else 16
    kv_buf = dev.buffer(kv_bytes)
    try:
        mask_buf.write(-np.random.default_rng(1).random(mask_bytes // 2).astype(np.float16))
        kv_buf.write((np.random.default_rng(2).standard_normal(kv_bytes // 2) * 0.1).astype(np.float16))
        steps = [(kernel, {abi.BINDING["k"]: src, abi.BINDING["out"]: out, abi.BINDING["mask"]: mask_buf,
                           abi.BINDING["v"]: kv_buf},
                  abi.pack_some(n_kv=keys), (groups, 1, 1))]
        with dev.sequence(steps * runs) as seq:
            us = warm_median(seq)
    finally:
        dev.drop_pipeline(kernel)
        mask_buf.close()
        kv_buf.close()
    return regs, us, groups // c["splits"] * br


def main() -> int:
    ap = parser()
    args = ap.parse_args()
    case = args.case
    s = case.shapes()
    flops = case.flops
    combos = combinations(args)
    with Device(None, capture_statistics=True) as dev:
        if (reason := unavailable(dev.caps).get("coopmat1")) is not None:
            print(f"{dev.caps.name}: {reason}; the ceiling kernels need it", file=sys.stderr)
            return 1
        if not dev.caps.min_subgroup_size <= SUBGROUP <= dev.caps.max_subgroup_size:
            print(f"{dev.caps.name}: subgroups of {dev.caps.min_subgroup_size}..{dev.caps.max_subgroup_size}; "
                  f"the kernels are written for {SUBGROUP}", file=sys.stderr)
            return 1
        src = dev.buffer(1 << 22)
        src.write((np.random.default_rng(0).standard_normal((1 << 21,)) * 0.1).astype(np.float16))
        out = dev.buffer(1 << 22)
        head_k, head_v = args.heads or (s.head_k, s.head_v)
        split = f" as {args.row_copies} subgroups of {head_k}/{head_v} per row" if args.heads or args.row_copies > 1 else ""
        print(f"{case.name}: {s.batch * s.heads_q * s.n_q} query rows, Nkv {s.n_kv}, {s.head_k}/{s.head_v}{split}; "
              f"case FLOPs {flops / 1e9:.1f} G on {dev.caps.name}; {len(combos)} kernels", flush=True)
        print("\t".join(OPTIONS) + "\tregs\tus\tTFLOPS\tcase us", flush=True)
        for c in combos:
            label = "\t".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in c.values())
            try:
                result = time_one(dev, s, c, src, out, args.runs, args.heads, args.row_copies)
            except (CompileError, VulkanError) as exc:
                result = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            if isinstance(result, str):
                print(f"{label}\t{result}", flush=True)
                continue
            regs, us, rows = result
            tflops = 2.0 * rows * s.n_kv * (head_k + head_v) / us / 1e6
            print(f"{label}\t{regs}\t{us:.1f}\t{tflops:.0f}\t{flops / tflops / 1e6:.0f}", flush=True)
        src.close()
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
