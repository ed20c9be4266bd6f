"""The kv_f16 knob: quantized K/V converted to dense f16 by a pass, then the f16 kernel.

The rules run everywhere; the scalar kernels run on every device, the coopmat ones where the
path exists (an H100 in the GPU verification), elsewhere forcing one must fail naming the path.
"""
import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.paths import path_spec
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.render import render
from kgen.runtime import open_device
from kgen.space import enumerate_space
from kgen.variant import PathKind, Variant

from test_attention import case_inputs, check, run_plan

CM2 = dict(path="coopmat2", head_k=128, head_v=128, k_type="q8_0", v_type="q8_0", br=64, bc=32,
           wg=128, kv_f16=True)


def test_uri_round_trip_and_the_kernel_is_the_f16_one():
    v = Variant(**CM2, mask=True)
    assert "_kvf16_" in v.uri and Variant.parse(v.uri) == v
    assert (v.kernel.k_type.label, v.kernel.v_type.label, v.kernel.kv_f16) == ("f16", "f16", False)
    assert render(v) == render(v.kernel)
    mixed = Variant(**dict(CM2, v_type="f16"))
    assert mixed.kernel.k_type.label == "f16" and mixed.kernel.v_type.label == "f16"


def test_rejected_without_a_quantized_tensor():
    with pytest.raises(InvalidVariant, match="block-quantized types only"):
        Variant(**dict(CM2, k_type="f16", v_type="bf16"))


def test_kernel_rules_apply_to_the_f16_kernel():
    # The direct schedule loads f16 only: with kv_f16 the kernel is f16, so the pair is valid.
    v = Variant(path="coopmat1", head_k=128, head_v=128, k_type="q4_0", v_type="q4_0", br=16,
                bc=64, wg=128, mat_m=16, mat_n=16, mat_k=16, schedule="direct", kv_f16=True)
    assert v.kernel.schedule == "direct"
    with pytest.raises(InvalidVariant, match="only f16"):
        v.replace(kv_f16=False)


def test_offered_for_prefill_only():
    def converted(key):
        return [v for v in enumerate_space(ProblemClass.parse(key), H100).valid if v.kv_f16]
    assert converted("128/128 q8_0/q8_0 acc32 mask nq3 nkv3 gqa2")
    assert not converted("128/128 q8_0/q8_0 acc32 mask nq0 nkv3 gqa2")  # decode: no reuse to win
    assert not converted("128/128 f16/f16 acc32 mask nq3 nkv3 gqa2")


def _kernel_for(path: str, caps, **kw) -> Variant:
    """The path's default for the f16 problem, as a kv_f16 variant of these types."""
    problem = ProblemClass(head_k=kw["head_k"], head_v=kw["head_v"], features=kw["features"], acc=32)
    base = path_spec(PathKind.parse(path)).default(problem, caps)
    return base.replace(k_type=kw["k_type"], v_type=kw["v_type"], kv_f16=True)


# (name, path, B, Hq, Hkv, Nq, Nkv, head_k, head_v, k_type, v_type, mask, splits)
CASES = [
    ("scalar-q8_0-q4_0-unaligned", "scalar", 2, 4, 2, 20, 70, 128, 64, "q8_0", "q4_0", True, 1),
    ("scalar-iq4_nl-f16-split", "scalar", 1, 4, 1, 12, 300, 64, 64, "iq4_nl", "f16", False, 3),
    ("coopmat2-q8_0-mask", "coopmat2", 1, 8, 2, 40, 200, 128, 128, "q8_0", "q8_0", True, 1),
    ("coopmat2-mla-q8_0-view", "coopmat2", 1, 16, 1, 24, 96, 576, 512, "q8_0", "q8_0", True, 1),
    ("coopmat1-q5_1-split", "coopmat1", 1, 4, 2, 16, 256, 128, 128, "q5_1", "q5_1", False, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_converted_kernels_match_the_reference(case):
    name, path, b, hq, hkv, nq, nkv, dk, dv, kt, vt, use_mask, splits = case
    q, k, v, mask = case_inputs(name, b, hq, hkv, nq, nkv, dk, dv, use_mask)
    caps = open_device(None).caps
    kw = dict(mask=mask, k_type=kt, v_type=vt)
    if path_spec(PathKind.parse(path)).supports(caps) is not None:
        fake = Variant(**dict(CM2, path=path, **({"mat_m": 16, "mat_n": 16, "mat_k": 16, "br": 16}
                                                  if path == "coopmat1" else {})))
        with pytest.raises(KgenError, match="coopmat|cooperative"):
            kgen.plan(q, k, v, variant=fake.replace(mask=use_mask), **kw)
        return
    variant = _kernel_for(path, caps, head_k=dk, head_v=dv, k_type=kt, v_type=vt,
                          features=("mask",) if use_mask else ())
    variant = variant.replace(split_k=splits > 1, aligned=nkv % variant.bc == 0)
    # MLA: V is the first 512 columns of K's own quantized bytes (a view, not a copy).
    p, out, v = run_plan(q, k, v, variant, splits, mla_type=kt if dk == 576 else None, **kw)
    assert p.variant == variant and p.splits == splits
    before = (kt != "f16") + (vt != "f16") + variant.mask_tiles  # passes before the kernel
    assert len(p.steps) == before + 1 + (splits > 1)
    # Those passes run side by side (each joins the one before); the kernel waits for them all.
    assert [len(step) == 5 and step[4] for step in p.steps] == [0 < i < before for i in range(len(p.steps))]
    check(out, q, k, v, k_type=kt, v_type=vt, mask=mask)
