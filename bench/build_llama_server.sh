#!/usr/bin/env bash
# Build (once) and cache llama.cpp's `llama-server`, for benchmarks that compare it with ollamalite.
#
# Why: the comparison is only fair if both servers run the same llama.cpp code. So this builds
# llama-server from the llama.cpp sources vendored in the llama-cpp-python sdist of the version
# pinned in requirements/runtime.txt (the same sources our bindings were compiled from), for
# the same instruction sets as the bindings (scripts/cpu_build.sh), with OpenMP. Only what the engine does
# not use is turned off: downloads at build time (the prebuilt web UI, curl), OpenSSL, tests,
# examples. Libraries are linked in statically, so the cache holds a single file.
#
# Usage: bench/build_llama_server.sh
#   stdout: only the absolute path of the binary (exit 0), e.g.
#           ~/.cache/ollamalite/bench/llama-server-<ver>-cpu<key>/llama-server
#   stderr: progress; on failure the build log's tail, then a one-line reason as the last line,
#           and exit 3 (callers then skip llama-server). The first run compiles (~8 minutes on
#           2 cores at nice 10, longer on a busy machine); later runs return at once if the
#           cached binary answers `--version`.
#   env:    OLLAMALITE_BENCH_CACHE  cache folder (default ~/.cache/ollamalite/bench)
#           OLLAMALITE_BENCH_JOBS   parallel compile jobs (default 2)
#
# The binary is built for this machine's CPU, like the bindings, so its cache folder is keyed on
# the CPU (scripts/cpu_build.sh) as the bindings' wheel is. On a CPU that
# reports AMX but traps it, bench/run.py starts it with --no-repack, as ollamalite then loads
# without llama.cpp's extra buffer types (docs/cpu.md): the same CPU code on both sides.
set -euo pipefail

prog=build_llama_server
log() { echo "$prog: $*" >&2; }

