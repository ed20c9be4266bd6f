"""What a call is specialized on: its shapes and features, validated, and the GQA fold."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .kvtensor import KVTensor, views_k
from .problem import ProblemClass
from .quant import F32_MAX, check_stored
from .types import KvType
from .variant import HEAD_MAX, HEAD_MIN, HEAD_STEP

PRECISIONS = {"f32": 32, "f16": 16}
U32_MAX = 2**32 - 1                                # push-constant uints (window, strides)
F32_TINY = float(np.finfo(np.float32).tiny)        # GPUs may flush smaller f32 values to 0
# ggml's slopes are 2^(-max_bias * k / n2) for k up to n2: the smallest is 2^-max_bias. Past
# 2^-126 a GPU may flush it to 0, and 0 x a -inf mask entry is NaN, not a hidden key.
ALIBI_MAX_BIAS_MAX = 126.0


@dataclass(frozen=True)
class Shapes:
    """Everything a plan is specialized on (arrays excluded)."""

    batch: int
    heads_q: int
    heads_kv: int
    n_q: int
    n_kv: int
    head_k: int
    head_v: int
    k_type: KvType = KvType.F16
    v_type: KvType = KvType.F16
    mask_shape: tuple[int, int, int, int] | None = None   # as stored: each dim 1 or full
    causal: bool = False
    window: int = 0
    scale: float | None = None
    softcap: float = 0.0
    alibi_max_bias: float = 0.0
    sinks: bool = False
    precision: str = "f32"
    v_in_k: bool = False   # V is the first head_v columns of K's rows, in K's bytes (DeepSeek MLA)

    def validate(self) -> None:
        for name in ("batch", "heads_q", "heads_kv", "n_q", "n_kv"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"Hq={self.heads_q} must be a multiple of Hkv={self.heads_kv} (GQA/MQA)")
        for name in ("head_k", "head_v"):
            h = getattr(self, name)
            if not (HEAD_MIN <= h <= HEAD_MAX and h % HEAD_STEP == 0):
                raise ValueError(f"{name}={h}: kgen supports multiples of {HEAD_STEP} from {HEAD_MIN} to {HEAD_MAX}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: one of {', '.join(PRECISIONS)}")
        if not 0 <= self.window <= U32_MAX:
            raise ValueError(f"window={self.window}: must be 1..{U32_MAX} (a uint32 push constant), or None")
        if not (0 <= self.softcap <= F32_MAX and (self.softcap == 0 or self.softcap >= F32_TINY)):
            raise ValueError(f"softcap={self.softcap}: must be 0 (off) or from {F32_TINY:.9g} to "
                             f"{F32_MAX:.9g} (a normal f32: the kernels divide by it)")
        if not (math.isfinite(self.alibi_max_bias) and 0 <= self.alibi_max_bias <= ALIBI_MAX_BIAS_MAX):
            raise ValueError(f"alibi_max_bias={self.alibi_max_bias}: must be from 0 to {ALIBI_MAX_BIAS_MAX:g} "
                             "(the smallest head's slope is 2^-alibi_max_bias and must stay a normal f32)")
        if self.alibi_max_bias > 0 and self.mask_shape is None:
            raise ValueError("alibi_max_bias > 0 scales the mask (score + slope * mask): pass a mask")
        if self.scale is not None and not abs(self.scale) <= F32_MAX:
            raise ValueError(f"scale={self.scale}: must be finite, at most {F32_MAX:.9g} in magnitude "
                             "(an f32 push constant)")
        if self.v_in_k and (self.head_v > self.head_k or self.k_type != self.v_type):
            raise ValueError(f"v_in_k: V ({self.head_v} {self.v_type}) must be the first columns of "
                             f"K's rows ({self.head_k} {self.k_type}): head_v <= head_k, one type")

    def problem(self) -> ProblemClass:
        """The tuning class these shapes fall in."""
        return ProblemClass.of(head_k=self.head_k, head_v=self.head_v, k_type=self.k_type,
                               v_type=self.v_type, features=self.features, acc=PRECISIONS[self.precision],
                               n_q=self.n_q, n_kv=self.n_kv, gqa=self.heads_q // self.heads_kv,
                               v_in_k=self.v_in_k)

    @property
    def features(self) -> tuple[str, ...]:
        on = {"mask": self.mask_shape is not None, "causal": self.causal or self.window > 0,
              "alibi": self.alibi_max_bias > 0, "softcap": self.softcap > 0, "sinks": self.sinks}
        return tuple(f for f, enabled in on.items() if enabled)


def fold_gqa(s: Shapes) -> Shapes:
    """The same attention with each GQA group's query heads stacked as rows of one head, when
    nothing in a row depends on which head or query index it is: a (B, Hq, Nq, D) layout holds
    a group's Nq-row blocks back to back, so Q, the output and the split-k rows keep their
    bytes, and each KV head is read once per group instead of once per query head (decode
    reads Hq/Hkv times fewer bytes). Needs: no ALiBi (slope per head), no sinks (per head), no
    window, no causal bound unless Nq = 1 (one query row sees every key), and a mask that is
    one row for all heads and queries. Otherwise `s` itself."""
    gqa = s.heads_q // s.heads_kv
    if gqa == 1 or s.alibi_max_bias > 0 or s.sinks or s.window > 0 or (s.causal and s.n_q > 1):
        return s
    if s.mask_shape is not None and s.mask_shape[1:3] != (1, 1):
        return s
    mask = None if s.mask_shape is None else (s.mask_shape[0], 1, 1, s.n_kv)
    return dataclasses.replace(s, heads_q=s.heads_kv, n_q=gqa * s.n_q, causal=False, mask_shape=mask)


Strides = tuple[int, int, int]   # (row, head, batch) in elements


def dense_strides(n_q: int, heads: int, d: int) -> Strides:
    """A contiguous (B, H, N, D) tensor's strides."""
    return d, n_q * d, heads * n_q * d


