"""The sectioned summary `ollama show MODEL` prints (Model, Capabilities, Parameters, ...)."""

from __future__ import annotations

from typing import Any, Callable, TextIO

from ollamalite.client.humanize import human_number, table

Rows = list[list[str]]


def print_show(resp: dict[str, Any], verbose: bool, out: TextIO) -> None:
    sections: list[tuple[str, Callable[[dict[str, Any]], Rows]]] = [
        ("Model", _model_rows), ("Capabilities", _capability_rows),
        ("Parameters", _parameter_rows)]
    if verbose:
        sections.append(("Metadata", _metadata_rows))
    sections += [("System", lambda r: _head(r.get("system", ""))),
                 ("License", lambda r: _head(r.get("license", "")))]
    for title, rows_of in sections:
        rows = rows_of(resp)
        if rows or title == "Model":
            out.write(f"  {title}\n")
            out.writelines(line + "\n" for line in table(rows))
            out.write("\n")


def _number(value: Any) -> str:
    """JSON numbers as Go's `FormatFloat(f, 'f', -1)`: `8192`, not `8192.0`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _model_rows(resp: dict[str, Any]) -> Rows:
    details = resp.get("details") or {}
    info = resp.get("model_info") or {}
    arch = str(info.get("general.architecture") or details.get("family") or "")
    params = details.get("parameter_size") or ""
    if not params and isinstance(info.get("general.parameter_count"), (int, float)):
        params = human_number(int(info["general.parameter_count"]))
    rows = [["", "architecture", arch], ["", "parameters", params]]
    for label, key in (("context length", "context_length"),
                       ("embedding length", "embedding_length")):
        if f"{arch}.{key}" in info:
            rows.append(["", label, _number(info[f"{arch}.{key}"])])
    rows.append(["", "quantization", details.get("quantization_level", "")])
    return [row for row in rows if row[2]]


def _capability_rows(resp: dict[str, Any]) -> Rows:
    return [["", str(c)] for c in resp.get("capabilities") or []]


def _parameter_rows(resp: dict[str, Any]) -> Rows:
    return [["", *line.split()] for line in (resp.get("parameters") or "").splitlines()
            if line.strip()]


def _metadata_rows(resp: dict[str, Any]) -> Rows:
    info = resp.get("model_info") or {}
    return [["", key, _metadata_value(info[key])] for key in sorted(info)]


def _metadata_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        shown, width = [], 1
        for item in value:
            width += len(str(item)) + (2 if shown else 0)
            if width > 10 and shown:
                break
            shown.append(str(item))
        more = f" ...+{len(value) - len(shown)} more" if len(shown) < len(value) else ""
        return "[" + " ".join(shown) + more + "]"
    return str(value)


def _head(text: str, n: int = 2) -> Rows:
    """The first `n` non-blank lines, then `...` if there are more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [["", line] for line in lines[:n]] + ([["", "..."]] if len(lines) > n else [])
