#version 450
// kgen mask tiles: br 32 x bc 32, wg 256.
// Grid: x = KV tiles, y = row tiles (1 for a one-row mask), z = mask planes (batch x head).
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
layout(std430, binding = 8) writeonly buffer TileBuf { uint tile_class[]; };

const uint BR = 32u, BC = 32u, WG = 256u;
const uint MASK_MIXED = 0u, MASK_HIDDEN = 1u, MASK_ZERO = 2u;  // as templates/common/abi.glsl
const uint SEEN_VISIBLE = 1u, SEEN_NONZERO = 2u;

shared uint seen;

void main() {
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    // Plane = mask batch x mask head (one of each where that stride is 0); the caller's strides
    // place it and its rows (rows may be padded).
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;
    const uint plane = gl_WorkGroupID.z;
    const uint plane_base = plane / mask_heads * pc.mask_stride_batch + plane % mask_heads * pc.mask_stride_head;
    const uint r0 = gl_WorkGroupID.y * BR, c0 = gl_WorkGroupID.x * BC;
    // Rows past Nq repeat the last one in the kernel and columns past Nkv are hidden there
    // anyway: only the mask's own entries decide.
    const uint rows = min(BR, mask_rows - r0), cols = min(BC, pc.n_kv - c0);
    const uint first = plane_base + r0 * pc.mask_stride_row + c0;
    if (gl_LocalInvocationIndex == 0u) seen = 0u;
    barrier();
    uint mine = 0u;
    for (uint e = gl_LocalInvocationIndex; e < rows * cols; e += WG) {
        const float x = float(mask_data[first + (e / cols) * pc.mask_stride_row + e % cols]);
        mine |= (isinf(x) && x < 0.0 ? 0u : SEEN_VISIBLE) | (x != 0.0 ? SEEN_NONZERO : 0u);
    }
    if (mine != 0u) atomicOr(seen, mine);
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        const uint at = (gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y) * gl_NumWorkGroups.x + gl_WorkGroupID.x;
        tile_class[at] = (seen & SEEN_VISIBLE) == 0u ? MASK_HIDDEN
                       : (seen & SEEN_NONZERO) == 0u ? MASK_ZERO : MASK_MIXED;
    }
}
