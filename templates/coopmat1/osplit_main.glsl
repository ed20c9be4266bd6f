{#- The osplit schedule's main body (kgen/paths/coopmat1.py); declarations in
    coopmat1/osplit.glsl. -#}
{% set F = L.frag %}
{% set scored = v.mask or v.causal or v.softcap or v.alibi or not v.aligned %}
    // This subgroup's S block, and the rows this lane's accumulator elements hold in every row
    // tile (O covers all of them), relative to row0. The fragment tables are read here only:
    // indexed by lane they are divergent constant loads, which the loop cannot afford.
    const uint rt_s = sg / CG, cg = sg % CG;
    const uint o_col0 = sg * O_SG;
    uint my_row[RT][SLOTS], s_row[SLOTS];
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        const uint r = FRAG_ROW[lane * SLOTS + s];
        s_row[s] = rt_s * MM + r;
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            my_row[t][s] = t * MM + r;
        }
    }
    uint my_col[ACC_LEN];
    [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
        my_col[i] = FRAG_COL[lane * ACC_LEN + i];
    }
    // Q's operands of row tile rt_s (tiles past Nq read the last one: their rows are dropped).
    const uint q_tiles = (pc.n_q + 15u) / 16u;
    const uint q_at = ((b * pc.n_head_q + h) * q_tiles + min((row0 + rt_s * MM) / 16u, q_tiles - 1u))
                      * KSTEPS * SG + lane;
    const float scale2 = pc.scale * LOG2E;  // scores in log2 units: exp2 needs no multiply
{% if v.mask %}
    const float slope2 = slope * LOG2E;
    // The fragment-ordered mask (kgen.render.mask_frag_groups): planes of 16-row tiles, each
    // row of tiles padded to whole KV tiles; chunk kv0 / 16 + cg is this block's.
    const uint mask_rows = pc.mask_stride_row == 0u ? 1u : pc.n_q;
    const uint mask_heads = pc.mask_stride_head == 0u ? 1u : pc.n_head_q;   // the pass's planes
    const uint mask_plane = (pc.mask_stride_batch == 0u ? 0u : b * mask_heads) + (pc.mask_stride_head == 0u ? 0u : h);
    const uint mask_row_tiles = (mask_rows + 15u) / 16u;
    const uint mask_chunks = (pc.n_kv + BC - 1u) / BC * CG;
    const uint row_tile = mask_rows == 1u ? 0u : min((row0 + rt_s * MM) / 16u, mask_row_tiles - 1u);
    const uint mask_at = (mask_plane * mask_row_tiles + row_tile) * mask_chunks + cg;
{% endif %}

    // Online softmax: m of every row this lane holds (all subgroups keep the same values, from
    // the same maxima in Xsh); l of this lane's share of its S block's rows.
    float m_o[RT][SLOTS], l_s[SLOTS];
    MatF32 O[RT][O_N];
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            m_o[t][s] = MASKED;
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            O[t][j] = MatF32(0.0);
        }
    }
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        l_s[s] = 0.0;
    }

    clear_k();
    barrier();
    if (kv_start < kv_stop) {
        load_k(k_base, kv_start, kv_end);
        store_k();
    }
    // Five barriers per tile: V lives in the K tile, so the next K tile can only be stored once
    // every subgroup's P V is done.
    for (uint kv0 = kv_start; kv0 < kv_stop; kv0 += BC) {
        barrier();  // Ksh holds this tile
        // The next tile's loads are in flight through the whole tile (issued after P's barrier
        // they would have less time to land).
        const bool more = kv0 + BC < kv_stop;
        if (more) {
            load_k(k_base, kv0 + BC, kv_end);
        }
{% if v.mask %}
        mval = mask_frag[(mask_at + kv0 / BC * CG) * SG + lane];
{% endif %}

        // ---- S = Q K^T for this subgroup's block: MM rows x MK columns ----
        // Split by depth over the row tile's CG subgroups: this one sums depth part cg of every
        // block of its row tile, so each Q operand is read once per row tile instead of CG
        // times, and the other blocks' partial sums go to their owners
        // through Psh (free: the last P V read it before the last tile's final barrier).
        MatF32 part[CG][S_N];
        [[unroll]] for (uint g = 0u; g < CG; ++g) {
            [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                part[g][c] = MatF32(0.0);
            }
        }
        [[unroll]] for (uint kk = 0u; kk < KPART; ++kk) {
            const uint ks = cg * KPART + kk;
{% if L.ks_steps % L.depth_parts %}
            if (ks >= KSTEPS) break;  // the last part is short: CG does not divide KSTEPS
{% endif %}
            const MatA qa = unpack_a(q_frag[q_at + ks * SG]);
            [[unroll]] for (uint g = 0u; g < CG; ++g) {
                [[unroll]] for (uint c = 0u; c < S_N; ++c) {
                    MatB kb;  // B = K^T: K's rows are B's columns
                    coopMatLoad(kb, Ksh, (g * MK + c * MN) * KSH_ROW + ks * MK / 8u, KSH_ROW, COL_MAJOR);
                    part[g][c] = coopMatMulAdd(qa, kb, part[g][c]);
                }
            }
        }
{% if L.depth_parts > 1 %}
        [[unroll]] for (uint g = 0u; g < CG; ++g) {
            if (g != cg) {
                // Slot (owner, sender's part with the owner's own part left out).
                const uint slot = (rt_s * CG + g) * (CG - 1u) + (cg < g ? cg : cg - 1u);
                [[unroll]] for (uint x = 0u; x < PART_VECS; ++x) {
                    vec4 f;
                    [[unroll]] for (uint e = 0u; e < 4u; ++e) {
                        const uint k = x * 4u + e;
                        f[e] = part[g][k / ACC_LEN][k % ACC_LEN];
                    }
                    Psh[(slot * PART_VECS + x) * SG + lane] = floatBitsToUint(f);
                }
            }
        }
        barrier();  // every block's partial sums are in Psh
{% endif %}
        // This subgroup's own block, selected without indexing registers by cg (that would put
        // them in memory).
        MatF32 S[S_N];
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            S[c] = part[0][c];
            [[unroll]] for (uint g = 1u; g < CG; ++g) {
                if (g == cg) S[c] = part[g][c];
            }
        }
{% if L.depth_parts > 1 %}
        [[unroll]] for (uint h2 = 0u; h2 + 1u < CG; ++h2) {
            [[unroll]] for (uint x = 0u; x < PART_VECS; ++x) {
                const vec4 f = uintBitsToFloat(Psh[((sg * (CG - 1u) + h2) * PART_VECS + x) * SG + lane]);
                [[unroll]] for (uint e = 0u; e < 4u; ++e) {
                    const uint k = x * 4u + e;
                    S[k / ACC_LEN][k % ACC_LEN] += f[e];
                }
            }
        }
{% endif %}

        // ---- scores (log2 units) and this block's row maxima -> Xsh ----
        float mx[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            mx[s] = MASKED;
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
{% if scored %}
                const uint j = kv0 + cg * MK + c * MN + my_col[i];
{% if v.softcap or v.causal %}
                uint qi = 0u;
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    qi = t == rt_s ? row0 + my_row[t][SLOT_OF[i]] : qi;
                }
{% endif %}
{% set mv = "mask_value(c, i)" if v.mask else "0.0" %}
{% if v.softcap %}
                float s = fa_score_with(S[c][i], {{ mv }}, qi, j, slope) * LOG2E;
{% else %}
                float s = scale2 * S[c][i]{{ (" + slope2 * " ~ mv) if v.mask }};
{% if v.causal %}
                if (!kv_visible(qi, j)) s = MASKED;
{% endif %}
{% endif %}
{% if not v.aligned %}
                s = j < kv_end ? s : MASKED;
{% endif %}
{% else %}
                const float s = scale2 * S[c][i];
{% endif %}
                S[c][i] = s;
                mx[SLOT_OF[i]] = max(mx[SLOT_OF[i]], s);
            }
        }
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const float r = row_max(mx[s]);
            if ((lane & ROW_LANES) == 0u) {
                Xsh[cg * BR + s_row[s]] = r;
            }
        }
        barrier();  // every block's row maxima are in Xsh

        // ---- new row maxima; O rescaled; P of this block -> Psh ----
        float alpha_s[SLOTS], m_sub[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            alpha_s[s] = 1.0;
            m_sub[s] = 0.0;
        }
        [[unroll]] for (uint t = 0u; t < RT; ++t) {
            float alpha[SLOTS];
            [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
                const uint r = my_row[t][s];
                float m_new = m_o[t][s];
                [[unroll]] for (uint g = 0u; g < CG; ++g) {
                    m_new = max(m_new, Xsh[g * BR + r]);
                }
                alpha[s] = exp2(m_o[t][s] - m_new);
                m_o[t][s] = m_new;
                if (t == rt_s) {
                    alpha_s[s] = alpha[s];
{% if scored %}
                    // A row that has seen nothing visible subtracts 0: exp2 of MASKED stays 0.
                    m_sub[s] = m_new > MASKED_LIMIT ? m_new : 0.0;
{% else %}
                    m_sub[s] = m_new;
{% endif %}
                }
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                    O[t][j][i] *= alpha[SLOT_OF[i]];
                }
            }
        }
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            l_s[s] *= alpha_s[s];
        }
        [[unroll]] for (uint c = 0u; c < S_N; ++c) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const float p = float(float16_t(exp2(S[c][i] - m_sub[SLOT_OF[i]])));
                S[c][i] = p;  // exact in f16: the P operand takes it as is
                l_s[SLOT_OF[i]] += p;
            }
        }
        uvec4 pk;
        [[unroll]] for (uint e = 0u; e < A_LEN; e += 2u) {
            pk[e / 2u] = packFloat2x16(f16vec2(S[A_TILE[e]][A_ELEM[e]], S[A_TILE[e + 1u]][A_ELEM[e + 1u]]));
        }
        Psh[(rt_s * CG + cg) * SG + lane] = pk;
        barrier();  // P is complete (and Xsh is free)

        // ---- O += P V for this subgroup's columns; V is the K tile's first columns ----
        [[unroll]] for (uint d = 0u; d < CG; ++d) {
            MatA pa[RT];
            [[unroll]] for (uint t = 0u; t < RT; ++t) {
                pa[t] = unpack_a(Psh[(t * CG + d) * SG + lane]);
            }
            [[unroll]] for (uint j = 0u; j < O_N; ++j) {
                MatB vb;
                coopMatLoad(vb, Ksh, d * MK * KSH_ROW + (o_col0 + j * MN) / 8u, KSH_ROW, ROW_MAJOR);
                [[unroll]] for (uint t = 0u; t < RT; ++t) {
                    O[t][j] = coopMatMulAdd(pa[t], vb, O[t][j]);
                }
            }
        }
        barrier();  // every subgroup is done with this tile's K and V
        if (more) {
            store_k();
        }
    }

    // ---- epilogue: each block's row sums -> Xsh (free: its last reads were before the last
    // tile's P barrier), then rows normalised by l and written from registers ----
    [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
        const float l = row_sum(l_s[s]);
        if ((lane & ROW_LANES) == 0u) {
            Xsh[cg * BR + s_row[s]] = l;
        }
    }
    barrier();
    const uint out_split = split * pc.n_batch + b;  // 0 * B + b without split_k
    [[unroll]] for (uint t = 0u; t < RT; ++t) {
        float f[SLOTS];
        [[unroll]] for (uint s = 0u; s < SLOTS; ++s) {
            const uint r = my_row[t][s];
            float l = 0.0;
            [[unroll]] for (uint g = 0u; g < CG; ++g) {
                l += Xsh[g * BR + r];
            }
            const float m = m_o[t][s] * LN2;  // natural-log units: MASKED stays below MASKED_LIMIT
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
            if (sg == 0u && (lane & ROW_LANES) == 0u && row0 + r < pc.n_q) {
                stats_data[(out_split * pc.n_head_q + h) * pc.n_q + row0 + r] = vec2(m, l);
            }
{% endif %}
        }
        [[unroll]] for (uint j = 0u; j < O_N; ++j) {
            [[unroll]] for (uint i = 0u; i < ACC_LEN; ++i) {
                const uint qi = row0 + my_row[t][SLOT_OF[i]], d = o_col0 + j * MN + my_col[i];
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
