"""The split-k reduce pass renders for any power-of-two workgroup wide enough for its columns."""
import pytest

from kgen.compile import compile_source
from kgen.render import render_split_k_reduce


def test_reduce_pass_fits_small_workgroups_or_says_why():
    compile_source(render_split_k_reduce(576, False, 16), name="reduce_v576_wg16")
    with pytest.raises(ValueError, match="at least 16 threads"):
        render_split_k_reduce(576, False, 8)
    with pytest.raises(ValueError, match="power-of-two"):
        render_split_k_reduce(64, False, 96)
