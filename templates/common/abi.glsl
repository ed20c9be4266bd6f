{#- The interface every FA variant shares, rendered from kgen/abi.py. Include after the
    extensions; K and V buffers come from decode.glsl because their types vary. -#}
// ---- run-time values (kgen/abi.py: PUSH_FIELDS) ----
layout(push_constant) uniform Push {
{% for f in push_fields %}
    {{ "%-5s"|format(f.glsl) }} {{ f.name }};  // {{ f.doc }}
{% endfor %}
} pc;

// ---- buffers (kgen/abi.py: BINDINGS) ----
layout(std430, binding = {{ binding.q }}) readonly buffer QBuf { vec4 q_data4[]; };
layout(std430, binding = {{ binding.q }}) readonly buffer QBuf1 { float q_data[]; };
{% if v.mask %}
layout(std430, binding = {{ binding.mask }}) readonly buffer MaskBuf { float16_t mask_data[]; };
{% endif %}
{% if v.mask_tiles %}
// Per mask tile: MASK_MIXED, MASK_HIDDEN (all -inf) or MASK_ZERO (templates/mask_tiles.comp.j2).
layout(std430, binding = {{ binding.mask_tiles }}) readonly buffer MaskTileBuf { uint mask_tile_class[]; };
const uint MASK_MIXED = 0u, MASK_HIDDEN = 1u, MASK_ZERO = 2u;
{% endif %}
{% if v.sinks %}
layout(std430, binding = {{ binding.sinks }}) readonly buffer SinkBuf { float sink_data[]; };
{% endif %}
{% set shared_out = "coherent " if v.fused_reduce else "" %}{# read back by the last split (split_reduce.glsl) #}
layout(std430, binding = {{ binding.out }}) {{ shared_out }}writeonly buffer OutBuf { vec4 out_data4[]; };
layout(std430, binding = {{ binding.out }}) {{ shared_out }}writeonly buffer OutBuf1 { float out_data[]; };
{% if v.split_k %}
layout(std430, binding = {{ binding.stats }}) {{ shared_out }}writeonly buffer StatsBuf { vec2 stats_data[]; };
{% endif %}
