"""The split-k reduce pass renders for any power-of-two workgroup wide enough for its columns."""
import pytest

from kgen.compile import compile_source
from kgen.render import render_split_k_reduce


def test_reduce_pass_fits_small_workgroups_or_says_why():
    compile_source(render_split_k_reduce(128, False, 128), name="reduce_v128_wg128")
    with pytest.raises(ValueError, match="at least 256 threads"):
        render_split_k_reduce(576, False, 128)
    with pytest.raises(ValueError, match="power-of-two"):
        render_split_k_reduce(64, False, 96)
