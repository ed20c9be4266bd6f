{#- The online-softmax step over one BR x BC score tile in Ssh. -#}
// Reductions over the TPR adjacent lanes that own a row (xor partners stay inside the row).
float row_max(float x) {
    [[unroll]] for (uint o = TPR / 2u; o > 0u; o >>= 1u) {
        x = max(x, subgroupShuffleXor(x, o));
    }
    return x;
}

float row_sum(float x) {
    [[unroll]] for (uint o = TPR / 2u; o > 0u; o >>= 1u) {
        x += subgroupShuffleXor(x, o);
    }
    return x;
}

// For each of this thread's rows: score the raw q.k values of keys kv_at.. (fa_score: scale,
// softcap, mask, ALiBi, causal; rows past Nq and keys outside kv_lo..kv_end-1 become MASKED;
// kv_lo > kv_at only for a direct-schedule tail tile), fold the tile's row max into m,
// write p = exp(s - m) as f16 to Psh (masked scores give exactly 0), add the p actually used
// to l, and put alpha = exp(m_old - m_new) MN times into Rsh for the O rescale.
void softmax_tile(uint kv_at, uint kv_lo, uint kv_end, uint row0, uint b, uint h, float slope,
                  inout float m_row[RPT], inout float l_row[RPT]) {
    const uint rg = tid / TPR, cl = tid % TPR;
    [[unroll]] for (uint k = 0u; k < RPT; ++k) {
        const uint r = rg + k * ROW_GROUPS, i = row0 + r;
        const bool row_ok = i < pc.n_q;  // rows past Nq read no mask and get p = 0
{% if v.mask %}
        const uint mrow = mask_row(b, h, i);
{% else %}
        const uint mrow = 0u;
{% endif %}
        float mx = MASKED;
        for (uint j = cl; j < BC; j += TPR) {
            float s = MASKED;
{% if v.aligned %}
            if (row_ok) {
{% else %}
            if (row_ok && kv_at + j >= kv_lo && kv_at + j < kv_end) {
{% endif %}
                s = fa_score(Ssh[r * S_STRIDE + j], mrow, i, kv_at + j, slope);
            }
            Ssh[r * S_STRIDE + j] = s;  // only this lane reads it back
            mx = max(mx, s);
        }
{% if v.acc == 16 %}
        const float m_new = max(m_row[k], row_max(mx) + ROW_MAX_OFFSET);
{% else %}
        const float m_new = max(m_row[k], row_max(mx));
{% endif %}
        const float alpha = exp(m_row[k] - m_new);
        float sum = 0.0;
        for (uint j = cl; j < BC; j += TPR) {
            const float s = Ssh[r * S_STRIDE + j];
            const float16_t p = float16_t(s > MASKED_LIMIT ? exp(s - m_new) : 0.0);
            Psh[r * P_STRIDE + j] = p;
            sum += float(p);
        }
        l_row[k] = l_row[k] * alpha + row_sum(sum);
        m_row[k] = m_new;
        for (uint c = cl; c < MN; c += TPR) {
            Rsh[r * MN + c] = alpha;
        }
    }
}
