"""The kernel interface every FA variant shares: descriptor bindings and one push-constant block.

Designed once for the whole feature list, so that a new feature adds shader code, not a new
interface. The GLSL declarations are rendered from these tables (templates/common/abi.glsl) and
the runtime binds buffers and packs values from them: the layout is written nowhere else.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class PushField:
    name: str
    glsl: str   # "uint" | "float"
    doc: str


PUSH_FIELDS: tuple[PushField, ...] = (
    PushField("n_q", "uint", "query rows per head (Nq)"),
    PushField("n_kv", "uint", "KV length (Nkv)"),
    PushField("n_head_q", "uint", "query heads (Hq)"),
    PushField("gqa_ratio", "uint", "Hq / Hkv: query heads sharing one KV head"),
    PushField("n_batch", "uint", "batch size (B)"),
    # Strides are in elements of each tensor's own type (for block types: elements, always
    # a multiple of the block size), so views such as MLA's V-inside-K need no copy.
    PushField("q_stride_row", "uint", "Q: elements between query rows"),
    PushField("q_stride_head", "uint", "Q: elements between heads"),
    PushField("q_stride_batch", "uint", "Q: elements between batches"),
    PushField("k_stride_row", "uint", "K: elements between KV rows"),
    PushField("k_stride_head", "uint", "K: elements between KV heads"),
    PushField("k_stride_batch", "uint", "K: elements between batches"),
    PushField("v_stride_row", "uint", "V: elements between KV rows"),
    PushField("v_stride_head", "uint", "V: elements between KV heads"),
    PushField("v_stride_batch", "uint", "V: elements between batches"),
    PushField("k_offset", "uint", "K: first element in its buffer"),
    PushField("v_offset", "uint", "V: first element in its buffer"),
    PushField("mask_stride_row", "uint", "mask: elements between query rows (0 = broadcast)"),
    PushField("mask_stride_head", "uint", "mask: elements between heads (0 = broadcast)"),
    PushField("mask_stride_batch", "uint", "mask: elements between batches (0 = broadcast)"),
    PushField("scale", "float", "score scale (1/sqrt(Dk) by default)"),
    PushField("softcap", "float", "softcap value; scores become softcap * tanh(score / softcap)"),
    PushField("alibi_m0", "float", "ALiBi base for heads below alibi_n2"),
    PushField("alibi_m1", "float", "ALiBi base for the other heads"),
    PushField("alibi_n2", "uint", "ALiBi: 2^floor(log2(Hq))"),
    PushField("window", "uint", "sliding window width with the causal feature (0 = none)"),
    PushField("split_kv", "uint", "split-k: KV columns per split (a multiple of bc)"),
    PushField("split_count", "uint", "split-k: number of splits (grid z = n_batch * split_count)"),
    # O's final rows only; split-k partial rows are contiguous scratch (kgen.planning.recipe).
    PushField("o_stride_row", "uint", "O: elements between query rows (f32, multiples of 4)"),
    PushField("o_stride_head", "uint", "O: elements between heads"),
    PushField("o_stride_batch", "uint", "O: elements between batches"),
)
PUSH_BYTES = 4 * len(PUSH_FIELDS)
# 128 bytes is the smallest maxPushConstantsSize Vulkan allows: every device takes the block.
assert PUSH_BYTES <= 128, PUSH_BYTES


def pack(**values) -> bytes:
    """Pack run-time values in block order; every field must be given, nothing else."""
    names = [f.name for f in PUSH_FIELDS]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"push constants: unknown {unknown}, missing {missing}")
    fmt = "<" + "".join("I" if f.glsl == "uint" else "f" for f in PUSH_FIELDS)
    return struct.pack(fmt, *(values[n] for n in names))


def pack_some(**values) -> bytes:
    """pack() for a pass that reads only some fields (a test driving one, say): the rest are 0."""
    return pack(**{f.name: 0 for f in PUSH_FIELDS} | values)


def glsl_push_block() -> str:
    """The block as a GLSL declaration named `pc`, for kernels written outside the templates
    (the benchmarks' floor and ceiling kernels); templates render it in common/abi.glsl."""
    fields = "".join(f"    {f.glsl} {f.name};\n" for f in PUSH_FIELDS)
    return f"layout(push_constant) uniform Push {{\n{fields}}} pc;\n"


@dataclass(frozen=True)
class Binding:
    index: int
    name: str
    doc: str


# Optional inputs a variant does not use (mask, sinks, split-k stats) are bound to a dummy.
BINDINGS: tuple[Binding, ...] = (
    Binding(0, "q", "Q, f32, (B, Hq, Nq, Dk) by the q strides"),
    Binding(1, "k", "K in the variant's k_type, by the k strides and k_offset"),
    Binding(2, "v", "V in the variant's v_type, by the v strides and v_offset"),
    Binding(3, "mask", "additive mask, f16, (Nq, Nkv) rows by the mask strides"),
    Binding(4, "sinks", "one f32 logit per query head"),
    Binding(5, "out", "O, f32, (B, Hq, Nq, Dv) by the o strides; with split_k: partial rows (splits, B, Hq, Nq, Dv) contiguous"),
    Binding(6, "stats", "split_k only: f32 (max, sum) per (split, b, h, row)"),
    Binding(7, "reduced", "split_k reduce pass (or fused_reduce kernel) only: the final O, f32, (B, Hq, Nq, Dv) by the o strides"),
    Binding(8, "mask_tiles", "mask_tiles only: u32 class per (mask plane, br row tile, bc KV tile)"),
    Binding(9, "split_arrivals", "fused_reduce only: u32 per (b, h, row): splits of the row tile "
            "starting there that have finished; zero before a call, and the kernel leaves it zero"),
    Binding(10, "block_table", "paged KV only: i32 (B, max_blocks_per_seq), sequence b's pages in order"),
    Binding(11, "seq_lens", "paged KV only: i32 (B,), the KV length of each sequence"),
    Binding(12, "cu_seqlens_q", "paged KV only: i32 (B+1,), sequence b's query rows are "
            "cu_seqlens_q[b]..cu_seqlens_q[b+1]"),
)
BINDING = {b.name: b.index for b in BINDINGS}
PAGED_BUFFERS = ("block_table", "seq_lens", "cu_seqlens_q")

# What some push fields hold for a paged variant (Variant.page > 0), which folds each GQA group
# into rows in the kernel: row R of KV head hk is query R / gqa_ratio of query head
# hk * gqa_ratio + R % gqa_ratio. The mask fields are free there (no mask on the paged path).
PAGED_PUSH = {
    "n_q": "rows per sequence at most: the longest sequence's query rows x gqa_ratio",
    "n_kv": "the longest KV length (split-k sizes its splits by it)",
    "n_head_q": "KV heads (Hkv): grid y",
    "n_batch": "sequences (B)",
    "q_stride_row": "Q (total_q, Hq, Dk): elements between query tokens",
    "q_stride_head": "Q: elements between query heads",
    "k_stride_row": "K: elements between the tokens of a page",
    "k_stride_batch": "K: elements between pages",
    "v_stride_row": "V: elements between the tokens of a page",
    "v_stride_batch": "V: elements between pages",
    "mask_stride_row": "block_table: entries per sequence (max_blocks_per_seq)",
    "mask_stride_head": "pages in the cache (num_blocks): a page index is clamped below it",
    "o_stride_row": "O (total_q, Hq, Dv): elements between query tokens",
    "o_stride_head": "O: elements between query heads",
}
