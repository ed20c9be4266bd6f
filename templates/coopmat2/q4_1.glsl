// q4_1: d, m (f16) then 16 bytes of nibbles; x = d * nibble + m.
float {{ name }}_value(const in {{ name | upper }}Block b, uint i) {
    return {{ name }}_half(b, 0u) * float({{ name }}_nibble(b, 2u, i)) + {{ name }}_half(b, 1u);
}
