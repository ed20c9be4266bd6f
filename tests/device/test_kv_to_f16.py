"""The KV -> f16 pass: every KV type, K and V, dense and strided layouts, on the device.

Expected values are kgen.quant's float64 dequantization rounded once to f16 (numpy's conversion
is round-to-nearest-even). The pass may differ by 1 f16 ulp, never more: it decodes in f32 (for
q4_1 / q5_1 `d*q + m` rounds once in f32 before the f16 rounding: double rounding) and
packHalf2x16's rounding mode is the implementation's (Vulkan does not require RTE for it). Every
other decode is exact in f32 (an f16 scale times a code of at most 8 bits), and f16 holds bf16's
8-bit mantissa, so on an RTE device those types match exactly; `test_every_type` records that.
"""
import numpy as np
import pytest

from kgen import abi
from kgen.compile import compile_source
from kgen.kvtensor import KVTensor
from kgen.quant import dequantize, row_bytes
from kgen.render import KV_TO_F16_WG, MAX_GROUPS, kv_to_f16_groups, render_kv_to_f16
from kgen.types import KV_TYPES, KvType

EXACT_ON_RTE = {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "iq4_nl"}


@pytest.fixture(scope="module")
def dev():
    from kgen.runtime import open_device
    return open_device()


def convert(dev, kv: KVTensor, tensor: str) -> np.ndarray:
    """Run the pass on `kv` (bound as `tensor`); returns the dense f16 (B, H, N, D) result."""
    b, h, n, d = kv.shape
    t = kv.type
    src = render_kv_to_f16(tensor, t, d)
    kernel = dev.pipeline(compile_source(src, name=f"kv_to_f16_{tensor}_{t}_d{d}").spirv,
                          name=f"kv_to_f16_{tensor}")
    # Only n_kv and this tensor's strides and offset are read.
    push = abi.pack_some(n_kv=n, **{f"{tensor}_stride_{w}": s for w, s in zip(("row", "head", "batch"), kv.strides)},
                         **{f"{tensor}_offset": kv.offset})
    out_bytes = b * h * n * d * 2
    src_buf, out_buf = dev.buffer(len(kv.raw)), dev.buffer(out_bytes)
    try:
        src_buf.write(kv.raw)
        out_buf.write(np.full(out_bytes, 0xFF, np.uint8))  # NaNs: a missed store shows
        groups = kv_to_f16_groups(n, d, h, b)
        binds = {abi.BINDING[tensor]: src_buf, abi.BINDING["out"]: out_buf}
        with dev.sequence([(kernel, binds, push, groups)]) as seq:
            seq.run(wait=True)
        return np.frombuffer(out_buf.read(out_bytes), dtype="<f2").reshape(b, h, n, d)
    finally:
        src_buf.close()
        out_buf.close()


