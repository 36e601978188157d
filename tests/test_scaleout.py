"""The scale-out recipe of docs/scaling.md, run: two ollamalite replicas behind LiteLLM's proxy
started with deploy/litellm.yaml as it is, reached with the OpenAI and Anthropic SDKs.

Opt-in (the proxy is a large install of its own, in a virtualenv of its own): set
OLLAMALITE_SCALEOUT_TEST=1 and OLLAMALITE_LITELLM to the `litellm` of a virtualenv made from
requirements/scaleout.txt."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from tests.conftest import MODEL, REPO, LiveServer, free_port, serving

LITELLM = os.environ.get("OLLAMALITE_LITELLM", "")
pytestmark = pytest.mark.skipif(
    os.environ.get("OLLAMALITE_SCALEOUT_TEST") != "1" or not os.access(LITELLM, os.X_OK),
    reason="opt-in: OLLAMALITE_SCALEOUT_TEST=1 and OLLAMALITE_LITELLM=<venv>/bin/litellm "
           "(requirements/scaleout.txt)")

REPLICA_KEY = "replica-key"
MASTER_KEY = "sk-proxy-master"
REPLICA_CONFIG = f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 2048\n"
SESSION = "x-litellm-session-id"


@dataclass
class Cluster:
    proxy: str
    replicas: list[LiveServer]

    def served(self) -> list[int]:
        """Chat requests each replica has answered. Requests here are not streamed, so a
        replica writes its access-log line before the proxy has the reply."""
        return [replica.log().count("POST /api/chat 200 ") for replica in self.replicas]


def _start_proxy(folder: Path, replicas: list[LiveServer]) -> tuple[subprocess.Popen, str]:
    """The proxy on a free port, with the documented config; and its URL."""
    port = free_port()
    env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "OLLAMALITE_API_KEY": REPLICA_KEY,
           "OLLAMALITE_REPLICA_1": replicas[0].url, "OLLAMALITE_REPLICA_2": replicas[1].url,
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # else it downloads a price list first
    log = open(folder / "proxy.log", "wb")
    process = subprocess.Popen(
        [LITELLM, "--config", str(REPO / "deploy" / "litellm.yaml"), "--host", "127.0.0.1",
         "--port", str(port)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"LiteLLM's proxy did not start:\n"
                       f"{(folder / 'proxy.log').read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with ExitStack() as stack:
        replicas = [stack.enter_context(serving(tmp_path_factory.mktemp(f"replica{n}"),
                                                REPLICA_CONFIG,
                                                env={"OLLAMALITE_API_KEY": REPLICA_KEY}))
                    for n in (1, 2)]
        proxy, url = _start_proxy(tmp_path_factory.mktemp("proxy"), replicas)
        stack.callback(proxy.wait, 15)
        stack.callback(proxy.terminate)
        yield Cluster(url, replicas)


def _ask(cluster: Cluster, session: str) -> str:
    client = openai.OpenAI(base_url=cluster.proxy + "/v1", api_key=MASTER_KEY, timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8,
        temperature=0, extra_headers={SESSION: session})
    assert 1 <= reply.usage.completion_tokens <= 8
    return reply.choices[0].message.content


def test_openai_requests_spread_over_both_replicas_and_a_session_stays_on_one(
        cluster: Cluster) -> None:
    """Each session lands on one replica (shuffled), and its later turns on the same one: new
    sessions are tried until both replicas have had one (1 in 2^11 to see a single one)."""
    before = cluster.served()
    for n in range(12):
        start = cluster.served()
        answers = [_ask(cluster, f"conversation-{n}") for _ in range(3)]
        assert all(isinstance(answer, str) and answer.strip() for answer in answers)
        grew = [now - then for now, then in zip(cluster.served(), start)]
        assert sorted(grew) == [0, 3], grew  # all three turns on one replica
        if all(now > then for now, then in zip(cluster.served(), before)):
            return
    pytest.fail(f"one replica served every session: {cluster.served()}")


def test_anthropic_messages_reach_a_replica_through_the_proxy(cluster: Cluster) -> None:
    before = sum(cluster.served())
    client = anthropic.Anthropic(base_url=cluster.proxy, api_key=MASTER_KEY, timeout=120)
    reply = client.messages.create(model=MODEL, max_tokens=8,
                                   messages=[{"role": "user", "content": "Name a colour."}])
    assert reply.role == "assistant" and reply.content[0].type == "text"
    assert reply.content[0].text.strip()
    assert 1 <= reply.usage.output_tokens <= 8
    assert sum(cluster.served()) == before + 1


def test_the_proxy_does_not_speak_the_ollama_api(cluster: Cluster) -> None:
    """Ollama-native clients go to a replica, or to a load balancer in front of them."""
    request = urllib.request.Request(cluster.proxy + "/api/chat", method="POST",
                                     headers={"Authorization": f"Bearer {MASTER_KEY}"},
                                     data=b'{"model": "smollm2:135m", "messages": []}')
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
