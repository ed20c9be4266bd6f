#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_sc_k576_v512_q4_0q4_0_acc32_br16_bc32_wg128_sg32_ds8_rs4_mask
// Scalar FA2: a workgroup owns BR query rows of one head and walks the KV range in BC-column
// tiles. D_SPLIT lanes share each q.k dot product; the column groups of a row group split each
// tile's columns and keep their own online softmax (m, l, O), merged once after the KV loop.

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

// ---- this variant's shape (kgen/paths/scalar.py: layout) ----
const uint HSK4 = 144u;              // head_k in vec4s
const uint HSV4 = 128u;              // head_v in vec4s
const uint BR = 16u;                 // query rows per workgroup
const uint BC = 32u;                 // KV columns per tile
const uint WG = 128u;
const uint SUBGROUP = 32u;
const uint D_SPLIT = 8u;       // lanes per dot product
const uint ROWS_PER_THREAD = 4u;
const uint THREADS_PER_ROWGROUP = 32u;
const uint COLS_PER_ITER = 4u;      // column groups in a row group
const uint COLS_PER_THREAD = 8u;
// Loops count steps, not shifts: Mesa's loop analysis only unrolls counted loops, and an
// un-unrolled loop around the register tiles makes lavapipe's compile time explode.
const uint DOT_STEPS = 3u;              // log2(D_SPLIT) shuffles per dot product
const uint MERGE_STEPS = 2u;          // log2 of the column groups in a subgroup
const uint HSK4_PER_THREAD = 18u;
const uint HSV4_PER_THREAD = 16u;
const uint Q_STRIDE4 = 145u;

// Q tile, one padded row per query row
shared vec4 sh_q[2320];

// Final O row = sum_j p_j v_j / l.
// A row that saw nothing visible (m below MASKED_LIMIT) stores zeros, never 0/0.
void store_row(uint row_at, uint d4, vec4 o, float m, float l) {
    float scale = 0.0;
    if (m > MASKED_LIMIT) {
        scale = 1.0 / l;
    }
    out_data4[row_at / 4u + d4] = o * scale;
}

