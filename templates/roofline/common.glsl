{#- What every roofline kernel shares: the abi push block (kgen/abi.py, as common/abi.glsl renders
    it) and names for the fields the roofline borrows (kgen/roofline.py: PUSH_ROLES). -#}
layout(push_constant) uniform Push {
{% for f in push_fields %}
    {{ "%-5s"|format(f.glsl) }} {{ f.name }};
{% endfor %}
} pc;
{% for role, field in roles.items() %}
#define PC_{{ role|upper }} pc.{{ field }}
{% endfor %}
