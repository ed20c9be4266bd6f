{#- The register schedules' masked kernels read the mask in fragment order (L.mask_frag). -#}
{% if L.mask_frag %}
// The mask binding holds the fragment-ordered copy (kgen.planning runs templates/mask_frag.comp.j2).
layout(std430, binding = {{ binding.mask }}) readonly buffer MaskFrag { uvec4 mask_frag[]; };
{% endif %}
