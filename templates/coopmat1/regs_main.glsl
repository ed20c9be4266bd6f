{#- reg_softmax's main body (kgen/paths/coopmat1.py); declarations in coopmat1/regs.glsl. -#}
{% set F = L.frag %}
{% set scored = v.mask or v.causal or v.softcap or v.alibi or not v.aligned %}
    // This subgroup's rows: strip = sg * MM .. + MM of the tile; the rows and columns this
    // lane's accumulator elements hold (the same in every S and O tile).
    const uint strip = sg * MM;
    uint my_row[SLOTS];
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        my_row[s] = row0 + strip + FRAG_ROW[lane * SLOTS + s];
    }
{% if scored %}
    uint my_col[ACC_LEN];
    [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
        my_col[i] = FRAG_COL[lane * ACC_LEN + i];
    }
{% endif %}
    const uint q_base = b * pc.q_stride_batch + h * pc.q_stride_head;

    clear_kv();
{% if L.q_regs %}
    // Q's operands into registers, BC rows at a time through Ksh.
    MatA qm[KSTEPS];
    [[unroll]] for (uint q0 = 0u; q0 < BR; q0 += BC) {
        barrier();  // Ksh is free
        stage_q_rows(q_base, row0, q0, min(BC, BR - q0));
        barrier();
        if (strip >= q0 && strip < q0 + BC) {  // subgroup-uniform
            [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
                coopMatLoad(qm[ks], Ksh, (strip - q0) * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);
            }
        }
    }
    // Q's pad columns were staged as zeros, so Ksh's stay zero for the K tiles.
{% else %}
    stage_q_rows(q_base, row0, 0u, BR);
{% endif %}

    // Online-softmax state of this lane's rows: m is the row max (equal in the lanes holding the
    // row); l is this lane's share of the row sum, added over the lanes once at the end.
    float m_slot[SLOTS], l_slot[SLOTS];
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        m_slot[s] = MASKED;
        l_slot[s] = 0.0;
    }
    MatF32 O[O_N];
    [[unroll]] for (uint j = 0u; j < O_N; ++j) {
        O[j] = MatF32(0.0);
    }

    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end);
    }
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        barrier();  // the last tile's S (Ksh) and P V (Vsh) are done everywhere
        store_k();
        barrier();
        load_v(v_base, kv0, kv_end);  // in flight during S and the softmax
{% if v.mask %}
        // This lane's mask values, loaded before S so that they arrive during the products.
        float16_t mval[S_N][ACC_LEN];
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint qi = my_row[SLOT_OF[i]], j = kv0 + c * MN + my_col[i];
                mval[c][i] = float16_t(0.0);
                if (qi < pc.n_q && j < kv_end) {
                    mval[c][i] = mask_data[mask_row(b, h, qi) + j];
                }
            }
        }
{% endif %}

        // ---- S = Q K^T for this subgroup's MM rows, all BC columns ----
        MatF32 S[S_N];
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            S[c] = MatF32(0.0);
        }
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
{% if not L.q_regs %}
            MatA qm;
            coopMatLoad(qm, Qsh, strip * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);
{% endif %}
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                // B = K^T: K's rows are B's columns (column-major, stride KSH_ROW).
                MatB kb;
                coopMatLoad(kb, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                S[c] = coopMatMulAdd({{ "qm[ks]" if L.q_regs else "qm" }}, kb, S[c]);
            }
        }

        // ---- online softmax on the accumulator elements ----
        float mx[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            mx[s] = MASKED;
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
{% if scored %}
                const uint qi = my_row[SLOT_OF[i]], j = kv0 + c * MN + my_col[i];
{% if v.mask %}
                float s = fa_score_with(S[c][i], float(mval[c][i]), qi, j, slope);
{% else %}
                float s = fa_score_with(S[c][i], 0.0, qi, j, slope);
{% endif %}
{% if not v.aligned %}
                s = j < kv_end ? s : MASKED;
{% endif %}
{% else %}
                const float s = pc.scale * S[c][i];
{% endif %}
                S[c][i] = s;
                mx[SLOT_OF[i]] = max(mx[SLOT_OF[i]], s);
            }
        }
        float alpha[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const float m_new = max(m_slot[s], row_max(mx[s]));
            alpha[s] = exp(m_slot[s] - m_new);
            m_slot[s] = m_new;
            l_slot[s] *= alpha[s];
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint s = SLOT_OF[i];
{% if scored %}
                // A masked score gives exactly 0, also while the row has seen nothing visible.
                const float16_t p = float16_t(S[c][i] > MASKED_LIMIT ? exp(S[c][i] - m_slot[s]) : 0.0);
{% else %}
                const float16_t p = float16_t(exp(S[c][i] - m_slot[s]));
{% endif %}
                S[c][i] = float(p);  // exact in f16: P's A operand takes it back as is
                l_slot[s] += float(p);
            }
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                O[j][i] *= alpha[SLOT_OF[i]];
            }
        }

        store_v();  // every subgroup finished the last P V before the barrier at the top
        if (kv0 + BC < kv_stop) {
            load_k(k_base, kv0 + BC, kv_end);  // in flight during P V
        }
        barrier();

        // ---- O += P V: P's A operands built from this lane's own S elements ----
        [[unroll]] for (uint d = 0u; d < PSTEPS; ++d) {
            MatA pa;
            [[unroll]] for (uint e = 0u; e < A_LEN; ++e) {
                pa[e] = float16_t(S[d * TILES_PER_PSTEP + A_TILE[e]][A_ELEM[e]]);
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Vsh, d * MK * VSH_ROW + j * MN / 8u, VSH_ROW, ROW_MAJOR);
                O[j] = coopMatMulAdd(pa, vb, O[j]);
            }
        }
    }

    // ---- epilogue: rows normalised by l (summed over the lanes of the row), written from
    // registers; split-k also writes (m, l) per row ----
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    float f[SLOTS];
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        const float m = m_slot[s];
        float l = row_sum(l_slot[s]);
{% if v.sinks and not v.split_k %}
        // The sink joins the max and the denominator and adds no value.
        const float sink = sink_data[h];
        const float m_all = max(m, sink);
        const float o_scale = exp(m - m_all);
        l = l * o_scale + exp(sink - m_all);
        f[s] = m > MASKED_LIMIT ? o_scale / l : 0.0;
{% else %}
        f[s] = m > MASKED_LIMIT && l > 0.0 ? 1.0 / l : 0.0;  // a row that saw nothing: zeros
{% endif %}
{% if v.split_k %}
        if ((lane & {{ F.row_xor | sum }}u) == 0u && my_row[s] < pc.n_q) {
            stats_data[(out_split * pc.n_head_q + h) * pc.n_q + my_row[s]] = vec2(m, l);
        }
{% endif %}
    }
    [[unroll]] for (uint j = 0u; j < O_N; ++j) {
        [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
            const uint qi = my_row[SLOT_OF[i]], d = j * MN + FRAG_COL[lane * ACC_LEN + i];
            if (qi < pc.n_q && d < HSV) {
                out_data[((out_split * pc.n_head_q + h) * pc.n_q + qi) * HSV + d] = O[j][i] * f[SLOT_OF[i]];
            }
        }
    }
