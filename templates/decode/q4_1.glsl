// q4_1: d, m (f16) then 16 bytes of nibbles as in q4_0; x = d * nibble + m.
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = {{ name }}_bytes4(blk, 2u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24)) & 15u;
    return {{ name }}_half(blk, 0u) * vec4(q) + {{ name }}_half(blk, 1u);
}
