"""KVTensor: a K or V cache handed to kgen as it is, already in a ggml storage format."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import quantize, row_bytes
from .types import KvType


@dataclass(frozen=True)
class KVTensor:
    """Raw bytes of a (B, H, N, D) tensor of `type`, with strides in elements of that type
    (row, head, batch; for block types multiples of the block size) and a first-element offset.
    Views such as DeepSeek MLA's V (the first 512 of K's 576 columns) share K's bytes."""

    data: bytes | np.ndarray
    type: KvType
    shape: tuple[int, int, int, int]
    strides: tuple[int, int, int]
    offset: int = 0

    def __post_init__(self):
        object.__setattr__(self, "type", KvType.parse(self.type))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.shape) != 4 or min(self.shape) < 1:
            raise ValueError(f"KVTensor.shape={self.shape}: must be (B, H, N, D), all >= 1")
        if len(self.strides) != 3 or min(self.strides) < 0:
            raise ValueError(f"KVTensor.strides={self.strides}: must be (row, head, batch) >= 0")
        unit = self.type.block_size if self.type.quantized else 4
        for name, value in (("strides", self.strides), ("offset", (self.offset,))):
            if any(s % unit for s in value):
                raise ValueError(f"KVTensor.{name}={value}: must be multiples of {unit} elements "
                                 f"for {self.type}")
        if self.strides[0] < self.shape[3]:
            raise ValueError(f"KVTensor.strides[0]={self.strides[0]}: a row holds D={self.shape[3]} elements")
        b, h, n, d = self.shape
        last = self.offset + (b - 1) * self.strides[2] + (h - 1) * self.strides[1] + (n - 1) * self.strides[0] + d
        needed = row_bytes(self.type, last)
        if len(self.raw) < needed:
            raise ValueError(f"KVTensor.data has {len(self.raw)} bytes; shape {self.shape} with strides "
                             f"{self.strides} and offset {self.offset} needs {needed}")

    @property
    def raw(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else np.ascontiguousarray(self.data).tobytes()

    @classmethod
    def from_array(cls, x: np.ndarray, t: "KvType | str") -> "KVTensor":
        """Quantize a float (B, H, N, D) array into a dense KVTensor (rows padded to whole blocks)."""
        t = KvType.parse(t)
        if x.ndim != 4:
            raise ValueError(f"expected a (B, H, N, D) array, got shape {x.shape}")
        b, h, n, d = x.shape
        raw = quantize(np.ascontiguousarray(x, dtype=np.float32), t)
        return cls(raw.tobytes(), t, (b, h, n, d), layout_of(None, t, (b, h, n, d)).strides)


def views_k(k, v) -> bool:
    """True when V is a KVTensor on K's own bytes (DeepSeek MLA: V is K's first columns)."""
    return isinstance(k, KVTensor) and isinstance(v, KVTensor) and v.data is k.data


@dataclass(frozen=True)
class KvLayout:
    """Where a plan's K or V lives in its device buffer: strides (row, head, batch) and offset in
    elements, and the buffer's size in bytes."""

    strides: tuple[int, int, int]
    offset: int
    nbytes: int


def layout_of(x, t: KvType, shape: tuple[int, int, int, int]) -> KvLayout:
    """A KVTensor keeps its own layout; an array is stored densely, rows padded to whole blocks."""
    if isinstance(x, KVTensor):
        return KvLayout(x.strides, x.offset, len(x.raw))
    b, h, n, d = shape
    row = -(-d // t.block_size) * t.block_size
    return KvLayout((row, row * n, row * n * h), 0, b * h * n * (row // t.block_size) * t.block_bytes)
