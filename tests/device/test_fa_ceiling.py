"""lab/fa_ceiling.py (the inner-loop ceiling of the prefill kernels): which option
combinations it times, that each kind of kernel it writes compiles, and that it times one on a
device with KHR cooperative matrices and refuses any other with the reason."""
import argparse
import sys

import pytest

from conftest import load_benchmark
from kgen.compile import compile_source


@pytest.fixture(scope="module")
def ceiling():
    return load_benchmark("fa_ceiling")


def options(ceiling, **given) -> argparse.Namespace:
    base = dict(mat="16x8x16", rt="1", bc="64", nsg="8", sync="0", pingpong="0", overlap="0", stage="0",
                softmax="0", mask="0", q_shared="0", splits="1")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in (base | given).items()]
    return ceiling.parser().parse_args(args)


def test_combinations_skip_what_makes_no_kernel(ceiling):
    combos = ceiling.combinations(options(ceiling, sync="0,2", pingpong="0,1", softmax="0,3", mask="0,1"))
    # ping-pong only with two barriers; a mask only with a softmax
    assert all(c["sync"] == 2 for c in combos if c["pingpong"])
    assert all(c["softmax"] for c in combos if c["mask"])
    assert len(combos) == 9          # sync 0: 3 (softmax 0, 3, 3 + mask); sync 2: 3 each for pingpong 0 and 1
    assert combos[0]["mat"] == (16, 8, 16)
    interleaved = ceiling.combinations(options(ceiling, rt="1,2", softmax="0,3", overlap="2"))
    assert [(c["rt"], c["softmax"]) for c in interleaved] == [(1, 3)]


@pytest.mark.parametrize("option, text", [("bc", "32,x"), ("mat", "16x8"), ("sync", "")])
def test_bad_option_lists_are_refused_naming_the_option(ceiling, option, text, capsys):
    with pytest.raises(SystemExit):
        ceiling.parser().parse_args([f"--{option}={text}"])
    assert f"--{option}" in capsys.readouterr().err


@pytest.mark.parametrize("given", [
    dict(),
    dict(mat="16x16x16", sync="2", stage="1", softmax="3", mask="1"),
    dict(rt="2", bc="32", softmax="1"),
    dict(sync="2", pingpong="1", softmax="2"),
    dict(overlap="1", stage="1", softmax="4", q_shared="1"),
    dict(overlap="2", softmax="3", sync="2", stage="1"),
    dict(softmax="5"),
    dict(sync="1", stage="2", softmax="3", mask="1"),
    dict(sync="2", stage="2", softmax="3", q_shared="2"),
])
def test_every_kind_of_kernel_compiles(ceiling, given):
    (c,) = ceiling.combinations(options(ceiling, **given))
    text = ceiling.source(head_k=128, head_v=128, mask_blocks=4, **{k: v for k, v in c.items() if k != "splits"})
    assert len(compile_source(text, name="ceiling_test").spirv) > 1000


def test_only_stage_2_loads_the_next_tile_from_global_memory(ceiling):
    def text(stage):
        (c,) = ceiling.combinations(options(ceiling, stage=str(stage), sync="2", softmax="3"))
        return ceiling.source(head_k=144, head_v=128, **{k: v for k, v in c.items() if k != "splits"})
    assert "kv4[next_kv" in text(2)
    assert "kv4[" not in text(1).split("void main()")[1]


def test_head_split_model_keeps_the_case_flops_on_more_subgroup_rows(ceiling):
    args = ceiling.parser().parse_args(["--case", "P2 ", "--heads", "288/256", "--row-copies", "2", "--nsg", "8",
                                        "--rt", "1", "--bc", "32", "--mat", "16x8x16", "--sync", "2",
                                        "--softmax", "3"])
    assert args.heads == (288, 256) and args.row_copies == 2
    (c,) = ceiling.combinations(args)
    s = args.case.shapes()
    groups, keys = ceiling.grid(s, c, args.row_copies)
    assert (groups, keys) == (128, 16384)      # 8192 rows x 2 subgroups, 128 subgroup rows a workgroup
    rows = groups * 8 * 16
    assert 2 * rows * keys * (288 + 256) == args.case.flops


@pytest.mark.parametrize("argv, option", [(["--heads", "100/128"], "--heads"), (["--heads", "288"], "--heads"),
                                          (["--row-copies", "0"], "--row-copies"),
                                          (["--row-copies", "2,4"], "--row-copies")])
def test_bad_head_split_is_refused_naming_the_option(ceiling, argv, option, capsys):
    with pytest.raises(SystemExit):
        ceiling.parser().parse_args(argv)
    assert option in capsys.readouterr().err


def test_runs_on_coopmat1_devices_and_refuses_others(ceiling, monkeypatch, capsys):
    from kgen.runtime import open_device
    monkeypatch.setattr(sys, "argv", ["fa_ceiling.py", "--mat", "16x8x16", "--rt", "1", "--bc", "32", "--sync", "0",
                                     "--runs", "3"])
    status = ceiling.main()
    out, err = capsys.readouterr()
    if open_device().caps.has_coopmat1:
        assert status == 0
        row = out.strip().splitlines()[-1].split("\t")
        assert row[0] == "16x8x16" and float(row[-3]) > 0      # the kernel's median us
    else:
        assert status == 1 and "VK_KHR_cooperative_matrix" in err
