#version 450
// kgen Q fragments: fragment scheme 1, head_k 576, wg 128.
// Output: uvec4 [b * Hq + h][row tile of 16][depth step of 16][lane]; the 8 halves of element
// (step, lane) are the lane's A elements 0..7 in order. Rows past Nq and columns past head_k are 0.
// Grid: x = chunks of 64 columns, y = row tiles, z = batch x query heads.
#extension GL_EXT_shader_16bit_storage : require

layout(local_size_x = 128) in;

layout(push_constant) uniform Push {
    uint  n_q;
    uint  n_kv;
    uint  n_head_q;
    uint  gqa_ratio;
    uint  n_batch;
    uint  q_stride_row;
    uint  q_stride_head;
    uint  q_stride_batch;
    uint  k_stride_row;
    uint  k_stride_head;
    uint  k_stride_batch;
    uint  v_stride_row;
    uint  v_stride_head;
    uint  v_stride_batch;
    uint  k_offset;
    uint  v_offset;
    uint  mask_stride_row;
    uint  mask_stride_head;
    uint  mask_stride_batch;
    float scale;
    float softcap;
    float alibi_m0;
    float alibi_m1;
    uint  alibi_n2;
    uint  window;
    uint  split_kv;
    uint  split_count;
    uint  o_stride_row;
    uint  o_stride_head;
    uint  o_stride_batch;
} pc;

layout(std430, binding = 0) readonly buffer QBuf { float q_data[]; };
layout(std430, binding = 5) writeonly buffer FragBuf { uvec4 q_frag[]; };

const uint LANES = 32u, HSK = 576u, KSTEPS = 36u;
// Lane l's A element e is row A_ROW[l * 8 + e], column A_COL[l * 8 + e] of the 16 x 16 step.
const uint A_ROW[LANES * 8u] = uint[](0u, 0u, 0u, 0u, 8u, 8u, 8u, 8u, 0u, 0u, 0u, 0u, 8u, 8u, 8u, 8u, 0u, 0u, 0u, 0u, 8u, 8u, 8u, 8u, 0u, 0u, 0u, 0u, 8u, 8u, 8u, 8u, 1u, 1u, 1u, 1u, 9u, 9u, 9u, 9u, 1u, 1u, 1u, 1u, 9u, 9u, 9u, 9u, 1u, 1u, 1u, 1u, 9u, 9u, 9u, 9u, 1u, 1u, 1u, 1u, 9u, 9u, 9u, 9u, 2u, 2u, 2u, 2u, 10u, 10u, 10u, 10u, 2u, 2u, 2u, 2u, 10u, 10u, 10u, 10u, 2u, 2u, 2u, 2u, 10u, 10u, 10u, 10u, 2u, 2u, 2u, 2u, 10u, 10u, 10u, 10u, 3u, 3u, 3u, 3u, 11u, 11u, 11u, 11u, 3u, 3u, 3u, 3u, 11u, 11u, 11u, 11u, 3u, 3u, 3u, 3u, 11u, 11u, 11u, 11u, 3u, 3u, 3u, 3u, 11u, 11u, 11u, 11u, 4u, 4u, 4u, 4u, 12u, 12u, 12u, 12u, 4u, 4u, 4u, 4u, 12u, 12u, 12u, 12u, 4u, 4u, 4u, 4u, 12u, 12u, 12u, 12u, 4u, 4u, 4u, 4u, 12u, 12u, 12u, 12u, 5u, 5u, 5u, 5u, 13u, 13u, 13u, 13u, 5u, 5u, 5u, 5u, 13u, 13u, 13u, 13u, 5u, 5u, 5u, 5u, 13u, 13u, 13u, 13u, 5u, 5u, 5u, 5u, 13u, 13u, 13u, 13u, 6u, 6u, 6u, 6u, 14u, 14u, 14u, 14u, 6u, 6u, 6u, 6u, 14u, 14u, 14u, 14u, 6u, 6u, 6u, 6u, 14u, 14u, 14u, 14u, 6u, 6u, 6u, 6u, 14u, 14u, 14u, 14u, 7u, 7u, 7u, 7u, 15u, 15u, 15u, 15u, 7u, 7u, 7u, 7u, 15u, 15u, 15u, 15u, 7u, 7u, 7u, 7u, 15u, 15u, 15u, 15u, 7u, 7u, 7u, 7u, 15u, 15u, 15u, 15u);
const uint A_COL[LANES * 8u] = uint[](0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u, 0u, 1u, 8u, 9u, 0u, 1u, 8u, 9u, 2u, 3u, 10u, 11u, 2u, 3u, 10u, 11u, 4u, 5u, 12u, 13u, 4u, 5u, 12u, 13u, 6u, 7u, 14u, 15u, 6u, 7u, 14u, 15u);

// Each workgroup takes 16 rows x COLS columns through shared memory: read row by row (whole
// cache lines), then gathered in fragment order (gathers straight from Q run far below copy
// speed).
const uint COLS = 64u, STRIDE = COLS + 1u;  // + 1: the 8 rows a gather reads are on different banks
shared float tile[16u * STRIDE];
// The tables, copied to shared memory: read by lane they are divergent constant loads.
shared uint a_at[LANES * 8u];

void main() {
    const uint c0 = gl_WorkGroupID.x * COLS, row_tile = gl_WorkGroupID.y, plane = gl_WorkGroupID.z;
    const uint b = plane / pc.n_head_q, h = plane % pc.n_head_q;
    const uint tid = gl_LocalInvocationID.x;
    const uint q_base = b * pc.q_stride_batch + h * pc.q_stride_head;
    for (uint e = tid; e < LANES * 8u; e += 128u) {
        a_at[e] = A_ROW[e] * STRIDE + A_COL[e];
    }
    for (uint e = tid; e < 16u * COLS; e += 128u) {
        const uint r = e / COLS, c = e % COLS, row = row_tile * 16u + r, col = c0 + c;
        tile[r * STRIDE + c] = row < pc.n_q && col < HSK ? q_data[q_base + row * pc.q_stride_row + col] : 0.0;
    }
    barrier();
    const uint out_base = (plane * gl_NumWorkGroups.y + row_tile) * KSTEPS * LANES;
    const uint steps = min(COLS / 16u, KSTEPS - c0 / 16u);
    for (uint e = tid; e < steps * LANES; e += 128u) {
        const uint ks = e / LANES, lane = e % LANES;
        uint packed[4];
        for (uint k = 0u; k < 4u; ++k) {
            float x[2];
            for (uint n = 0u; n < 2u; ++n) {
                x[n] = tile[a_at[lane * 8u + 2u * k + n] + ks * 16u];
            }
            packed[k] = packHalf2x16(vec2(x[0], x[1]));
        }
        q_frag[out_base + (c0 / 16u + ks) * LANES + lane] = uvec4(packed[0], packed[1], packed[2], packed[3]);
    }
}
