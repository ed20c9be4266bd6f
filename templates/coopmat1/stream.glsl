{#- The stream schedule (kgen/paths/coopmat1.py): one row tile streams whole K/V tiles. Every
    thread holds its share of the next tile (K and V rows as 16-byte elements, and the tile's
    mask values) in registers: load_tile issues the loads before the current tile's products,
    store_tile puts them in shared memory once that tile is done. With v_in_k (MLA) V is the
    first HSV columns of the K tile: nothing of V is loaded or staged. -#}
{% from "coopmat1/tile_rows.glsl" import load_rows, store_rows %}
{% set ragged_k = L.k_step * v.wg != v.bc * v.head_k // 8 %}
{% set ragged_v = L.v_step * v.wg != v.bc * v.head_v // 8 %}
const uint K_VECS = HSK / 8u;      // 16-byte elements per K row (head sizes are multiples of 8)
const uint KSH_ROW = K_STRIDE / 8u;  // 16-byte elements between rows of Ksh / Vsh
{% if v.v_in_k %}
const uint VSH_ROW = KSH_ROW;
#define Vsh Ksh

uvec4 k_staged[K_STEP];
{% else %}
const uint V_VECS = HSV / 8u;
const uint VSH_ROW = V_STRIDE / 8u;

uvec4 k_staged[K_STEP];
uvec4 v_staged[V_STEP];
{% endif %}
{% if v.mask %}
float16_t m_staged[M_STEP];
{% endif %}

// Zeros everywhere in Ksh and Vsh: head columns past HSK / HSV (up to the matrix padding) are
// never written by a tile, and the products read them.
void clear_kv() {
    for (uint e = tid; e < BC * KSH_ROW; e += WG) {
        Ksh[e] = uvec4(0u);
    }
{% if not v.v_in_k %}
    for (uint e = tid; e < BC * VSH_ROW; e += WG) {
        Vsh[e] = uvec4(0u);
    }
{% endif %}
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
{{ load_rows("k_staged", "k_direct", "k_base", "k_stride_row", "K_STEP", "K_VECS", ragged_k, v.aligned) }}
{% if not v.v_in_k %}
{{ load_rows("v_staged", "v_direct", "v_base", "v_stride_row", "V_STEP", "V_VECS", ragged_v, v.aligned) }}
{% endif %}
{% if v.mask %}
    [[unroll]] for (uint n = 0u; n < M_STEP; ++n) {
        const uint e = tid + n * WG, r = e / BC, j = e % BC;
        m_staged[n] = float16_t(0.0);
        if (e < BR * BC && row0 + r < pc.n_q && kv0 + j < kv_end) {
            m_staged[n] = mask_data[mask_row(b, h, row0 + r) + kv0 + j];
        }
    }
{% endif %}
}

void store_tile() {
{{ store_rows("k_staged", "Ksh", "K_STEP", "K_VECS", "KSH_ROW", ragged_k) }}
{% if not v.v_in_k %}
{{ store_rows("v_staged", "Vsh", "V_STEP", "V_VECS", "VSH_ROW", ragged_v) }}
{% endif %}
{% if v.mask %}
    [[unroll]] for (uint n = 0u; n < M_STEP; ++n) {
        const uint e = tid + n * WG;
        if (e < BR * BC) {
            Msh[e] = m_staged[n];
        }
    }
{% endif %}
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
{% if v.aligned %}
        if (row_ok) {
{% else %}
        if (row_ok && kv0 + j < kv_end) {
{% endif %}
{% if v.mask %}
            s[u] = fa_score_with(qk, float(Msh[r * BC + j]), i, kv0 + j, slope);
{% else %}
            s[u] = fa_score_with(qk, 0.0, i, kv0 + j, slope);
{% endif %}
        }
        mx = max(mx, s[u]);
    }
{% if v.acc == 16 %}
    const float m_new = max(m_row[0], row_max(mx) + ROW_MAX_OFFSET);
{% else %}
    const float m_new = max(m_row[0], row_max(mx));
{% endif %}
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
