"""coopmat2's mask_tiles: a pass classifies the mask's br x bc tiles (all -inf, all zero, mixed)
and the kernel skips hidden tiles and loads nothing for zero ones.

The pass runs on every device and is checked against numpy; the rules run everywhere; the
kernels run where coopmat2 exists (an H100 in the GPU verification), elsewhere forcing one must
fail naming the path, before any submission.
"""
import numpy as np
import pytest

import kgen
from kgen import abi
from kgen.compile import compile_source
from kgen.errors import InvalidVariant, KgenError
from kgen.paths import coopmat2
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.render import mask_tiles_groups, render_mask_tiles
from kgen.runtime import open_device
from kgen.variant import Variant

from test_attention import check, make_inputs

MIXED, HIDDEN, ZERO = 0, 1, 2
BASE = dict(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=32, bc=32,
            wg=128, mask=True, mask_tiles=True)


def blocky_mask(rng, shape, br, bc):
    """Random values with whole tiles and ragged runs set to -inf or 0."""
    m = rng.uniform(-2.0, 0.5, shape).astype(np.float32)
    rows, cols = shape[-2], shape[-1]
    for r0 in range(0, rows, br):
        for c0 in range(0, cols, bc):
            pick = rng.integers(4)
            if pick == 1:
                m[..., r0:r0 + br, c0:c0 + bc] = -np.inf
            elif pick == 2:
                m[..., r0:r0 + br, c0:c0 + bc] = 0.0
    m[..., -1, 3] = -np.inf   # a lone hidden key makes its tile mixed unless already hidden
    return m


