#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// fa_cm1_k576_v512_f16f16_acc32_br16_bc32_wg128_sg32_stream_vink_m16n8k16_splitk_aligned
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
layout(std430, binding = 5) writeonly buffer OutBuf { vec4 out_data4[]; };
layout(std430, binding = 5) writeonly buffer OutBuf1 { float out_data[]; };
layout(std430, binding = 6) writeonly buffer StatsBuf { vec2 stats_data[]; };

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
    return max(s, MASKED);  // also maps a -inf mask entry to MASKED
}

// fa_score_with, reading the mask value from the mask buffer (row base from mask_row()).
float fa_score(float qk, uint mask_row_base, uint i, uint j, float slope) {
    return fa_score_with(qk, 0.0, i, j, slope);
}

// K and V as 16-byte elements (8 halves): the direct schedule loads matrix operands straight
// from here, the stream, regs and osplit schedules copy whole tiles to shared memory in these units.
// Offsets and row strides are multiples of 8 halves (kgen.planning checks them).
layout(std430, binding = 1) readonly buffer KDirect { uvec4 k_direct[]; };
layout(std430, binding = 2) readonly buffer VDirect { uvec4 v_direct[]; };

// ---- this variant's shape (kgen/paths/coopmat1.py: layout) ----
const uint WG = 128u;
const uint SG = 32u;  // required subgroup size, full subgroups
const uint NSG = 4u;  // subgroups per workgroup
const uint BR = 16u;  // query rows per workgroup
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
const uint V_STRIDE = 520u;
const uint Q_BATCH = 8u;  // Q vec4 loads in flight per thread
const uint K_STEP = 18u;  // vec4s per thread of one K staging step
const uint V_STEP = 0u;  // vec4s per thread of one V staging step
const uint STAGED = 18u;
const uint M_STEP = 4u;  // mask values per thread of one tile
const uint KSTEPS = 36u;  // q.k depth steps, dealt to subgroups: S is split over depth
const uint KS_PER_SG = 9u;
const uint S_PARTS = 4u;  // subgroups holding a partial S
const uint S_STRIDE = 36u;
const uint P_STRIDE = 40u;
// Matrix tiles, dealt round-robin: tile t belongs to subgroup t % NSG.
const uint S_COLS = 4u;
const uint S_TILES = 4u;
const uint S_PER_SG = 1u;
const uint O_COLS = 64u;
const uint O_TILES = 64u;
const uint O_PER_SG = 16u;
// Softmax: TPR adjacent lanes own a row; a thread handles rows rg, rg + ROW_GROUPS, ...
const uint TPR = 8u;
const uint ROW_GROUPS = 16u;
const uint RPT = 1u;

// K tile (bc rows, 16-byte elements); Q before the loop
shared uvec4 Ksh[2336];
// one partial S = Q K^T per subgroup (f32); per-subgroup output staging at the end
shared float Ssh[2304];
// P = exp(S - m), the A operand of P V
shared float16_t Psh[640];
// per-row factor repeated mat_n times: a coopmat load broadcasts it over a tile
shared float Rsh[128];

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
        const uint mrow = 0u;
        float mx = MASKED;
        for (uint j = cl; j < BC; j += TPR) {
            float s = MASKED;
            if (row_ok) {
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

const uint K_VECS = HSK / 8u;      // 16-byte elements per K row (head sizes are multiples of 8)
const uint KSH_ROW = K_STRIDE / 8u;  // 16-byte elements between rows of Ksh / Vsh
const uint VSH_ROW = KSH_ROW;
#define Vsh Ksh

uvec4 k_staged[K_STEP];

// Zeros everywhere in Ksh and Vsh: head columns past HSK / HSV (up to the matrix padding) are
// never written by a tile, and the products read them.
void clear_kv() {
    for (uint e = tid; e < BC * KSH_ROW; e += WG) {
        Ksh[e] = uvec4(0u);
    }
}

// Q rows row0.. of this head (f32 in memory) as f16 into the first BR rows of Ksh; rows past Nq
// stay zero. Read as scalars: Q's strides need not be multiples of 4.
void stage_q_stream(uint q_base, uint row0) {
    for (uint e = tid; e < BR * K_VECS; e += WG) {
        const uint r = e / K_VECS, c = e % K_VECS;
        if (row0 + r < pc.n_q) {
            const uint q = q_base + (row0 + r) * pc.q_stride_row + c * 8u;
            uvec4 x;
            [[unroll]] for (uint n = 0u; n < 4u; ++n) {
                x[n] = packFloat2x16(f16vec2(q_data[q + 2u * n], q_data[q + 2u * n + 1u]));
            }
            Ksh[r * KSH_ROW + c] = x;
        }
    }
}

// The tile of keys kv0..kv0+BC-1 -> registers. Keys past kv_end load as zeros (and are masked).
void load_tile(uint k_base, uint v_base, uint kv0, uint kv_end, uint b, uint h, uint row0) {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG, j = e / K_VECS;
        bool in_tile = true;
        k_staged[n] = uvec4(0u);
        if (in_tile) {
            k_staged[n] = k_direct[(k_base + (kv0 + j) * pc.k_stride_row) / 8u + e % K_VECS];
        }
    }
}

void store_tile() {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG;
        Ksh[e / K_VECS * KSH_ROW + e % K_VECS] = k_staged[n];
    }
}

