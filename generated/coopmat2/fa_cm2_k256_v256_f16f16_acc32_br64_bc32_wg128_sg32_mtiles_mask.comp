#version 450
// fa_cm2_k256_v256_f16f16_acc32_br64_bc32_wg128_sg32_mtiles_mask
// Flash attention, VK_NV_cooperative_matrix2: workgroup-scope br x bc tiles (kgen/paths/coopmat2.py).
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_buffer_reference : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require

layout(local_size_x = 128) in;

const uint BR = 64u;    // query rows per workgroup
const uint BC = 32u;    // KV columns per step
const uint HK = 256u;
const uint HV = 256u;
const uint HKP = 256u;  // head sizes padded to 16; the padding loads as zero
const uint HVP = 256u;
const float ROW_MAX_OFFSET = 0.0;

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
// Per mask tile: MASK_MIXED, MASK_HIDDEN (all -inf) or MASK_ZERO (templates/mask_tiles.comp.j2).
layout(std430, binding = 8) readonly buffer MaskTileBuf { uint mask_tile_class[]; };
const uint MASK_MIXED = 0u, MASK_HIDDEN = 1u, MASK_ZERO = 2u;
layout(std430, binding = 5) writeonly buffer OutBuf { vec4 out_data4[]; };
layout(std430, binding = 5) writeonly buffer OutBuf1 { float out_data[]; };
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

// The running max starts between MASKED and MASKED_LIMIT: a masked score then gives
// p = exp(MASKED - m) == 0 exactly, and a row that never sees a visible score keeps m < MASKED_LIMIT.
const float M_INIT = 2.0 * MASKED_LIMIT;

// ---- matrix types: the whole workgroup owns each one ----
// A br x bc tile: S, P, and per-row values (the row max m, the sum l) repeated over the columns.
#define TILE coopmat<float, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseAccumulator>
// A per-row value repeated over O's columns, for component-wise products with O.
#define ROWS_O coopmat<float, gl_ScopeWorkgroup, BR, HVP, gl_MatrixUseAccumulator>
#define O_ACC coopmat<float, gl_ScopeWorkgroup, BR, HVP, gl_MatrixUseAccumulator>
#define P_A coopmat<float16_t, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseA>
#define MASK_TILE coopmat<float16_t, gl_ScopeWorkgroup, BR, BC, gl_MatrixUseAccumulator>

// ---- Q: f32, decoded 4 elements at a time to f16 with the score scale folded in ----
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer QBlock { float x[4]; };
float16_t q_decode(const in QBlock b, const in uint blk[2], const in uint at[2]) {
    return float16_t(b.x[at[1]] * pc.scale);
}

// ---- K: f16 ----
layout(std430, binding = 1) readonly buffer KF16 { float16_t k_buf[]; };

// ---- V: f16 ----
layout(std430, binding = 2) readonly buffer VF16 { float16_t v_buf[]; };

// Where element `base` of a tensor whose rows are `stride` elements apart falls when rows are
// counted from element 0 of its binding: (row, column). coopMatLoadTensorNV needs its element
// offset 16-byte aligned and per-head offsets need not be, so loads address from element 0 and
// the layouts carry the offset (coopmat2/tensor.glsl); a stride of 0 (a broadcast mask) puts it
// all in the column.
uvec2 origin(uint base, uint stride) {
    return stride == 0u ? uvec2(0u, base) : uvec2(base / stride, base % stride);
}

// ---- callbacks of coopMatReduceNV / coopMatPerElementNV ----
float max_of(const in float a, const in float b) { return max(a, b); }
float16_t max_of16(const in float16_t a, const in float16_t b) { return max(a, b); }
// Every column of a per-row value holds the same number: any one of them spreads it.
float spread(const in float a, const in float b) { return a; }

float new_max(const in uint r, const in uint c, const in float row_max, const in float m) {
    return max(row_max + ROW_MAX_OFFSET, m);
}

float exp_diff(const in uint r, const in uint c, const in float x, const in float m) {
    return exp(x - m);
}

// 1 / l, or 0 where the row saw nothing visible.
float inverse_or_zero(const in uint r, const in uint c, const in float l, const in float m) {
    return m < MASKED_LIMIT || l == 0.0 ? 0.0 : 1.0 / l;
}

// fa_score (common/scores.glsl) on the tile at query row i0, KV column j0, in the same order,
// with the scale already in Q and the mask tile loaded by a tensor layout.
float tile_score(const in uint r, const in uint c, const in float qk, const in float mask, const in float slope, const in uint i0, const in uint j0, const in uint kv_end) {
    float s = qk;
    s += slope * mask;
    if (j0 + c >= kv_end) s = MASKED;
    return max(s, MASKED);  // also maps a -inf mask entry to MASKED
}

