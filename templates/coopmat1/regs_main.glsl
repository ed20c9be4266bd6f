{#- The regs schedule's main body (kgen/paths/coopmat1.py); declarations in coopmat1/regs.glsl. -#}
{% set F = L.frag %}
{% set scored = v.mask or v.causal or v.softcap or v.alibi or not v.aligned %}
    // This subgroup's rows: RT tiles of MM from strip = sg * RT * MM; the rows and columns this
    // lane's accumulator elements hold (the same in every S and O tile of a row tile).
    const uint strip = sg * RT * MM;
    uint my_row[RT][SLOTS];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            my_row[t][s] = row0 + strip + t * MM + FRAG_ROW[lane * SLOTS + s];
        }
    }
{% if scored %}
    uint my_col[ACC_LEN];
    [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
        my_col[i] = FRAG_COL[lane * ACC_LEN + i];
    }
{% endif %}
    const uint q_base = b * pc.q_stride_batch + h * pc.q_stride_head;
    // Scores are kept in log2 units, so that exp2 needs no multiply per element.
    const float scale2 = pc.scale * LOG2E;
{% if v.mask %}
    const float slope2 = slope * LOG2E;
{% if L.mask_frag %}
    // The fragment-ordered mask (kgen.render.mask_frag_groups): planes of 16-row tiles, each
    // row of tiles padded to whole KV tiles. Row tiles past Nq read the last one (their
    // results are dropped).
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;   // the pass's planes
    const uint mask_plane = (pc.mask_stride_batch == 0u ? 0u : b * mask_heads) + (pc.mask_stride_head == 0u ? 0u : h);
    const uint mask_row_tiles = (mask_rows + 15u) / 16u;
    const uint mask_chunks = (pc.n_kv + BC - 1u) / BC * (BC / (MF_TILES * MN));
    uint mask_tile[RT];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        const uint row_tile = mask_rows == 1u ? 0u : min((row0 + strip + t * MM) / 16u, mask_row_tiles - 1u);
        mask_tile[t] = (mask_plane * mask_row_tiles + row_tile) * mask_chunks;
    }
{% else %}
    // First mask element of each of this lane's rows. Rows past Nq read row Nq - 1 (their
    // results are dropped), so the loads in the loop need no row bounds.
    uint mask_base[RT][SLOTS];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            mask_base[t][s] = mask_row(b, h, min(my_row[t][s], pc.n_q - 1u));
        }
    }
{% endif %}
{% endif %}

    clear_kv();
{% if L.q_regs %}
    // Q's operands into registers, BC rows at a time through Ksh.
    MatA qm[RT][KSTEPS];
    [[unroll]] for (uint q0 = 0u; q0 < BR; q0 += BC) {
        barrier();  // Ksh is free
        stage_q_rows(q_base, row0, q0, min(BC, BR - q0));
        barrier();
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            const uint first = strip + t * MM;  // BC is a multiple of MM: a row tile is in one chunk
            if (first >= q0 && first < q0 + BC) {  // subgroup-uniform
                [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
                    coopMatLoad(qm[t][ks], Ksh, (first - q0) * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);
                }
            }
        }
    }
    // Q's pad columns were staged as zeros, so Ksh's stay zero for the K tiles.
{% else %}
    stage_q_rows(q_base, row0, 0u, BR);
{% endif %}

    // Online-softmax state of this lane's rows: m is the row max (equal in the lanes holding the
    // row); l is this lane's share of the row sum, added over the lanes once at the end.
    float m_slot[RT][SLOTS], l_slot[RT][SLOTS];
    MatF32 O[RT][O_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            m_slot[t][s] = MASKED;
            l_slot[t][s] = 0.0;
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            O[t][j] = MatF32(0.0);
        }
    }

{% set sync = v.split_sync %}
{% if sync %}
    // split_sync: the barriers' two events per tile become four counts (regs.glsl), and each
    // subgroup waits only for the event its next read needs. No global load is in flight across
    // a wait either.
    if (tid < 4u) {
        sync_count[tid] = 0u;
    }
{% else %}
    // Two barriers per tile, and no global load is in flight across one: NVIDIA GPUs wait at a
    // barrier for the loads issued before it, so the next K is loaded after the P V barrier.
{% endif %}
    barrier();  // Ksh is free (Q's operands went through it)
    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end);
        store_k();
    }
{% if sync %}
    arrive(K_READY);
    uint tile = 0u;
{% endif %}
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC{{ ", ++tile" if sync }}) {
{% if sync %}
        wait_for(K_READY, (tile + 1u) * NSG);  // this tile's K is in Ksh
{% else %}
        barrier();  // Ksh holds this tile's K, and every subgroup finished the last P V (Vsh is free)
{% endif %}
        load_v(v_base, kv0, kv_end);  // in flight during S and the softmax
{% if v.mask %}
        // Loaded here, they arrive during S (loaded a tile ahead, they would wait at barriers).
        {{ "load_mask(mask_tile, kv0);" if L.mask_frag else "load_mask(mask_base, kv0, kv_end);" }}
{% endif %}

        // ---- S = Q K^T for this subgroup's rows, all BC columns: each K operand serves RT tiles ----
        MatF32 S[RT][S_N];
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                S[t][c] = MatF32(0.0);
            }
        }
        [[unroll]] for (uint ks = 0u; ks < KSTEPS; ++ks) {
{% if not L.q_regs %}
            MatA qm[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) {
                coopMatLoad(qm[t], Qsh, (strip + t * MM) * KSH_ROW + ks * MK / 8u, KSH_ROW, ROW_MAJOR);
            }
{% endif %}
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                // B = K^T: K's rows are B's columns (column-major, stride KSH_ROW).
                MatB kb;
                coopMatLoad(kb, Ksh, c * MN * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    S[t][c] = coopMatMulAdd({{ "qm[t][ks]" if L.q_regs else "qm[t]" }}, kb, S[t][c]);
                }
            }
        }

