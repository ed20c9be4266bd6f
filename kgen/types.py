"""KV-cache element types: ggml's float and block formats, named as ggml names them."""
from __future__ import annotations

import enum


class KvType(enum.Enum):
    """A K or V storage type. `block_size` elements share `block_bytes` bytes (ggml layout)."""

    F32 = ("f32", 1, 4)
    F16 = ("f16", 1, 2)
    BF16 = ("bf16", 1, 2)
    Q8_0 = ("q8_0", 32, 34)    # f16 d; int8 qs[32]
    Q4_0 = ("q4_0", 32, 18)    # f16 d; uint8 qs[16] (low nibbles: elements 0-15, high: 16-31)
    Q4_1 = ("q4_1", 32, 20)    # f16 d, m; uint8 qs[16]
    Q5_0 = ("q5_0", 32, 22)    # f16 d; uint8 qh[4]; uint8 qs[16]
    Q5_1 = ("q5_1", 32, 24)    # f16 d, m; uint8 qh[4]; uint8 qs[16]
    IQ4_NL = ("iq4_nl", 32, 18)  # f16 d; uint8 qs[16], non-linear 16-entry codebook

    def __init__(self, label: str, block_size: int, block_bytes: int):
        self.label = label
        self.block_size = block_size
        self.block_bytes = block_bytes

    def __str__(self) -> str:
        return self.label

    def row_bytes(self, elements: int) -> int:
        """Bytes of one row of `elements` values (a whole number of blocks)."""
        return -(-elements // self.block_size) * self.block_bytes

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    @classmethod
    def parse(cls, label: "str | KvType") -> "KvType":
        if isinstance(label, KvType):
            return label
        for t in cls:
            if t.label == label:
                return t
        raise ValueError(f"unknown KV type {label!r}; known: {', '.join(t.label for t in cls)}")


KV_TYPES = tuple(KvType)
