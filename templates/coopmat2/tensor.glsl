{#- Tensor-layout helpers of fa_coopmat2.comp.j2. Every 2D tensor (Q, K, V, mask, outputs) is
    addressed from element 0 of its binding: `origin(base, stride)` (GLSL, in the template)
    splits a per-head element offset into whole rows and a column, which the layout's dimensions
    and the slices carry, because coopMatLoadTensorNV wants its own element offset 16-byte
    aligned (the H100 drops the low bits of one that is not). -#}
{#- `var`: a 2D layout of `rows` x `cols` elements, `stride` (in blocks) between rows. -#}
{% macro tensor(var, mode, block, rows, cols, stride) %}
    tensorLayoutNV<2, {{ mode }}> {{ var }} = createTensorLayoutNV(2, {{ mode }});
{% if block > 1 %}
    {{ var }} = setTensorLayoutBlockSizeNV({{ var }}, 1, {{ block }});
{% endif %}
    {{ var }} = setTensorLayoutDimensionNV({{ var }}, {{ rows }}, {{ cols }});
    {{ var }} = setTensorLayoutStrideNV({{ var }}, {{ stride }}, 1);
{%- endmacro %}
{#- Tensor `t` (k, v or mask), its first element at `t`_base: `t`_layout addresses it from element 0
    through `t`_origin. `rows` and `cols` are formats taking the origin's row / column ("%s"). With
    `wide` (f16 direct loads), also `t`_wide_layout, used at element offset `t`_base when `t`_wide
    says base and row stride are 16-byte aligned: then the compiler knows every row is, and loads
    wide (far faster than through the origin; docs/performance.md has the figures). -#}
{% macro tensor2d(t, mode, block, rows, cols, stride, layout_stride, wide) %}
    const uvec2 {{ t }}_origin = origin({{ t }}_base, {{ stride }});
{{ tensor(t ~ "_layout", mode, block, rows % (t ~ "_origin.x + "), cols % (t ~ "_origin.y + "), layout_stride) }}
{% if wide %}
    const bool {{ t }}_wide = {{ stride }} != 0u && (({{ t }}_base | {{ stride }}) & 7u) == 0u;
{{ tensor(t ~ "_wide_layout", mode, 1, rows % "", cols % "", "(%s & ~7u)" % stride) }}
{%- endif %}
{%- endmacro %}
{#- Load `mat` (`nrows` x `ncols` from row `row`, column `col` of tensor `t`) from `buf`; `extra`
    appends the view and decode arguments. -#}
{% macro load(mat, buf, t, row, nrows, col, ncols, wide, extra="") %}
{% if wide %}
        if ({{ t }}_wide) {
            coopMatLoadTensorNV({{ mat }}, {{ buf }}, {{ t }}_base,
                                sliceTensorLayoutNV({{ t }}_wide_layout, {{ row }}, {{ nrows }}, {{ col }}, {{ ncols }}){{ extra }});
        } else {
            coopMatLoadTensorNV({{ mat }}, {{ buf }}, 0, sliceTensorLayoutNV({{ t }}_layout,
                                {{ t }}_origin.x + {{ row }}, {{ nrows }}, {{ t }}_origin.y + {{ col }}, {{ ncols }}){{ extra }});
        }
{%- else %}
        coopMatLoadTensorNV({{ mat }}, {{ buf }}, 0, sliceTensorLayoutNV({{ t }}_layout,
                            {{ t }}_origin.x + {{ row }}, {{ nrows }}, {{ t }}_origin.y + {{ col }}, {{ ncols }}){{ extra }});
{%- endif %}
{%- endmacro %}
{#- A row stride in the layout's unit (blocks). Float strides are multiples of 4 (the contract):
    saying so lets the compiler use wide loads. -#}
{% macro blocks(stride, block) -%}
{{ "(%s & ~3u)" % stride if block == 1 else "%s / %du" % (stride, block) }}
{%- endmacro %}
