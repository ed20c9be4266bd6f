#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_cm1_k256_v256_f16f16_acc32_br128_bc16_wg256_sg32_regs1_m16n8k16_mask_aligned
// FA2 on matrix units: a workgroup owns BR query rows of one head and walks the KV range in
// BC-column tiles. Per tile: S = Q K^T (f32 accumulators), online softmax over S in shared
// memory, then O = diag(alpha) O + P V with O kept in accumulator tiles dealt to subgroups.
// K and V are decoded to f16 in shared memory; padded head columns and rows past the KV range
// are zeros there, so the matrix products never need bounds.

layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

// ---- run-time values (kgen/abi.py: PUSH_FIELDS) ----
layout(push_constant) uniform Push {
    uint  n_q;  // query rows per head (Nq)
    uint  n_kv;  // KV length (Nkv)
    uint  n_head_q;  // query heads (Hq)
    uint  gqa_ratio;  // Hq / Hkv: query heads sharing one KV head
    uint  n_batch;  // batch size (B)
    uint  q_stride_row;  // Q: elements between query rows
    uint  q_stride_head;  // Q: elements between heads
    uint  q_stride_batch;  // Q: elements between batches
    uint  k_stride_row;  // K: elements between KV rows
    uint  k_stride_head;  // K: elements between KV heads
    uint  k_stride_batch;  // K: elements between batches
    uint  v_stride_row;  // V: elements between KV rows
    uint  v_stride_head;  // V: elements between KV heads
    uint  v_stride_batch;  // V: elements between batches
    uint  k_offset;  // K: first element in its buffer
    uint  v_offset;  // V: first element in its buffer
    uint  mask_stride_row;  // mask: elements between query rows (0 = broadcast)
    uint  mask_stride_head;  // mask: elements between heads (0 = broadcast)
    uint  mask_stride_batch;  // mask: elements between batches (0 = broadcast)
    float scale;  // score scale (1/sqrt(Dk) by default)
    float softcap;  // softcap value; scores become softcap * tanh(score / softcap)
    float alibi_m0;  // ALiBi base for heads below alibi_n2
    float alibi_m1;  // ALiBi base for the other heads
    uint  alibi_n2;  // ALiBi: 2^floor(log2(Hq))
    uint  window;  // sliding window width with the causal feature (0 = none)
    uint  split_kv;  // split-k: KV columns per split (a multiple of bc)
    uint  split_count;  // split-k: number of splits (grid z = n_batch * split_count)
    uint  o_stride_row;  // O: elements between query rows (f32, multiples of 4)
    uint  o_stride_head;  // O: elements between heads
    uint  o_stride_batch;  // O: elements between batches
} pc;

// ---- buffers (kgen/abi.py: BINDINGS) ----
layout(std430, binding = 0) readonly buffer QBuf { vec4 q_data4[]; };
layout(std430, binding = 0) readonly buffer QBuf1 { float q_data[]; };
layout(std430, binding = 3) readonly buffer MaskBuf { float16_t mask_data[]; };
layout(std430, binding = 5) writeonly buffer OutBuf { vec4 out_data4[]; };
layout(std430, binding = 5) writeonly buffer OutBuf1 { float out_data[]; };

// ---- K: f16 ----
layout(std430, binding = 1) readonly buffer KF16x4 { f16vec4 k_f16x4[]; };
layout(std430, binding = 1) readonly buffer KF16 { float16_t k_f16[]; };
vec4 k_load4(uint e) { return vec4(k_f16x4[e >> 2]); }
float k_load1(uint e) { return float(k_f16[e]); }
f16vec4 k_raw4(uint e) { return k_f16x4[e >> 2]; }

