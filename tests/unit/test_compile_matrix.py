"""Every path x head size x KV type x precision renders, compiles and passes spirv-val.

The coopmat paths cannot run on lavapipe; this is how CI keeps them honest without a GPU.
"""
import itertools

from kgen.compile import compile_many
from kgen.errors import CompileError
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.space import default_variant
from kgen.types import KvType
from kgen.variant import PathKind

HEAD_PAIRS = ((32, 32), (40, 40), (64, 64), (72, 72), (80, 80), (96, 96), (128, 128), (192, 128),
              (256, 256), (320, 256), (512, 512), (576, 512))


def test_full_matrix_compiles():
    variants = []
    for path, (hk, hv), kv, acc in itertools.product(PathKind, HEAD_PAIRS, KvType, (16, 32)):
        problem = ProblemClass(head_k=hk, head_v=hv, k_type=kv, v_type=kv, acc=acc, features=("mask",))
        variants.append(default_variant(problem, H100, path))
    assert len({v.uri for v in variants}) == len(variants) == 3 * 12 * 9 * 2
    results = compile_many(variants)
    failed = {uri: r for uri, r in results.items() if isinstance(r, CompileError)}
    assert not failed, "\n\n".join(str(e) for e in list(failed.values())[:3])
    assert all(r.spirv[:4] == b"\x03\x02\x23\x07" for r in results.values())
