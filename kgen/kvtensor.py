"""KVTensor: a K or V cache handed to kgen as it is, already in a ggml storage format."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .quant import nonfinite, quantize, row_bytes
from .types import KvType

ELEMENT_INDEX_MAX = 2**32 - 1   # strides, offsets and element indices are uint32 in the kernels


def _ints(field: str, value, length: int, meaning: str) -> tuple[int, ...]:
    """`value` as `length` ints, or a ValueError naming KVTensor.`field`: no float, bool or str."""
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if (items is None or len(items) != length
            or not all(isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)) for x in items)):
        raise ValueError(f"KVTensor.{field}={value!r}: must be {meaning}, {length} integer(s)")
    return tuple(int(x) for x in items)


def parse_type(owner: str, t) -> KvType:
    """A cache description's `type` field as a KvType, or a ValueError naming `owner`.type."""
    try:
        return KvType.parse(t)
    except ValueError as exc:
        raise ValueError(f"{owner}.type: {exc}") from None


def check_data(owner: str, data) -> None:
    """A cache's raw bytes come as bytes, bytearray, memoryview or a numeric numpy array."""
    if isinstance(data, np.ndarray) and data.dtype.kind not in "biuf":
        raise ValueError(f"{owner}.data: a {data.dtype} array; expected bytes or a numeric numpy array")
    if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        raise ValueError(f"{owner}.data: a {type(data).__name__}; expected bytes, bytearray, "
                         "memoryview or a numpy array holding the raw bytes")


def raw_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).tobytes()
    return bytes(data)


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
        object.__setattr__(self, "type", parse_type("KVTensor", self.type))
        check_data("KVTensor", self.data)
        object.__setattr__(self, "shape", _ints("shape", self.shape, 4, "(B, H, N, D)"))
        object.__setattr__(self, "strides", _ints("strides", self.strides, 3, "(row, head, batch)"))
        if not isinstance(self.offset, numbers.Integral) or isinstance(self.offset, (bool, np.bool_)):
            raise ValueError(f"KVTensor.offset={self.offset!r}: must be an integer (elements of {self.type})")
        object.__setattr__(self, "offset", int(self.offset))
        if min(self.shape) < 1:
            raise ValueError(f"KVTensor.shape={self.shape}: must be (B, H, N, D), all >= 1")
        for name, value in (("strides", self.strides), ("offset", (self.offset,))):
            if min(value) < 0 or max(value) > ELEMENT_INDEX_MAX:
                raise ValueError(f"KVTensor.{name}={value if name == 'strides' else value[0]}: must be "
                                 f"0..{ELEMENT_INDEX_MAX} elements (the kernels take uint32)")
        unit = self.type.block_size if self.type.quantized else 4
        for name, value in (("strides", self.strides), ("offset", (self.offset,))):
            if any(s % unit for s in value):
                raise ValueError(f"KVTensor.{name}={value}: must be multiples of {unit} elements "
                                 f"for {self.type}")
        if self.strides[0] < self.shape[3]:
            raise ValueError(f"KVTensor.strides[0]={self.strides[0]}: a row holds D={self.shape[3]} elements")
        last = self.end
        if last - 1 > ELEMENT_INDEX_MAX:
            raise ValueError(f"KVTensor: shape {self.shape} with strides {self.strides} and offset "
                             f"{self.offset} reaches element {last - 1}; the kernels index elements "
                             f"as uint32 (at most {ELEMENT_INDEX_MAX})")
        needed = row_bytes(self.type, last)
        if len(self.raw) < needed:
            raise ValueError(f"KVTensor.data has {len(self.raw)} bytes; shape {self.shape} with strides "
                             f"{self.strides} and offset {self.offset} needs {needed}")

    @property
    def end(self) -> int:
        """One past the last element the tensor addresses, in elements of its type."""
        b, h, n, d = self.shape
        return self.offset + (b - 1) * self.strides[2] + (h - 1) * self.strides[1] + (n - 1) * self.strides[0] + d

    @property
    def raw(self) -> bytes:
        return raw_bytes(self.data)

    def rows(self) -> np.ndarray:
        """The bytes the tensor addresses, as uint8 (B, H, N, row bytes): each row's whole blocks."""
        t, (b, h, n, d) = self.type, self.shape
        flat = np.frombuffer(self.raw, np.uint8)
        start, row, head, batch = (x // t.block_size * t.block_bytes for x in (self.offset, *self.strides))
        return np.lib.stride_tricks.as_strided(flat[start:], (b, h, n, row_bytes(t, d)), (batch, head, row, 1),
                                               writeable=False)

    def check_finite(self, name: str) -> None:
        """A ValueError naming `name` where an element (float types) or a block's f16 scale or
        minimum (block types) that the tensor addresses is NaN or Inf."""
        found = nonfinite(self.rows(), self.type, self.shape[3])
        if found is not None:
            (b, h, n, i), what = found
            where = f"element {i}" if what == "value" else f"block {i} (elements {i * 32}..{i * 32 + 31})"
            raise ValueError(f"{name}: KVTensor.data holds a NaN or Inf {what} at batch {b}, head {h}, "
                             f"row {n}, {where}: kgen computes on finite inputs only")

    @classmethod
    def from_array(cls, x: np.ndarray, t: "KvType | str", *, name: str = "x") -> "KVTensor":
        """Quantize a float (B, H, N, D) array into a dense KVTensor (rows padded to whole blocks);
        values `t` cannot hold are a ValueError naming `name` (kgen.quant.quantize)."""
        t = KvType.parse(t)
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{name}: expected a (B, H, N, D) array, got shape {x.shape}")
        b, h, n, d = x.shape
        raw = quantize(x, t, name=name)
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