// ---- V: f16 ----
layout(std430, binding = 2) readonly buffer VF16x4 { f16vec4 v_f16x4[]; };
layout(std430, binding = 2) readonly buffer VF16 { float16_t v_f16[]; };
vec4 v_load4(uint e) { return vec4(v_f16x4[e >> 2]); }
float v_load1(uint e) { return float(v_f16[e]); }
f16vec4 v_raw4(uint e) { return v_f16x4[e >> 2]; }

// A masked score is this finite value, not -inf, so that max() and exp() never meet inf - inf;
// a row whose running max is still below MASKED_LIMIT has seen nothing visible and yields 0.
const float MASKED = -1.0e30;
const float MASKED_LIMIT = -1.0e29;

// Everything applied to q.k before the softmax, given key j's mask value for row i (0 without
// the mask). `slope` is alibi_slope(h) (1.0 without ALiBi), hoisted by the caller: it is per head.
float fa_score_with(float qk, float mask_value, uint i, uint j, float slope) {
    float s = pc.scale * qk;
    s += slope * mask_value;
    return max(s, MASKED);  // also maps a -inf mask entry to MASKED
}

// fa_score_with, reading the mask value from the mask buffer (row base from mask_row()).
float fa_score(float qk, uint mask_row_base, uint i, uint j, float slope) {
    return fa_score_with(qk, float(mask_data[mask_row_base + j]), i, j, slope);
}

// First mask element of query row i of head h in batch b.
uint mask_row(uint b, uint h, uint i) {
    return b * pc.mask_stride_batch + h * pc.mask_stride_head + i * pc.mask_stride_row;
}

// K and V as 16-byte elements (8 halves): the direct schedule loads matrix operands straight
// from here, the stream, regs and osplit schedules copy whole tiles to shared memory in these units.
// Offsets and row strides are multiples of 8 halves (kgen.planning checks them).
layout(std430, binding = 1) readonly buffer KDirect { uvec4 k_direct[]; };
layout(std430, binding = 2) readonly buffer VDirect { uvec4 v_direct[]; };
// The mask binding holds the fragment-ordered copy (kgen.planning runs templates/mask_frag.comp.j2).
layout(std430, binding = 3) readonly buffer MaskFrag { uvec4 mask_frag[]; };

// ---- this variant's shape (kgen/paths/coopmat1.py: layout) ----
const uint WG = 256u;
const uint SG = 32u;  // required subgroup size, full subgroups
const uint NSG = 8u;  // subgroups per workgroup
const uint BR = 128u;  // query rows per workgroup
const uint BC = 16u;  // KV columns per tile
const uint HSK = 256u;
const uint HSV = 256u;
const uint HSK_PAD = 256u;  // head_k rounded up to MK (q.k depth)
const uint HSV_PAD = 256u;  // head_v rounded up to MN (O columns)
// Matrix unit: A is MM x MK, B is MK x MN, C is MM x MN.
const uint MM = 16u;
const uint MN = 8u;
const uint MK = 16u;
// Shared-memory strides in elements of each array (f16 halves or f32 floats).
const uint Q_STRIDE = 264u;
const uint K_CHUNK = 256u;  // K head columns per staging step
const uint K_CHUNKS = 1u;
const uint K_STRIDE = 264u;
const uint V_ROWS = 16u;  // V rows per staging step
const uint V_CHUNKS = 1u;
const uint V_STRIDE = 264u;
const uint Q_BATCH = 8u;  // Q vec4 loads in flight per thread
const uint K_STEP = 2u;  // vec4s per thread of one K staging step
const uint V_STEP = 2u;  // vec4s per thread of one V staging step
const uint STAGED = 2u;
const uint S_STRIDE = 20u;
const uint P_STRIDE = 24u;
// Matrix tiles, dealt round-robin: tile t belongs to subgroup t % NSG.
const uint S_COLS = 2u;
const uint S_TILES = 16u;
const uint S_PER_SG = 2u;
const uint O_COLS = 32u;
const uint O_TILES = 256u;
const uint O_PER_SG = 32u;
// Softmax: TPR adjacent lanes own a row; a thread handles rows rg, rg + ROW_GROUPS, ...
const uint TPR = 2u;
const uint ROW_GROUPS = 128u;
const uint RPT = 1u;

