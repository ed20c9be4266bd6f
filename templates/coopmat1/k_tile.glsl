{#- Whole K tiles through shared memory for the regs and osplit kernels (regs.glsl,
    osplit.glsl): each thread loads its share of the next tile into registers (load_k) while the
    current one is used, and stores it once Ksh is free (store_k). -#}
{% from "coopmat1/tile_rows.glsl" import load_rows, store_rows %}
{% set ragged_k = L.k_step * v.wg != v.bc * v.head_k // 8 %}
const uint K_VECS = HSK / 8u;         // 16-byte elements per K row (head sizes are multiples of 8)
const uint KSH_ROW = K_STRIDE / 8u;   // 16-byte elements between rows of Ksh
uvec4 kv_staged[STAGED];

// K rows kv0..kv0+BC-1 -> registers (rows past kv_end as zeros); store_k puts them in Ksh.
void load_k(uint k_base, uint kv0, uint kv_end) {
{{ load_rows("kv_staged", "k_direct", "k_base", "k_stride_row", "K_STEP", "K_VECS", ragged_k, v.aligned) }}
}

void store_k() {
{{ store_rows("kv_staged", "Ksh", "K_STEP", "K_VECS", "KSH_ROW", ragged_k) }}
}
