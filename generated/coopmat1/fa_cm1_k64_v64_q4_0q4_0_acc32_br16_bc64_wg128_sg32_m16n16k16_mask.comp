#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_cm1_k64_v64_q4_0q4_0_acc32_br16_bc64_wg128_sg32_m16n16k16_mask
// FA2 on matrix units: a workgroup owns BR query rows of one head and walks the KV range in
// BC-column tiles. Per tile: S = Q K^T (f32 accumulators), online softmax over S in shared
// memory, then O = diag(alpha) O + P V with O kept in accumulator tiles dealt to subgroups.
// K and V are decoded to f16 in shared memory; padded head columns and rows past the KV range
// are zeros there, so the matrix products never need bounds.

layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;

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

// ---- K: q4_0 (32 elements in 18 bytes) ----
// Blocks are read as 16-bit words: every ggml block size is even but not a multiple of 4.
layout(std430, binding = 1) readonly buffer KBlocks { uint16_t k_w[]; };
uint k_word(uint blk, uint w) { return uint(k_w[blk * 9u + w]); }
float k_half(uint blk, uint w) { return unpackHalf2x16(k_word(blk, w)).x; }
// Four consecutive bytes of the block starting at byte 2*w (w counts 16-bit words).
uint k_bytes4(uint blk, uint w) { return k_word(blk, w) | (k_word(blk, w + 1u) << 16); }
// q4_0: d (f16) then 16 bytes; element i < 16 is the low nibble of byte i, i >= 16 the high
// nibble of byte i - 16; x = d * (nibble - 8).
vec4 k_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = k_bytes4(blk, 1u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24)) & 15u;
    return k_half(blk, 0u) * (vec4(q) - 8.0);
}
float k_load1(uint e) { return k_load4(e & ~3u)[e & 3u]; }
vec4 k_raw4(uint e) { return k_load4(e); }

// ---- V: q4_0 (32 elements in 18 bytes) ----
// Blocks are read as 16-bit words: every ggml block size is even but not a multiple of 4.
layout(std430, binding = 2) readonly buffer VBlocks { uint16_t v_w[]; };
uint v_word(uint blk, uint w) { return uint(v_w[blk * 9u + w]); }
float v_half(uint blk, uint w) { return unpackHalf2x16(v_word(blk, w)).x; }
// Four consecutive bytes of the block starting at byte 2*w (w counts 16-bit words).
uint v_bytes4(uint blk, uint w) { return v_word(blk, w) | (v_word(blk, w + 1u) << 16); }
// q4_0: d (f16) then 16 bytes; element i < 16 is the low nibble of byte i, i >= 16 the high
// nibble of byte i - 16; x = d * (nibble - 8).
vec4 v_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = v_bytes4(blk, 1u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24)) & 15u;
    return v_half(blk, 0u) * (vec4(q) - 8.0);
}
float v_load1(uint e) { return v_load4(e & ~3u)[e & 3u]; }
vec4 v_raw4(uint e) { return v_load4(e); }

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

// ---- this variant's shape (kgen/paths/coopmat1.py: layout) ----
const uint WG = 128u;
const uint SG = 32u;  // required subgroup size, full subgroups
const uint NSG = 4u;  // subgroups per workgroup
const uint BR = 16u;  // query rows per workgroup
const uint BC = 64u;  // KV columns per tile
const uint HSK = 64u;
const uint HSV = 64u;
const uint HSK_PAD = 64u;  // head_k rounded up to MK (q.k depth)
const uint HSV_PAD = 64u;  // head_v rounded up to MN (O columns)
// Matrix unit: A is MM x MK, B is MK x MN, C is MM x MN.
const uint MM = 16u;
const uint MN = 16u;
const uint MK = 16u;
// Shared-memory strides in elements of each array (f16 halves or f32 floats).
const uint Q_STRIDE = 72u;
const uint K_CHUNK = 64u;  // K head columns per staging step
const uint K_CHUNKS = 1u;
const uint K_STRIDE = 72u;
const uint V_ROWS = 64u;  // V rows per staging step
const uint V_CHUNKS = 1u;
const uint V_STRIDE = 72u;
const uint Q_BATCH = 2u;  // Q vec4 loads in flight per thread
const uint K_STEP = 8u;  // vec4s per thread of one K staging step
const uint V_STEP = 8u;  // vec4s per thread of one V staging step
const uint STAGED = 8u;
const uint S_STRIDE = 68u;
const uint P_STRIDE = 72u;
// Matrix tiles, dealt round-robin: tile t belongs to subgroup t % NSG.
const uint S_COLS = 4u;
const uint S_TILES = 4u;
const uint S_PER_SG = 1u;
const uint O_COLS = 4u;
const uint O_TILES = 4u;
const uint O_PER_SG = 1u;
// Softmax: TPR adjacent lanes own a row; a thread handles rows rg, rg + ROW_GROUPS, ...
const uint TPR = 8u;
const uint ROW_GROUPS = 16u;
const uint RPT = 1u;

