{#- Whole K tiles through shared memory for reg_softmax kernels (regs.glsl, osplit.glsl): each
    thread loads its share of the next tile into registers (load_k) while the current one is
    used, and stores it once Ksh is free (store_k). -#}
{% set ragged_k = L.k_step * v.wg != v.bc * v.head_k // 8 %}
const uint K_VECS = HSK / 8u;         // 16-byte elements per K row (head sizes are multiples of 8)
const uint KSH_ROW = K_STRIDE / 8u;   // 16-byte elements between rows of Ksh
uvec4 kv_staged[STAGED];

// K rows kv0..kv0+BC-1 -> registers (rows past kv_end as zeros); store_k puts them in Ksh.
void load_k(uint k_base, uint kv0, uint kv_end) {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG, j = e / K_VECS;
        bool in_tile = true;
{% if ragged_k %}
        in_tile = e < BC * K_VECS;
{% endif %}
{% if not v.aligned %}
        in_tile = in_tile && kv0 + j < kv_end;
{% endif %}
        kv_staged[n] = uvec4(0u);
        if (in_tile) {
            kv_staged[n] = k_direct[(k_base + (kv0 + j) * pc.k_stride_row) / 8u + e % K_VECS];
        }
    }
}

void store_k() {
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG;
{% if ragged_k %}
        if (e < BC * K_VECS)
{% endif %}
        Ksh[e / K_VECS * KSH_ROW + e % K_VECS] = kv_staged[n];
    }
}
