{#- Q into shared memory as f16 (the staged and direct schedules): one vec4 per step,
    consecutive threads on consecutive vec4s of a row; columns past the head size and rows past
    Nq are written as zeros, so the matrix products read only finite values. -#}
// Q rows row0.. of this head (f32 in memory) -> Qsh, once per workgroup. Q is read as scalars:
// its strides need not be multiples of 4. Loads go out Q_BATCH at a time before any store.
void stage_q(uint q_base, uint row0) {
    const uint COLS4 = HSK_PAD / 4u, TOTAL = BR * COLS4;
    for (uint e0 = tid; e0 < TOTAL; e0 += Q_BATCH * WG) {
        f16vec4 x[Q_BATCH];
        [[unroll]] for (uint n = 0u; n < Q_BATCH; ++n) {
            const uint e = e0 + n * WG, r = e / COLS4, d = e % COLS4 * 4u;
            x[n] = f16vec4(0.0);
            if (e < TOTAL && row0 + r < pc.n_q && d < HSK) {
                const uint q = q_base + (row0 + r) * pc.q_stride_row + d;
                x[n] = f16vec4(vec4(q_data[q], q_data[q + 1u], q_data[q + 2u], q_data[q + 3u]));
            }
        }
        [[unroll]] for (uint n = 0u; n < Q_BATCH; ++n) {
            const uint e = e0 + n * WG, r = e / COLS4, d = e % COLS4 * 4u;
            if (e < TOTAL) {
                Qsh[(r * Q_STRIDE + d) / 4u] = x[n];
            }
        }
    }
}
