{#- After the KV loop: normalise O by rows and write it (and the split-k stats). #}
    // ---- epilogue: per-row factor into Rsh, O * factor through a per-subgroup staging tile ----
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    barrier();  // every subgroup is done reading Rsh and Ssh
    {
        const uint rg = tid / TPR, cl = tid % TPR;
        [[unroll]] for (uint k = 0u; k < RPT; ++k) {
            const uint r = rg + k * ROW_GROUPS, i = row0 + r;
            const float m = m_row[k];
            float l = l_row[k];
{% if v.sinks and not v.split_k %}
            // The sink joins the max and the denominator and adds no value.
            const float sink = sink_data[h];
            const float m_all = max(m, sink);
            const float o_scale = exp(m - m_all);
            l = l * o_scale + exp(sink - m_all);
            const float f = m > MASKED_LIMIT ? o_scale / l : 0.0;
{% else %}
            const float f = m > MASKED_LIMIT && l > 0.0 ? 1.0 / l : 0.0;
{% endif %}
            for (uint c = cl; c < MN; c += TPR) {
                Rsh[r * MN + c] = f;  // a row that saw nothing gets 0: zeros, never NaN
            }
{% if v.split_k %}
            if (cl == 0u && i < pc.n_q) {
                stats_data[(out_split * pc.n_head_q + h) * pc.n_q + i] = vec2(m, l);
            }
{% endif %}
        }
    }
    barrier();
    const uint stage = sg * MM * MN;  // this subgroup's MM x MN f32 staging tile in Ssh
    [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
        const uint t = sg + i * NSG;
{% if L.o_tiles % L.subgroups %}
        if (t >= O_TILES) {
            break;
        }
{% endif %}
        const uint r = t / O_COLS, j = t % O_COLS;
        MatF32 f;
        coopMatLoad(f, Rsh, r * MM * MN, MN, ROW_MAJOR);
{% if v.acc == 16 %}
        coopMatStore(MatF32(O[i]) * f, Ssh, stage, MN, ROW_MAJOR);
{% else %}
        coopMatStore(O[i] * f, Ssh, stage, MN, ROW_MAJOR);
{% endif %}
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        // Lanes write the tile's rows below Nq and columns below HSV as vec4s.
        for (uint e = lane; e < MM * MN / 4u; e += SG) {
            const uint rr = e / (MN / 4u), cc = e % (MN / 4u) * 4u;
            const uint i_q = row0 + r * MM + rr, d = j * MN + cc;
            if (i_q < pc.n_q && d < HSV) {
                const uint s = stage + rr * MN + cc;
{% if v.split_k %}
                const uint o = ((out_split * pc.n_head_q + h) * pc.n_q + i_q) * HSV + d;
{% else %}
                const uint o = b * pc.o_stride_batch + h * pc.o_stride_head + i_q * pc.o_stride_row + d;
{% endif %}
                out_data4[o / 4u] = vec4(Ssh[s], Ssh[s + 1u], Ssh[s + 2u], Ssh[s + 3u]);
            }
        }
        subgroupBarrier();  // the tile is read before the next one overwrites it
    }