// Q tile (f16), rows padded
shared f16vec4 Qsh[288];
// decoded K chunk (bc rows x k_chunk), then V chunk (v_rows x hsv_pad)
shared f16vec4 KVsh[1152];
// S = Q K^T (f32); per-subgroup output staging at the end
shared float Ssh[1088];
// P = exp(S - m), the A operand of P V
shared float16_t Psh[1152];
// per-row factor repeated mat_n times: a coopmat load broadcasts it over a tile
shared float Rsh[256];

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

// Q rows row0.. of this head (f32 in memory) -> Qsh, once per workgroup. Q is read as scalars:
// its strides need not be multiples of 4. Loads go out Q_BATCH at a time before any store.
void stage_q(uint q_base, uint row0) {
    const uint COLS4 = HSK_PAD / 4u, TOTAL = BR * COLS4;
    for (uint e0 = tid; e0 < TOTAL; e0 += Q_BATCH * WG) {
        f16vec4 x[Q_BATCH];
        [[unroll]] for (uint n = 0u; n < Q_BATCH; ++n) {
            const uint e = e0 + n * WG, r = e / COLS4, d = e % COLS4 * 4u;
            x[n] = f16vec4(0.0);
            if (e < TOTAL && row0 + r < pc.n_q && d < HSK) {
                const uint q = q_base + (row0 + r) * pc.q_stride_row + d;
                x[n] = f16vec4(vec4(q_data[q], q_data[q + 1u], q_data[q + 2u], q_data[q + 3u]));
            }
        }
        [[unroll]] for (uint n = 0u; n < Q_BATCH; ++n) {
            const uint e = e0 + n * WG, r = e / COLS4, d = e % COLS4 * 4u;
            if (e < TOTAL) {
                Qsh[(r * Q_STRIDE + d) / 4u] = x[n];
            }
        }
    }
}

// This thread's vec4s of the staging step in flight (a K chunk or a block of V rows).
f16vec4 staged[STAGED];

// K rows kv0..kv0+BC-1, head columns d0..d0+K_CHUNK-1 -> staged; store_k puts them in KVsh
// (row stride K_STRIDE).
void load_k(uint k_base, uint kv0, uint kv_end, uint d0) {
    const uint COLS4 = K_CHUNK / 4u, TOTAL = BC * COLS4;
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG, j = e / COLS4, dc = e % COLS4 * 4u;
        staged[n] = f16vec4(0.0);
        if (e < TOTAL && d0 + dc < HSK && kv0 + j < kv_end) {
            staged[n] = f16vec4(k_load4(k_base + (kv0 + j) * pc.k_stride_row + d0 + dc));
        }
    }
}

void store_k() {
    const uint COLS4 = K_CHUNK / 4u, TOTAL = BC * COLS4;
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG;
        if (e < TOTAL) {
            KVsh[(e / COLS4 * K_STRIDE) / 4u + e % COLS4] = staged[n];
        }
    }
}

// V rows kv..kv+V_ROWS-1, all head columns -> staged; store_v puts them in KVsh (row stride
// V_STRIDE).
void load_v(uint v_base, uint kv, uint kv_end) {
    const uint COLS4 = HSV_PAD / 4u, TOTAL = V_ROWS * COLS4;
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG, j = e / COLS4, d = e % COLS4 * 4u;
        staged[n] = f16vec4(0.0);
        if (e < TOTAL && d < HSV && kv + j < kv_end) {
            staged[n] = f16vec4(v_load4(v_base + (kv + j) * pc.v_stride_row + d));
        }
    }
}

void store_v() {
    const uint COLS4 = HSV_PAD / 4u, TOTAL = V_ROWS * COLS4;
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG;
        if (e < TOTAL) {
            KVsh[(e / COLS4 * V_STRIDE) / 4u + e % COLS4] = staged[n];
        }
    }
}

// Reductions over the TPR adjacent lanes that own a row (xor partners stay inside the row).
float row_max(float x) {
    [[unroll]] for (uint o = TPR / 2u; o > 0u; o >>= 1u) {
        x = max(x, subgroupShuffleXor(x, o));
    }
    return x;
}

