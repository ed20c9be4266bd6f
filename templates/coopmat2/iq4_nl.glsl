// iq4_nl: d (f16) then 16 bytes of nibbles as in q4_0, each indexing ggml's non-linear codebook
// {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}, packed here as
// signed bytes, four per word, so that the lookup needs no memory.
const uvec4 {{ name }}_iq4nl_codes = uvec4(0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u);
float {{ name }}_value(const in {{ name | upper }}Block b, uint i) {
    uint n = {{ name }}_nibble(b, 1u, i);
    int code = bitfieldExtract(int({{ name }}_iq4nl_codes[n >> 2]), int((n & 3u) * 8u), 8);
    return {{ name }}_half(b, 0u) * float(code);
}
