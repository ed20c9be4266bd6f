{#- The fragment scheme's tables (kgen/paths/fragments.py, `L.frag`) for the regs and osplit
    kernels (regs.glsl, osplit.glsl): which row and column each lane's accumulator element
    holds, and row reductions over the lanes that share a row. -#}
{% set F = L.frag %}
const float LOG2E = 1.4426950408889634;
const float LN2 = 0.6931471805599453;

// ---- fragment scheme {{ v.frag_scheme }}: lane l's accumulator element i is row
// FRAG_ROW[l * SLOTS + SLOT_OF[i]] and column FRAG_COL[l * ACC_LEN + i] of its MM x MN tile ----
const uint ACC_LEN = {{ F.acc_len }}u;  // accumulator elements per lane
const uint A_LEN = {{ F.a_len }}u;      // A-operand elements per lane
const uint SLOTS = {{ F.slots }}u;      // rows a lane holds per tile
const uint SLOT_OF[ACC_LEN] = uint[]({{ F.slot_of | join("u, ") }}u);
const uint FRAG_ROW[SG * SLOTS] = uint[]({% for r in F.rows %}{{ r | join("u, ") }}u{{ ", " if not loop.last }}{% endfor %});
const uint FRAG_COL[SG * ACC_LEN] = uint[]({% for c in F.cols %}{{ c | join("u, ") }}u{{ ", " if not loop.last }}{% endfor %});
// P's A element e is element A_ELEM[e] of S tile A_TILE[e] (within the step): same lane.
const uint A_TILE[A_LEN] = uint[]({% for t, i in F.a_from %}{{ t }}u{{ ", " if not loop.last }}{% endfor %});
const uint A_ELEM[A_LEN] = uint[]({% for t, i in F.a_from %}{{ i }}u{{ ", " if not loop.last }}{% endfor %});

// Max and sum over the lanes that hold the same row (xor masks {{ F.row_xor | join(", ") }}).
float row_max(float x) {
{% for o in F.row_xor %}
    x = max(x, subgroupShuffleXor(x, {{ o }}u));
{% endfor %}
    return x;
}

float row_sum(float x) {
{% for o in F.row_xor %}
    x += subgroupShuffleXor(x, {{ o }}u);
{% endfor %}
    return x;
}
