{#- K/V buffers for coopMatLoadTensorNV, one macro per tensor. `declare(name, binding, t, block)`
    declares binding `binding` as NAME_buf (the loads address it from element 0) and, for every
    type but f16, the decode callback the loads pass:
        float16_t NAME_decode(const in NAME_Block b, const in uint blk[2], const in uint at[2])
    `b` points at one block of `block` elements along a row (the index the tensor layout computes,
    times the block's size), at[1] is the element within it. ggml block layouts (kgen/types.py)
    are read as 16-bit words, so no 8-bit storage is needed. -#}
{% macro declare(name, binding, t, block) -%}
// ---- {{ name | upper }}: {{ t.label }}{% if block > 1 %}, decoded {{ block }} elements per block{% endif %} ----
{% if t.label == "f16" %}
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}F16 { float16_t {{ name }}_buf[]; };
{% else %}
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}Raw { uint {{ name }}_buf[]; };
{% if t.label == "f32" %}
layout(buffer_reference, std430, buffer_reference_align = {{ 4 * block }}) readonly buffer {{ name | upper }}Block { float x[{{ block }}]; };
float16_t {{ name }}_decode(const in {{ name | upper }}Block b, const in uint blk[2], const in uint at[2]) {
    return float16_t(b.x[at[1]]);
}
{% elif t.label == "bf16" %}
// bf16 is the high half of an f32.
layout(buffer_reference, std430, buffer_reference_align = {{ 2 * block }}) readonly buffer {{ name | upper }}Block { uint16_t x[{{ block }}]; };
float16_t {{ name }}_decode(const in {{ name | upper }}Block b, const in uint blk[2], const in uint at[2]) {
    return float16_t(uintBitsToFloat(uint(b.x[at[1]]) << 16));
}
{% else %}
layout(buffer_reference, std430, buffer_reference_align = 2) readonly buffer {{ name | upper }}Block { uint16_t w[{{ t.block_bytes // 2 }}]; };
float {{ name }}_half(const in {{ name | upper }}Block b, uint w) { return unpackHalf2x16(uint(b.w[w])).x; }
// The 4-bit quant of element i from 16 bytes starting at word `w`: element i < 16 is the low
// nibble of byte i, i >= 16 the high nibble of byte i - 16.
uint {{ name }}_nibble(const in {{ name | upper }}Block b, uint w, uint i) {
    return (uint(b.w[w + ((i & 15u) >> 1)]) >> ((i & 1u) * 8u + (i >> 4) * 4u)) & 15u;
}
{% include "coopmat2/" ~ t.label ~ ".glsl" %}
float16_t {{ name }}_decode(const in {{ name | upper }}Block b, const in uint blk[2], const in uint at[2]) {
    return float16_t({{ name }}_value(b, at[1]));
}
{% endif %}
{% endif %}
{%- endmacro %}
