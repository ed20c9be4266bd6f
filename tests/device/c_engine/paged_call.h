/* The kgen_fa_paged_call of a test's flat ints and floats (c_engine/paged.c, paged_offline.c). */
#ifndef KGEN_TEST_PAGED_CALL_H
#define KGEN_TEST_PAGED_CALL_H

#include <string.h>

#include "kgen_fa.h"

/* The call of a test's ints and floats. ints: head_k, head_v, k_type, v_type, page,
 * features, n_head_q, n_head_kv, n_batch, max_blocks_per_seq, num_blocks, total_q, max_q,
 * k_stride[3], k_offset, v_stride[3], v_offset, window, splits; floats: scale, softcap. */
static void paged_call_of(const uint32_t *ints, const float *floats, const int32_t *q_lens, const int32_t *seq_lens,
                          kgen_fa_paged_call *c) {
    int i;
    memset(c, 0, sizeof *c);
    c->head_k = ints[0]; c->head_v = ints[1]; c->k_type = ints[2]; c->v_type = ints[3]; c->page = ints[4];
    c->features = ints[5]; c->n_head_q = ints[6]; c->n_head_kv = ints[7]; c->n_batch = ints[8];
    c->max_blocks_per_seq = ints[9]; c->num_blocks = ints[10]; c->total_q = ints[11]; c->max_q = ints[12];
    for (i = 0; i < 3; ++i) c->k_stride[i] = ints[13 + i];
    c->k_offset = ints[16];
    for (i = 0; i < 3; ++i) c->v_stride[i] = ints[17 + i];
    c->v_offset = ints[20];
    c->window = ints[21]; c->splits = ints[22];
    c->scale = floats[0]; c->softcap = floats[1];
    c->q_lens = q_lens;
    c->seq_lens = seq_lens;
}

#endif