def expected(stored: np.ndarray, br: int, bc: int) -> np.ndarray:
    """Class per (plane, row tile, KV tile) of a stored (B, H, rows, Nkv) f16 mask."""
    b, h, rows, n_kv = stored.shape
    planes = stored.reshape(b * h, rows, n_kv).astype(np.float32)
    out = np.empty((b * h, -(-rows // br), -(-n_kv // bc)), np.uint32)
    for p in range(b * h):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                t = planes[p, i * br:(i + 1) * br, j * bc:(j + 1) * bc]
                out[p, i, j] = HIDDEN if np.isneginf(t).all() else ZERO if (t == 0).all() else MIXED
    return out


@pytest.mark.parametrize("shape, br, bc, pad", [
    ((1, 1, 70, 200), 32, 64, (0, 0)),     # ragged in both directions
    ((2, 3, 40, 96), 16, 32, (0, 0)),      # one plane per (batch, head)
    ((2, 3, 40, 96), 16, 32, (24, 8)),     # the same in padded rows and planes (ggml pads mask rows)
    ((1, 1, 1, 300), 64, 16, (0, 0)),      # a one-row mask: one row tile
])
def test_pass_classifies_every_tile(shape, br, bc, pad):
    dev = open_device()
    rng = np.random.default_rng(sum(shape) + sum(pad))
    b, h, rows, n_kv = shape
    padded = (b, h, rows + pad[0], n_kv + pad[1])
    stored = blocky_mask(rng, padded, br, bc).astype(np.float16)
    mask = stored[:, :, :rows, :n_kv]   # the call's mask: a view with the caller's strides
    groups = mask_tiles_groups(shape, br, bc)
    kernel = dev.pipeline(compile_source(render_mask_tiles(br, bc), name=f"mask_tiles_br{br}_bc{bc}").spirv,
                          name="mask_tiles")
    row_stride, plane_stride = padded[3], padded[2] * padded[3]
    push = abi.pack_some(n_q=rows, n_kv=n_kv, n_head_q=h, mask_stride_row=row_stride if rows > 1 else 0,
                         mask_stride_head=plane_stride if h > 1 else 0,
                         mask_stride_batch=h * plane_stride if b > 1 else 0)
    n_tiles = int(np.prod(groups))
    mask_buf, tile_buf = dev.buffer(stored.nbytes), dev.buffer(4 * n_tiles)
    try:
        mask_buf.write(stored)
        tile_buf.write(np.full(n_tiles, 7, np.uint32))  # not a class: a missed store shows
        binds = {abi.BINDING["mask"]: mask_buf, abi.BINDING["mask_tiles"]: tile_buf}
        with dev.sequence([(kernel, binds, push, groups)]) as seq:
            seq.run(wait=True)
        got = np.frombuffer(tile_buf.read(4 * n_tiles), np.uint32).reshape(groups[::-1])
    finally:
        mask_buf.close()
        tile_buf.close()
    want = expected(np.ascontiguousarray(mask), br, bc)
    assert {HIDDEN, ZERO, MIXED} <= set(want.ravel().tolist()) or shape[2] == 1
    np.testing.assert_array_equal(got, want)


def test_rules_and_uri():
    v = Variant(**BASE)
    assert "_mtiles_" in v.uri and Variant.parse(v.uri) == v
    assert not coopmat2.layout(v).mask_skip  # no in-loop reduction when the pass classified
    assert coopmat2.layout(v.replace(mask_tiles=False)).mask_skip
    with pytest.raises(InvalidVariant, match="needs the mask"):
        Variant(**dict(BASE, mask=False))
    with pytest.raises(InvalidVariant, match="mask_tiles"):
        Variant(**dict(BASE, path="coopmat1", br=16, mat_m=16, mat_n=16, mat_k=16))


def test_prefill_classes_classify_decode_does_not():
    def tiles(key):
        return {k["mask_tiles"] for k in coopmat2.candidates(ProblemClass.parse(key), H100)}
    assert tiles("128/128 f16/f16 acc32 mask nq3 nkv3 gqa2") == {True}
    assert tiles("128/128 f16/f16 acc32 mask nq0 nkv3 gqa2") == {False}
    assert tiles("128/128 f16/f16 acc32 - nq3 nkv3 gqa2") == {False}
    assert coopmat2.default(ProblemClass.parse("576/512 f16/f16 acc32 mask nq3 nkv3 gqa4"), H100).mask_tiles


def test_grid_limit_is_named():
    with pytest.raises(ValueError, match="maxComputeWorkGroupCount"):
        mask_tiles_groups((1, 1, 8, 16 * 70000), 16, 16)


def _has_coopmat2() -> bool:
    return coopmat2.supports(open_device(None).caps) is None


# (name, B, Hq, Hkv, Nq, Nkv, mask shape (None: (Nq, Nkv)), splits, br, bc, wg, kv type)
CASES = [
    ("unaligned-blocks", 1, 4, 2, 72, 200, None, 1, 32, 32, 128, "f16"),
    ("per-head-mask", 2, 4, 4, 40, 128, (2, 4, 40, 128), 1, 32, 64, 128, "f16"),
    ("one-row-mask-split", 1, 8, 2, 20, 512, (1, 1, 1, 512), 4, 32, 32, 128, "f16"),
    ("q8_0-converted", 1, 8, 2, 48, 160, None, 1, 64, 32, 128, "q8_0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_classified_kernels_match_the_reference(case):
    name, b, hq, hkv, nq, nkv, mshape, splits, br, bc, wg, kv_type = case
    rng = np.random.default_rng(len(name))
    q, k, v = make_inputs(rng, b, hq, hkv, nq, nkv, 128, 128)
    mask = blocky_mask(rng, mshape or (nq, nkv), br, bc)
    mask[..., 0, :] = 0.0  # every row keeps a visible key somewhere ...
    mask[..., -1, :5] = -np.inf  # ... and one row hides its first keys
    variant = Variant(**dict(BASE, br=br, bc=bc, wg=wg, k_type=kv_type, v_type=kv_type,
                             kv_f16=kv_type != "f16", split_k=splits > 1, aligned=nkv % bc == 0))
    kw = dict(mask=mask, k_type=kv_type, v_type=kv_type)
    if not _has_coopmat2():
        with pytest.raises(KgenError, match="coopmat2|cooperative"):
            kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)
        return
    with kgen.plan(q, k, v, variant=variant, split_k=splits, **kw) as p:
        out = p(q, k, v, mask=mask)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, k_type=kv_type, v_type=kv_type, mask=mask)
