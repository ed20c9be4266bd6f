{#- K and V into shared memory as f16 (the staged schedules: K_CHUNK head columns of K and
    V_ROWS rows of V a step, or whole tiles), one vec4 per step, consecutive threads on
    consecutive vec4s of a row. Columns past the head size and rows past the range are written
    as zeros: the matrix products then read only finite values and need no bounds. K and V go
    through registers in two halves (load_*: global -> `staged`, store_*: `staged` -> KVsh) so
    that the main loop can issue the next step's loads before this step's matrix work. -#}
// This thread's vec4s of the staging step in flight (a K chunk or a block of V rows).
f16vec4 staged[STAGED];

// K rows kv0..kv0+BC-1, head columns d0..d0+K_CHUNK-1 -> staged; store_k puts them in KVsh
// (row stride K_STRIDE).
void load_k(uint k_base, uint kv0, uint kv_end, uint d0) {
    const uint COLS4 = K_CHUNK / 4u, TOTAL = BC * COLS4;
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG, j = e / COLS4, dc = e % COLS4 * 4u;
        staged[n] = f16vec4(0.0);
{% if v.aligned %}
        if (e < TOTAL && d0 + dc < HSK) {
{% else %}
        if (e < TOTAL && d0 + dc < HSK && kv0 + j < kv_end) {
{% endif %}
            staged[n] = f16vec4(k_load4(k_base + (kv0 + j) * pc.k_stride_row + d0 + dc));
        }
    }
}

void store_k() {
    const uint COLS4 = K_CHUNK / 4u, TOTAL = BC * COLS4;
    [[unroll]] for (uint n = 0u; n < K_STEP; ++n) {
        const uint e = tid + n * WG;
        if (e < TOTAL) {
            KVsh[(e / COLS4 * K_STRIDE) / 4u + e % COLS4] = staged[n];
        }
    }
}

// V rows kv..kv+V_ROWS-1, all head columns -> staged; store_v puts them in KVsh (row stride
// V_STRIDE).
void load_v(uint v_base, uint kv, uint kv_end) {
    const uint COLS4 = HSV_PAD / 4u, TOTAL = V_ROWS * COLS4;
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG, j = e / COLS4, d = e % COLS4 * 4u;
        staged[n] = f16vec4(0.0);
{% if v.aligned %}
        if (e < TOTAL && d < HSV) {
{% else %}
        if (e < TOTAL && d < HSV && kv + j < kv_end) {
{% endif %}
            staged[n] = f16vec4(v_load4(v_base + (kv + j) * pc.v_stride_row + d));
        }
    }
}

void store_v() {
    const uint COLS4 = HSV_PAD / 4u, TOTAL = V_ROWS * COLS4;
    [[unroll]] for (uint n = 0u; n < V_STEP; ++n) {
        const uint e = tid + n * WG;
        if (e < TOTAL) {
            KVsh[(e / COLS4 * V_STRIDE) / 4u + e % COLS4] = staged[n];
        }
    }
}
