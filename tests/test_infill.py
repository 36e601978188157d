"""Fill-in-the-middle (`suffix`): a copy of the bundled GGUF given FIM token ids by the `gguf`
library, served by its own live server; the prompt the model saw is checked token by token."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator

import gguf
import httpx
import llama_cpp
import pytest

from ollamalite.registry.gguf_header import GGUFInfo, read_header
from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import MODEL, LiveServer, serving

FIM_MODEL = "fim:latest"
# Three distinct special tokens of SmolLM2's vocabulary: <jupyter_start>, <jupyter_text>,
# <jupyter_code>. Meaningless as FIM tokens to this model, exact for a mechanical test.
PRE, SUF, MID = 11, 12, 13
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return total\n"
STOPPER = "stopper:latest"  # options of its own, no num_ctx


def copy_with_fim_tokens(source: Path, target: Path) -> None:
    """The same GGUF (metadata, tensors) plus `tokenizer.ggml.fim_{pre,suf,mid}_token_id`."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(target, arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, PRE)
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, SUF)
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, MID)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fim") / "smollm2-fim.gguf"
    copy_with_fim_tokens(bundled_model_path(), path)
    return path


@pytest.fixture(scope="module")
def fim_server(fim_gguf: Path) -> Iterator[LiveServer]:
    folder = fim_gguf.parent
    with serving(folder, f"models:\n  {FIM_MODEL}:\n    path: {fim_gguf}\n    num_ctx: 512\n"
                         f"  {MODEL}:\n    path: bundled\n    num_ctx: 512\n"
                         f"  {STOPPER}:\n    path: bundled\n"
                         "    options: {stop: [END, '<|im_end|>'], temperature: 0.5}\n") as live:
        yield live


@pytest.fixture(scope="module")
def http(fim_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fim_server.url, timeout=300) as client:
        yield client


@lru_cache(maxsize=1)
def vocabulary() -> llama_cpp.Llama:
    return llama_cpp.Llama(str(bundled_model_path()), vocab_only=True, verbose=False)


def tokenize(text: str) -> list[int]:
    """The text's own tokens, special-token spellings left as text."""
    return vocabulary().tokenize(text.encode(), add_bos=False, special=False)


def test_the_copy_is_the_bundled_model_plus_fim_ids(fim_gguf: Path) -> None:
    original, copy = read_header(bundled_model_path()), read_header(fim_gguf)
    added = {k: v for k, v in copy.metadata.items() if k not in original.metadata}
    assert added == {"tokenizer.ggml.fim_pre_token_id": PRE,
                     "tokenizer.ggml.fim_suf_token_id": SUF,
                     "tokenizer.ggml.fim_mid_token_id": MID}
    assert copy.tensor_count == original.tensor_count


@pytest.mark.parametrize("names", [("fim_pre", "fim_suf", "fim_mid"),
                                   ("prefix", "suffix", "middle")])
def test_insert_capability_from_either_key_spelling(names: tuple[str, ...]) -> None:
    keys = {f"tokenizer.ggml.{n}_token_id": i for n, i in zip(names, (PRE, SUF, MID),
                                                                 strict=True)}
    assert GGUFInfo(3, 0, keys).capabilities() == ["completion", "insert"]
    del keys[next(iter(keys))]
    assert GGUFInfo(3, 0, keys).capabilities() == ["completion"]


def test_show_reports_insert_only_for_the_model_with_fim_tokens(http: httpx.Client) -> None:
    assert http.post("/api/show", json={"model": FIM_MODEL}).json()["capabilities"] == [
        "completion", "insert"]
    assert http.post("/api/show", json={"model": MODEL}).json()["capabilities"] == ["completion"]


