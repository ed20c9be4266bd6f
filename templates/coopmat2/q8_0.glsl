// q8_0: d (f16) then 32 signed bytes; x = d * q.
float {{ name }}_value(const in {{ name | upper }}Block b, uint i) {
    int q = bitfieldExtract(int(uint(b.w[1u + (i >> 1)])), int((i & 1u) * 8u), 8);
    return {{ name }}_half(b, 0u) * float(q);
}
