// q8_0: d (f16) then 32 signed bytes; x = d * q.
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = {{ name }}_bytes4(blk, 1u + (i >> 1));
    ivec4 q = ivec4(uvec4(b << 24, b << 16, b << 8, b)) >> 24;  // sign-extend each byte
    return {{ name }}_half(blk, 0u) * vec4(q);
}
