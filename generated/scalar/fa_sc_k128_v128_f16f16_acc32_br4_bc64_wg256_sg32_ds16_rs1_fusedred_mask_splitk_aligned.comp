#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_sc_k128_v128_f16f16_acc32_br4_bc64_wg256_sg32_ds16_rs1_fusedred_mask_splitk_aligned
// Scalar FA2: a workgroup owns BR query rows of one head and walks the KV range in BC-column
// tiles. D_SPLIT lanes share each q.k dot product; the column groups of a row group split each
// tile's columns and keep their own online softmax (m, l, O), merged once after the KV loop.

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
layout(std430, binding = 5) coherent writeonly buffer OutBuf { vec4 out_data4[]; };
layout(std430, binding = 5) coherent writeonly buffer OutBuf1 { float out_data[]; };
layout(std430, binding = 6) coherent writeonly buffer StatsBuf { vec2 stats_data[]; };

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

// ---- this variant's shape (kgen/paths/scalar.py: layout) ----
const uint HSK4 = 32u;              // head_k in vec4s
const uint HSV4 = 32u;              // head_v in vec4s
const uint BR = 4u;                 // query rows per workgroup
const uint BC = 64u;                 // KV columns per tile
const uint WG = 256u;
const uint SUBGROUP = 32u;
const uint D_SPLIT = 16u;       // lanes per dot product
const uint ROWS_PER_THREAD = 4u;
const uint THREADS_PER_ROWGROUP = 256u;
const uint COLS_PER_ITER = 16u;      // column groups in a row group
const uint COLS_PER_THREAD = 4u;
// Loops count steps, not shifts: Mesa's loop analysis only unrolls counted loops, and an
// un-unrolled loop around the register tiles makes lavapipe's compile time explode.
const uint DOT_STEPS = 4u;              // log2(D_SPLIT) shuffles per dot product
const uint MERGE_STEPS = 1u;          // log2 of the column groups in a subgroup
const uint HSK4_PER_THREAD = 2u;
const uint HSV4_PER_THREAD = 2u;
const uint Q_STRIDE4 = 33u;
const uint ROWGROUP_SUBGROUPS = 8u;

// Q tile, one padded row per query row
shared vec4 sh_q[132];
// per-subgroup partial O rows for the final merge
shared vec4 sh_o[1024];
// per-subgroup (m, l) for the final merge
shared vec2 sh_ml[32];

// Partial result of one split (the reduce pass combines splits and applies sinks): O / l, and
// (m, l) for the reduce weights. A split that saw nothing stores zeros and (MASKED, 0).
void store_row(uint row_at, uint d4, vec4 o, float m, float l) {
    out_data4[row_at / 4u + d4] = m > MASKED_LIMIT ? o / l : vec4(0.0);
}

// ---- fused split-k reduce (kgen/render.py: fused_reduce_lanes) ----
// Every workgroup counts its arrival for its row tile; the last of the tile's splits to arrive
// combines all their partial rows into the final O. That saves the reduce pass's launch and its
// second wait on memory (docs/performance.md has the figures).
// What the last workgroup reads, and why it sees the other workgroups' writes:
// - stats: several tiles' (max, sum) share a cache line, and an earlier last workgroup on this
//   compute unit may have cached it before every split had written it: read `coherent`, once,
//   into shared memory (one load per thread in parallel: coherent loads in a per-thread loop run
//   one after another);
// - partial rows: plain loads. Each line of a partial row is written by one workgroup, and no
//   workgroup reads it before the tile's last arrival, so no cache holds an older copy (caches
//   are invalidated between dispatches).
layout(std430, binding = 5) readonly buffer PartIn { vec4 part_in4[]; };
layout(std430, binding = 6) coherent readonly buffer StatsIn { vec2 stats_in[]; };
layout(std430, binding = 7) writeonly buffer ReducedBuf { vec4 reduced4[]; };
layout(std430, binding = 9) coherent buffer ArrivalBuf { uint split_arrivals[]; };

shared vec2 fused_ml[256];  // (max, sum) per (tile row, split)
shared uint fused_is_last;  // 1 in the workgroup that arrived last
const uint FUSED_HV4 = 32u;
const uint FUSED_LANES = 2u;  // lanes per output vec4: lane k takes splits k, k + LANES, ...
const uint FUSED_UNROLL = 8u;                 // partial rows each lane has in flight
const uint FUSED_WG = 256u;

// Element offset in O of row `row` of the (b, h, row) order, by the o strides.
uint o_row_at(const uint row) {
    const uint i = row % pc.n_q, bh = row / pc.n_q;
    return (bh / pc.n_head_q) * pc.o_stride_batch + (bh % pc.n_head_q) * pc.o_stride_head + i * pc.o_stride_row;
}

// (m, l, o) += (m2, l2, o2), where o and l are sums weighted by exp(score - m).
void fused_merge(inout float m, inout float l, inout vec4 o, const float m2, const float l2, const vec4 o2) {
    const float m_new = max(m, m2);
    const float a = exp(m - m_new), c = exp(m2 - m_new);
    o = o * a + o2 * c;
    l = l * a + l2 * c;
    m = m_new;
}

