#version 450
// kgen mask fragments: fragment scheme 1, 16x8, wg 256.
// Output: uvec4 [plane][row tile of 16][chunk of 16 columns][lane]; the 8 halves of element
// (lane, chunk) are S tiles chunk * TILES + g (g < TILES), accumulator elements 0..ACC_LEN-1 each.
// Columns are padded to whole KV tiles of BC = 32, rows to whole tiles of 16.
// Grid: x = chunk groups of CHUNKS_PER_GROUP, y = row tiles, z = mask planes (batch x head).
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

layout(local_size_x = 256) in;

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

layout(std430, binding = 3) readonly buffer MaskBuf { float16_t mask_data[]; };
layout(std430, binding = 5) writeonly buffer FragBuf { uvec4 mask_frag[]; };

const uint LANES = 32u, ACC_LEN = 4u, SLOTS = 2u, MN = 8u;
const uint TILES = 2u;  // S tiles per 16-byte element
const uint CHUNK = 16u;  // columns per 16-byte element
const uint CHUNKS_PER_GROUP = 8u;
const uint BC = 32u;
const uint SLOT_OF[ACC_LEN] = uint[](0u, 0u, 1u, 1u);
const uint FRAG_ROW[LANES * SLOTS] = uint[](0u, 8u, 0u, 8u, 0u, 8u, 0u, 8u, 1u, 9u, 1u, 9u, 1u, 9u, 1u, 9u, 2u, 10u, 2u, 10u, 2u, 10u, 2u, 10u, 3u, 11u, 3u, 11u, 3u, 11u, 3u, 11u, 4u, 12u, 4u, 12u, 4u, 12u, 4u, 12u, 5u, 13u, 5u, 13u, 5u, 13u, 5u, 13u, 6u, 14u, 6u, 14u, 6u, 14u, 6u, 14u, 7u, 15u, 7u, 15u, 7u, 15u, 7u, 15u);
const uint FRAG_COL[LANES * ACC_LEN] = uint[](0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u, 0u, 1u, 0u, 1u, 2u, 3u, 2u, 3u, 4u, 5u, 4u, 5u, 6u, 7u, 6u, 7u);

// The workgroup's 16 rows x COLS columns go through shared memory: read row by row (whole
// cache lines), then gathered in fragment order (gathers straight from the mask run far below
// copy speed).
const uint COLS = CHUNKS_PER_GROUP * CHUNK, STRIDE = COLS + 1u;  // + 1: gathered rows on different banks
shared float tile[16u * STRIDE];
// Where each lane's 8 values sit in a chunk of `tile`, from the tables: read by lane, the
// tables are divergent constant loads.
shared uint frag_at[LANES * 8u];

void main() {
    const uint tid = gl_LocalInvocationID.x, lane = tid % LANES;
    const uint chunk = gl_WorkGroupID.x * CHUNKS_PER_GROUP + tid / LANES;
    const uint row_tile = gl_WorkGroupID.y, plane = gl_WorkGroupID.z;
    const uint row_tiles = gl_NumWorkGroups.y, chunks = (pc.n_kv + BC - 1u) / BC * (BC / CHUNK);
    // A mask of one row serves every query row. Plane = mask batch x mask head (one of each
    // where that stride is 0); the caller's strides place it (rows may be padded).
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;
    const uint plane_base = plane / mask_heads * pc.mask_stride_batch + plane % mask_heads * pc.mask_stride_head;
    const uint col0 = gl_WorkGroupID.x * COLS;
    // Rows past Nq and columns past Nkv: 0 (the kernel drops those rows and hides those keys).
    for (uint e = tid; e < LANES * 8u; e += 256u) {
        const uint l = e / 8u, k = e % 8u, g = k / ACC_LEN, i = k % ACC_LEN;
        frag_at[e] = FRAG_ROW[l * SLOTS + SLOT_OF[i]] * STRIDE + g * MN + FRAG_COL[l * ACC_LEN + i];
    }
    for (uint e = tid; e < 16u * COLS; e += 256u) {
        const uint r = e / COLS, c = e % COLS;
        const uint row = mask_rows == 1u ? 0u : row_tile * 16u + r, col = col0 + c;
        tile[r * STRIDE + c] = row < mask_rows && col < pc.n_kv ? float(mask_data[plane_base + row * pc.mask_stride_row + col]) : 0.0;
    }
    barrier();
    if (chunk >= chunks) {
        return;
    }
    uint packed[4];
    [[unroll]] for (uint k = 0u; k < 8u; k += 2u) {
        float v[2];
        [[unroll]] for (uint h = 0u; h < 2u; ++h) {
            v[h] = tile[frag_at[lane * 8u + k + h] + (chunk * CHUNK - col0)];
        }
        packed[k / 2u] = packHalf2x16(vec2(v[0], v[1]));
    }
    mask_frag[((plane * row_tiles + row_tile) * chunks + chunk) * LANES + lane] =
        uvec4(packed[0], packed[1], packed[2], packed[3]);
}
