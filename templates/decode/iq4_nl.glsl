// iq4_nl: d (f16) then 16 bytes of nibbles as in q4_0, each indexing ggml's non-linear codebook.
const float {{ name }}_iq4nl_values[16] = float[16](
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
vec4 {{ name }}_load4(uint e) {
    uint blk = e >> 5, i = e & 31u;
    uint b = {{ name }}_bytes4(blk, 1u + ((i & 15u) >> 1)) >> ((i & 16u) >> 2);
    uvec4 q = (uvec4(b, b >> 8, b >> 16, b >> 24)) & 15u;
    return {{ name }}_half(blk, 0u) * vec4({{ name }}_iq4nl_values[q.x], {{ name }}_iq4nl_values[q.y],
                                         {{ name }}_iq4nl_values[q.z], {{ name }}_iq4nl_values[q.w]);
}