// row_first: the tile's first row in (b, h, row) order; row_count: its rows below Nq. The plan
// keeps row_count * split_count within fused_ml.
void split_k_finish(const uint row_first, const uint row_count) {
    memoryBarrierBuffer();  // this invocation's partial rows are visible on the device ...
    barrier();              // ... for every invocation before the tile's arrival is counted
    if (gl_LocalInvocationIndex == 0u) {
        fused_is_last = atomicAdd(split_arrivals[row_first], 1u) + 1u == pc.split_count ? 1u : 0u;
    }
    barrier();
    if (fused_is_last == 0u) {
        return;
    }
    memoryBarrierBuffer();  // the other splits' rows are read after their arrivals
    const uint rows = pc.n_batch * pc.n_head_q * pc.n_q;  // rows per split
    const uint n = pc.split_count;
    for (uint i = gl_LocalInvocationIndex; i < row_count * n; i += FUSED_WG) {
        fused_ml[i] = stats_in[(i % n) * rows + row_first + i / n];  // slot r * n + s
    }
    barrier();
    // Lanes of one output are neighbours in one subgroup: their shuffles stay inside it.
    const uint t = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    const uint my_lane = t % FUSED_LANES;
    for (uint e = t / FUSED_LANES; e < row_count * FUSED_HV4; e += FUSED_WG / FUSED_LANES) {
        const uint r = e / FUSED_HV4, c4 = e % FUSED_HV4;
        // Starts below MASKED_LIMIT: a lane that sees no visible split adds nothing.
        float m = MASKED_LIMIT * 10.0, l = 0.0;
        vec4 o = vec4(0.0);
        for (uint s0 = my_lane; s0 < n; s0 += FUSED_UNROLL * FUSED_LANES) {
            // Every load of the round is issued before the first merge needs one.
            vec4 part[FUSED_UNROLL];
            [[unroll]] for (uint u = 0u; u < FUSED_UNROLL; ++u) {
                const uint s = s0 + u * FUSED_LANES;
                part[u] = s < n ? part_in4[(s * rows + row_first + r) * FUSED_HV4 + c4] : vec4(0.0);
            }
            [[unroll]] for (uint u = 0u; u < FUSED_UNROLL; ++u) {
                const uint s = s0 + u * FUSED_LANES;
                const vec2 ml = s < n ? fused_ml[r * n + s] : vec2(MASKED_LIMIT * 10.0, 0.0);
                // A split that saw nothing has no weight (and its m may be -inf: no exp of it).
                if (ml.x > MASKED_LIMIT) {
                    fused_merge(m, l, o, ml.x, ml.y, part[u] * ml.y);  // partial rows are O / l
                }
            }
        }
        [[unroll]] for (uint x = 1u; x < FUSED_LANES; x *= 2u) {
            fused_merge(m, l, o, subgroupShuffleXor(m, x), subgroupShuffleXor(l, x), subgroupShuffleXor(o, x));
        }
        if (my_lane == 0u) {
            // Nothing visible in any split: the row is 0, never 0/0.
            reduced4[o_row_at(row_first + r) / 4u + c4] = m > MASKED_LIMIT && l > 0.0 ? o / l : vec4(0.0);
        }
    }
    if (gl_LocalInvocationIndex == 0u) {
        split_arrivals[row_first] = 0u;  // ready for the next call
    }
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
    const uint split = gl_WorkGroupID.z % pc.split_count;
    const uint b = gl_WorkGroupID.z / pc.split_count;
    const uint kv_start = split * pc.split_kv;
    const uint kv_end = min(kv_start + pc.split_kv, pc.n_kv);
    const uint out_base = ((split * pc.n_batch + b) * pc.n_head_q + h) * pc.n_q;
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
            {
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
                if (i < pc.n_q) {
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
            {
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

    // ... then the ROWGROUP_SUBGROUPS subgroups of each row group, through shared memory.
    const uint part = (tid % THREADS_PER_ROWGROUP) / SUBGROUP;
    if (tid % SUBGROUP < D_SPLIT) {
        [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
            const uint slot = (row0 + r) * ROWGROUP_SUBGROUPS + part;
            [[unroll]] for (uint d = 0u; d < HSV4_PER_THREAD; ++d) {
                sh_o[slot * HSV4 + d * D_SPLIT + d_tid] = o[r][d];
            }
            if (d_tid == 0u) sh_ml[slot] = vec2(m[r], l[r]);
        }
    }
    barrier();

    // Every thread of the row group stores a share of each row's vec4s.
    const uint lane = tid % THREADS_PER_ROWGROUP;
    [[unroll]] for (uint r = 0u; r < ROWS_PER_THREAD; ++r) {
        const uint i = i0 + row0 + r;
        if (i < pc.n_q) {
            const uint slot0 = (row0 + r) * ROWGROUP_SUBGROUPS;
            float m_row = MASKED;
            [[unroll]] for (uint p = 0u; p < ROWGROUP_SUBGROUPS; ++p) {
                m_row = max(m_row, sh_ml[slot0 + p].x);
            }
            float l_row = 0.0;
            float w[ROWGROUP_SUBGROUPS];
            [[unroll]] for (uint p = 0u; p < ROWGROUP_SUBGROUPS; ++p) {
                const vec2 ml = sh_ml[slot0 + p];
                w[p] = exp(ml.x - m_row);
                l_row += ml.y * w[p];
            }
            for (uint d4 = lane; d4 < HSV4; d4 += THREADS_PER_ROWGROUP) {
                vec4 acc = vec4(0.0);
                [[unroll]] for (uint p = 0u; p < ROWGROUP_SUBGROUPS; ++p) {
                    acc += w[p] * sh_o[(slot0 + p) * HSV4 + d4];
                }
                store_row((out_base + i) * (HSV4 * 4u), d4, acc, m_row, l_row);
            }
            if (lane == 0u) stats_data[out_base + i] = vec2(m_row, l_row);
        }
    }
    split_k_finish((b * pc.n_head_q + h) * pc.n_q + i0, min(BR, pc.n_q - i0));
}
