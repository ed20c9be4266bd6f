#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned
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
const uint BR = 64u;  // query rows per workgroup
const uint BC = 32u;  // KV columns per tile
const uint HSK = 576u;
const uint HSV = 512u;
const uint HSK_PAD = 576u;  // head_k rounded up to MK (q.k depth)
const uint HSV_PAD = 512u;  // head_v rounded up to MN (O columns)
// Matrix unit: A is MM x MK, B is MK x MN, C is MM x MN.
const uint MM = 16u;
const uint MN = 8u;
const uint MK = 16u;
// Shared-memory strides in elements of each array (f16 halves or f32 floats).
const uint Q_STRIDE = 584u;
const uint K_CHUNK = 576u;  // K head columns per staging step
const uint K_CHUNKS = 1u;
const uint K_STRIDE = 584u;
const uint V_ROWS = 32u;  // V rows per staging step
const uint V_CHUNKS = 1u;
const uint V_STRIDE = 584u;
const uint Q_BATCH = 8u;  // Q vec4 loads in flight per thread
const uint K_STEP = 9u;  // vec4s per thread of one K staging step
const uint V_STEP = 0u;  // vec4s per thread of one V staging step
const uint STAGED = 9u;
const uint S_STRIDE = 36u;
const uint P_STRIDE = 40u;
// Matrix tiles, dealt round-robin: tile t belongs to subgroup t % NSG.
const uint S_COLS = 4u;
const uint S_TILES = 16u;
const uint S_PER_SG = 2u;
const uint O_COLS = 64u;
const uint O_TILES = 256u;
const uint O_PER_SG = 32u;
// Softmax: TPR adjacent lanes own a row; a thread handles rows rg, rg + ROW_GROUPS, ...
const uint TPR = 4u;
const uint ROW_GROUPS = 64u;
const uint RPT = 1u;

// K tile (bc rows, 16-byte elements); V is its first head_v columns
shared uvec4 Ksh[2336];
// P (f16) of every S block in A-fragment order: [row tile][column group][lane]; before that, the partial S sums of the depth split
shared uvec4 Psh[512];
// per column group and row: the block's row max, at the end its row sum
shared float Xsh[128];

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

const uint KSTEPS = HSK_PAD / MK;     // q.k depth steps
const uint RT = BR / MM;              // row tiles: each subgroup holds O of all of them
const uint CG = BC / MK;              // column groups: S blocks per row tile, P depth steps per tile
const uint S_N = MK / MN;             // S tiles in one subgroup's block
const uint O_SG = 64u;  // O columns per subgroup
const uint O_N = O_SG / MN;           // O tiles per row tile
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
const uint KPART = (KSTEPS + CG - 1u) / CG;  // q.k depth steps per subgroup of a row tile
const uint PART_VECS = S_N * ACC_LEN / 4u;    // 16-byte elements per lane of one partial S block
const uint ROW_LANES = 3u;  // lane & ROW_LANES == 0: the first lane of a row

// Q (f16) in A-fragment order: uvec4 [b * Hq + h][row tile of 16][depth step][lane].
layout(std430, binding = 0) readonly buffer QFrag { uvec4 q_frag[]; };

// Zeros in Ksh's head columns past HSK (up to HSK_PAD): a tile never writes them and S reads them.
void clear_k() {
    for (uint e = tid; e < BC * KSH_ROW; e += WG) {
        Ksh[e] = uvec4(0u);
    }
}

// The 8 f16 of an A operand, in element order, as one 16-byte element.
MatA unpack_a(uvec4 x) {
    MatA a;
    [[unroll]] for (uint e = 0u; e < A_LEN; ++e) {
        a[e] = unpackFloat2x16(x[e / 2u])[e % 2u];
    }
    return a;
}

// This lane's mask values of its S block in the tile at kv0: one 16-byte element of the
// fragment-ordered mask (templates/mask_frag.comp.j2; a chunk of 16 columns is one block).
uvec4 mval;

