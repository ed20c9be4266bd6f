"""The C dispatcher against `kgen bench`, case by case in one run: the tuning DB's winners for
this device exported with `kgen export --format c`, built into the test engine
(tests/device/c_engine/host.c), each case planned and recorded by kgen_fa_record into the engine's
own command buffer and timed with GPU timestamps (device-local buffers, the same input rotation
and warm-up as kgen bench, push descriptors, a state buffer zeroed once unless --fill); beside it `kgen bench`'s median for the same case,
and the CPU cost of one kgen_fa_record call.

    .venv/bin/python lab/c_engine_bench.py [--suite h100-anchors] [--case "P1 "] [--repeats 100] [--json FILE]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "tests" / "device" / "c_engine" / "host.c"


def build(out: Path) -> ctypes.CDLL:
    from kgen import knobs
    from kgen.cli.export import read_winners
    from kgen.tools import export as ex
    ex.export(read_winners(knobs.db_path(), device_key=None, all_builds=False), out / "fa", "c")
    lib = out / "libengine.so"
    subprocess.run(["cc", "-std=c99", "-O2", "-shared", "-fPIC", "-I", str(out / "fa"), str(out / "fa" / "kgen_fa.c"),
                    str(HOST), "-o", str(lib), "-l:libvulkan.so.1", "-lm", "-lpthread"], check=True)
    host = ctypes.CDLL(str(lib))
    host.kgen_host_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    host.kgen_host_time.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float),
                                    ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64,
                                    ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_double), ctypes.c_char_p, ctypes.c_size_t]
    return host


def call_of(case, x) -> tuple[list[int], list[float], list]:
    """kgen_host_time's ints, floats and input buffers for a bench case (dense layouts)."""
    from kgen.types import KV_TYPES
    from kgen.variant import FEATURES
    index = {t.label: i for i, t in enumerate(KV_TYPES)}
    bits = {f: 1 << i for i, f in enumerate(FEATURES)}
    features = (bits["mask"] if case.mask else 0) | (bits["causal"] if case.causal else 0)
    ints = [case.head_k, case.head_v, index[case.k_type], index[case.v_type], features, 32, int(case.mla),
            case.batch, case.heads_q, case.heads_kv, case.n_q, case.n_kv, *x.kt.strides, x.kt.offset,
            *x.vt.strides, x.vt.offset, 1, 1, case.n_q if case.mask else 1, 0, 0, 0, 0, 0, 0, 0, 0]
    data = [x.q, np.frombuffer(x.kt.raw, np.uint8), None if case.mla else np.frombuffer(x.vt.raw, np.uint8),
            None if x.mask is None else x.mask.astype(np.float16), None]
    return ints, [0.0, 0.0, 0.0], data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="h100-anchors")
    ap.add_argument("--case", action="append")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--json")
    ap.add_argument("--fill", action="store_true",
                    help="no state buffer: each record zeroes the fused reduce's counters in scratch")
    args = ap.parse_args()
    from kgen.runtime import open_device
    from kgen.timing import rotation_sets
    from kgen.tools.bench import WARMUP_GPU_US, Inputs, bench_case, working_bytes
    from kgen.tools.suites import suite
    dev = open_device()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        host = build(Path(tmp))
        message = ctypes.create_string_buffer(512)
        if host.kgen_host_open(dev.index, 0, 1, message, 512) != 0:
            sys.exit(f"C engine: {message.value.decode()}")
        print(f"{'case':<22} {'kgen bench us':>13} {'C us':>9} {'C/bench':>8} {'record us':>9}  variant")
        for case in suite(args.suite, args.case):
            py = bench_case(case, dev, repeats=args.repeats, torch=False)
            if py.error:
                print(f"{case.name:<22} {py.error}")
                continue
            case = case.fitted(dev.caps)   # what bench_case timed (smaller on a CPU device)
            x = Inputs.random(case, 1)
            ints, floats, data = call_of(case, x)
            arrays = [None if a is None else np.ascontiguousarray(a) for a in data]
            times = (ctypes.c_double * 2)()
            report = ctypes.create_string_buffer(512)
            sets = rotation_sets(working_bytes(case, py.splits))
            warmup = min(4000, math.ceil(WARMUP_GPU_US / py.gpu.median_us))
            status = host.kgen_host_time(
                (ctypes.c_uint32 * len(ints))(*ints), (ctypes.c_float * 3)(*floats),
                (ctypes.c_void_p * 5)(*[None if a is None else a.ctypes.data for a in arrays]),
                (ctypes.c_uint64 * 5)(*[0 if a is None else a.nbytes for a in arrays]),
                4 * case.batch * case.heads_q * case.n_q * case.head_v, sets, warmup, args.repeats,
                int(not args.fill), times, report, 512)
            text = report.value.decode()
            if status != 0:
                print(f"{case.name:<22} C engine: {text}")
                continue
            variant = text.split("|")[0]
            same = variant == py.variant
            rows.append({"case": case.name, "bench_us": py.gpu.median_us, "c_us": times[0], "record_us": times[1],
                         "variant": variant, "bench_variant": py.variant, "same_variant": same, "sets": sets})
            print(f"{case.name:<22} {py.gpu.median_us:>13.1f} {times[0]:>9.1f} {times[0] / py.gpu.median_us:>8.3f} "
                  f"{times[1]:>9.2f}  {variant}{'' if same else '  (bench: ' + py.variant + ')'}")
        host.kgen_host_close()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev.caps.name, "suite": args.suite, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
