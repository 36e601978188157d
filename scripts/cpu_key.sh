# Sourced by bootstrap.sh and bench/build_llama_server.sh: `cpu_key` prints a short hash of the
# CPU that a native build (llama.cpp's default -march=native) is compiled for.
#
# Why: such a build uses every instruction the compiling CPU has, so it may die with SIGILL on
# another. Folders of native builds are keyed on this, so a cache carried to another CPU is
# rebuilt instead of crashing. Same architecture, model name and flags: same key.
cpu_key() {
    {
        uname -m
        if [ -r /proc/cpuinfo ]; then
            grep -m1 -E '^(model name|Processor|CPU part)' /proc/cpuinfo || true
            grep -m1 -E '^(flags|Features)' /proc/cpuinfo || true
        else
            sysctl -n machdep.cpu.brand_string machdep.cpu.features \
                machdep.cpu.leaf7_features 2>/dev/null || true
        fi
    } | cksum | cut -d' ' -f1
}
