"""integrations/ggml/report.py reads test-backend-ops' console output as check.sh writes it:
kgen's line for a case's calls (GGML_VK_KGEN_LOG=2) comes before the case's own line."""
import importlib.util
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "integrations" / "ggml" / "report.py"


def _report():
    spec = importlib.util.spec_from_file_location("ggml_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_perf_runs_pair_each_case_with_who_served_it(tmp_path):
    kgen = tmp_path / "perf-kgen.txt"
    kgen.write_text(
        "ggml_vulkan: 0 = NVIDIA H100 80GB HBM3 (NVIDIA) | matrix cores: NV_coopmat2\n"
        "kgen: served fa_cm1_a for 128/128 f16/f16 acc32 mask nq1 nkv3 gqa2\n"
        "  FLASH_ATTN_EXT(hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1):     8192 runs -    40.50 us/run -  1 GFLOP/run\n"
        "kgen: fallback: KV type bf16/bf16\n"
        "  FLASH_ATTN_EXT(hsk=64,hsv=64,nh=8,nr23=[1,1],kv=4096,nb=1,type_KV=bf16):     4096 runs -    12.00 us/run\n"
        "  Backend Vulkan0: OK\n")
    ggml = tmp_path / "perf-ggml.txt"
    ggml.write_text(
        "  FLASH_ATTN_EXT(hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1):     8192 runs -    81.00 us/run -  1 GFLOP/run\n"
        "  FLASH_ATTN_EXT(hsk=64,hsv=64,nh=8,nr23=[1,1],kv=4096,nb=1,type_KV=bf16):     4096 runs -    12.50 us/run\n")
    report = _report()
    times = report.perf_times(kgen)
    assert times == {"hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1":
                     (40.5, "served fa_cm1_a for 128/128 f16/f16 acc32 mask nq1 nkv3 gqa2"),
                     "hsk=64,hsv=64,nh=8,nr23=[1,1],kv=4096,nb=1,type_KV=bf16": (12.0, "fallback: KV type bf16/bf16")}
    assert report.perf_times(ggml)["hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1"] == (81.0, "")


def test_test_runs_keep_each_verdict_and_its_kgen_line(tmp_path):
    run = tmp_path / "test-kgen.txt"
    run.write_text(
        "kgen: served fa_sc_b for 64/64 f16/f16 acc32 - nq1 nkv1 gqa0\n"
        "  FLASH_ATTN_EXT(hsk=64,nb=1): OK\n"
        "  FLASH_ATTN_EXT(hsk=64,nb=1,type_KV=f32): not supported [Vulkan0]\n"
        "kgen: fallback: KV type q1_0/q1_0\n"
        "  FLASH_ATTN_EXT(hsk=64,nb=1,type_KV=q1_0): \n"
        "[FLASH_ATTN_EXT] NMSE = 0.1 > 0.0005 FAIL\n")
    verdicts = _report().test_verdicts(run)
    assert verdicts == {"hsk=64,nb=1": ("OK", "served fa_sc_b for 64/64 f16/f16 acc32 - nq1 nkv1 gqa0"),
                        "hsk=64,nb=1,type_KV=f32": ("not supported", ""),
                        "hsk=64,nb=1,type_KV=q1_0": ("FAIL", "fallback: KV type q1_0/q1_0")}