void main() {
    const uint i0 = gl_WorkGroupID.x * BR;  // first query row of the tile
    const uint h = gl_WorkGroupID.y;        // query head
    const uint hk = h / pc.gqa_ratio;       // KV head
    const uint b = gl_WorkGroupID.z;
    uint kv_begin = 0u;
    uint kv_end = pc.n_kv;

    // Q rows i0.. of head h; rows past Nq and columns past HK load as zero.
    const uvec2 qo = origin(b * pc.q_stride_batch + h * pc.q_stride_head, pc.q_stride_row);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> q_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    q_layout = setTensorLayoutBlockSizeNV(q_layout, 1, 4);
    q_layout = setTensorLayoutDimensionNV(q_layout, qo.x + pc.n_q, qo.y + HK);
    q_layout = setTensorLayoutStrideNV(q_layout, pc.q_stride_row / 4u, 1);
    coopmat<float16_t, gl_ScopeWorkgroup, BR, HKP, gl_MatrixUseA> q;
    coopMatLoadTensorNV(q, q_data, 0, sliceTensorLayoutNV(q_layout, qo.x + i0, BR, qo.y, HKP), q_decode);

    // K and V rows of KV head hk; with the Constant clamp mode, rows past Nkv and columns past the head load as zero.
    const uint k_base = pc.k_offset + b * pc.k_stride_batch + hk * pc.k_stride_head;
    const uvec2 k_origin = origin(k_base, pc.k_stride_row);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> k_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    k_layout = setTensorLayoutDimensionNV(k_layout, k_origin.x + pc.n_kv, k_origin.y + HK);
    k_layout = setTensorLayoutStrideNV(k_layout, (pc.k_stride_row & ~3u), 1);
    const bool k_wide = pc.k_stride_row != 0u && ((k_base | pc.k_stride_row) & 7u) == 0u;
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> k_wide_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    k_wide_layout = setTensorLayoutDimensionNV(k_wide_layout, pc.n_kv, HK);
    k_wide_layout = setTensorLayoutStrideNV(k_wide_layout, (pc.k_stride_row & ~7u), 1);
    const uint v_base = pc.v_offset + b * pc.v_stride_batch + hk * pc.v_stride_head;
    const uvec2 v_origin = origin(v_base, pc.v_stride_row);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> v_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    v_layout = setTensorLayoutDimensionNV(v_layout, v_origin.x + pc.n_kv, v_origin.y + HV);
    v_layout = setTensorLayoutStrideNV(v_layout, (pc.v_stride_row & ~3u), 1);
    const bool v_wide = pc.v_stride_row != 0u && ((v_base | pc.v_stride_row) & 7u) == 0u;
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> v_wide_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    v_wide_layout = setTensorLayoutDimensionNV(v_wide_layout, pc.n_kv, HV);
    v_wide_layout = setTensorLayoutStrideNV(v_wide_layout, (pc.v_stride_row & ~7u), 1);
    const tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);

    // Mask rows of (b, h). ClampToEdge repeats the last row past Nq and the only row of a
    // broadcast mask (row stride 0); columns past Nkv are MASKED by tile_score anyway.
    const uint mask_base = b * pc.mask_stride_batch + h * pc.mask_stride_head;
    const uvec2 mask_origin = origin(mask_base, pc.mask_stride_row);
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeClampToEdgeNV> mask_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeClampToEdgeNV);
    mask_layout = setTensorLayoutDimensionNV(mask_layout, pc.mask_stride_row == 0u ? 1u : mask_origin.x + pc.n_q, mask_origin.y + pc.n_kv);
    mask_layout = setTensorLayoutStrideNV(mask_layout, pc.mask_stride_row == 0u ? mask_origin.y + pc.n_kv : pc.mask_stride_row, 1);
    const bool mask_wide = pc.mask_stride_row != 0u && ((mask_base | pc.mask_stride_row) & 7u) == 0u;
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeClampToEdgeNV> mask_wide_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeClampToEdgeNV);
    mask_wide_layout = setTensorLayoutDimensionNV(mask_wide_layout, pc.mask_stride_row == 0u ? 1u : pc.n_q, pc.n_kv);
    mask_wide_layout = setTensorLayoutStrideNV(mask_wide_layout, (pc.mask_stride_row & ~7u), 1);
    const float slope = 1.0;
    // This row tile's classes in (b, h)'s mask plane, one per KV tile (templates/mask_tiles.comp.j2).
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;   // the pass's planes
    const uint mask_plane = (pc.mask_stride_batch == 0u ? 0u : b * mask_heads) + (pc.mask_stride_head == 0u ? 0u : h);
    const uint row_tile = pc.mask_stride_row == 0u ? 0u : i0 / BR;
    const uint tile_base = (mask_plane * ((mask_rows + BR - 1u) / BR) + row_tile) * ((pc.n_kv + BC - 1u) / BC);

    const coopmat<float16_t, gl_ScopeWorkgroup, BC, BC, gl_MatrixUseB> ones =
        coopmat<float16_t, gl_ScopeWorkgroup, BC, BC, gl_MatrixUseB>(1.0);
    TILE m = TILE(M_INIT);  // running row max
    TILE l = TILE(0.0);     // running row sum of exp(s - m)
    O_ACC o = O_ACC(0.0);   // running sum of exp(s - m) V

    [[dont_unroll]]
    for (uint j0 = kv_begin; j0 < kv_end; j0 += BC) {
        MASK_TILE mask_tile;
        // The class is the same for the whole workgroup: uniform control flow around the loads.
        const uint mask_class = mask_tile_class[tile_base + j0 / BC];
        if (mask_class == MASK_HIDDEN) continue;  // every p would be 0
        if (mask_class == MASK_ZERO) {
            mask_tile = MASK_TILE(0.0);
        } else {
            if (mask_wide) {
                coopMatLoadTensorNV(mask_tile, mask_data, mask_base,
                                    sliceTensorLayoutNV(mask_wide_layout, i0, BR, j0, BC));
            } else {
                coopMatLoadTensorNV(mask_tile, mask_data, 0, sliceTensorLayoutNV(mask_layout,
                                    mask_origin.x + i0, BR, mask_origin.y + j0, BC));
            }
        }

        coopmat<float16_t, gl_ScopeWorkgroup, HKP, BC, gl_MatrixUseB> kt;
        if (k_wide) {
            coopMatLoadTensorNV(kt, k_buf, k_base,
                                sliceTensorLayoutNV(k_wide_layout, j0, BC, 0, HKP), transposed);
        } else {
            coopMatLoadTensorNV(kt, k_buf, 0, sliceTensorLayoutNV(k_layout,
                                k_origin.x + j0, BC, k_origin.y + 0, HKP), transposed);
        }
        TILE s = coopMatMulAdd(q, kt, TILE(0.0));
        const TILE mask_f32 = TILE(mask_tile);
        coopMatPerElementNV(s, s, tile_score, mask_f32, slope, i0, j0, kv_end);

        // Online softmax: m' = max(m, row max), p = exp(s - m'), l = l exp(m - m') + sum p.
        TILE m_new, p, alpha;
        coopMatReduceNV(m_new, s, gl_CooperativeMatrixReduceRowNV, max_of);
        coopMatPerElementNV(m_new, m_new, new_max, m);
        coopMatPerElementNV(p, s, exp_diff, m_new);
        coopMatPerElementNV(alpha, m, exp_diff, m_new);
        m = m_new;
        const P_A pa = P_A(p);
        // The row sum on the matrix units, of the same f16 p that multiplies V.
        l = alpha * l + coopMatMulAdd(pa, ones, TILE(0.0));

        // O = diag(alpha) O + P V
        coopmat<float16_t, gl_ScopeWorkgroup, BC, HVP, gl_MatrixUseB> vt;
        if (v_wide) {
            coopMatLoadTensorNV(vt, v_buf, v_base,
                                sliceTensorLayoutNV(v_wide_layout, j0, BC, 0, HVP));
        } else {
            coopMatLoadTensorNV(vt, v_buf, 0, sliceTensorLayoutNV(v_layout,
                                v_origin.x + j0, BC, v_origin.y + 0, HVP));
        }
        ROWS_O alpha_o;
        coopMatReduceNV(alpha_o, alpha, gl_CooperativeMatrixReduceRowNV, spread);
        o = coopMatMulAdd(pa, vt, O_ACC(alpha_o) * o);
    }

    // O / l, rows past Nq and columns past HV dropped by the Constant clamp mode.
    coopMatPerElementNV(l, l, inverse_or_zero, m);
    ROWS_O inv_l;
    coopMatReduceNV(inv_l, l, gl_CooperativeMatrixReduceRowNV, spread);
    const ROWS_O result = ROWS_O(o) * inv_l;
    // The final O by the o strides, from this head's row 0.
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> out_layout = createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    out_layout = setTensorLayoutDimensionNV(out_layout, pc.n_q, HV);
    out_layout = setTensorLayoutStrideNV(out_layout, pc.o_stride_row, 1);
    coopMatStoreTensorNV(result, out_data, b * pc.o_stride_batch + h * pc.o_stride_head,
                         sliceTensorLayoutNV(out_layout, i0, BR, 0, HVP));
}
