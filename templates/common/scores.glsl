{#- Score modifiers shared by every path: scale, softcap, mask * ALiBi slope, causal/window.
    Compiled in only for the features the variant has. -#}
// A masked score is this finite value, not -inf, so that max() and exp() never meet inf - inf;
// a row whose running max is still below MASKED_LIMIT has seen nothing visible and yields 0.
const float MASKED = -1.0e30;
const float MASKED_LIMIT = -1.0e29;
{% if v.alibi %}

float alibi_slope(uint h) {
    return h < pc.alibi_n2 ? pow(pc.alibi_m0, float(h + 1u))
                           : pow(pc.alibi_m1, float(2u * (h - pc.alibi_n2) + 1u));
}
{% endif %}
{% if v.causal %}

// Key j is visible to query i iff j <= i + (Nkv - Nq), and with a window W also j > i + (Nkv - Nq) - W.
bool kv_visible(uint i, uint j) {
    int last = int(i) + int({{ "seq_n_kv" if v.page else "pc.n_kv" }}) - int({{ "seq_n_q" if v.page else "pc.n_q" }});
    return int(j) <= last && (pc.window == 0u || int(j) > last - int(pc.window));
}
{% endif %}

// Everything applied to q.k before the softmax, given key j's mask value for row i (0 without
// the mask). `slope` is alibi_slope(h) (1.0 without ALiBi), hoisted by the caller: it is per head.
float fa_score_with(float qk, float mask_value, uint i, uint j, float slope) {
    float s = pc.scale * qk;
{% if v.softcap %}
    s = pc.softcap * tanh(s / pc.softcap);
{% endif %}
{% if v.mask %}
    s += slope * mask_value;
{% endif %}
{% if v.causal %}
    if (!kv_visible(i, j)) s = MASKED;
{% endif %}
    return max(s, MASKED);  // also maps a -inf mask entry to MASKED
}

// fa_score_with, reading the mask value from the mask buffer (row base from mask_row()).
float fa_score(float qk, uint mask_row_base, uint i, uint j, float slope) {
{% if v.mask %}
    return fa_score_with(qk, float(mask_data[mask_row_base + j]), i, j, slope);
{% else %}
    return fa_score_with(qk, 0.0, i, j, slope);
{% endif %}
}
{% if v.mask %}

// First mask element of query row i of head h in batch b.
uint mask_row(uint b, uint h, uint i) {
    return b * pc.mask_stride_batch + h * pc.mask_stride_head + i * pc.mask_stride_row;
}
{% endif %}