float mask_value(uint c, uint i) {
    const uint k = c * ACC_LEN + i;
    return unpackHalf2x16(mval[k / 2u])[k % 2u];
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

    // This subgroup's S block, and the rows this lane's accumulator elements hold in every row
    // tile (O covers all of them), relative to row0. The fragment tables are read here only:
    // indexed by lane they are divergent constant loads, which the loop cannot afford.
    const uint rt_s = sg / CG, cg = sg % CG;
    const uint o_col0 = sg * O_SG;
    uint my_row[RT][SLOTS], s_row[SLOTS];
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        const uint r = FRAG_ROW[lane * SLOTS + s];
        s_row[s] = rt_s * MM + r;
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            my_row[t][s] = t * MM + r;
        }
    }
    uint my_col[ACC_LEN];
    [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
        my_col[i] = FRAG_COL[lane * ACC_LEN + i];
    }
    // Q's operands of row tile rt_s (tiles past Nq read the last one: their rows are dropped).
    const uint q_tiles = (pc.n_q + 15u) / 16u;
    const uint q_at = ((b * pc.n_head_q + h) * q_tiles + min((row0 + rt_s * MM) / 16u, q_tiles - 1u))
                      * KSTEPS * SG + lane;
    const float scale2 = pc.scale * LOG2E;  // scores in log2 units: exp2 needs no multiply
    const float slope2 = slope * LOG2E;
    // The fragment-ordered mask (kgen.render.mask_frag_groups): planes of 16-row tiles, each
    // row of tiles padded to whole KV tiles; chunk kv0 / 16 + cg is this block's.
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;   // the pass's planes
    const uint mask_plane = (pc.mask_stride_batch == 0u ? 0u : b * mask_heads) + (pc.mask_stride_head == 0u ? 0u : h);
    const uint mask_row_tiles = (mask_rows + 15u) / 16u;
    const uint mask_chunks = (pc.n_kv + BC - 1u) / BC * CG;
    const uint row_tile = mask_rows == 1u ? 0u : min((row0 + rt_s * MM) / 16u, mask_row_tiles - 1u);
    const uint mask_at = (mask_plane * mask_row_tiles + row_tile) * mask_chunks + cg;

    // Online softmax: m of every row this lane holds (all subgroups keep the same values, from
    // the same maxima in Xsh); l of this lane's share of its S block's rows.
    float m_o[RT][SLOTS], l_s[SLOTS];
    MatF32 O[RT][O_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            m_o[t][s] = MASKED;
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            O[t][j] = MatF32(0.0);
        }
    }
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        l_s[s] = 0.0;
    }

    clear_k();
    barrier();
    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end);
        store_k();
    }
    // Five barriers per tile: V lives in the K tile, so the next K tile can only be stored once
    // every subgroup's P V is done.
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        barrier();  // Ksh holds this tile
        // The next tile's loads are in flight through the whole tile (issued after P's barrier
        // they would have less time to land).
        const bool more = kv0 + BC < kv_stop;
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);
        }
        mval = mask_frag[(mask_at + kv0 / BC * CG) * SG + lane];

        // ---- S = Q K^T for this subgroup's block: MM rows x MK columns ----
        // Split by depth over the row tile's CG subgroups: this one sums depth part cg of every
        // block of its row tile, so each Q operand is read once per row tile instead of CG
        // times, and the other blocks' partial sums go to their owners
        // through Psh (free: the last P V read it before the last tile's final barrier).
        MatF32 part[CG][S_N];
        [[unroll]] for (uint g = 0u; g < CG; ++g) {
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                part[g][c] = MatF32(0.0);
            }
        }
        [[unroll]] for (uint kk = 0u; kk < KPART; ++kk) {
            const uint ks = cg * KPART + kk;
            const MatA qa = unpack_a(q_frag[q_at + ks * SG]);
            [[unroll]] for (uint g = 0u; g < CG; ++g) {
                [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                    MatB kb;  // B = K^T: K's rows are B's columns
                    coopMatLoad(kb, Ksh, (g * MK + c * MN) * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                    part[g][c] = coopMatMulAdd(qa, kb, part[g][c]);
                }
            }
        }
        [[unroll]] for (uint g = 0u; g < CG; ++g) {
            if (g != cg) {
                // Slot (owner, sender's part with the owner's own part left out).
                const uint slot = (rt_s * CG + g) * (CG - 1u) + (cg < g ? cg : cg - 1u);
                [[unroll]] for (uint x = 0u; x < PART_VECS; ++x) {
                    vec4 f;
                    [[unroll]] for (uint e = 0u; e < 4u; ++e) {
                        const uint k = x * 4u + e;
                        f[e] = part[g][k / ACC_LEN][k % ACC_LEN];
                    }
                    Psh[(slot * PART_VECS + x) * SG + lane] = floatBitsToUint(f);
                }
            }
        }
        barrier();  // every block's partial sums are in Psh
        // This subgroup's own block, selected without indexing registers by cg (that would put
        // them in memory).
        MatF32 S[S_N];
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            S[c] = part[0][c];
            [[unroll]] for (uint g = 1u; g < CG; ++g) {
                if (g == cg) S[c] = part[g][c];
            }
        }
        [[unroll]] for (uint h2 = 0u; h2 + 1u < CG; ++h2) {
            [[unroll]] for (uint x = 0u; x < PART_VECS; ++x) {
                const vec4 f = uintBitsToFloat(Psh[((sg * (CG - 1u) + h2) * PART_VECS + x) * SG + lane]);
                [[unroll]] for (uint e = 0u; e < 4u; ++e) {
                    const uint k = x * 4u + e;
                    S[k / ACC_LEN][k % ACC_LEN] += f[e];
                }
            }
        }

        // ---- scores (log2 units) and this block's row maxima -> Xsh ----
        float mx[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            mx[s] = MASKED;
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint j = kv0 + cg * MK + c * MN + my_col[i];
                float s = scale2 * S[c][i] + slope2 * mask_value(c, i);
                S[c][i] = s;
                mx[SLOT_OF[i]] = max(mx[SLOT_OF[i]], s);
            }
        }
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const float r = row_max(mx[s]);
            if ((lane & ROW_LANES) == 0u) {
                Xsh[cg * BR + s_row[s]] = r;
            }
        }
        barrier();  // every block's row maxima are in Xsh

        // ---- new row maxima; O rescaled; P of this block -> Psh ----
        float alpha_s[SLOTS], m_sub[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            alpha_s[s] = 1.0;
            m_sub[s] = 0.0;
        }
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            float alpha[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                const uint r = my_row[t][s];
                float m_new = m_o[t][s];
                [[unroll]] for (uint g = 0u; g < CG; ++g) {
                    m_new = max(m_new, Xsh[g * BR + r]);
                }
                alpha[s] = exp2(m_o[t][s] - m_new);
                m_o[t][s] = m_new;
                if (t == rt_s) {
                    alpha_s[s] = alpha[s];
                    // A row that has seen nothing visible subtracts 0: exp2 of MASKED stays 0.
                    m_sub[s] = m_new > MASKED_LIMIT ? m_new : 0.0;
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    O[t][j][i] *= alpha[SLOT_OF[i]];
                }
            }
        }
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            l_s[s] *= alpha_s[s];
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const float p = float(float16_t(exp2(S[c][i] - m_sub[SLOT_OF[i]])));
                S[c][i] = p;  // exact in f16: the P operand takes it as is
                l_s[SLOT_OF[i]] += p;
            }
        }
        uvec4 pk;
        [[unroll]] for (uint e = 0u; e < A_LEN; e += 2u) {
            pk[e / 2u] = packFloat2x16(f16vec2(S[A_TILE[e]][A_ELEM[e]], S[A_TILE[e + 1u]][A_ELEM[e + 1u]]));
        }
        Psh[(rt_s * CG + cg) * SG + lane] = pk;
        barrier();  // P is complete (and Xsh is free)

        // ---- O += P V for this subgroup's columns; V is the K tile's first columns ----
        [[unroll]] for (uint d = 0u; d < CG; ++d) {
            MatA pa[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) {
                pa[t] = unpack_a(Psh[(t * CG + d) * SG + lane]);
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Ksh, d * MK * KSH_ROW + (o_col0 + j * MN) / 8u, KSH_ROW, ROW_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    O[t][j] = coopMatMulAdd(pa[t], vb, O[t][j]);
                }
            }
        }
        barrier();  // every subgroup is done with this tile's K and V
        if (more) {
            store_k();
        }
    }

    // ---- epilogue: each block's row sums -> Xsh (free: its last reads were before the last
    // tile's P barrier), then rows normalised by l and written from registers ----
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        const float l = row_sum(l_s[s]);
        if ((lane & ROW_LANES) == 0u) {
            Xsh[cg * BR + s_row[s]] = l;
        }
    }
    barrier();
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        float f[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const uint r = my_row[t][s];
            float l = 0.0;
            [[unroll]] for (uint g = 0u; g < CG; ++g) {
                l += Xsh[g * BR + r];
            }
            const float m = m_o[t][s] * LN2;  // natural-log units: MASKED stays below MASKED_LIMIT
            f[s] = m > MASKED_LIMIT && l > 0.0 ? 1.0 / l : 0.0;  // a row that saw nothing: zeros
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint qi = row0 + my_row[t][SLOT_OF[i]], d = o_col0 + j * MN + my_col[i];
                if (qi < pc.n_q && d < HSV) {
                    out_data[b * pc.o_stride_batch + h * pc.o_stride_head + qi * pc.o_stride_row + d] = O[t][j][i] * f[SLOT_OF[i]];
                }
            }
        }
    }
}