// K tile (bc rows, 16-byte elements); Q rows on their way to registers first
shared uvec4 Ksh[528];
// V tile (bc rows, 16-byte elements)
shared uvec4 Vsh[528];

// Matrix types. S and the broadcast factors are f32; O is float.
#define MatA coopmat<float16_t, gl_ScopeSubgroup, MM, MK, gl_MatrixUseA>
#define MatB coopmat<float16_t, gl_ScopeSubgroup, MK, MN, gl_MatrixUseB>
#define MatF32 coopmat<float, gl_ScopeSubgroup, MM, MN, gl_MatrixUseAccumulator>
#define MatO coopmat<float, gl_ScopeSubgroup, MM, MN, gl_MatrixUseAccumulator>
#define ROW_MAJOR gl_CooperativeMatrixLayoutRowMajor
#define COL_MAJOR gl_CooperativeMatrixLayoutColumnMajor

// Invocation index built from subgroup ids, so that the lanes sharing a softmax row are lanes
// of one subgroup whatever order the driver numbers invocations in.
uint sg, lane, tid;

const uint V_VECS = HSV / 8u;
const uint Q_VECS = HSK_PAD / 8u;     // Q rows are staged with their zero padding
const uint VSH_ROW = V_STRIDE / 8u;
const uint KSTEPS = HSK_PAD / MK;     // q.k depth steps
const uint PSTEPS = BC / MK;          // P.V depth steps per tile
const uint TILES_PER_PSTEP = MK / MN; // S tiles one P operand spans
const uint S_N = BC / MN;             // S tiles (of MM x MN) per tile row
const uint O_N = HSV_PAD / MN;        // O tiles per row tile
const uint RT = 1u;   // tiles of MM rows per subgroup
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

// ---- fragment scheme 1: lane l's accumulator element i is row
// FRAG_ROW[l * SLOTS + SLOT_OF[i]] and column FRAG_COL[l * ACC_LEN + i] of its MM x MN tile ----
const uint ACC_LEN = 4u;  // accumulator elements per lane
const uint A_LEN = 8u;      // A-operand elements per lane
const uint SLOTS = 2u;      // rows a lane holds per tile
const uint SLOT_OF[ACC_LEN] = uint[](0u, 0u, 1u, 1u);
const uint FRAG_ROW[SG * SLOTS] = uint[](0u, 8u, 0u, 8u, 0u, 8u, 0u, 8u, 1u, 9u, 1u, 9u, 1u, 9u, 1u, 9u, 2u, 10u, 2u, 10u, 2u, 10u, 2u, 10u, 3u, 11u, 3u, 11u, 3u, 11u, 3u, 11u, 4u, 12u, 4u, 12u, 4u, 12u, 4u, 12u, 5u, 13u, 5u, 13u, 5u, 13u, 5u, 13u, 6u, 14u, 6u, 14u, 6u, 14u, 6u, 14u, 7u, 15u, 7u, 15u, 7u, 15u, 7u, 15u);
const uint FRAG_COL[SG * ACC_LEN] = uint[](0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u);
// P's A element e is element A_ELEM[e] of S tile A_TILE[e] (within the step): same lane.
const uint A_TILE[A_LEN] = uint[](0u, 0u, 1u, 1u, 0u, 0u, 1u, 1u);
const uint A_ELEM[A_LEN] = uint[](0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u);

// Max and sum over the lanes that hold the same row (xor masks 1, 2).
float row_max(float x) {
    x = max(x, subgroupShuffleXor(x, 1u));
    x = max(x, subgroupShuffleXor(x, 2u));
    return x;
}

