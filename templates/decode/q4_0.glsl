// q4_0: d (f16) then 16 bytes; element i < 16 is the low nibble of byte i, i >= 16 the high
// nibble of byte i - 16; x = d * (nibble - 8).
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = {{ name }}_bytes4(blk, 1u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24)) & 15u;
    return {{ name }}_half(blk, 0u) * (vec4(q) - 8.0);
}
