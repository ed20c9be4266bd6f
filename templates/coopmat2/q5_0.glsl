// q5_0: d (f16), qh (32 high bits, bit i for element i), 16 bytes of low nibbles;
// x = d * ((nibble | high << 4) - 16).
float {{ name }}_value(const in {{ name | upper }}Block b, uint i) {
    uint qh = uint(b.w[1u + (i >> 4)]) >> (i & 15u);
    uint q = {{ name }}_nibble(b, 3u, i) | ((qh & 1u) << 4);
    return {{ name }}_half(b, 0u) * (float(q) - 16.0);
}
