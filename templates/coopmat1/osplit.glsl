{#- The osplit schedule (kgen/paths/coopmat1.py): regs for V heads too wide for one subgroup's
    registers (MLA: 576/512). Subgroup sg computes the S block of row tile sg / CG and the MK
    columns (sg % CG) * MK.. of each KV tile (summing depth part sg % CG of its row tile's S,
    the other parts arriving through Psh), its softmax and P; P goes to shared memory in
    A-fragment order, and every subgroup multiplies all BR rows of P by its own O_SG columns of
    V. V is the first HSV columns of K's rows (v_in_k): it is read from the K tile in Ksh. Q
    comes in A-fragment order from a pass before the kernel (templates/q_frag.comp.j2). -#}
{% set F = L.frag %}
const uint KSTEPS = HSK_PAD / MK;     // q.k depth steps
const uint RT = BR / MM;              // row tiles: each subgroup holds O of all of them
const uint CG = BC / MK;              // column groups: S blocks per row tile, P depth steps per tile
const uint S_N = MK / MN;             // S tiles in one subgroup's block
const uint O_SG = {{ L.split_cols }}u;  // O columns per subgroup
const uint O_N = O_SG / MN;           // O tiles per row tile
{% include "coopmat1/frag.glsl" %}
{% include "coopmat1/k_tile.glsl" %}
const uint KPART = (KSTEPS + CG - 1u) / CG;  // q.k depth steps per subgroup of a row tile
const uint PART_VECS = S_N * ACC_LEN / 4u;    // 16-byte elements per lane of one partial S block
const uint ROW_LANES = {{ F.row_xor | sum }}u;  // lane & ROW_LANES == 0: the first lane of a row

// Q (f16) in A-fragment order: uvec4 [b * Hq + h][row tile of 16][depth step][lane].
layout(std430, binding = {{ binding.q }}) readonly buffer QFrag { uvec4 q_frag[]; };

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
{% if v.mask %}

// This lane's mask values of its S block in the tile at kv0: one 16-byte element of the
// fragment-ordered mask (templates/mask_frag.comp.j2; a chunk of 16 columns is one block).
uvec4 mval;

float mask_value(uint c, uint i) {
    const uint k = c * ACC_LEN + i;
    return unpackHalf2x16(mval[k / 2u])[k % 2u];
}
{% endif %}