float row_sum(float x) {
    x += subgroupShuffleXor(x, 1u);
    x += subgroupShuffleXor(x, 2u);
    return x;
}
const uint K_VECS = HSK / 8u;         // 16-byte elements per K row (head sizes are multiples of 8)
const uint KSH_ROW = K_STRIDE / 8u;   // 16-byte elements between rows of Ksh
uvec4 kv_staged[STAGED];

// K rows kv0..kv0+BC-1 -> registers (rows past kv_end as zeros); store_k puts them in Ksh.
void load_k(uint k_base, uint kv0, uint kv_end) {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG, j = e / K_VECS;
        bool in_tile = true;
        kv_staged[n] = uvec4(0u);
        if (in_tile) {
            kv_staged[n] = k_direct[(k_base + (kv0 + j) * pc.k_stride_row) / 8u + e % K_VECS];
        }
    }
}

void store_k() {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG;
        Ksh[e / K_VECS * KSH_ROW + e % K_VECS] = kv_staged[n];
    }
}

// Zeros everywhere in Ksh and Vsh: head columns past HSK / HSV (up to the matrix padding) are
// never written by a tile, and the products read them.
void clear_kv() {
    for (uint e = tid; e < BC * KSH_ROW; e += WG) {
        Ksh[e] = uvec4(0u);
    }
    for (uint e = tid; e < BC * VSH_ROW; e += WG) {
        Vsh[e] = uvec4(0u);
    }
}

// Q rows row0 + q0 .. q0 + rows - 1 (f32 in memory) as f16 into rows 0.. of Ksh (on their way to registers), zero
// past Nq and past HSK. Read as scalars: Q's strides need not be multiples of 4.
void stage_q_rows(uint q_base, uint row0, uint q0, uint rows) {
    for (uint e = tid; e < rows * Q_VECS; e += WG) {
        const uint r = e / Q_VECS, c = e % Q_VECS;
        uvec4 x = uvec4(0u);
        if (row0 + q0 + r < pc.n_q && c < K_VECS) {
            const uint q = q_base + (row0 + q0 + r) * pc.q_stride_row + c * 8u;
            [[unroll]] for (uint n = 0u; n < 4u; ++n) {
                x[n] = packFloat2x16(f16vec2(q_data[q + 2u * n], q_data[q + 2u * n + 1u]));
            }
        }
        Ksh[r * KSH_ROW + c] = x;
    }
}

void load_v(uint v_base, uint kv0, uint kv_end) {
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG, j = e / V_VECS;
        bool in_tile = true;
        kv_staged[n] = uvec4(0u);
        if (in_tile) {
            kv_staged[n] = v_direct[(v_base + (kv0 + j) * pc.v_stride_row) / 8u + e % V_VECS];
        }
    }
}

void store_v() {
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG;
        Vsh[e / V_VECS * VSH_ROW + e % V_VECS] = kv_staged[n];
    }
}

// This lane's mask values of the tile at kv0, from the fragment-ordered copy of the mask
// (templates/mask_frag.comp.j2): 16-byte element (chunk, lane) holds S tiles chunk * MF_TILES ..
// in accumulator order. mask_tile[t]: row tile t's first element, chunk 0.
const uint MF_TILES = 2u;
const uint MF_CHUNKS = BC / (MF_TILES * MN);  // 16-byte elements per lane per tile row
uvec4 mval[RT][MF_CHUNKS];

void load_mask(uint mask_tile[RT], uint kv0) {
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint cc = 0u; cc < MF_CHUNKS; ++cc) {
            mval[t][cc] = mask_frag[(mask_tile[t] + kv0 / (MF_TILES * MN) + cc) * SG + lane];
        }
    }
}

// Element i of S tile c of row tile t.
float mask_value(uint t, uint c, uint i) {
    const uint k = (c % MF_TILES) * ACC_LEN + i;
    return unpackHalf2x16(mval[t][c / MF_TILES][k / 2u])[k % 2u];
}