def expected(kv: KVTensor) -> np.ndarray:
    """float64 dequantization of every row the view addresses, by its strides and offset."""
    t, (b, h, n, d) = kv.type, kv.shape
    raw = np.frombuffer(kv.raw, np.uint8)
    out = np.empty((b, h, n, d))
    for ib in range(b):
        for ih in range(h):
            for i in range(n):
                e = kv.offset + ib * kv.strides[2] + ih * kv.strides[1] + i * kv.strides[0]
                at = e // t.block_size * t.block_bytes   # float types: blocks of one element
                out[ib, ih, i] = dequantize(raw[at:at + row_bytes(t, d)], t, d)
    return out


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in f16 ulps: f16 bit patterns mapped onto one ordered integer line."""
    def line(x):
        bits = np.asarray(x, np.float16).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, 0x8000 - bits, bits)   # -0 and +0 both map to 0
    return np.abs(line(got) - line(want))


def check(got: np.ndarray, kv: KVTensor) -> int:
    assert np.isfinite(got).all(), "a store was missed or a value overflowed f16"
    want = expected(kv).astype(np.float16)
    worst = int(ulps(got, want).max())
    assert worst <= 1, f"{kv.type}: {worst} f16 ulps off"
    return worst


def random_kv(rng, shape) -> np.ndarray:
    # Per-row magnitudes over a few decades: exercises the f16 exponents without overflowing them.
    scale = 10.0 ** rng.uniform(-2, 2, size=shape[:-1] + (1,))
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize("t", KV_TYPES, ids=str)
def test_every_type(dev, t, tensor):
    rng = np.random.default_rng(KV_TYPES.index(t) * 2 + (tensor == "v"))
    # Nkv * D / 8 = 37 * 10 chunks: one full workgroup and a partial one. D = 80 leaves the
    # second block of a quantized row half used.
    kv = KVTensor.from_array(random_kv(rng, (1, 2, 37, 80)), t)
    worst = check(convert(dev, kv, tensor), kv)
    if t.label in EXACT_ON_RTE and dev.caps.device_type == "cpu":
        assert worst == 0, f"{t}: lavapipe converts f32 -> f16 with RTE, this decode is exact in f32"


@pytest.mark.parametrize("t", ["q8_0", "q4_1", "f16", "bf16"])
def test_mla_view_with_offsets(dev, t):
    """DeepSeek MLA: V is the first 512 of K's 576 columns (K's strides, D 512); then the same
    view moved by a whole batch and head (offset), and one starting 64 columns into the row."""
    rng = np.random.default_rng(7)
    k = KVTensor.from_array(random_kv(rng, (2, 3, 41, 576)), t)
    v = KVTensor(k.data, k.type, (2, 3, 41, 512), k.strides)
    check(convert(dev, v, "v"), v)
    moved = KVTensor(k.data, k.type, (1, 2, 41, 512), k.strides,
                     offset=k.strides[2] + k.strides[1])
    check(convert(dev, moved, "k"), moved)
    shifted = KVTensor(k.data, k.type, (2, 3, 41, 512), k.strides, offset=64)
    check(convert(dev, shifted, "v"), shifted)


@pytest.mark.parametrize("head, n_kv", [(32, 300), (256, 33), (576, 17)])
def test_batches_heads_and_ragged_grids(dev, head, n_kv):
    """Batch 2, 3 heads; Nkv * D / 8 is not a multiple of the workgroup."""
    assert (n_kv * head // 8) % KV_TO_F16_WG
    rng = np.random.default_rng(head)
    kv = KVTensor.from_array(random_kv(rng, (2, 3, n_kv, head)), "q4_0")
    check(convert(dev, kv, "k"), kv)


def test_grid():
    assert kv_to_f16_groups(37, 80, 2, 1) == (2, 2, 1)           # 370 chunks of 8
    assert kv_to_f16_groups(4096, 128, 8, 4) == (256, 8, 4)
    assert kv_to_f16_groups(64, 128, 1, 1, wg=128) == (8, 1, 1)


def test_bad_arguments_name_the_limit():
    with pytest.raises(ValueError, match=r"tensor='q'.*\('k', 'v'\)"):
        render_kv_to_f16("q", KvType.F16, 128)
    with pytest.raises(ValueError, match="head=100: must be a positive multiple of 8"):
        render_kv_to_f16("k", KvType.Q8_0, 100)
    with pytest.raises(ValueError, match="head=0"):
        render_kv_to_f16("v", KvType.Q8_0, 0)
    with pytest.raises(ValueError, match=f"grid x=.*maxComputeWorkGroupCount {MAX_GROUPS}"):
        kv_to_f16_groups(1 << 20, 576, 1, 1)
    with pytest.raises(ValueError, match=f"grid y=70000.*maxComputeWorkGroupCount {MAX_GROUPS}"):
        kv_to_f16_groups(16, 64, 70000, 1)
    with pytest.raises(ValueError, match="n_kv=0"):
        kv_to_f16_groups(0, 64, 1, 1)
