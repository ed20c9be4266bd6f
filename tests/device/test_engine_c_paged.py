"""Paged calls through the C dispatcher of `kgen export --format c --paged` inside the minimal C
engine (c_engine/paged.c on c_engine/host.c): a ragged batch (decode rows, a prefill row, shared
pages, a sequence of KV length 0) on f16 and q8_0 pages with causal on, and a split-k call, each
against kgen.reference.paged_attention (NMSE <= 5e-4) and with the kernel, split count and push
constants kgen.paged_plan computes for the same batch; bad calls refused by name."""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import kgen
from kgen import abi, reference
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.paged import PagedKV
from kgen.problem import ProblemClass
from kgen.space import default_variant
from kgen.tools import export as ex
from kgen.tunedb import Winner
from kgen.types import KV_TYPES
from kgen.variant import FEATURES, PathKind

ENGINE = Path(__file__).resolve().parent / "c_engine"
FEATURE_BIT = {f: 1 << i for i, f in enumerate(FEATURES)}
KV_INDEX = {t.label: i for i, t in enumerate(KV_TYPES)}
MEMBERS = ex.C_BUFFER_MEMBERS
OK, NOT_COVERED, INVALID = 0, 1, -1
PAGE, HQ, HKV, D = 16, 4, 2, 64
SPECS = ("64,64,f16,f16,16,causal", "64,64,q8_0,q8_0,16,causal", "64,64,f16,q8_0,16,softcap,sinks")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The C engine built with a dispatcher of one dense entry and the paged entries of SPECS for
    the device opened here."""
    from kgen.planning.probe import open_for_kernels
    if shutil.which("cc") is None:
        pytest.fail("no cc on PATH: scripts/bootstrap.sh installs one")
    device = open_for_kernels()
    caps = device.caps
    problem = ProblemClass(head_k=D, head_v=D, features=("causal",), nq_bucket=0, nkv_bucket=0)
    v = default_variant(problem, caps, PathKind.SCALAR)
    dense = (DeviceIdentity.of(caps), BuildIdentity.current(), Winner(problem, v.uri, 1, 10.0, 0.1,
                                                                      kernel=kernel_digest(v.uri)))
    folder = tmp_path_factory.mktemp("paged-engine")
    ex.export([dense], folder / "fa", "c", ex.paged_rows([ex.PagedSpec.parse(s) for s in SPECS], caps))
    lib = folder / "libpaged.so"
    cmd = ["cc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(folder / "fa"),
           str(folder / "fa" / "kgen_fa.c"), str(ENGINE / "paged.c"), "-o", str(lib), "-l:libvulkan.so.1", "-lm",
           "-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    host = ctypes.CDLL(str(lib))
    host.kgen_host_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    host.kgen_paged_run.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float),
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_uint32), ctypes.c_char_p, ctypes.c_size_t]
    message = ctypes.create_string_buffer(512)
    validation = os.environ.get("KGEN_VALIDATION") == "1"
    assert host.kgen_host_open(device.index, int(validation), 0, message, 512) == 0, message.value.decode()
    yield host
    errors = host.kgen_host_validation_errors()
    host.kgen_host_close()
    assert errors == 0, f"{errors} validation error(s) from the C engine (see stderr)"


@dataclasses.dataclass
class Batch:
    """A ragged batch on a paged cache: sequence 0 and 3 decode and share their first two pages,
    sequence 1 is a prefill of 9 query tokens, sequence 2 has no keys."""
    k_type: str
    v_type: str
    features: tuple = ("causal",)
    window: int = 0
    softcap: float = 0.0
    splits: int = 0
    q_lens: tuple = (1, 9, 1, 1)
    seq_lens: tuple = (37, 40, 0, 70)
    max_blocks: int = 5
    num_blocks: int = 12

    def arrays(self, rng):
        b = len(self.q_lens)
        total_q = sum(self.q_lens)
        q = rng.standard_normal((total_q, HQ, D))
        pages = rng.standard_normal((self.num_blocks, PAGE, HKV, D))
        v_pages = rng.standard_normal((self.num_blocks, PAGE, HKV, D))
        table = np.full((b, self.max_blocks), -1, np.int32)   # vLLM's padding: never read
        table[0, :3] = [7, 2, 9]
        table[1, :3] = [0, 5, 11]
        table[3, :5] = [7, 2, 4, 1, 10]   # pages 7 and 2 shared with sequence 0
        cu = np.concatenate([[0], np.cumsum(self.q_lens)]).astype(np.int32)
        k = PagedKV.from_array(pages, self.k_type)
        v = PagedKV.from_array(v_pages, self.v_type)
        sinks = rng.standard_normal(HQ) if "sinks" in self.features else None
        return q, k, v, table, np.asarray(self.seq_lens, np.int32), cu, sinks

    @property
    def spec(self) -> str:
        return ",".join(map(str, (D, D, self.k_type, self.v_type, PAGE, *self.features)))

    def ints(self, **change) -> list[int]:
        fields = dict(head_k=D, head_v=D, k_type=KV_INDEX[self.k_type], v_type=KV_INDEX[self.v_type], page=PAGE,
                      features=sum(FEATURE_BIT[f] for f in self.features), n_head_q=HQ, n_head_kv=HKV, n_batch=len(self.q_lens),
                      max_blocks_per_seq=self.max_blocks, num_blocks=self.num_blocks, total_q=sum(self.q_lens),
                      max_q=max(self.q_lens), k_stride=(0, 0, 0), k_offset=0, v_stride=(0, 0, 0), v_offset=0,
                      window=self.window, splits=self.splits) | change
        return [x for value in fields.values() for x in (value if isinstance(value, tuple) else (value,))]


def _run(host, ints, arrays, lens=True, drop=-1, floats=(0.0, 0.0)):
    q, k, v, table, seq_lens, cu, sinks = arrays
    contents = {"q": q.astype(np.float32), "k": np.frombuffer(k.raw, np.uint8), "v": np.frombuffer(v.raw, np.uint8),
                "sinks": None if sinks is None else sinks.astype(np.float32),
                "block_table": table, "seq_lens": seq_lens, "cu_seqlens_q": cu}
    data = [contents.get(name) for name in MEMBERS]
    pointers = (ctypes.c_void_p * len(MEMBERS))(*[None if a is None else a.ctypes.data for a in data])
    sizes = (ctypes.c_uint64 * len(MEMBERS))(*[0 if a is None else a.nbytes for a in data])
    q_lens = np.diff(cu).astype(np.int32)
    out = np.full((q.shape[0], HQ, D), np.nan, np.float32)
    push = (ctypes.c_uint32 * (abi.PUSH_BYTES // 4))()
    report = ctypes.create_string_buffer(512)
    status = host.kgen_paged_run((ctypes.c_uint32 * len(ints))(*ints), (ctypes.c_float * 2)(*floats),
                                 q_lens.ctypes.data if lens else None, seq_lens.ctypes.data if lens else None,
                                 pointers, sizes, out.ctypes.data, out.nbytes, drop, push, report, 512)
    return status, report.value.decode(), out, bytes(push)


BATCHES = {"f16": Batch("f16", "f16"), "q8_0-window": Batch("q8_0", "q8_0", window=20),
           "f16-split3": Batch("f16", "f16", splits=3),
           "softcap-sinks-split2": Batch("f16", "q8_0", features=("softcap", "sinks"), softcap=15.0, splits=2)}


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
def test_a_ragged_paged_batch_runs_as_kgen_paged_plan_would(engine, batch):
    arrays = batch.arrays(np.random.default_rng(3))
    q, k, v, table, seq_lens, cu, sinks = arrays
    status, report, out, push = _run(engine, batch.ints(), arrays, floats=(0.0, batch.softcap))
    assert status == OK, report
    variant, spec, splits, scratch, steps = report.split("|")
    features = dict(causal="causal" in batch.features, window=batch.window or None, softcap=batch.softcap, sinks=sinks)
    ref = reference.paged_attention(q, k, v, table, seq_lens, cu, **features)
    assert np.isfinite(out).all()
    assert not out[cu[2]:cu[3]].any(), "a sequence without keys gives zeros"
    err = reference.nmse(out, ref)
    assert err <= 5e-4, f"{variant}: NMSE {err:.3g}"
    with kgen.paged_plan(q, k, v, block_table=table, seq_lens=seq_lens, cu_seqlens_q=cu, split_k=batch.splits or None,
                         **features) as p:
        assert (variant, int(splits)) == (p.variant.uri, p.splits)
        assert push == p._push()
        assert int(scratch) >= sum(p.recipe.sizes(p.dims()).values())
        assert int(steps) == len(p.recipe.steps)
    assert (int(splits) > 1) == bool(batch.splits) and (int(steps) == 2) == bool(batch.splits)
    assert spec == ex.PagedSpec.parse(batch.spec).key


def test_without_lengths_the_split_count_assumes_full_sequences(engine):
    """No host lengths: planned as every sequence full; the run is still right for the real ones."""
    batch = BATCHES["f16"]
    arrays = batch.arrays(np.random.default_rng(4))
    status, report, out, _ = _run(engine, batch.ints(), arrays, lens=False)
    assert status == OK, report
    q, k, v, table, seq_lens, cu, _ = arrays
    assert reference.nmse(out, reference.paged_attention(q, k, v, table, seq_lens, cu, causal=True)) <= 5e-4


def test_bad_paged_calls_are_refused_by_name_before_recording(engine):
    batch = BATCHES["f16"]
    arrays = batch.arrays(np.random.default_rng(5))

    def refused(**change):
        status, why, out, _ = _run(engine, batch.ints(**change), arrays)
        assert np.isnan(out).all(), "nothing ran"
        return status, why

    status, why = refused(page=24)
    assert status == INVALID and "page=24: a multiple of 16 from 16 to 256" in why
    status, why = refused(n_head_q=5)
    assert status == INVALID and "n_head_q=5 must be a multiple of n_head_kv=2" in why
    status, why = refused(max_q=8)   # sequence 1 has 9 query tokens
    assert status == INVALID and "q_lens[1]=9: must be 0..max_q=8" in why
    status, why = refused(max_blocks_per_seq=2)   # sequence 3's 70 keys need 5 pages
    assert status == INVALID and "seq_lens[0]=37: must be 0..32" in why
    status, why = refused(max_blocks_per_seq=1 << 28)
    assert status == INVALID and "max_blocks_per_seq x page (push n_kv) = 4294967296: past the kernels' 32-bit" in why
    status, why = refused(features=FEATURE_BIT["causal"] | FEATURE_BIT["mask"])
    assert status == INVALID and "features=0x3: a paged call takes CAUSAL, SOFTCAP, SINKS only" in why
    status, why = refused(features=0)   # valid, but no such spec in the table
    assert status == NOT_COVERED and "no paged kernel for head 64/64" in why and "page 16" in why
    status, why, out, _ = _run(engine, batch.ints(), arrays, drop=MEMBERS.index("block_table"))
    assert status == INVALID and "buffers.block_table: VK_NULL_HANDLE" in why and np.isnan(out).all()
    for name in ("q", "k", "o", "block_table", "seq_lens", "cu_seqlens_q"):   # each range one word short
        status, why, out, _ = _run(engine, batch.ints(), arrays, drop=100 + MEMBERS.index(name))
        assert status == INVALID and f"buffers.{name}.range=" in why and "the plan needs" in why, (name, why)
        assert np.isnan(out).all()