def check_strides(name: str, strides, batch: int, heads: int, n_q: int, d: int) -> Strides:
    """`strides` (None: dense) of an f32 Q or O as the kernels address it, or a ValueError
    naming the argument: whole 16-byte units (the kernels move rows as vec4) and rows of D
    elements that do not overlap."""
    if strides is None:
        return dense_strides(n_q, heads, d)
    try:
        items = tuple(strides)
    except TypeError:
        items = ()
    if len(items) != 3 or not all(_is_int(x) for x in items):
        raise ValueError(f"{name}={strides!r}: (row, head, batch) strides in elements, 3 integers")
    row, head, b = (int(x) for x in items)
    if any(x < 0 or x % 4 or x > U32_MAX for x in (row, head, b)):
        raise ValueError(f"{name}={strides!r}: non-negative multiples of 4 elements (16 bytes), at most "
                         f"{U32_MAX} (uint32 push constants)")
    starts = np.sort((np.arange(batch)[:, None, None] * b + np.arange(heads)[None, :, None] * head
                      + np.arange(n_q)[None, None, :] * row).ravel())
    if starts.size > 1 and int(np.diff(starts).min()) < d:
        raise ValueError(f"{name}={strides!r}: rows of {d} elements overlap (a dense (B, H, N, D) "
                         f"layout is {dense_strides(n_q, heads, d)})")
    return row, head, b


def strided_extent(strides: Strides, batch: int, heads: int, n_q: int, d: int) -> int:
    """Elements from the first to one past the last element of a tensor with these strides."""
    row, head, b = strides
    return (batch - 1) * b + (heads - 1) * head + (n_q - 1) * row + d


def strided_copy(x: np.ndarray, strides: Strides) -> np.ndarray:
    """`x` (B, H, N, D) as f32, laid out flat by (row, head, batch) element strides."""
    b, h, n, d = x.shape
    if strides == dense_strides(n, h, d):
        return np.ascontiguousarray(x, dtype=np.float32)
    flat = np.zeros(strided_extent(strides, b, h, n, d), np.float32)
    np.lib.stride_tricks.as_strided(flat, x.shape, [4 * s for s in strides[::-1]] + [4])[...] = x
    return flat


def folded_strides(strides: Strides, n_q: int, gqa: int) -> Strides | None:
    """The (row, head, batch) strides of a Q or O after fold_gqa stacks each group's `gqa` heads
    as rows of one head, or None where the layout cannot be addressed that way: one query row
    per head (rows are the heads), or heads whose rows are back to back."""
    row, head, batch = strides
    if n_q == 1:
        return head, gqa * head, batch
    if head == n_q * row:
        return row, gqa * head, batch
    return None