void main() {
    sg = gl_SubgroupID;
    lane = gl_SubgroupInvocationID;
    tid = sg * SG + lane;

    const uint row0 = gl_WorkGroupID.x * BR;
    const uint h = gl_WorkGroupID.y;
    const uint hk = h / pc.gqa_ratio;
    const uint split = 0u;
    const uint b = gl_WorkGroupID.z;
    const uint kv_begin = 0u;
    const uint kv_end = pc.n_kv;
    uint kv_start = kv_begin, kv_stop = kv_end;
    const uint k_base = pc.k_offset + b * pc.k_stride_batch + hk * pc.k_stride_head;
    const uint v_base = pc.v_offset + b * pc.v_stride_batch + hk * pc.v_stride_head;
    const float slope = 1.0;

    // This subgroup's rows: RT tiles of MM from strip = sg * RT * MM; the rows and columns this
    // lane's accumulator elements hold (the same in every S and O tile of a row tile).
    const uint strip = sg * RT * MM;
    uint my_row[RT][SLOTS];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            my_row[t][s] = row0 + strip + t * MM + FRAG_ROW[lane * SLOTS + s];
        }
    }
    uint my_col[ACC_LEN];
    [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
        my_col[i] = FRAG_COL[lane * ACC_LEN + i];
    }
    const uint q_base = b * pc.q_stride_batch + h * pc.q_stride_head;
    // Scores are kept in log2 units, so that exp2 needs no multiply per element.
    const float scale2 = pc.scale * LOG2E;
    const float slope2 = slope * LOG2E;
    // The fragment-ordered mask (kgen.render.mask_frag_groups): planes of 16-row tiles, each
    // row of tiles padded to whole KV tiles. Row tiles past Nq read the last one (their
    // results are dropped).
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;   // the pass's planes
    const uint mask_plane = (pc.mask_stride_batch == 0u ? 0u : b * mask_heads) + (pc.mask_stride_head == 0u ? 0u : h);
    const uint mask_row_tiles = (mask_rows + 15u) / 16u;
    const uint mask_chunks = (pc.n_kv + BC - 1u) / BC * (BC / (MF_TILES * MN));
    uint mask_tile[RT];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        const uint row_tile = mask_rows == 1u ? 0u : min((row0 + strip + t * MM) / 16u, mask_row_tiles - 1u);
        mask_tile[t] = (mask_plane * mask_row_tiles + row_tile) * mask_chunks;
    }

    clear_kv();
    // Q's operands into registers, BC rows at a time through Ksh.
    MatA qm[RT][KSTEPS];
    [[unroll]] for (uint q0 = 0u; q0 < BR; q0 += BC) {
        barrier();  // Ksh is free
        stage_q_rows(q_base, row0, q0, min(BC, BR - q0));
        barrier();
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            const uint first = strip + t * MM;  // BC is a multiple of MM: a row tile is in one chunk
            if (first >= q0 && first < q0 + BC) {  // subgroup-uniform
                [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
                    coopMatLoad(qm[t][ks], Ksh, (first - q0) * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);
                }
            }
        }
    }
    // Q's pad columns were staged as zeros, so Ksh's stay zero for the K tiles.

    // Online-softmax state of this lane's rows: m is the row max (equal in the lanes holding the
    // row); l is this lane's share of the row sum, added over the lanes once at the end.
    float m_slot[RT][SLOTS], l_slot[RT][SLOTS];
    MatF32 O[RT][O_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            m_slot[t][s] = MASKED;
            l_slot[t][s] = 0.0;
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            O[t][j] = MatF32(0.0);
        }
    }

    // Two barriers per tile, and no global load is in flight across one: NVIDIA GPUs wait at a
    // barrier for the loads issued before it, so the next K is loaded after the P V barrier.
    barrier();  // Ksh is free (Q's operands went through it)
    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end);
        store_k();
    }
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        barrier();  // Ksh holds this tile's K, and every subgroup finished the last P V (Vsh is free)
        load_v(v_base, kv0, kv_end);  // in flight during S and the softmax
        // Loaded here, they arrive during S (loaded a tile ahead, they would wait at barriers).
        load_mask(mask_tile, kv0);

        // ---- S = Q K^T for this subgroup's rows, all BC columns: each K operand serves RT tiles ----
        MatF32 S[RT][S_N];
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                S[t][c] = MatF32(0.0);
            }
        }
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                // B = K^T: K's rows are B's columns (column-major, stride KSH_ROW).
                MatB kb;
                coopMatLoad(kb, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    S[t][c] = coopMatMulAdd(qm[t][ks], kb, S[t][c]);
                }
            }
        }

        // ---- online softmax on the accumulator elements ----
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            float mx[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                mx[s] = MASKED;
            }
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    const uint qi = my_row[t][SLOT_OF[i]], j = kv0 + c * MN + my_col[i];
                    // fa_score_with in log2 units with scale and slope folded in; a -inf mask
                    // value stays -inf, which exp2 takes to 0 like MASKED.
                    float s = scale2 * S[t][c][i] + slope2 * mask_value(t, c, i);
                    S[t][c][i] = s;
                    mx[SLOT_OF[i]] = max(mx[SLOT_OF[i]], s);
                }
            }
            float alpha[SLOTS], m_sub[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                const float m_new = max(m_slot[t][s], row_max(mx[s]));
                alpha[s] = exp2(m_slot[t][s] - m_new);
                m_slot[t][s] = m_new;
                l_slot[t][s] *= alpha[s];
                // A row that has seen nothing visible has only MASKED or -inf scores: subtracting
                // 0 instead of its max keeps exp2 of them exactly 0, without a test per element.
                m_sub[s] = m_new > MASKED_LIMIT ? m_new : 0.0;
            }
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    const uint s = SLOT_OF[i];
                    const float16_t p = float16_t(exp2(S[t][c][i] - m_sub[s]));
                    S[t][c][i] = float(p);  // exact in f16: P's A operand takes it back as is
                    l_slot[t][s] += float(p);
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    O[t][j][i] *= alpha[SLOT_OF[i]];
                }
            }
        }

        store_v();
        barrier();  // Vsh holds this tile's V, and every subgroup finished S (Ksh is free)
        const bool more = kv0 + BC < kv_stop;
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);  // in flight during P V
        }

        // ---- O += P V: P's A operands built from this lane's own S elements ----
        [[unroll]] for (uint d = 0u; d < PSTEPS; ++d) {
            MatA pa[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) {
                [[unroll]] for (uint e = 0u; e < A_LEN; ++e) {
                    pa[t][e] = float16_t(S[t][d * TILES_PER_PSTEP + A_TILE[e]][A_ELEM[e]]);
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Vsh, d * MK * VSH_ROW + j * MN / 8u, VSH_ROW, ROW_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    O[t][j] = coopMatMulAdd(pa[t], vb, O[t][j]);
                }
            }
        }
        if (more) {
            store_k();
        }
    }

    // ---- epilogue: rows normalised by l (summed over the lanes of the row), written from
    // registers; split-k also writes (m, l) per row ----
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        float f[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const float m = m_slot[t][s] * LN2;  // back to natural-log units: MASKED stays below MASKED_LIMIT
            float l = row_sum(l_slot[t][s]);
            f[s] = m > MASKED_LIMIT && l > 0.0 ? 1.0 / l : 0.0;  // a row that saw nothing: zeros
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint qi = my_row[t][SLOT_OF[i]], d = j * MN + FRAG_COL[lane * ACC_LEN + i];
                if (qi < pc.n_q && d < HSV) {
                    out_data[b * pc.o_stride_batch + h * pc.o_stride_head + qi * pc.o_stride_row + d] = O[t][j][i] * f[SLOT_OF[i]];
                }
            }
        }
    }
}
