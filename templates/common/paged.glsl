{#- Paged KV (Variant.page > 0): the block table, the per-sequence lengths and where each
    sequence's query rows start (kgen/abi.py: PAGED_BUFFERS; PAGED_PUSH gives the push fields'
    paged meaning). Whatever the tables hold, every index derived from them is clamped into its
    buffer: an engine's table is data the host may never have seen. -#}
// ---- paged KV: sequence b reads token j from page block_table[b][j / PAGE] ----
layout(std430, binding = {{ binding.block_table }}) readonly buffer BlockTable { int block_table[]; };
layout(std430, binding = {{ binding.seq_lens }}) readonly buffer SeqLens { int seq_lens[]; };
layout(std430, binding = {{ binding.cu_seqlens_q }}) readonly buffer QStarts { int cu_seqlens_q[]; };

const uint PAGE = {{ v.page }}u;   // tokens per page

// This workgroup's sequence, set once at the top of main(): its first query token, its query
// tokens, its KV length, and its row of the block table.
uint seq_q_start, seq_n_q, seq_n_kv, seq_table;

// `token_rows`: query tokens the caller's buffers hold (a sequence's rows are kept inside them).
void paged_begin(uint b, uint token_rows) {
    const uint per_seq = pc.mask_stride_row;
    seq_q_start = min(uint(max(cu_seqlens_q[b], 0)), token_rows);
    const int n_q = cu_seqlens_q[b + 1u] - cu_seqlens_q[b];
    seq_n_q = min(uint(max(n_q, 0)), min(pc.n_q / pc.gqa_ratio, token_rows - seq_q_start));
    seq_n_kv = min(uint(max(seq_lens[b], 0)), min(pc.n_kv, per_seq * PAGE));
    seq_table = b * per_seq;
}

// Element offset of token j's row in a cache with these (token, page) strides.
uint kv_row(uint j, uint stride_token, uint stride_page) {
    const uint entry = min(seq_table + min(j / PAGE, pc.mask_stride_row - 1u), uint(block_table.length()) - 1u);
    const uint page = min(uint(max(block_table[entry], 0)), pc.mask_stride_head - 1u);
    return page * stride_page + (j % PAGE) * stride_token;
}
