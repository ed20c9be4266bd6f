// q5_1: d, m (f16), qh (32 high bits), 16 bytes of low nibbles; x = d * (nibble | high << 4) + m.
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint qh = {{ name }}_bytes4(blk, 2u) >> i;
    uint b = {{ name }}_bytes4(blk, 4u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24) & 15u) | ((uvec4(qh, qh >> 1, qh >> 2, qh >> 3) & 1u) << 4);
    return {{ name }}_half(blk, 0u) * vec4(q) + {{ name }}_half(blk, 1u);
}
