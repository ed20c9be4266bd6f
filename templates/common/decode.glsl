{#- K/V storage decode, one macro per tensor. `declare(name, binding, t)` declares the buffer
    for KvType `t` and two functions returning f32 values:
      vec4  NAME_load4(uint e)  elements e..e+3 (e % 4 == 0: never crosses a block)
      float NAME_load1(uint e)  element e
      NAME_raw4(uint e)         elements e..e+3 in the narrowest exact register type: f16vec4
                                for f16 (f16 values, no conversion), vec4 for the rest (as load4)
    `e` is an element index into the buffer (offset + row * stride + column), the same unit as
    the strides in the push constants. Block layouts are ggml's (kgen/types.py). -#}
{% macro declare(name, binding, t) -%}
// ---- {{ name | upper }}: {{ t.label }}{% if t.quantized %} ({{ t.block_size }} elements in {{ t.block_bytes }} bytes){% endif %} ----
{% if t.label == "f32" %}
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}F32x4 { vec4 {{ name }}_f32x4[]; };
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}F32 { float {{ name }}_f32[]; };
vec4 {{ name }}_load4(uint e) { return {{ name }}_f32x4[e >> 2]; }
float {{ name }}_load1(uint e) { return {{ name }}_f32[e]; }
{% elif t.label == "f16" %}
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}F16x4 { f16vec4 {{ name }}_f16x4[]; };
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}F16 { float16_t {{ name }}_f16[]; };
vec4 {{ name }}_load4(uint e) { return vec4({{ name }}_f16x4[e >> 2]); }
float {{ name }}_load1(uint e) { return float({{ name }}_f16[e]); }
{% elif t.label == "bf16" %}
// bf16 is the high half of an f32: widen by shifting, no bf16 arithmetic needed.
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}BF16x4 { u16vec4 {{ name }}_bf16x4[]; };
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}BF16 { uint16_t {{ name }}_bf16[]; };
vec4 {{ name }}_load4(uint e) { return uintBitsToFloat(uvec4({{ name }}_bf16x4[e >> 2]) << 16); }
float {{ name }}_load1(uint e) { return uintBitsToFloat(uint({{ name }}_bf16[e]) << 16); }
{% else %}
{% set words = t.block_bytes // 2 %}
// Blocks are read as 16-bit words: every ggml block size is even but not a multiple of 4.
layout(std430, binding = {{ binding }}) readonly buffer {{ name | upper }}Blocks { uint16_t {{ name }}_w[]; };
uint {{ name }}_word(uint blk, uint w) { return uint({{ name }}_w[blk * {{ words }}u + w]); }
float {{ name }}_half(uint blk, uint w) { return unpackHalf2x16({{ name }}_word(blk, w)).x; }
// Four consecutive bytes of the block starting at byte 2*w (w counts 16-bit words).
uint {{ name }}_bytes4(uint blk, uint w) { return {{ name }}_word(blk, w) | ({{ name }}_word(blk, w + 1u) << 16); }
{% include "decode/" ~ t.label ~ ".glsl" %}
float {{ name }}_load1(uint e) { return {{ name }}_load4(e & ~3u)[e & 3u]; }
{% endif %}
{% if t.label == "f16" %}
f16vec4 {{ name }}_raw4(uint e) { return {{ name }}_f16x4[e >> 2]; }
{% else %}
vec4 {{ name }}_raw4(uint e) { return {{ name }}_load4(e); }
{% endif %}
{%- endmacro %}