def test_show_template_has_a_suffix_branch_only_with_fim_tokens(http: httpx.Client) -> None:
    """Continue sends `suffix` only to a model whose /api/show `template` mentions `.Suffix`;
    the branch spells the prompt the server builds, then the chat template as before."""
    fim, plain = (http.post("/api/show", json={"model": m}).json() for m in (FIM_MODEL, MODEL))
    chat = read_header(bundled_model_path()).chat_template
    assert plain["template"] == chat and ".Suffix" not in plain["template"]
    assert fim["template"] == ("{{- if .Suffix }}<jupyter_start>{{ .Prompt }}<jupyter_text>"
                               "{{ .Suffix }}<jupyter_code>{{- else }}" + chat + "{{- end }}")
    assert f'TEMPLATE """{chat}"""' in fim["modelfile"]  # what `create` can read back
    # What JetBrains reads stays as it was.
    info = fim["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] > 0
    assert fim["details"]["format"] == "gguf" and "insert" in fim["capabilities"]


@pytest.mark.parametrize(("model", "lines"), [
    (FIM_MODEL, ['num_ctx                        512',
                 'stop                           "<|im_end|>"']),
    (STOPPER, ['num_ctx                        4096', 'stop                           "END"',
               'stop                           "<|im_end|>"',
               'temperature                    0.5']),
])
def test_show_parameters_are_what_runs(http: httpx.Client, model: str, lines: list[str]) -> None:
    """`num_ctx` is the context a load gets (the entry's, else the default), `stop` the entry's
    or else the text of the token that ends generation; /api/ps then shows that context."""
    shown = http.post("/api/show", json={"model": model}).json()["parameters"]
    assert sorted(shown.split("\n")) == sorted(lines)
    assert http.post("/api/generate", json={"model": model, "prompt": "Hi", "stream": False,
                                            "options": {"num_predict": 1}}).status_code == 200
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert f"num_ctx                        {loaded[model]['context_length']}" in lines


def test_suffix_builds_pre_prefix_suf_suffix_mid(http: httpx.Client) -> None:
    body = http.post("/api/generate", json={
        "model": FIM_MODEL, "prompt": PREFIX, "suffix": SUFFIX, "stream": False,
        "options": {"temperature": 0, "num_predict": 3}}).json()
    expected = [PRE, *tokenize(PREFIX), SUF, *tokenize(SUFFIX), MID]  # SmolLM2 adds no BOS
    assert body["context"][:len(expected)] == expected
    assert body["prompt_eval_count"] == len(expected)
    assert len(body["context"]) == len(expected) + body["eval_count"]
    # The ids stand for ordinary tokens in this model, so what follows is arbitrary text that may
    # end early (and does on some CPUs' kernels): only the budget is certain.
    assert (body["done_reason"], body["eval_count"]) == ("length", 3) or \
        (body["done_reason"] == "stop" and 0 <= body["eval_count"] < 3)


def test_suffix_text_spelling_a_special_token_stays_text(http: httpx.Client) -> None:
    body = http.post("/api/generate", json={
        "model": FIM_MODEL, "prompt": "<|im_start|>", "suffix": "x", "stream": False,
        "options": {"num_predict": 1}}).json()
    expected = [PRE, *tokenize("<|im_start|>"), SUF, *tokenize("x"), MID]
    assert body["context"][:len(expected)] == expected
    assert 1 not in expected  # <|im_start|> is token 1: never parsed out of the user's text


def test_suffix_for_a_model_without_fim_tokens_is_refused(http: httpx.Client) -> None:
    resp = http.post("/api/generate", json={"model": MODEL, "prompt": "a", "suffix": "b"})
    assert resp.status_code == 400
    assert resp.json() == {"error": f'"{MODEL}" does not support insert'}


def test_suffix_with_a_context_outside_the_vocabulary_is_refused(http: httpx.Client) -> None:
    """The infill prompt puts `context` first, so its ids are checked as a templated one's."""
    resp = http.post("/api/generate", json={"model": FIM_MODEL, "prompt": "a", "suffix": "b",
                                            "context": [PRE, 1 << 20]})
    assert resp.status_code == 400
    assert resp.json() == {"error": "context contains token id 1048576 outside the model's "
                                    "vocabulary (0..49151)"}
