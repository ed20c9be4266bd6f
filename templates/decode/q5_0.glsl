// q5_0: d (f16), qh (32 high bits, bit i for element i), 16 bytes of low nibbles as in q4_0;
// x = d * ((nibble | high << 4) - 16).
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint qh = {{ name }}_bytes4(blk, 1u) >> i;
    uint b = {{ name }}_bytes4(blk, 3u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24) & 15u) | ((uvec4(qh, qh >> 1, qh >> 2, qh >> 3) & 1u) << 4);
    return {{ name }}_half(blk, 0u) * (vec4(q) - 16.0);
}
