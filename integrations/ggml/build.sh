#!/usr/bin/env bash
# Builds the pinned ggml revision with its Vulkan backend and test-backend-ops, on Debian bookworm.
#
#   integrations/ggml/build.sh [extra cmake args...]
#
#   -DGGML_VK_KGEN_EXPORT=DIR compiles in a `kgen export --format c` folder (kgen_fa.h, kgen_fa.c):
#   ggml-vulkan then records kgen's kernels for the FLASH_ATTN_EXT calls the export covers
#   (integrations/ggml/ggml-vulkan-kgen.inc; GGML_VK_KGEN=0 turns it off at run time).
#
#   GGML_ARCHIVE    ggml source tarball (default ../shared/upstream/ggml-d99724f2.tar.gz beside the
#                   repo, if present; else the commit is downloaded from GitHub)
#   GGML_BUILD_DIR  build folder (default build/ggml under the repo root); the test binary lands in
#                   $GGML_BUILD_DIR/bin/test-backend-ops
#   GGML_GLSLC      the glslc ggml compiles its shaders with; "build" first builds one that knows the
#                   coopmat extensions (build-glslc.sh, into .toolchain/bin/glslc). Default:
#                   .toolchain/bin/glslc when built, else the system's (bookworm's has no coopmat)
#   GGML_VULKAN_HEADERS  an include folder with Vulkan-Headers >= 1.3.261 (vulkan/vulkan.hpp);
#                   default: the system's, or trixie's when the system's are too old
#   GGML_SPIRV_HEADERS  a SPIRV-Headers install prefix (include/spirv/unified1/spirv.hpp and
#                   share/cmake/SPIRV-Headers); default: the system's. Its include folder is searched
#                   before /usr/include, so an older spirv.hpp there is not the one ggml-vulkan.cpp gets
#   GGML_NO_APT=1   install nothing (a machine without network: everything above must be there,
#                   plus SPIRV-Headers' CMake config and libvulkan; README.md says what to carry)
#
# Idempotent: the source is unpacked (and integrations/ggml/ggml-vulkan.patch applied) once, cmake
# configures once per set of arguments, and ninja rebuilds only what changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/integrations/ggml"
rev=d99724f2b141fed9e1a9f402213506c081433465
url="https://github.com/ggml-org/ggml/archive/$rev.tar.gz"
archive="${GGML_ARCHIVE:-}"
# The project's shared folder beside the checkout (or the workspace's, for a checkout elsewhere).
for default_archive in "$root/../shared/upstream/ggml-${rev:0:8}.tar.gz" "/work/shared/upstream/ggml-${rev:0:8}.tar.gz"; do
    if [ -z "$archive" ] && [ -f "$default_archive" ]; then archive="$default_archive"; fi
done
build="${GGML_BUILD_DIR:-$root/build/ggml}"
mkdir -p "$build"; build="$(cd "$build" && pwd)"
src="$build/ggml-${rev:0:8}"          # the unpacked (and patched) source tree
patch_file="$here/ggml-vulkan.patch"

say() { printf '[ggml-build] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- tools: install only what is missing (as root, or through sudo) ---------------------------
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { as_root apt-get update -q >/dev/null; apt_updated=1; }; }
# glslc: GGML_GLSLC, else the one build-glslc.sh leaves in .toolchain/, else the system's.
glslc="${GGML_GLSLC:-}"
if [ "$glslc" = build ]; then
    glslc="$root/.toolchain/bin/glslc"
    [ -x "$glslc" ] || "$here/build-glslc.sh" "$glslc"
elif [ -z "$glslc" ] && [ -x "$root/.toolchain/bin/glslc" ]; then
    glslc="$root/.toolchain/bin/glslc"
fi
[ -z "$glslc" ] || [ -x "$glslc" ] || die "GGML_GLSLC=$glslc is not an executable"
# spirv-headers: ggml-vulkan's CMake does find_package(SPIRV-Headers CONFIG REQUIRED).
need=()
for p in libvulkan-dev spirv-headers cmake ninja-build g++ xz-utils patch; do
    have_deb "$p" || need+=("$p")
