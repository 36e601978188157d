"""docs/api.md's compatibility table names exactly the routes the server serves and, per route,
exactly the fields its request body accepts, each under one heading: it cannot drift from the
code. The truth is the OpenAPI document the live server makes from its route declarations."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import REPO

HEADINGS = ("route", "as specified", "mapped", "ignored", "refused")
_BRACKETS = re.compile(r"\([^()]*\)")
_NAME = re.compile(r"`([^`]+)`")


def table() -> dict[str, list[list[str]]]:
    """`METHOD /path` -> the field names under each heading after the route's."""
    text = (REPO / "docs" / "api.md").read_text()
    section = text.split("## Compatibility at a glance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    header = next(line for line in section.splitlines() if line.startswith("| route"))
    assert [h.strip() for h in header.strip("|").split("|")] == list(HEADINGS)
    found: dict[str, list[list[str]]] = {}
    for row in rows:
        route, *cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert len(cells) == len(HEADINGS) - 1, row
        assert route not in found, f"{route} listed twice"
        found[route.strip("`")] = [_NAME.findall(_BRACKETS.sub("", cell)) for cell in cells]
    return found


def served(document: dict[str, Any]) -> dict[str, set[str]]:
    """`METHOD /path` -> the top-level fields of its JSON body (HEAD shadows of GETs left out)."""
    schemas = document["components"]["schemas"]
    routes: dict[str, set[str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "head" and "get" in operations:
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            schema = body["schema"] if body else {}
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
            routes[f"{method.upper()} {path}"] = set(schema.get("properties", {}))
    return routes


@pytest.fixture(scope="module")
def document(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/api/openapi.json", timeout=60).json()


def test_the_table_lists_every_served_route_and_no_other(document: dict[str, Any]) -> None:
    assert sorted(table()) == sorted(served(document))


def test_each_route_lists_exactly_its_fields_each_once(document: dict[str, Any]) -> None:
    documented = table()
    for route, fields in served(document).items():
        listed = [name for cell in documented[route] for name in cell]
        assert sorted(listed) == sorted(fields), route
        assert len(listed) == len(set(listed)), f"{route}: a field under two headings"


def test_the_parser_sees_fields_not_the_names_inside_notes() -> None:
    row = table()["POST /v1/messages"]
    assert "thinking" in row[1] and "budget_tokens" not in row[1]