float row_sum(float x) {
    [[unroll]] for (uint o = TPR / 2u; o > 0u; o >>= 1u) {
        x += subgroupShuffleXor(x, o);
    }
    return x;
}

// For each of this thread's rows: score the raw q.k values of keys kv_at.. (fa_score: scale,
// softcap, mask, ALiBi, causal; rows past Nq and keys outside kv_lo..kv_end-1 become MASKED;
// kv_lo > kv_at only for a direct-schedule tail tile), fold the tile's row max into m,
// write p = exp(s - m) as f16 to Psh (masked scores give exactly 0), add the p actually used
// to l, and put alpha = exp(m_old - m_new) MN times into Rsh for the O rescale.
void softmax_tile(uint kv_at, uint kv_lo, uint kv_end, uint row0, uint b, uint h, float slope,
                  inout float m_row[RPT], inout float l_row[RPT]) {
    const uint rg = tid / TPR, cl = tid % TPR;
    [[unroll]] for (uint k = 0u; k < RPT; ++k) {
        const uint r = rg + k * ROW_GROUPS, i = row0 + r;
        const bool row_ok = i < pc.n_q;  // rows past Nq read no mask and get p = 0
        const uint mrow = mask_row(b, h, i);
        float mx = MASKED;
        for (uint j = cl; j < BC; j += TPR) {
            float s = MASKED;
            if (row_ok && kv_at + j >= kv_lo && kv_at + j < kv_end) {
                s = fa_score(Ssh[r * S_STRIDE + j], mrow, i, kv_at + j, slope);
            }
            Ssh[r * S_STRIDE + j] = s;  // only this lane reads it back
            mx = max(mx, s);
        }
        const float m_new = max(m_row[k], row_max(mx));
        const float alpha = exp(m_row[k] - m_new);
        float sum = 0.0;
        for (uint j = cl; j < BC; j += TPR) {
            const float s = Ssh[r * S_STRIDE + j];
            const float16_t p = float16_t(s > MASKED_LIMIT ? exp(s - m_new) : 0.0);
            Psh[r * P_STRIDE + j] = p;
            sum += float(p);
        }
        l_row[k] = l_row[k] * alpha + row_sum(sum);
        m_row[k] = m_new;
        for (uint c = cl; c < MN; c += TPR) {
            Rsh[r * MN + c] = alpha;
        }
    }
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

    stage_q(b * pc.q_stride_batch + h * pc.q_stride_head, row0);

    // Online-softmax state of this thread's rows (the TPR lanes of a row hold equal copies).
    float m_row[RPT], l_row[RPT];
    [[unroll]] for (uint k = 0u; k < RPT; ++k) {
        m_row[k] = MASKED;
        l_row[k] = 0.0;
    }
    MatO O[O_PER_SG];
    [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
        O[i] = MatO(0.0);
    }

    // Software pipeline over staging steps (K chunks, then V row blocks, then the next tile's
    // K): each step's global loads are issued into registers as soon as the previous step is
    // in shared memory, so they are in flight during that step's matrix work.
    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end, 0u);
    }
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        // ---- S = Q K^T, K streamed through KVsh K_CHUNK head columns at a time ----
        MatF32 S[S_PER_SG];
        [[unroll]] for (uint i = 0u; i < S_PER_SG; ++i) {
            S[i] = MatF32(0.0);
        }
        [[unroll]] for (uint c = 0u; c < K_CHUNKS; ++c) {
            const uint d0 = c * K_CHUNK;
            barrier();  // KVsh is free: the previous step's products are done
            store_k();
            barrier();
            if (c + 1u < K_CHUNKS) {
                load_k(k_base, kv0, kv_end, d0 + K_CHUNK);
            } else {
                load_v(v_base, kv0, kv_end);
            }
            const uint depth = min(K_CHUNK, HSK_PAD - d0);
            [[unroll]] for (uint i = 0u; i < S_PER_SG; ++i) {
                const uint t = sg + i * NSG;
                const uint r = t / S_COLS, j = t % S_COLS;
                [[unroll]] for (uint dk = 0u; dk < depth; dk += MK) {
                    // A = Q[r*MM.., d0+dk..] row-major; B = K^T: element (d, col) is K row col,
                    // head column d, so K's rows are B's columns (column-major, stride K_STRIDE).
                    MatA qm;
                    MatB km;
                    coopMatLoad(qm, Qsh, (r * MM * Q_STRIDE + d0 + dk) / 4u, Q_STRIDE / 4u, ROW_MAJOR);
                    coopMatLoad(km, KVsh, (j * MN * K_STRIDE + dk) / 4u, K_STRIDE / 4u, COL_MAJOR);
                    S[i] = coopMatMulAdd(qm, km, S[i]);
                }
            }
        }
        [[unroll]] for (uint i = 0u; i < S_PER_SG; ++i) {
            const uint t = sg + i * NSG;
            coopMatStore(S[i], Ssh, t / S_COLS * MM * S_STRIDE + t % S_COLS * MN, S_STRIDE, ROW_MAJOR);
        }
        barrier();

        // ---- softmax rows: P -> Psh, rescale factors -> Rsh, m and l updated ----
        softmax_tile(kv0, kv0, kv_end, row0, b, h, slope, m_row, l_row);

        // ---- O = diag(alpha) O + P V, V streamed through KVsh V_ROWS rows at a time ----
        [[unroll]] for (uint c = 0u; c < V_CHUNKS; ++c) {
            barrier();  // Psh and Rsh are written; KVsh is free (the K products are done)
            store_v();
            barrier();
            if (c + 1u < V_CHUNKS) {
                load_v(v_base, kv0 + (c + 1u) * V_ROWS, kv_end);
            } else if (kv0 + BC < kv_stop) {
                load_k(k_base, kv0 + BC, kv_end, 0u);
            }
            [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
                const uint t = sg + i * NSG;
                const uint r = t / O_COLS, j = t % O_COLS;
                if (c == 0u) {
                    // Rsh row i holds alpha_i MN times: loading it gives a tile whose element
                    // (i, *) is alpha_i in the same lane mapping as O, so * rescales rows.
                    MatF32 alpha;
                    coopMatLoad(alpha, Rsh, r * MM * MN, MN, ROW_MAJOR);
                    O[i] = O[i] * alpha;
                }
                [[unroll]] for (uint dk = 0u; dk < V_ROWS; dk += MK) {
                    MatA pm;
                    MatB vm;
                    coopMatLoad(pm, Psh, r * MM * P_STRIDE + c * V_ROWS + dk, P_STRIDE, ROW_MAJOR);
                    coopMatLoad(vm, KVsh, (dk * V_STRIDE + j * MN) / 4u, V_STRIDE / 4u, ROW_MAJOR);
                    O[i] = coopMatMulAdd(pm, vm, O[i]);
                }
            }
        }
    }

    // ---- epilogue: per-row factor into Rsh, O * factor through a per-subgroup staging tile ----
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    barrier();  // every subgroup is done reading Rsh and Ssh
    {
        const uint rg = tid / TPR, cl = tid % TPR;
        [[unroll]] for (uint k = 0u; k < RPT; ++k) {
            const uint r = rg + k * ROW_GROUPS, i = row0 + r;
            const float m = m_row[k];
            float l = l_row[k];
            const float f = m > MASKED_LIMIT && l > 0.0 ? 1.0 / l : 0.0;
            for (uint c = cl; c < MN; c += TPR) {
                Rsh[r * MN + c] = f;  // a row that saw nothing gets 0: zeros, never NaN
            }
        }
    }
    barrier();
    const uint stage = sg * MM * MN;  // this subgroup's MM x MN f32 staging tile in Ssh
    [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
        const uint t = sg + i * NSG;
        const uint r = t / O_COLS, j = t % O_COLS;
        MatF32 f;
        coopMatLoad(f, Rsh, r * MM * MN, MN, ROW_MAJOR);
        coopMatStore(O[i] * f, Ssh, stage, MN, ROW_MAJOR);
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        // Lanes write the tile's rows below Nq and columns below HSV as vec4s.
        for (uint e = lane; e < MM * MN / 4u; e += SG) {
            const uint rr = e / (MN / 4u), cc = e % (MN / 4u) * 4u;
            const uint i_q = row0 + r * MM + rr, d = j * MN + cc;
            if (i_q < pc.n_q && d < HSV) {
                const uint s = stage + rr * MN + cc;
                const uint o = b * pc.o_stride_batch + h * pc.o_stride_head + i_q * pc.o_stride_row + d;
                out_data4[o / 4u] = vec4(Ssh[s], Ssh[s + 1u], Ssh[s + 2u], Ssh[s + 3u]);
            }
        }
        subgroupBarrier();  // the tile is read before the next one overwrites it
    }
}
