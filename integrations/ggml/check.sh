#!/usr/bin/env bash
# ggml's own checks of kgen inside ggml-vulkan: test-backend-ops -o FLASH_ATTN_EXT in test mode
# (Vulkan against ggml's CPU backend, ggml's NMSE and NaN checks) with kgen on and off, then in
# perf mode with kgen on and off, one binary (GGML_VK_KGEN toggles kgen at run time); report.py
# writes the table per case (verdicts, served or fallback and why, ggml us / kgen us).
#
#   integrations/ggml/check.sh [OUTDIR] [test-backend-ops args, e.g. -p 'hsk=128']
#   GGML_BUILD_DIR  the build of build.sh (default build/ggml); GGML_BACKEND (default Vulkan0)
#   CHECK_MODES     "test perf" (default) or one of them; CHECK_SIDES "kgen ggml" (default) or one
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${GGML_BUILD_DIR:-$root/build/ggml}"
bin="$build/bin/test-backend-ops"
out="${1:-$root/build/ggml-check}"
shift || true
backend="${GGML_BACKEND:-Vulkan0}"
[ -x "$bin" ] || { echo "check.sh: no $bin: run integrations/ggml/build.sh first" >&2; exit 2; }
mkdir -p "$out"
# ggml skips CPU-type Vulkan devices (lavapipe) unless they are named.
export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
for mode in ${CHECK_MODES:-test perf}; do
    for side in ${CHECK_SIDES:-kgen ggml}; do
        on=$([ "$side" = kgen ] && echo 1 || echo 0)
        if [ "$mode" = test ]; then
            echo "[ggml-check] test mode, kgen $([ "$on" = 1 ] && echo on || echo off) -> $out/test-$side.txt"
            GGML_VK_KGEN=$on GGML_VK_KGEN_LOG=2 "$bin" test -o FLASH_ATTN_EXT -b "$backend" "$@" \
                > "$out/test-$side.txt" 2>&1 || true   # report.py reads the verdicts
        else
            # Console output: at this ggml revision --output csv carries no timings.
            echo "[ggml-check] perf mode, kgen $([ "$on" = 1 ] && echo on || echo off) -> $out/perf-$side.txt"
            # GGML_VK_KGEN_LOG=2 prints a repeated call once: one line per case says who served it.
            GGML_VK_KGEN=$on GGML_VK_KGEN_LOG=$((2 * on)) "$bin" perf -o FLASH_ATTN_EXT -b "$backend" "$@" \
                > "$out/perf-$side.txt" 2>&1
        fi
    done
done
python3 "$root/integrations/ggml/report.py" "$out" | tee "$out/report.md"