done
[ -n "$glslc" ] || have_deb glslc || need+=(glslc)
[ -n "$archive" ] || command -v curl >/dev/null || need+=(curl ca-certificates)
if [ ${#need[@]} -gt 0 ] && [ "${GGML_NO_APT:-0}" = 1 ]; then
    say "GGML_NO_APT=1: not installing ${need[*]} (cmake says if something it needs is missing)"
elif [ ${#need[@]} -gt 0 ]; then
    say "installing: ${need[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# --- source: unpack once -----------------------------------------------------------------------
if [ "$(cat "$src/.kgen-source" 2>/dev/null)" != "$rev" ]; then
    if [ -z "$archive" ]; then
        archive="$build/ggml-$rev.tar.gz"
        if [ ! -s "$archive" ]; then
            say "no local archive: downloading $url"
            curl -fL --retry 3 -o "$archive.tmp" "$url" && mv "$archive.tmp" "$archive"
        fi
    fi
    [ -f "$archive" ] || die "GGML_ARCHIVE=$archive does not exist"
    # git archive (ours and GitHub's) records the commit in the tar header: check it is the pinned one.
    if command -v git >/dev/null; then
        got="$(gzip -dc "$archive" | git get-tar-commit-id || true)"
        [ -z "$got" ] || [ "$got" = "$rev" ] || die "$archive is ggml commit $got, not $rev"
    fi
    say "unpacking $archive into $src"
    rm -rf "$src" "$src.tmp"; mkdir -p "$src.tmp"
    # --strip-components: our archive's prefix is ggml-d99724f2/, GitHub's is ggml-<full sha>/.
    tar -xzf "$archive" -C "$src.tmp" --strip-components=1
    echo "$rev" >"$src.tmp/.kgen-source"
    mv "$src.tmp" "$src"
fi

# --- patch: applied once; a copy of what was applied is the stamp. When the patch file changes,
# the old one is reverted first, so only the files it touches get rebuilt. -----------------------
applied="$src/.kgen-applied.patch"
if { [ -f "$patch_file" ] || [ -f "$applied" ]; } && ! cmp -s "$patch_file" "$applied" 2>/dev/null; then
    if [ -f "$applied" ]; then
        say "reverting the previously applied patch"
        patch -R -p1 --batch -s -d "$src" <"$applied" >&2; rm -f "$applied"
    fi
    if [ -f "$patch_file" ]; then
        say "applying $patch_file"
        patch -p1 --forward --batch --dry-run -s -d "$src" <"$patch_file" >&2 \
            || die "$(basename "$patch_file") does not apply to ggml $rev (tree left unpatched)"
        patch -p1 --forward --batch -d "$src" <"$patch_file" >&2
        cp "$patch_file" "$applied"
    fi
fi

# --- Vulkan headers: ggml-vulkan.cpp at this revision uses VK_EXT_layer_settings (vk::LayerSettingEXT)
# unguarded; bookworm's libvulkan-dev (1.3.239) predates it. Debian trixie's vulkan-loader source
# (1.4.309) bundles Vulkan-Headers: take include/ from it, headers only (the loader stays bookworm's).
vk_args=()
if [ -n "${GGML_VULKAN_HEADERS:-}" ]; then
    [ -f "$GGML_VULKAN_HEADERS/vulkan/vulkan.hpp" ] || die "GGML_VULKAN_HEADERS=$GGML_VULKAN_HEADERS has no vulkan/vulkan.hpp"
    vk_args=("-DVulkan_INCLUDE_DIR=$(cd "$GGML_VULKAN_HEADERS" && pwd)")
elif ! grep -q 'VK_EXT_layer_settings' /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
    vk_inc="$build/vulkan-headers/include"
    if [ ! -f "$vk_inc/vulkan/vulkan.hpp" ]; then
        say "system Vulkan headers lack VK_EXT_layer_settings: taking Vulkan-Headers from Debian trixie's vulkan-loader source"
        src_list=/etc/apt/sources.list.d/kgen-trixie-src.sources   # the same file scripts/bootstrap.sh adds
        if ! apt-cache showsrc vulkan-loader 2>/dev/null | grep -q '^Version: 1\.4'; then
            [ -f "$src_list" ] || printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                | as_root tee "$src_list" >/dev/null
            apt_updated=""; apt_update
        fi
        dl="$build/vulkan-headers.dl"; rm -rf "$dl"; mkdir -p "$dl"
        (cd "$dl" && apt-get source -q --download-only vulkan-loader/trixie >/dev/null 2>&1) \
            || die "could not download vulkan-loader's trixie source package"
        tar -xJf "$dl"/vulkan-loader_*.orig.tar.xz -C "$dl" --wildcards '*/vulkan-headers/include/*'
        rm -rf "$vk_inc"; mkdir -p "$(dirname "$vk_inc")"
        mv "$(find "$dl" -type d -path '*/vulkan-headers/include' | head -n1)" "$vk_inc"
        rm -rf "$dl"
    fi
    vk_args=("-DVulkan_INCLUDE_DIR=$vk_inc")
fi

# --- configure: once per argument set; the log is kept so its coopmat lines can be shown again ----
[ -z "$glslc" ] || vk_args+=("-DVulkan_GLSLC_EXECUTABLE=$glslc")
if [ -n "${GGML_SPIRV_HEADERS:-}" ]; then
    spirv="$(cd "$GGML_SPIRV_HEADERS" && pwd)" || die "GGML_SPIRV_HEADERS=$GGML_SPIRV_HEADERS is not a folder"
    [ -f "$spirv/include/spirv/unified1/spirv.hpp" ] || die "GGML_SPIRV_HEADERS=$spirv has no include/spirv/unified1/spirv.hpp"
    vk_args+=("-DSPIRV-Headers_DIR=$spirv/share/cmake/SPIRV-Headers" "-DCMAKE_CXX_FLAGS=-isystem $spirv/include")
fi
cmake_args=(-G Ninja -DGGML_VULKAN=ON -DGGML_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release "${vk_args[@]}"
            "-DGGML_VK_KGEN_GLUE=$here" "$@")
if [ ! -f "$build/build.ninja" ] || [ "$(cat "$build/.kgen-configure" 2>/dev/null)" != "${cmake_args[*]}" ]; then
    say "configuring: cmake ${cmake_args[*]}"
    cmake -S "$src" -B "$build" "${cmake_args[@]}" >"$build/configure.log" 2>&1 \
        || { cat "$build/configure.log" >&2; die "cmake failed"; }
    echo "${cmake_args[*]}" >"$build/.kgen-configure"
fi
# bookworm's glslc (shaderc 2023.2) lacks the coopmat extensions, and ggml's CMake then drops
# those shaders without failing: say what it found, so a slow baseline is not a surprise.
say "glslc: ${glslc:-$(command -v glslc)} ($("${glslc:-glslc}" --version | head -n1)); shader extensions ggml's CMake detected:"
grep -E 'supported by glslc|Found Vulkan' "$build/configure.log" | sed 's/^-- /    /' >&2
if grep -q 'GL_KHR_cooperative_matrix not supported' "$build/configure.log"; then
    say "note: no coopmat/coopmat2 shaders in this build (fine on lavapipe, which has neither; on a GPU"
    say "      ggml would run its scalar flash-attention path, so it is no fair baseline there:"
    say "      GGML_GLSLC=build builds a glslc that knows them)"
fi

# --- build: only the ggml libraries and test-backend-ops -------------------------------------
# The compiler output goes to build.log: gcc 12 prints hundreds of harmless -Wmaybe-uninitialized
# warnings from its own AVX-512 headers for ggml-cpu.
say "building ggml and test-backend-ops in $build (log: $build/build.log; ~4 min on 2 cores from scratch)"
ninja -C "$build" ${GGML_JOBS:+-j "$GGML_JOBS"} ggml test-backend-ops >"$build/build.log" 2>&1 \
    || { grep -E -B2 -A8 'error|FAILED' "$build/build.log" | tail -n 80 >&2; die "build failed (see $build/build.log)"; }
say "ready: $build/bin/test-backend-ops"
# ggml skips Vulkan devices of CPU type (lavapipe) unless they are named explicitly.
say "on lavapipe: GGML_VK_VISIBLE_DEVICES=0 $build/bin/test-backend-ops -o FLASH_ATTN_EXT -b Vulkan0"

# --- kgen-anchors (anchors.cpp): the H100 anchor shapes through ggml, kgen on and off in one process.
# Linked against the shared libraries ninja just built, with their folders as rpath so it runs in place.
anchors="$build/bin/kgen-anchors"
if [ ! -x "$anchors" ] || [ "$here/anchors.cpp" -nt "$anchors" ]; then
    say "building $anchors"
    mkdir -p "$build/bin"
    g++ -O2 -std=c++17 -I"$src/include" "$here/anchors.cpp" -o "$anchors.tmp" \
        -L"$build/src" -L"$build/src/ggml-vulkan" -lggml -lggml-base \
        -Wl,-rpath,"$build/src" -Wl,-rpath,"$build/src/ggml-vulkan" \
        || die "kgen-anchors did not build"
    mv "$anchors.tmp" "$anchors"
fi
say "anchors: $anchors (on lavapipe: GGML_VK_VISIBLE_DEVICES=0 $anchors --small --case P3 --case L1)"
