"""KGEN_MAX_SUBMIT_WORK on lavapipe: a plan whose attention exceeds the bound spreads its FA grid
over several queue submissions (vkCmdDispatchBase boxes of the one grid) and, where one workgroup
alone would exceed bound / GROUPS_TO_FILL, runs more KV splits; the output still matches the
float64 reference. Without the bound (lavapipe's default) a plan is one submission, as before.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

import kgen
from kgen import abi, knobs, reference
from kgen.compile import compile_source
from kgen.errors import KnobError
from kgen.planning.choose import GROUPS_TO_FILL, MAX_SUBMISSIONS, group_work
from kgen.quant import roundtrip
from kgen.runtime import commands
from kgen.runtime.context import Device
from kgen.runtime.errors import InvalidArgument
from kgen.runtime.launch import box_count, boxes

NMSE_MAX = 5e-4
NKV = 2048

# counts[flat workgroup id] += 1, the id taken from gl_WorkGroupID in the whole grid
COUNT_IDS = """#version 450
layout(local_size_x = 1) in;
layout(std430, binding = 5) buffer O { uint counts[]; };
layout(push_constant) uniform P { uint nx; uint ny; } pc;
void main() {
    uvec3 g = gl_WorkGroupID;
    atomicAdd(counts[(g.z * pc.ny + g.y) * pc.nx + g.x], 1u);
}
"""


class SubmitCounter:
    """commands.lib with vkQueueSubmit counted: how many submissions a run really makes."""

    def __init__(self, lib):
        self._lib, self.count = lib, 0

    def vkQueueSubmit(self, *args):
        self.count += 1
        return self._lib.vkQueueSubmit(*args)

    def __getattr__(self, name):
        return getattr(self._lib, name)


@pytest.fixture
def submits(monkeypatch) -> SubmitCounter:
    counter = SubmitCounter(commands.lib)
    monkeypatch.setattr(commands, "lib", counter)
    return counter


@pytest.fixture(scope="module")
def dev(cache_root):
    with Device() as device:
        yield device


def inputs(nq: int, *, hq=4, hkv=2, d=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, hq, nq, d), dtype=np.float32),
            rng.standard_normal((1, hkv, NKV, d), dtype=np.float32),
            rng.standard_normal((1, hkv, NKV, d), dtype=np.float32))


# --- the grid in boxes --------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [(1, 1, 1), (3, 1, 5), (2, 3, 4), (7, 5, 3), (1, 4, 9)])
def test_boxes_cover_the_grid_once_within_the_count(groups) -> None:
    total = math.prod(groups)
    for most in range(1, total + 2):
        hits = np.zeros(groups[::-1], np.int64)
        parts = boxes(groups, most)
        for (x0, y0, z0), (nx, ny, nz) in parts:
            assert 1 <= nx * ny * nz <= most
            hits[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] += 1
        assert (hits == 1).all(), (groups, most)
        assert box_count(groups, most) == len(parts)


def test_a_sequence_step_in_boxes_sees_whole_grid_ids(dev, cache_root, submits) -> None:
    kernel = dev.pipeline(compile_source(COUNT_IDS, name="count_ids").spirv, name="count_ids")
    grid = (3, 4, 5)
    counts = dev.buffer(4 * math.prod(grid))
    counts.write(bytes(counts.nbytes))
    push = struct.pack("<II", grid[0], grid[1]).ljust(abi.PUSH_BYTES, b"\0")
    # a whole step, one in boxes of at most 7 workgroups, a whole step
    with dev.sequence([(kernel, {5: counts}, push, grid),
                       (kernel, {5: counts}, push, grid, False, 7),
                       (kernel, {5: counts}, push, grid)]) as seq:
        assert seq.submissions == box_count(grid, 7) == len(seq.slot.cmds) > 1
        before = submits.count
        times = seq.run()
        assert submits.count - before == seq.submissions
        assert len(times) == 3 and all(t > 0 for t in times)
    # every workgroup once per step: the boxes' ids are those of the whole grid
    assert (np.frombuffer(counts.read(), np.uint32) == 3).all()
    with pytest.raises(InvalidArgument, match=r"steps\[1\]\[4\].*several submissions"):
        dev.sequence([(kernel, {5: counts}, push, grid, False, 7), (kernel, {5: counts}, push, grid, True)])
    with pytest.raises(InvalidArgument, match=r"steps\[1\]\[4\].*several submissions"):
        dev.sequence([(kernel, {5: counts}, push, grid), (kernel, {5: counts}, push, grid, True, 7)])
    for most in (0, -3, True, 2.5, "7"):
        with pytest.raises(InvalidArgument, match=r"steps\[0\]\[5\].*>= 1"):
            dev.sequence([(kernel, {5: counts}, push, grid, False, most)])
    counts.close()


# --- plans under a bound ------------------------------------------------------------------------

CASES = [  # (n_q, query heads, causal, bound): decode and prefill, each with and without causal
    (1, 8, False, 3e6), (1, 8, True, 3e6), (64, 4, False, 1e7), (64, 4, True, 1e7)]


@pytest.mark.parametrize("nq,hq,causal,bound", CASES)
def test_a_long_call_is_split_and_still_right(dev, monkeypatch, submits, nq, hq, causal, bound) -> None:
    monkeypatch.setenv("KGEN_MAX_SUBMIT_WORK", f"{bound:g}")
    q, k, v = inputs(nq, hq=hq, seed=nq + causal)
    with kgen.plan(q, k, v, causal=causal, device=dev) as p:
        fa = next(i for i, step in enumerate(p.recipe.steps) if step.role == "fa")
        grid, most = p.steps[fa][3], p.steps[fa][5]
        assert p.submissions == box_count(grid, most) > 1
        per_group = group_work(p.kernel_shapes, p.variant, p.split_kv)
        assert per_group * most <= bound                    # each submission within the bound
        # each workgroup within its share, unless a split is down to one KV tile
        assert per_group <= bound / GROUPS_TO_FILL or p.split_kv == p.variant.bc
        assert p.variant.split_k and p.splits > 1           # lavapipe's default runs one split
        before = submits.count
        out = p(q, k, v)
        assert submits.count - before == p.submissions
        times = p._sequence.run()
        assert len(times) == len(p.steps) and times[fa] > 0
        assert f"in {p.submissions} submissions" in p.dispatch_lines(times)[fa]
    ref = reference.attention(q, roundtrip(k, "f16"), roundtrip(v, "f16"), causal=causal)
    assert reference.nmse(out, ref) <= NMSE_MAX


def test_without_a_bound_a_plan_is_one_submission(dev, monkeypatch, submits) -> None:
    monkeypatch.delenv("KGEN_MAX_SUBMIT_WORK", raising=False)
    assert knobs.max_submit_work(dev.caps.vendor, dev.caps.device_type) == 0.0   # a CPU driver
    q, k, v = inputs(64)
    with kgen.plan(q, k, v, device=dev) as p:
        assert p.submissions == 1 and all(len(step) == 5 for step in p.steps)
        before = submits.count
        out = p(q, k, v)
        assert submits.count - before == 1
        assert p.kernel._based is None     # no dispatch-base pipeline was made
    ref = reference.attention(q, roundtrip(k, "f16"), roundtrip(v, "f16"))
    assert reference.nmse(out, ref) <= NMSE_MAX


def test_a_bound_too_small_for_the_call_is_refused_before_allocating(dev, monkeypatch) -> None:
    monkeypatch.setenv("KGEN_MAX_SUBMIT_WORK", "1")
    q, k, v = inputs(64)
    buffers = len(dev.buffers)
    with pytest.raises(ValueError, match=rf"KGEN_MAX_SUBMIT_WORK=1:.* submissions, at most {MAX_SUBMISSIONS}"):
        kgen.plan(q, k, v, device=dev)
    assert len(dev.buffers) == buffers


# --- the knob -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf", "1e11x"])
def test_a_bad_knob_value_names_the_knob_before_a_device_opens(monkeypatch, raw) -> None:
    from kgen.planning import probe
    monkeypatch.setenv("KGEN_MAX_SUBMIT_WORK", raw)

    def no_device(device=None):
        raise AssertionError("opened a device")
    monkeypatch.setattr(probe, "open_for_kernels", no_device)
    q, k, v = inputs(1)
    with pytest.raises(KnobError, match=r"KGEN_MAX_SUBMIT_WORK=.*FLOPs, a number >= 0"):
        kgen.plan(q, k, v)


def test_vendor_defaults_and_the_knob_over_them(monkeypatch) -> None:
    monkeypatch.delenv("KGEN_MAX_SUBMIT_WORK", raising=False)
    assert knobs.max_submit_work("AMD", "discrete") == 5e11
    assert knobs.max_submit_work("Intel", "integrated") == 1e11
    assert knobs.max_submit_work("NVIDIA", "discrete") == 0.0
    assert knobs.max_submit_work("Mesa", "cpu") == 0.0
    monkeypatch.setenv("KGEN_MAX_SUBMIT_WORK", "0")
    assert knobs.max_submit_work("AMD", "discrete") == 0.0
    monkeypatch.setenv("KGEN_MAX_SUBMIT_WORK", "2e9")
    assert knobs.max_submit_work("NVIDIA", "discrete") == 2e9
