{#- The regs schedule (kgen/paths/coopmat1.py): FlashAttention-2 on coopmat1. Each subgroup owns
    RT tiles of MM query rows and keeps S, P and O in registers; the fragment scheme
    (kgen/paths/fragments.py, `F`) says which row and column each lane's accumulator element
    holds. Whole K and V tiles go through shared memory as 16-byte elements, each thread holding
    its share of the next one in registers while the current products run. -#}
{% set F = L.frag %}
{% set ragged_v = L.v_step * v.wg != v.bc * v.head_v // 8 %}
{% set scored = v.mask or v.causal or v.softcap or v.alibi or not v.aligned %}
const uint V_VECS = HSV / 8u;
const uint Q_VECS = HSK_PAD / 8u;     // Q rows are staged with their zero padding
const uint VSH_ROW = V_STRIDE / 8u;
const uint KSTEPS = HSK_PAD / MK;     // q.k depth steps
const uint PSTEPS = BC / MK;          // P.V depth steps per tile
const uint TILES_PER_PSTEP = MK / MN; // S tiles one P operand spans
const uint S_N = BC / MN;             // S tiles (of MM x MN) per tile row
const uint O_N = HSV_PAD / MN;        // O tiles per row tile
const uint RT = {{ L.row_tiles }}u;   // tiles of MM rows per subgroup
{% include "coopmat1/frag.glsl" %}
{% include "coopmat1/k_tile.glsl" %}
{% from "coopmat1/tile_rows.glsl" import load_rows, store_rows %}

{% if v.split_sync %}
// split_sync: counts of subgroup arrivals per event, never reset within a call; tile t's event
// is complete when its count reaches (t + 1) * NSG.
const uint K_READY = 0u;  // stored its share of a K tile
const uint K_FREE = 1u;   // read a K tile for the last time
const uint V_READY = 2u;  // stored its share of a V tile
const uint V_FREE = 3u;   // read a V tile for the last time

void arrive(uint event) {
    subgroupBarrier();  // every lane's shared reads and stores come before the count
    if (subgroupElect()) {
        atomicAdd(sync_count[event], 1u, gl_ScopeWorkgroup, gl_StorageSemanticsShared, gl_SemanticsRelease);
    }
}

void wait_for(uint event, uint count) {
    while (atomicLoad(sync_count[event], gl_ScopeWorkgroup, gl_StorageSemanticsShared,
                      gl_SemanticsAcquire) < count) {
    }
}

{% endif %}
// Zeros everywhere in Ksh and Vsh: head columns past HSK / HSV (up to the matrix padding) are
// never written by a tile, and the products read them.
void clear_kv() {
    for (uint e = tid; e < BC * KSH_ROW; e += WG) {
        Ksh[e] = uvec4(0u);
    }
    for (uint e = tid; e < BC * VSH_ROW; e += WG) {
        Vsh[e] = uvec4(0u);
    }
}

{% set q_dst = "Ksh" if L.q_regs else "Qsh" %}
// Q rows row0 + q0 .. q0 + rows - 1 (f32 in memory) as f16 into rows 0.. of {{ q_dst }}{{ " (on their way to registers)" if L.q_regs }}, zero
// past Nq and past HSK. Read as scalars: Q's strides need not be multiples of 4.
void stage_q_rows(uint q_base, uint row0, uint q0, uint rows) {
    for (uint e = tid; e < rows * Q_VECS; e += WG) {
        const uint r = e / Q_VECS, c = e % Q_VECS;
        uvec4 x = uvec4(0u);
        if (row0 + q0 + r < pc.n_q && c < K_VECS) {
            const uint q = q_base + (row0 + q0 + r) * pc.q_stride_row + c * 8u;
            [[unroll]] for (uint n = 0u; n < 4u; ++n) {
                x[n] = packFloat2x16(f16vec2(q_data[q + 2u * n], q_data[q + 2u * n + 1u]));
            }
        }
        {{ q_dst }}[r * KSH_ROW + c] = x;
    }
}

void load_v(uint v_base, uint kv0, uint kv_end) {
{{ load_rows("kv_staged", "v_direct", "v_base", "v_stride_row", "V_STEP", "V_VECS", ragged_v, v.aligned) }}
}

void store_v() {
{{ store_rows("kv_staged", "Vsh", "V_STEP", "V_VECS", "VSH_ROW", ragged_v) }}
}
{% if v.mask %}

{% if L.mask_frag %}
// This lane's mask values of the tile at kv0, from the fragment-ordered copy of the mask
// (templates/mask_frag.comp.j2): 16-byte element (chunk, lane) holds S tiles chunk * MF_TILES ..
// in accumulator order. mask_tile[t]: row tile t's first element, chunk 0.
const uint MF_TILES = {{ L.mask_frag }}u;
const uint MF_CHUNKS = BC / (MF_TILES * MN);  // 16-byte elements per lane per tile row
uvec4 mval[RT][MF_CHUNKS];

void load_mask(uint mask_tile[RT], uint kv0) {
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint cc = 0u; cc < MF_CHUNKS; ++cc) {
            mval[t][cc] = mask_frag[(mask_tile[t] + kv0 / (MF_TILES * MN) + cc) * SG + lane];
        }
    }
}

// Element i of S tile c of row tile t.
float mask_value(uint t, uint c, uint i) {
    const uint k = (c % MF_TILES) * ACC_LEN + i;
    return unpackHalf2x16(mval[t][c / MF_TILES][k / 2u])[k % 2u];
}
{% else %}
// This lane's mask values of the tile at kv0 (rows from mask_base, one per row slot), one half
// per load: this fragment shape has no fragment-ordered mask.
float16_t mval[RT][S_N][ACC_LEN];

void load_mask(uint mask_base[RT][SLOTS], uint kv0, uint kv_end) {
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint j = kv0 + c * MN + FRAG_COL[lane * ACC_LEN + i];
                mval[t][c][i] = float16_t(0.0);
                if (j < kv_end) {
                    mval[t][c][i] = mask_data[mask_base[t][SLOT_OF[i]] + j];
                }
            }
        }
    }
}

float mask_value(uint t, uint c, uint i) {
    return float(mval[t][c][i]);
}
{% endif %}
{% endif %}