// Online softmax over the tile: TPR adjacent lanes own row tid / TPR and add the S_PARTS
// subgroups' partial q.k sums of each of their columns. Writes P (f16) to Psh, adds the p
// actually used to l, and puts alpha = exp(m_old - m_new) MN times into Rsh.
void softmax_stream(uint kv0, uint kv_end, uint row0, float slope,
                    inout float m_row[RPT], inout float l_row[RPT]) {
    const uint r = tid / TPR, cl = tid % TPR, i = row0 + r;
    const bool row_ok = i < pc.n_q;
    float s[BC / TPR];
    float mx = MASKED;
    [[unroll]] for (uint u = 0u; u < BC / TPR; ++u) {
        const uint j = cl + u * TPR;
        float qk = 0.0;
        [[unroll]] for (uint g = 0u; g < S_PARTS; ++g) {
            qk += Ssh[(g * BR + r) * S_STRIDE + j];
        }
        s[u] = MASKED;
        if (row_ok) {
            s[u] = fa_score_with(qk, 0.0, i, kv0 + j, slope);
        }
        mx = max(mx, s[u]);
    }
    const float m_new = max(m_row[0], row_max(mx));
    const float alpha = exp(m_row[0] - m_new);
    float sum = 0.0;
    [[unroll]] for (uint u = 0u; u < BC / TPR; ++u) {
        const float16_t p = float16_t(s[u] > MASKED_LIMIT ? exp(s[u] - m_new) : 0.0);
        Psh[r * P_STRIDE + cl + u * TPR] = p;
        sum += float(p);
    }
    l_row[0] = l_row[0] * alpha + row_sum(sum);
    m_row[0] = m_new;
    for (uint c = cl; c < MN; c += TPR) {
        Rsh[r * MN + c] = alpha;
    }
}

void main() {
    sg = gl_SubgroupID;
    lane = gl_SubgroupInvocationID;
    tid = sg * SG + lane;

    const uint row0 = gl_WorkGroupID.x * BR;
    const uint h = gl_WorkGroupID.y;
    const uint hk = h / pc.gqa_ratio;
    const uint split = gl_WorkGroupID.z % pc.split_count;
    const uint b = gl_WorkGroupID.z / pc.split_count;
    const uint kv_begin = split * pc.split_kv;
    // max(): a split past the end has an empty range (and writes m = MASKED, l = 0, O = 0).
    const uint kv_end = max(min(kv_begin + pc.split_kv, pc.n_kv), kv_begin);
    uint kv_start = kv_begin, kv_stop = kv_end;
    const uint k_base = pc.k_offset + b * pc.k_stride_batch + hk * pc.k_stride_head;
    const uint v_base = pc.v_offset + b * pc.v_stride_batch + hk * pc.v_stride_head;
    const float slope = 1.0;

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

    // The first tile's loads go out before Q is staged: they only fill registers.
    if (kv_start < kv_stop) {
        load_tile(k_base, v_base, kv_start, kv_end, b, h, row0);
    }
    clear_kv();
    barrier();
    stage_q_stream(b * pc.q_stride_batch + h * pc.q_stride_head, row0);
    barrier();
    // This subgroup's Q operands: depth steps sg, sg + NSG, ... for the whole kernel.
    MatA qm[KS_PER_SG];
    [[unroll]] for (uint u = 0u; u < KS_PER_SG; ++u) {
        const uint ks = sg + u * NSG;
        if (ks < KSTEPS) {
            coopMatLoad(qm[u], Ksh, ks * MK / 8u, KSH_ROW, ROW_MAJOR);
        }
    }
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        barrier();  // the last tile (and Q, the first time) is read: Ksh, Vsh and Msh are free
        store_tile();
        barrier();
        if (kv0 + BC < kv_stop) {
            load_tile(k_base, v_base, kv0 + BC, kv_end, b, h, row0);  // in flight from here on
        }
        // ---- partial S = Q K^T over this subgroup's depth steps, all columns ----
        if (sg < S_PARTS) {
            [[unroll]] for (uint c = 0u; c < S_COLS; ++c) {
                MatF32 acc = MatF32(0.0);
                [[unroll]] for (uint u = 0u; u < KS_PER_SG; ++u) {
                    const uint ks = sg + u * NSG;
                    if (ks < KSTEPS) {  // subgroup-uniform
                        // B = K^T: K's rows are B's columns (column-major, stride KSH_ROW).
                        MatB km;
                        coopMatLoad(km, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                        acc = coopMatMulAdd(qm[u], km, acc);
                    }
                }
                coopMatStore(acc, Ssh, sg * BR * S_STRIDE + c * MN, S_STRIDE, ROW_MAJOR);
            }
        }
        barrier();
        softmax_stream(kv0, kv_end, row0, slope, m_row, l_row);
        barrier();
        // ---- O = diag(alpha) O + P V ----
        [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
            const uint t = sg + i * NSG;
            MatF32 alpha;
            coopMatLoad(alpha, Rsh, 0u, MN, ROW_MAJOR);
            O[i] = O[i] * alpha;
            [[unroll]] for (uint dk = 0u; dk < BC; dk += MK) {
                MatA pm;
                MatB vm;
                coopMatLoad(pm, Psh, dk, P_STRIDE, ROW_MAJOR);
                coopMatLoad(vm, Vsh, dk * VSH_ROW + t * MN / 8u, VSH_ROW, ROW_MAJOR);
                O[i] = coopMatMulAdd(pm, vm, O[i]);
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
            if (cl == 0u && i < pc.n_q) {
                stats_data[(out_split * pc.n_head_q + h) * pc.n_q + i] = vec2(m, l);
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
                const uint o = ((out_split * pc.n_head_q + h) * pc.n_q + i_q) * HSV + d;
                out_data4[o / 4u] = vec4(Ssh[s], Ssh[s + 1u], Ssh[s + 2u], Ssh[s + 3u]);
            }
        }
        subgroupBarrier();  // the tile is read before the next one overwrites it
    }
}
