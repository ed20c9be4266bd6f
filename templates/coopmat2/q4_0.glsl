// q4_0: d (f16) then 16 bytes of nibbles; x = d * (nibble - 8).
float {{ name }}_value(const in {{ name | upper }}Block b, uint i) {
    return {{ name }}_half(b, 0u) * (float({{ name }}_nibble(b, 1u, i)) - 8.0);
}