def fold_for_layouts(s: "Shapes", q_strides: Strides, o_strides: Strides) -> tuple["Shapes", Strides, Strides]:
    """fold_gqa(s) where both Q's and O's layouts allow it (folded_strides), with the strides the
    kernel then uses; else `s` and the strides as given. The C dispatcher folds by this rule."""
    folded = fold_gqa(s)
    if folded is s:
        return s, q_strides, o_strides
    gqa = s.heads_q // s.heads_kv
    q, o = folded_strides(q_strides, s.n_q, gqa), folded_strides(o_strides, s.n_q, gqa)
    if q is None or o is None:
        return s, q_strides, o_strides
    return folded, q, o


ACCEPTED = "a numpy array, an array-like of numbers (nested list/tuple) or any array with .shape"


def as_input(x, name: str, *, data: bool = False, optional: bool = False):
    """`x` as the call takes it, or a ValueError naming the argument and what is accepted: a
    KVTensor (k and v only) or an object with a `.shape` as is (unless `data`: then its values as
    a numeric numpy array); a list/tuple of numbers as a numpy array. `optional`: None passes."""
    if x is None and optional:
        return None
    if isinstance(x, KVTensor):
        if name in ("k", "v"):
            return x
        raise ValueError(f"{name}: a KVTensor is accepted for k and v only; pass {ACCEPTED}")
    accepted = ACCEPTED + (" or a kgen.KVTensor" if name in ("k", "v") else "")
    if isinstance(x, (str, bytes)) or x is None:
        raise ValueError(f"{name}={x!r}: expected {accepted}")
    shape = getattr(x, "shape", None)
    if shape is not None and not data and not isinstance(x, np.ndarray):
        try:
            ok = all(int(d) == d and d >= 0 for d in tuple(shape))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name}: its .shape {shape!r} is not a tuple of sizes; expected {accepted}")
        return x
    if shape is None and not isinstance(x, (list, tuple)) and not hasattr(x, "__array__"):
        raise ValueError(f"{name}: a {type(x).__name__} has no array data; expected {accepted}")
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:   # ragged lists, objects numpy cannot read
        raise ValueError(f"{name}: not an array of numbers ({exc}); expected {accepted}") from None
    if a.dtype.kind == "c":
        raise ValueError(f"{name}: holds {a.dtype} values; kgen takes real numbers (the imaginary part "
                         "would be dropped)")
    if a.dtype.kind not in ("biuf" if name == "mask" else "iuf"):
        raise ValueError(f"{name}: holds {a.dtype} values, not numbers; expected {accepted}")
    return a


def as_f32(x, name: str) -> np.ndarray:
    """The values of array `x` as float32, or a ValueError naming `name`: NaN or Inf, or finite
    values beyond f32's range (they would be stored as Inf)."""
    a = np.asarray(x)
    with np.errstate(over="ignore"):
        a32 = np.asarray(a, dtype=np.float32)
    finite = np.isfinite(a32)
    if not finite.all():
        if not np.isfinite(a).all():
            at = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
            raise ValueError(f"{name} has NaN or Inf values ({name}[{', '.join(map(str, at))}]="
                             f"{float(a[at])}): kgen computes on finite inputs only")
        check_stored(a, finite, name, "f32", F32_MAX, f"{name} is stored as f32")
    return a32


# --- scalar arguments: the type each takes, refused by name rather than coerced -----------------
def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def as_int(x, name: str, *, optional: bool = False) -> int | None:
    """`x` as an int, or a ValueError naming `name`: no float (2.7 is not 2), bool or str."""
    if x is None and optional:
        return None
    if not _is_int(x):
        raise ValueError(f"{name}={x!r}: expected an integer{' or None' if optional else ''}")
    return int(x)


def as_real(x, name: str, *, optional: bool = False) -> float | None:
    """`x` as a finite float, or a ValueError naming `name`: no str, complex, bool, NaN or Inf."""
    if x is None and optional:
        return None
    if not isinstance(x, numbers.Real) or isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name}={x!r}: expected a real number{' or None' if optional else ''}")
    if not math.isfinite(x):
        raise ValueError(f"{name}={x!r}: must be finite")
    return float(x)


