{#- The online-softmax state of this thread's rows and the O accumulators, for the schedules
    whose softmax runs on S in shared memory (softmax.glsl). #}
    // Online-softmax state of this thread's rows (the TPR lanes of a row hold equal copies).
    float m_row[RPT], l_row[RPT];
    [[unroll]] for (uint k = 0u; k < RPT; ++k) {
        m_row[k] = MASKED;
        l_row[k] = 0.0;
    }
    MatO O[O_PER_SG];
    [[unroll]] for (uint i = 0u; i < O_PER_SG; ++i) {
        O[i] = MatO(0.0);
    }
