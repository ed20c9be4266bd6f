#!/usr/bin/env bash
# Builds a glslc that knows GL_KHR_cooperative_matrix and GL_NV_cooperative_matrix2 (shaderc
# 2025.2 with glslang 15.1, SPIRV-Tools 2025.1 and SPIRV-Headers 1.4.309: Debian trixie's source
# packages, built together the way shaderc's own third_party/ layout expects) on Debian bookworm.
# Bookworm's glslc (shaderc 2023.2) knows neither, and ggml's CMake then drops its coopmat and
# coopmat2 shaders without failing: on a GPU ggml would run its scalar flash attention.
#
#   integrations/ggml/build-glslc.sh [TARGET]     (default .toolchain/bin/glslc under the repo)
#
# About 7 minutes on 2 cores. The binary links glslang and SPIRV-Tools statically, so it runs on
# newer distributions too (the GPU machines): carry it there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:-$root/.toolchain/bin/glslc}"
say() { printf '[ggml-glslc] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

for tool in cmake ninja g++ python3 dpkg-source; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install cmake ninja-build g++ python3 dpkg-dev)"
done
src_list=/etc/apt/sources.list.d/kgen-trixie-src.sources   # the same file scripts/bootstrap.sh adds
if ! apt-cache showsrc shaderc 2>/dev/null | grep -q '^Version: 2025'; then
    [ -f "$src_list" ] || printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | as_root tee "$src_list" >/dev/null
    as_root apt-get update -q >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "downloading trixie's shaderc, glslang, spirv-tools and spirv-headers sources"
for package in shaderc glslang spirv-tools spirv-headers; do
    (cd "$work" && apt-get source -q --download-only "$package/trixie" >/dev/null 2>&1) || true
    ls "$work/${package}"_*.orig.tar.* >/dev/null 2>&1 || die "could not download $package's trixie source package"
done
for archive in "$work"/*.orig.tar.*; do tar -xf "$archive" -C "$work"; done
one_dir() { find "$work" -maxdepth 1 -mindepth 1 -type d -name "$1" | head -n1; }
shaderc="$(one_dir 'shaderc-*')"
[ -n "$shaderc" ] || die "no shaderc source tree in $work"
# shaderc builds its dependencies from third_party/<name> when they are there.
ln -s "$(one_dir 'glslang-*')" "$shaderc/third_party/glslang"
ln -s "$(one_dir '*SPIRV-Tools*')" "$shaderc/third_party/spirv-tools"
ln -s "$(one_dir 'spirv-headers-*')" "$shaderc/third_party/spirv-headers"

say "building glslc (log: $work/build.log)"
cmake -S "$shaderc" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHADERC_SKIP_TESTS=ON \
    -DSHADERC_SKIP_EXAMPLES=ON -DSHADERC_SKIP_COPYRIGHT_CHECK=ON -DSPIRV_SKIP_EXECUTABLES=ON \
    -DENABLE_GLSLANG_BINARIES=OFF >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; die "cmake failed"; }
ninja -C "$work/build" glslc_exe >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed"; }

# The probe ggml's CMake runs for coopmat2, in short: the binary must pass it.
cat >"$work/probe.comp" <<'EOF'
#version 450
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_cooperative_matrix : require
void main() {}
EOF
"$work/build/glslc/glslc" --target-env=vulkan1.3 -o "$work/probe.spv" "$work/probe.comp" \
    || die "the glslc just built does not compile a GL_NV_cooperative_matrix2 shader"
# Installed by rename: an interrupted build never leaves a half-written compiler behind.
mkdir -p "$(dirname "$target")"
cp "$work/build/glslc/glslc" "$target.tmp"
strip "$target.tmp" 2>/dev/null || true
mv -f "$target.tmp" "$target"
say "ready: $target ($("$target" --version | head -n1))"
