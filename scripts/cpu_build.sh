# Sourced by bootstrap.sh and bench/build_llama_server.sh: what llama.cpp is compiled for.
#
# `cpu_cmake_args` prints the CMake options that build llama.cpp for the instruction sets this
# CPU reports, named one by one (GGML_NATIVE=OFF), AMX included where the CPU reports it. Not
# -march=native: on an AMX Xeon VM that build decoded the bundled model about a third slower
# than one with the same instruction sets named (docs/cpu.md has the measurements), and it
# enables instructions ggml does not ask for. On a CPU other than x86-64 it prints nothing and
# llama.cpp's own default (native) applies.
#
# `portable_cmake_args` prints the same options for x86-64-v3 (Haswell, Zen and later: SSE4.2,
# AVX, AVX2, FMA, F16C, BMI2) whatever CPU builds it, every other option OFF: for a build that
# runs on other machines (the Dockerfile; docs/docker.md says why this baseline).
#
# `cpu_key` prints a short checksum of what such a build depends on: the architecture, the
# CPU's model name and flags, and the CMake options (with the user's own CMAKE_ARGS). Folders
# of builds are keyed on it, so a cache carried to another CPU is rebuilt instead of crashing.

# /proc/cpuinfo flags (all of them, comma-separated) -> ggml's CMake option. Each option is
# set ON or OFF explicitly: without GGML_NATIVE, ggml turns SSE4.2 to F16C on by default.
_CPU_GGML_FLAGS="sse4_2:GGML_SSE42 avx:GGML_AVX avx2:GGML_AVX2 avx_vnni:GGML_AVX_VNNI
fma:GGML_FMA f16c:GGML_F16C bmi2:GGML_BMI2
avx512f,avx512cd,avx512vl,avx512dq,avx512bw:GGML_AVX512 avx512vbmi:GGML_AVX512_VBMI
avx512_vnni:GGML_AVX512_VNNI avx512_bf16:GGML_AVX512_BF16 amx_tile:GGML_AMX_TILE
amx_int8:GGML_AMX_INT8 amx_bf16:GGML_AMX_BF16"

_cpu_flags() {
    grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2
}

# _cpu_has "FLAGS" a,b,c: whether every one of a, b, c is among the flags.
_cpu_has() {
    local flag
    for flag in ${2//,/ }; do
        case "$1" in *" $flag "*) ;; *) return 1 ;; esac
    done
}

# _cmake_args_for "FLAGS": every option of the table, ON where FLAGS has its cpuinfo flags.
_cmake_args_for() {
    local flags=" $1 " args="-DGGML_NATIVE=OFF" pair
    for pair in $_CPU_GGML_FLAGS; do
        if _cpu_has "$flags" "${pair%%:*}"; then
            args="$args -D${pair#*:}=ON"
        else
            args="$args -D${pair#*:}=OFF"
        fi
    done
    echo "$args"
}

cpu_cmake_args() {
    [ "$(uname -m)" = x86_64 ] && [ -r /proc/cpuinfo ] || return 0
    _cmake_args_for "$(_cpu_flags)"
}

portable_cmake_args() {
    _cmake_args_for "sse4_2 avx avx2 fma f16c bmi2"
}

cpu_key() {
    {
        uname -m
        grep -m1 -E '^(model name|Processor|CPU part)' /proc/cpuinfo 2>/dev/null \
            || sysctl -n machdep.cpu.brand_string 2>/dev/null || true
        _cpu_flags || true
        cpu_cmake_args
        echo "${CMAKE_ARGS:-}"
    } | cksum | cut -d' ' -f1
}
