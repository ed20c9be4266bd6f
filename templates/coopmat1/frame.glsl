{#- The frame every coopmat1 kernel shares (kgen/paths/coopmat1.py): extensions, bindings, the
    layout's constants and matrix types, and main()'s row tile and KV range. Each schedule's top
    template (coopmat1/fa_*.comp.j2, coopmat1.TEMPLATES) extends it with its own blocks: `buffers`
    (bindings beyond the common ones), `constants`, `functions` and `main` (the KV loop and the
    epilogue). Derived numbers come from `L` (coopmat1.layout); templates bind them and pick
    blocks. -#}
{% set acc16 = v.acc == 16 %}
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

// {{ v.uri }}
// FA2 on matrix units: a workgroup owns BR query rows of one head and walks the KV range in
// BC-column tiles. Per tile: S = Q K^T (f32 accumulators), online softmax over S in shared
// memory, then O = diag(alpha) O + P V with O kept in accumulator tiles dealt to subgroups.
// K and V are decoded to f16 in shared memory; padded head columns and rows past the KV range
// are zeros there, so the matrix products never need bounds.

layout(local_size_x = {{ v.wg }}, local_size_y = 1, local_size_z = 1) in;

{% include "common/abi.glsl" %}

{% import "common/decode.glsl" as dec %}
{{ dec.declare("k", binding.k, v.k_type) }}
{{ dec.declare("v", binding.v, v.v_type) }}

{% include "common/scores.glsl" %}
{% block buffers %}{% endblock %}

// ---- this variant's shape (kgen/paths/coopmat1.py: layout) ----
const uint WG = {{ v.wg }}u;
const uint SG = {{ v.subgroup }}u;  // required subgroup size, full subgroups
const uint NSG = {{ L.subgroups }}u;  // subgroups per workgroup
const uint BR = {{ v.br }}u;  // query rows per workgroup
const uint BC = {{ v.bc }}u;  // KV columns per tile
const uint HSK = {{ v.head_k }}u;
const uint HSV = {{ v.head_v }}u;
const uint HSK_PAD = {{ L.hsk_pad }}u;  // head_k rounded up to MK (q.k depth)
const uint HSV_PAD = {{ L.hsv_pad }}u;  // head_v rounded up to MN (O columns)
// Matrix unit: A is MM x MK, B is MK x MN, C is MM x MN.
const uint MM = {{ v.mat_m }}u;
const uint MN = {{ v.mat_n }}u;
const uint MK = {{ v.mat_k }}u;
// Shared-memory strides in elements of each array (f16 halves or f32 floats).
const uint Q_STRIDE = {{ L.q_stride }}u;
const uint K_CHUNK = {{ L.k_chunk }}u;  // K head columns per staging step
const uint K_CHUNKS = {{ L.k_chunks }}u;
const uint K_STRIDE = {{ L.k_stride }}u;
const uint V_ROWS = {{ L.v_rows }}u;  // V rows per staging step
const uint V_CHUNKS = {{ L.v_chunks }}u;
const uint V_STRIDE = {{ L.v_stride }}u;
const uint Q_BATCH = {{ L.q_batch }}u;  // Q vec4 loads in flight per thread
const uint K_STEP = {{ L.k_step }}u;  // vec4s per thread of one K staging step
const uint V_STEP = {{ L.v_step }}u;  // vec4s per thread of one V staging step
const uint STAGED = {{ L.staged }}u;
{% block constants %}{% endblock %}
const uint S_STRIDE = {{ L.s_stride }}u;
const uint P_STRIDE = {{ L.p_stride }}u;
// Matrix tiles, dealt round-robin: tile t belongs to subgroup t % NSG.
const uint S_COLS = {{ L.s_cols }}u;
const uint S_TILES = {{ L.s_tiles }}u;
const uint S_PER_SG = {{ L.s_per_sg }}u;
const uint O_COLS = {{ L.o_cols }}u;
const uint O_TILES = {{ L.o_tiles }}u;
const uint O_PER_SG = {{ L.o_per_sg }}u;
// Softmax: TPR adjacent lanes own a row; a thread handles rows rg, rg + ROW_GROUPS, ...
const uint TPR = {{ L.tpr }}u;
const uint ROW_GROUPS = {{ L.row_groups }}u;
const uint RPT = {{ L.rows_per_thread }}u;
{% if acc16 %}
// O is accumulated in f16: bias the running max by 3 ln 2 so every p <= 1/8 and the
// unnormalised O stays far from the f16 limit; m and l carry the same bias, so O / l is unchanged.
const float ROW_MAX_OFFSET = {{ "%.7f" | format(L.row_max_offset) }};
{% endif %}

{% for a in L.shared %}
// {{ a.doc }}
shared {{ a.type }} {{ a.name }}[{{ a.length }}];
{% endfor %}

// Matrix types. S and the broadcast factors are f32; O is {{ L.o_type }}.
#define MatA coopmat<float16_t, gl_ScopeSubgroup, MM, MK, gl_MatrixUseA>
#define MatB coopmat<float16_t, gl_ScopeSubgroup, MK, MN, gl_MatrixUseB>
#define MatF32 coopmat<float, gl_ScopeSubgroup, MM, MN, gl_MatrixUseAccumulator>
#define MatO coopmat<{{ L.o_type }}, gl_ScopeSubgroup, MM, MN, gl_MatrixUseAccumulator>
#define ROW_MAJOR gl_CooperativeMatrixLayoutRowMajor
#define COL_MAJOR gl_CooperativeMatrixLayoutColumnMajor

// Invocation index built from subgroup ids, so that the lanes sharing a softmax row are lanes
// of one subgroup whatever order the driver numbers invocations in.
uint sg, lane, tid;

{% block functions %}{% endblock %}

void main() {
    sg = gl_SubgroupID;
    lane = gl_SubgroupInvocationID;
    tid = sg * SG + lane;

    const uint row0 = gl_WorkGroupID.x * BR;
    const uint h = gl_WorkGroupID.y;
    const uint hk = h / pc.gqa_ratio;
{% if v.split_k %}
    const uint split = gl_WorkGroupID.z % pc.split_count;
    const uint b = gl_WorkGroupID.z / pc.split_count;
    const uint kv_begin = split * pc.split_kv;
    // max(): a split past the end has an empty range (and writes m = MASKED, l = 0, O = 0).
    const uint kv_end = max(min(kv_begin + pc.split_kv, pc.n_kv), kv_begin);
{% else %}
    const uint split = 0u;
    const uint b = gl_WorkGroupID.z;
    const uint kv_begin = 0u;
    const uint kv_end = pc.n_kv;
{% endif %}
    uint kv_start = kv_begin, kv_stop = kv_end;
{% if v.causal %}
    // Only tiles holding a key visible to some row of this tile contribute: up to the last
    // row's last key and, with a window, from the first row's first key. Tiles stay on the
    // kv_begin + k*BC grid (the aligned variant relies on it); kv_visible() masks the rest.
    const int shift = int(pc.n_kv) - int(pc.n_q);
    const int last_key = int(min(row0 + BR, pc.n_q)) - 1 + shift;
    kv_stop = uint(clamp(last_key + 1, int(kv_begin), int(kv_end)));
    if (pc.window != 0u) {
        const int first_key = int(row0) + shift - int(pc.window) + 1;
        const uint lo = uint(clamp(first_key, int(kv_begin), int(kv_stop)));
        kv_start = kv_begin + (lo - kv_begin) / BC * BC;
    }
{% endif %}
    const uint k_base = pc.k_offset + b * pc.k_stride_batch + hk * pc.k_stride_head;
    const uint v_base = pc.v_offset + b * pc.v_stride_batch + hk * pc.v_stride_head;
{% if v.alibi %}
    const float slope = alibi_slope(h);
{% else %}
    const float slope = 1.0;
{% endif %}

{% block main %}{% endblock %}
}
