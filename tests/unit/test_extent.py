"""kgen.extent: the formulas of pass grids and buffer sizes, evaluated, written and rendered."""
import json

import pytest
from hypothesis import given, strategies as st

from kgen import extent
from kgen.extent import ceil_div, evaluate, mul
from kgen.render import mask_frag_grid, q_frag_grid


def test_mul_folds_constants_and_ceil_div_of_a_constant_is_a_constant():
    assert mul(2, "n_kv", 3) == ("mul", 6, "n_kv")
    assert mul("n_q") == "n_q" and mul(4, 5) == 20
    assert ceil_div(33, 16) == 3 and ceil_div("n_q", 1) == "n_q"
    with pytest.raises(ValueError, match="positive int"):
        ceil_div("n_q", 0)


@given(n_kv=st.integers(1, 10**6), n_q=st.integers(1, 4096), planes=st.integers(1, 64))
def test_a_formula_read_back_from_json_gives_the_same_value(n_kv, n_q, planes):
    dims = {"n_kv": n_kv, "n_q": n_q, "mask_rows": n_q, "mask_planes": planes, "n_batch": 2, "n_head_q": 8}
    for e in mask_frag_grid(32) + q_frag_grid(576):
        assert evaluate(json.loads(json.dumps(extent.to_json(e))), dims) == evaluate(e, dims)
    x, y, z = mask_frag_grid(32)
    assert evaluate(x, dims) == -(-(-(-n_kv // 32) * 2) // 8) and evaluate(z, dims) == planes


def test_text_names_every_dimension_it_reads():
    e = mul(16, ceil_div(mul(2, ceil_div("n_kv", 32)), 8), "mask_planes")
    assert extent.text(e) == "16 * ceil(2 * ceil(n_kv / 32) / 8) * mask_planes"
    assert extent.c_expr(ceil_div("n_q", 16), lambda n: f"pc->{n}") == "((pc->n_q + 16u - 1u) / 16u)"


@pytest.mark.parametrize("bad, words", [
    ("n_head_kv", "does not give"),          # a dimension the call lacks, named
    (["pow", 2, 3], "not an int"),
    (["ceil_div", 5, 0], "positive divisor"),
    (True, "not an int"),
    (1.5, "not an int"),
])
def test_bad_formulas_are_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words):
        evaluate(bad, {"n_q": 4})