{% if sync %}
        arrive(K_FREE);
        const bool more = kv0 + BC < kv_stop;
{% endif %}
{% if sync == 1 %}
        // V goes to Vsh now, so no subgroup's P V waits for another's softmax; the next K is in
        // flight during the softmax instead of during P V.
        wait_for(V_FREE, tile * NSG);  // every subgroup finished the last P V
        store_v();
        arrive(V_READY);
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);
        }
{% endif %}
        // ---- online softmax on the accumulator elements ----
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            float mx[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                mx[s] = MASKED;
            }
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
{% if scored %}
                    const uint qi = my_row[t][SLOT_OF[i]], j = kv0 + c * MN + my_col[i];
{% set mv = "mask_value(t, c, i)" if v.mask else "0.0" %}
{% if v.softcap %}
                    float s = fa_score_with(S[t][c][i], {{ mv }}, qi, j, slope) * LOG2E;
{% else %}
                    // fa_score_with in log2 units with scale and slope folded in; a -inf mask
                    // value stays -inf, which exp2 takes to 0 like MASKED.
                    float s = scale2 * S[t][c][i]{{ (" + slope2 * " ~ mv) if v.mask }};
{% if v.causal %}
                    if (!kv_visible(qi, j)) s = MASKED;
{% endif %}
{% endif %}
{% if not v.aligned %}
                    s = j < kv_end ? s : MASKED;
{% endif %}
{% else %}
                    const float s = scale2 * S[t][c][i];
{% endif %}
                    S[t][c][i] = s;
                    mx[SLOT_OF[i]] = max(mx[SLOT_OF[i]], s);
                }
            }
            float alpha[SLOTS], m_sub[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                const float m_new = max(m_slot[t][s], row_max(mx[s]));
                alpha[s] = exp2(m_slot[t][s] - m_new);
                m_slot[t][s] = m_new;
                l_slot[t][s] *= alpha[s];
{% if scored %}
                // A row that has seen nothing visible has only MASKED or -inf scores: subtracting
                // 0 instead of its max keeps exp2 of them exactly 0, without a test per element.
                m_sub[s] = m_new > MASKED_LIMIT ? m_new : 0.0;
{% else %}
                m_sub[s] = m_new;
{% endif %}
            }
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    const uint s = SLOT_OF[i];
                    const float16_t p = float16_t(exp2(S[t][c][i] - m_sub[s]));
                    S[t][c][i] = float(p);  // exact in f16: P's A operand takes it back as is
                    l_slot[t][s] += float(p);
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    O[t][j][i] *= alpha[SLOT_OF[i]];
                }
            }
        }

{% if sync == 1 %}
        if (more) {
            wait_for(K_FREE, (tile + 1u) * NSG);  // every subgroup finished this tile's S
            store_k();
            arrive(K_READY);
        }
        wait_for(V_READY, (tile + 1u) * NSG);
{% elif sync == 2 %}
        wait_for(V_FREE, tile * NSG);
        store_v();
        arrive(V_READY);
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);  // in flight during P V
        }
        wait_for(V_READY, (tile + 1u) * NSG);
{% else %}
        store_v();
        barrier();  // Vsh holds this tile's V, and every subgroup finished S (Ksh is free)
        const bool more = kv0 + BC < kv_stop;
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);  // in flight during P V
        }
{% endif %}

        // ---- O += P V: P's A operands built from this lane's own S elements ----
        [[unroll]] for (uint d = 0u; d < PSTEPS; ++d) {
            MatA pa[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) {
                [[unroll]] for (uint e = 0u; e < A_LEN; ++e) {
                    pa[t][e] = float16_t(S[t][d * TILES_PER_PSTEP + A_TILE[e]][A_ELEM[e]]);
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Vsh, d * MK * VSH_ROW + j * MN / 8u, VSH_ROW, ROW_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    O[t][j] = coopMatMulAdd(pa[t], vb, O[t][j]);
                }
            }
        }
{% if sync == 1 %}
        arrive(V_FREE);
{% elif sync == 2 %}
        arrive(V_FREE);
        if (more) {
            wait_for(K_FREE, (tile + 1u) * NSG);
            store_k();
            arrive(K_READY);
        }
{% else %}
        if (more) {
            store_k();
        }
{% endif %}
    }

    // ---- epilogue: rows normalised by l (summed over the lanes of the row), written from
    // registers; split-k also writes (m, l) per row ----
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        float f[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const float m = m_slot[t][s] * LN2;  // back to natural-log units: MASKED stays below MASKED_LIMIT
            float l = row_sum(l_slot[t][s]);
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
            if ((lane & {{ F.row_xor | sum }}u) == 0u && my_row[t][s] < pc.n_q) {
                stats_data[(out_split * pc.n_head_q + h) * pc.n_q + my_row[t][s]] = vec2(m, l);
            }
{% endif %}
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint qi = my_row[t][SLOT_OF[i]], d = j * MN + FRAG_COL[lane * ACC_LEN + i];
                if (qi < pc.n_q && d < HSV) {
{% if v.split_k %}
                    out_data[((out_split * pc.n_head_q + h) * pc.n_q + qi) * HSV + d] = O[t][j][i] * f[SLOT_OF[i]];
{% else %}
                    out_data[b * pc.o_stride_batch + h * pc.o_stride_head + qi * pc.o_stride_row + d] = O[t][j][i] * f[SLOT_OF[i]];
{% endif %}
                }
            }
        }
    }