tmp=""
stage=""
build_log=""
cleanup() {
    [ -n "$stage" ] && rm -rf "$stage"
    [ -n "$tmp" ] && rm -rf "$tmp"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# die REASON: the last 40 lines of the build log (if any), then one line, exit 3.
die() {
    trap - ERR
    if [ -n "$build_log" ] && [ -s "$build_log" ]; then
        echo "$prog: --- last lines of the build log ---" >&2
        tail -n 40 "$build_log" >&2 || true
        echo "$prog: ---" >&2
    fi
    echo "$prog: cannot build llama-server: $*" >&2
    exit 3
}
# Anything failing that is not checked below still ends with the exit-3 contract.
trap 'die "unexpected failure (line $LINENO: $BASH_COMMAND)"' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --- the pinned llama-cpp-python version ---------------------------------------------------
req="$repo/requirements/runtime.txt"
[ -r "$req" ] || die "$req not found"
ver=$(sed -nE 's/^[[:space:]]*llama[-_.]cpp[-_.]python[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\1/Ip' "$req" | head -n 1)
[ -n "$ver" ] || die "no 'llama-cpp-python==<version>' pin in $req"

. "$repo/scripts/cpu_build.sh"
variant="$ver-cpu$(cpu_key)"
cache_root="${OLLAMALITE_BENCH_CACHE:-$HOME/.cache/ollamalite/bench}"
case "$cache_root" in /*) ;; *) cache_root="$PWD/$cache_root" ;; esac
dest_dir="$cache_root/llama-server-$variant"
dest="$dest_dir/llama-server"

# works BINARY: it exists and `--version` exits 0.
works() {
    [ -x "$1" ] || return 1
    if command -v timeout >/dev/null 2>&1; then
        timeout 60 "$1" --version >/dev/null 2>&1
    else
        "$1" --version >/dev/null 2>&1
    fi
}

# --- cache hit -----------------------------------------------------------------------------
if works "$dest"; then
    log "cached: $dest"
    echo "$dest"
    exit 0
fi

mkdir -p "$cache_root" || die "cannot create cache folder $cache_root"
cache_root=$(cd "$cache_root" && pwd)
dest_dir="$cache_root/llama-server-$variant"
dest="$dest_dir/llama-server"

# One build at a time per version: a second caller waits, then finds the cache filled.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache_root/.llama-server-$variant.lock"
    if ! flock -n 9; then
        log "another build of llama-server $variant is running; waiting for it"
        flock 9
    fi
    if works "$dest"; then
        log "cached: $dest"
        echo "$dest"
        exit 0
    fi
fi

# --- tools ---------------------------------------------------------------------------------
command -v cmake >/dev/null 2>&1 || die "cmake not found"
cc_found=""
for c in "${CC:-}" cc gcc clang; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1; then cc_found=$c; break; fi
done
[ -n "$cc_found" ] || die "no C compiler found (cc, gcc, clang)"
cxx_found=""
for c in "${CXX:-}" c++ g++ clang++; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1; then cxx_found=$c; break; fi
done
[ -n "$cxx_found" ] || die "no C++ compiler found (c++, g++, clang++)"
generator=()
if ! command -v make >/dev/null 2>&1; then
    command -v ninja >/dev/null 2>&1 || die "neither make nor ninja found"
    generator=(-G Ninja)
fi

if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python=$(command -v python3 || true)
    [ -n "$python" ] || die "no python (neither $repo/.venv/bin/python nor python3)"
fi
"$python" -m pip --version >/dev/null 2>&1 || die "pip is not available in $python"

jobs="${OLLAMALITE_BENCH_JOBS:-2}"
nice_cmd=()
command -v nice >/dev/null 2>&1 && nice_cmd=(nice -n 10)

# --- sources -------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ollamalite-llama-server.XXXXXX") || die "cannot create a temp dir"
build_log="$tmp/build.log"
: >"$build_log"

log "downloading the llama-cpp-python $ver sdist"
"$python" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$ver" -d "$tmp/dl" >>"$build_log" 2>&1 \
    || die "pip download of llama-cpp-python==$ver failed"
sdist=""
for f in "$tmp"/dl/llama_cpp_python-"$ver".tar.gz "$tmp"/dl/llama-cpp-python-"$ver".tar.gz; do
    if [ -f "$f" ]; then sdist=$f; break; fi
done
[ -n "$sdist" ] || die "pip did not leave llama_cpp_python-$ver.tar.gz in $tmp/dl"

log "unpacking $(basename "$sdist")"
mkdir -p "$tmp/src"
tar -xzf "$sdist" -C "$tmp/src" >>"$build_log" 2>&1 || die "cannot unpack $sdist"
src="$tmp/src/llama_cpp_python-$ver/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || die "no llama.cpp sources at llama_cpp_python-$ver/vendor/llama.cpp in the sdist"

# --- build ---------------------------------------------------------------------------------
# The sdist has no .git; keep llama.cpp's build-info from picking up a repository that happens
# to enclose the temp dir.
export GIT_CEILING_DIRECTORIES="$tmp"
# SOURCE_DATE_EPOCH would silently turn GGML_NATIVE off where cpu_build.sh leaves it on.
unset SOURCE_DATE_EPOCH

log "configuring llama.cpp (from llama-cpp-python $ver)"
cmake -S "$src" -B "$tmp/build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="$cc_found" -DCMAKE_CXX_COMPILER="$cxx_found" \
    -DBUILD_SHARED_LIBS=OFF \
    $(cpu_cmake_args) ${CMAKE_ARGS:-} \
    -DGGML_CCACHE=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DGGML_BUILD_TESTS=OFF \
    -DGGML_BUILD_EXAMPLES=OFF \
    >>"$build_log" 2>&1 || die "cmake configure failed"

log "compiling llama-server with $jobs jobs (8 minutes or more on 2 cores, longer on a busy machine)"
start=$(date +%s)
"${nice_cmd[@]}" cmake --build "$tmp/build" --target llama-server -j "$jobs" \
    >>"$build_log" 2>&1 || die "cmake --build --target llama-server failed"
log "compiled in $(( $(date +%s) - start ))s"

built="$tmp/build/bin/llama-server"
[ -x "$built" ] || die "the build finished but $built is missing"

# It must stand alone: nothing from the build tree, nothing unresolved.
if command -v ldd >/dev/null 2>&1; then
    deps=$(ldd "$built" 2>&1 || true)
    if grep -q "not found" <<<"$deps"; then
        die "llama-server has unresolved shared libraries: $(grep "not found" <<<"$deps" | tr -s ' \t\n' ' ')"
    fi
    if grep -qF "$tmp" <<<"$deps"; then
        die "llama-server links shared libraries from the build tree: $(grep -F "$tmp" <<<"$deps" | tr -s ' \t\n' ' ')"
    fi
fi

# --- install into the cache, atomically ----------------------------------------------------
stage=$(mktemp -d "$cache_root/.llama-server-$variant.tmp.XXXXXX") || die "cannot create a staging dir in $cache_root"
cp "$built" "$stage/llama-server" || die "cannot copy llama-server into $stage"
chmod 755 "$stage" "$stage/llama-server"
works "$stage/llama-server" || die "the built llama-server does not run (--version failed)"

rm -rf "$dest_dir"
mv -T "$stage" "$dest_dir" || die "cannot move the build into $dest_dir"
stage=""
works "$dest" || die "the cached $dest does not run (--version failed)"

log "cached: $dest"
echo "$dest"
