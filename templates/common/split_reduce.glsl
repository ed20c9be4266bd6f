{#- fused_reduce: split-k without a reduce pass. Include after abi.glsl and scores.glsl; call
    split_k_finish() once at the end of main, in uniform control flow, after the partial rows
    and stats are written. -#}
// ---- fused split-k reduce (kgen/render.py: fused_reduce_lanes) ----
// Every workgroup counts its arrival for its row tile; the last of the tile's splits to arrive
// combines all their partial rows into the final O. That saves the reduce pass's launch and its
// second wait on memory (docs/performance.md has the figures).
// What the last workgroup reads, and why it sees the other workgroups' writes:
// - stats: several tiles' (max, sum) share a cache line, and an earlier last workgroup on this
//   compute unit may have cached it before every split had written it: read `coherent`, once,
//   into shared memory (one load per thread in parallel: coherent loads in a per-thread loop run
//   one after another);
// - partial rows: plain loads. Each line of a partial row is written by one workgroup, and no
//   workgroup reads it before the tile's last arrival, so no cache holds an older copy (caches
//   are invalidated between dispatches).
layout(std430, binding = {{ binding.out }}) readonly buffer PartIn { vec4 part_in4[]; };
layout(std430, binding = {{ binding.stats }}) coherent readonly buffer StatsIn { vec2 stats_in[]; };
layout(std430, binding = {{ binding.reduced }}) writeonly buffer ReducedBuf { vec4 reduced4[]; };
layout(std430, binding = {{ binding.split_arrivals }}) coherent buffer ArrivalBuf { uint split_arrivals[]; };

{% for a in fused_shared %}
shared {{ a.type }} {{ a.name }}{{ "[%d]" % a.length if a.length > 1 else "" }};  // {{ a.doc }}
{% endfor %}
const uint FUSED_HV4 = {{ v.head_v // 4 }}u;
const uint FUSED_LANES = {{ fused_lanes }}u;  // lanes per output vec4: lane k takes splits k, k + LANES, ...
const uint FUSED_UNROLL = 8u;                 // partial rows each lane has in flight
const uint FUSED_WG = {{ v.wg }}u;

// Element offset in O of row `row` of the (b, h, row) order, by the o strides.
uint o_row_at(const uint row) {
    const uint i = row % pc.n_q, bh = row / pc.n_q;
    return (bh / pc.n_head_q) * pc.o_stride_batch + (bh % pc.n_head_q) * pc.o_stride_head + i * pc.o_stride_row;
}

// (m, l, o) += (m2, l2, o2), where o and l are sums weighted by exp(score - m).
void fused_merge(inout float m, inout float l, inout vec4 o, const float m2, const float l2, const vec4 o2) {
    const float m_new = max(m, m2);
    const float a = exp(m - m_new), c = exp(m2 - m_new);
    o = o * a + o2 * c;
    l = l * a + l2 * c;
    m = m_new;
}

// row_first: the tile's first row in (b, h, row) order; row_count: its rows below Nq. The plan
// keeps row_count * split_count within fused_ml.
void split_k_finish(const uint row_first, const uint row_count) {
    memoryBarrierBuffer();  // this invocation's partial rows are visible on the device ...
    barrier();              // ... for every invocation before the tile's arrival is counted
    if (gl_LocalInvocationIndex == 0u) {
        fused_is_last = atomicAdd(split_arrivals[row_first], 1u) + 1u == pc.split_count ? 1u : 0u;
    }
    barrier();
    if (fused_is_last == 0u) {
        return;
    }
    memoryBarrierBuffer();  // the other splits' rows are read after their arrivals
    const uint rows = pc.n_batch * pc.n_head_q * pc.n_q;  // rows per split
    const uint n = pc.split_count;
    for (uint i = gl_LocalInvocationIndex; i < row_count * n; i += FUSED_WG) {
        fused_ml[i] = stats_in[(i % n) * rows + row_first + i / n];  // slot r * n + s
    }
    barrier();
    // Lanes of one output are neighbours in one subgroup: their shuffles stay inside it.
    const uint t = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    const uint my_lane = t % FUSED_LANES;
    for (uint e = t / FUSED_LANES; e < row_count * FUSED_HV4; e += FUSED_WG / FUSED_LANES) {
        const uint r = e / FUSED_HV4, c4 = e % FUSED_HV4;
        // Starts below MASKED_LIMIT: a lane that sees no visible split adds nothing.
        float m = MASKED_LIMIT * 10.0, l = 0.0;
        vec4 o = vec4(0.0);
        for (uint s0 = my_lane; s0 < n; s0 += FUSED_UNROLL * FUSED_LANES) {
            // Every load of the round is issued before the first merge needs one.
            vec4 part[FUSED_UNROLL];
            [[unroll]] for (uint u = 0u; u < FUSED_UNROLL; ++u) {
                const uint s = s0 + u * FUSED_LANES;
                part[u] = s < n ? part_in4[(s * rows + row_first + r) * FUSED_HV4 + c4] : vec4(0.0);
            }
            [[unroll]] for (uint u = 0u; u < FUSED_UNROLL; ++u) {
                const uint s = s0 + u * FUSED_LANES;
                const vec2 ml = s < n ? fused_ml[r * n + s] : vec2(MASKED_LIMIT * 10.0, 0.0);
                // A split that saw nothing has no weight (and its m may be -inf: no exp of it).
                if (ml.x > MASKED_LIMIT) {
                    fused_merge(m, l, o, ml.x, ml.y, part[u] * ml.y);  // partial rows are O / l
                }
            }
        }
        [[unroll]] for (uint x = 1u; x < FUSED_LANES; x *= 2u) {
            fused_merge(m, l, o, subgroupShuffleXor(m, x), subgroupShuffleXor(l, x), subgroupShuffleXor(o, x));
        }
        if (my_lane == 0u) {
{% if v.sinks %}
            // The sink joins the max and the denominator and adds no value.
            const float sink = sink_data[((row_first + r) / pc.n_q) % pc.n_head_q];
            fused_merge(m, l, o, sink, 1.0, vec4(0.0));
{% endif %}
            // Nothing visible in any split: the row is 0, never 0/0.
            reduced4[o_row_at(row_first + r) / 4u + c4] = m > MASKED_LIMIT && l > 0.0 ? o / l : vec4(0.0);
        }
    }
    if (gl_LocalInvocationIndex == 0u) {
        split_arrivals[row_first] = 0u;  // ready for the next call
    }
}
