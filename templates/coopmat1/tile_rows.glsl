{#- Whole tiles of K or V rows through registers into shared memory, as 16-byte elements: each
    thread loads its share of a tile into an array of registers while the current tile is used
    (load_rows), and stores it once the shared tile is free (store_rows). Used by k_tile.glsl,
    regs.glsl and stream.glsl; a macro emits the loop where the caller wants it. -#}
{#- The loop loading rows kv0..kv0+BC-1 (`vecs` elements each, `stride` the push constant of
    the row stride) into regs[0..step); rows past kv_end and elements past the tile load zeros.
    `ragged`: step * WG overshoots the tile. -#}
{% macro load_rows(regs, src, base, stride, step, vecs, ragged, aligned) %}
    [[unroll]] for (uint n = 0u; n < {{ step }}; ++n) {
        const uint e = tid + n * WG, j = e / {{ vecs }};
        bool in_tile = true;
{% if ragged %}
        in_tile = e < BC * {{ vecs }};
{% endif %}
{% if not aligned %}
        in_tile = in_tile && kv0 + j < kv_end;
{% endif %}
        {{ regs }}[n] = uvec4(0u);
        if (in_tile) {
            {{ regs }}[n] = {{ src }}[({{ base }} + (kv0 + j) * pc.{{ stride }}) / 8u + e % {{ vecs }}];
        }
    }
{%- endmacro %}
{#- The loop storing regs[0..step) into the shared tile `dst`, `row` elements between rows. -#}
{% macro store_rows(regs, dst, step, vecs, row, ragged) %}
    [[unroll]] for (uint n = 0u; n < {{ step }}; ++n) {
        const uint e = tid + n * WG;
{% if ragged %}
        if (e < BC * {{ vecs }})
{% endif %}
        {{ dst }}[e / {{ vecs }} * {{ row }} + e % {{ vecs }}] = {{ regs }}[n];
    }
{%- endmacro %}