void main() {
    // tid from subgroup ids: the D_SPLIT lanes of one dot product and the lanes merged by
    // shuffles are then lanes of one subgroup, whatever the driver's invocation order.
    const uint tid = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    const uint d_tid = tid % D_SPLIT;                              // slice of the head
    const uint col_tid = (tid % THREADS_PER_ROWGROUP) / D_SPLIT;   // column group
    const uint row_tid = tid / THREADS_PER_ROWGROUP;               // row group
    const uint row0 = row_tid * ROWS_PER_THREAD;                   // first tile row of this thread

    const uint i0 = gl_WorkGroupID.x * BR;      // first query row of the tile
    const uint h = gl_WorkGroupID.y;            // query head
    const uint hk = h / pc.gqa_ratio;           // KV head
    const uint b = gl_WorkGroupID.z;
    const uint kv_start = 0u;
    const uint kv_end = pc.n_kv;
    const uint out_base = b * pc.o_stride_batch + h * pc.o_stride_head;  // element of this head's O row 0
    const uint k_base = pc.k_offset + b * pc.k_stride_batch + hk * pc.k_stride_head;
    const uint v_base = pc.v_offset + b * pc.v_stride_batch + hk * pc.v_stride_head;
    const float slope = 1.0;

    // Q tile -> shared memory; rows past Nq are zeros (their scores are masked anyway).
    const uint q_base = b * pc.q_stride_batch + h * pc.q_stride_head;
    for (uint e = tid; e < BR * HSK4; e += WG) {
        const uint r = e / HSK4, d4 = e % HSK4;
        vec4 q = vec4(0.0);
        if (i0 + r < pc.n_q) {
            const uint a = q_base + (i0 + r) * pc.q_stride_row + 4u * d4;
            q = vec4(q_data[a], q_data[a + 1u], q_data[a + 2u], q_data[a + 3u]);
        }
        sh_q[r * Q_STRIDE4 + d4] = q;
    }
    barrier();

    uint mask_base[ROWS_PER_THREAD];
    [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
        mask_base[r] = mask_row(b, h, i0 + row0 + r);
    }

    // Online-softmax state of this thread's rows over its own columns.
    float m[ROWS_PER_THREAD];
    float l[ROWS_PER_THREAD];
    vec4 o[ROWS_PER_THREAD][HSV4_PER_THREAD];
    [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
        m[r] = MASKED;
        l[r] = 0.0;
        [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) o[r][d] = vec4(0.0);
    }

    uint kv_lo = kv_start, kv_hi = kv_end;

    for (uint kv0 = kv_lo; kv0 < kv_hi; kv0 += BC) {
        // S = Q K^T: this lane's partial dots over its head slice (vec4s d_tid, d_tid + D_SPLIT..).
        float s[ROWS_PER_THREAD][COLS_PER_THREAD];
        [[unroll]] for (uint c = 0u; c < COLS_PER_THREAD; ++c) {
            const uint col = c * COLS_PER_ITER + col_tid;
            [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) s[r][c] = 0.0;
            if (kv0 + col < kv_end) {
                [[unroll]] for (uint d = 0u; d < HSK4_PER_THREAD; ++d) {
                    const uint d4 = d * D_SPLIT + d_tid;
                    const vec4 kk = k_load4(k_base + (kv0 + col) * pc.k_stride_row + 4u * d4);
                    [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
                        s[r][c] += dot(sh_q[(row0 + r) * Q_STRIDE4 + d4], kk);
                    }
                }
            }
        }
        // Sum each dot over its D_SPLIT lanes (outside any branch: every lane takes part).
        [[unroll]] for (uint c = 0u; c < COLS_PER_THREAD; ++c) {
            [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
                [[unroll]] for (uint k = 1u; k <= DOT_STEPS; ++k) {
                    s[r][c] += subgroupShuffleXor(s[r][c], D_SPLIT >> k);
                }
            }
        }

        // Scores, then the online softmax: s becomes p = exp(s - m_new), 0 where masked.
        [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
            const uint i = i0 + row0 + r;
            float tile_max = MASKED;
            [[unroll]] for (uint c = 0u; c < COLS_PER_THREAD; ++c) {
                const uint j = kv0 + c * COLS_PER_ITER + col_tid;
                float x = MASKED;
                if (i < pc.n_q && j < kv_end) {
                    x = fa_score(s[r][c], mask_base[r], i, j, slope);
                }
                s[r][c] = x;
                tile_max = max(tile_max, x);
            }
            const float m_new = max(m[r], tile_max);
            const float alpha = exp(m[r] - m_new);  // 1 while both are MASKED: l and O are still 0
            m[r] = m_new;
            float tile_sum = 0.0;
            [[unroll]] for (uint c = 0u; c < COLS_PER_THREAD; ++c) {
                const float p = s[r][c] > MASKED_LIMIT ? exp(s[r][c] - m_new) : 0.0;
                s[r][c] = p;
                tile_sum += p;
            }
            l[r] = l[r] * alpha + tile_sum;
            [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) o[r][d] *= alpha;
        }

        // O += P V over this lane's head slice of V.
        [[unroll]] for (uint c = 0u; c < COLS_PER_THREAD; ++c) {
            const uint col = c * COLS_PER_ITER + col_tid;
            if (kv0 + col < kv_end) {
                [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) {
                    const uint d4 = d * D_SPLIT + d_tid;
                    const vec4 vv = v_load4(v_base + (kv0 + col) * pc.v_stride_row + 4u * d4);
                    [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
                        o[r][d] = fma(vec4(s[r][c]), vv, o[r][d]);
                    }
                }
            }
        }
    }

    // Merge the column groups: first the lanes of one subgroup, by butterfly shuffles (every
    // lane ends with the merged state). Shuffled as f32: f16 shuffles need an extra feature.
    [[unroll]] for (uint k = 0u; k < MERGE_STEPS; ++k) {
        const uint x = D_SPLIT << k;
        [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
            const float m_other = subgroupShuffleXor(m[r], x);
            const float l_other = subgroupShuffleXor(l[r], x);
            const float m_new = max(m[r], m_other);
            const float a = exp(m[r] - m_new), a_other = exp(m_other - m_new);
            m[r] = m_new;
            l[r] = l[r] * a + l_other * a_other;
            [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) {
                const vec4 o_other = subgroupShuffleXor(o[r][d], x);
                o[r][d] = o[r][d] * a + o_other * a_other;
            }
        }
    }

    // The row group is one subgroup or less: its first column group holds the merged rows.
    if (col_tid == 0u) {
        [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
            const uint i = i0 + row0 + r;
            if (i < pc.n_q) {
                [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) {
                    const vec4 acc = o[r][d];
                    store_row(out_base + i * pc.o_stride_row, d * D_SPLIT + d_tid, acc, m[r], l[r]);
                }
            }
        }
    }
}
