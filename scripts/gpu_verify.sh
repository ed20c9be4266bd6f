#!/usr/bin/env bash
# Verifies every code path the device has against kgen's float64 reference: the command the
# README's GPU section gives. Usage: scripts/gpu_verify.sh [OUTDIR]; KGEN_DEVICE picks the device.
# On a machine without network, install the package without its dependencies first (README).
set -uo pipefail
out="${1:-gpu-verify}"
mkdir -p "$out"
python3 -m kgen.cli devices | tee "$out/devices.txt"
python3 -m pytest -v -p no:cacheprovider tests/device/test_paths.py tests/device/test_attention.py 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
echo
echo "per path (tests/device/test_paths.py):"
for path in scalar coopmat1 coopmat2; do
    passed=$(grep -c "test_path_case\[.*-$path\] PASSED" "$out/pytest.log")
    failed=$(grep -c "test_path_case\[.*-$path\] FAILED" "$out/pytest.log")
    echo "  $path: $passed passed, $failed failed"
done
exit "$status"