def as_flag(x, name: str, *, optional: bool = False) -> bool | None:
    """`x` as a bool, or a ValueError naming `name`: a str such as 'no' is not False."""
    if x is None and optional:
        return None
    if not isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{name}={x!r}: expected True or False{' or None' if optional else ''}")
    return bool(x)


def kv_type_of(x, given, name: str) -> KvType:
    """The storage type of K or V: a KVTensor's own (`given`, the k_type / v_type argument, must
    then agree or be None), else `given`, f16 by default."""
    arg = f"{name}_type"
    if given is not None and not isinstance(given, (str, KvType)):
        raise ValueError(f"{arg}={given!r}: a KV type name (f32, f16, bf16, q8_0, ...) or None")
    try:
        t = None if given is None else KvType.parse(given)
    except ValueError as exc:
        raise ValueError(f"{arg}={given!r}: {exc}") from None
    if isinstance(x, KVTensor):
        if t is not None and t != x.type:
            raise ValueError(f"{arg}={t}: {name} is a {x.type} KVTensor, which is stored as it is; "
                             f"pass {arg}=None or {arg}='{x.type}'")
        return x.type
    return t or KvType.F16


def as_inputs(q, k, v, mask=None, sinks=None, *, data: bool = False) -> tuple:
    """(q, k, v, mask, sinks) checked and converted by `as_input`, before anything reaches a device."""
    return (as_input(q, "q", data=data), as_input(k, "k", data=data), as_input(v, "v", data=data),
            as_input(mask, "mask", data=data, optional=True), as_input(sinks, "sinks", data=data, optional=True))


def _dims4(a, name: str) -> tuple[int, int, int, int]:
    shape = tuple(int(d) for d in a.shape)   # as_input checked they are whole numbers
    if len(shape) != 4:
        raise ValueError(f"{name} has shape {shape}: expected 4 dims (B, H, N, D)")
    return shape


def stored_mask_shape(mask, full: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The (B, H, rows, Nkv) shape a mask broadcastable to `full` is stored in, or a ValueError."""
    if mask is None:
        return None
    given = tuple(int(d) for d in mask.shape)
    if len(given) > 4:
        raise ValueError(f"mask has {len(given)} dims: at most 4, broadcastable to (B, Hq, Nq, Nkv)={full}")
    shape = (1,) * (4 - len(given)) + given
    for have, want in zip(shape, full):
        if have not in (1, want):
            raise ValueError(f"mask shape {given} does not broadcast to (B, Hq, Nq, Nkv)={full}")
    # Columns are always stored in full: the kernels read a mask row as a contiguous run.
    return shape[:3] + (full[3],)


def shapes_of(q, k, v, *, mask=None, causal=False, window=None, scale=None, softcap=0.0,
              alibi_max_bias=0.0, sinks=None, k_type=None, v_type=None, precision="f32") -> Shapes:
    q, k, v, mask, sinks = as_inputs(q, k, v, mask, sinks)
    b, hq, nq, dk = _dims4(q, "q")
    bk, hkv, nkv, dk2 = _dims4(k, "k")
    bv, hkv2, nkv2, dv = _dims4(v, "v")
    if (bk, dk2) != (b, dk) or (bv, hkv2, nkv2) != (b, hkv, nkv):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)} (B, Hq, Nq, Dk), k {tuple(k.shape)} "
                         f"(B, Hkv, Nkv, Dk), v {tuple(v.shape)} (B, Hkv, Nkv, Dv)")
    if sinks is not None and np.shape(sinks) != (hq,):
        raise ValueError(f"sinks has shape {np.shape(sinks)}: expected (Hq,) = ({hq},)")
    window = as_int(window, "window", optional=True)
    if window is not None and window < 1:
        raise ValueError(f"window={window}: must be >= 1 (or None)")
    if not isinstance(precision, str):
        raise ValueError(f"precision={precision!r}: one of {', '.join(PRECISIONS)}")
    shapes = Shapes(b, hq, hkv, nq, nkv, dk, dv, kv_type_of(k, k_type, "k"), kv_type_of(v, v_type, "v"),
                    stored_mask_shape(mask, (b, hq, nq, nkv)), as_flag(causal, "causal"), window or 0,
                    as_real(scale, "scale", optional=True), as_real(softcap, "softcap"),
                    as_real(alibi_max_bias, "alibi_max_bias"), sinks is not None, precision,
                    v_in_k=views_k(k, v))
    shapes.validate()
    return shapes
