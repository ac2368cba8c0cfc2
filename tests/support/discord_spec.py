"""Discord's official OpenAPI description (tests/support/discord-openapi.json: discord/discord-api-spec,
specs/openapi.json at commit 74fda0f, MIT licence), used to check every request the bot makes: route,
method, path and query parameters, JSON body, and multipart `payload_json` + `files[n]` parts. An invalid
request is answered as Discord answers it: 400, code 50035, with an error tree."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE = Path(__file__).with_name("discord-openapi.json")
BASE = "urn:discord-openapi"


@dataclass(frozen=True)
class Route:
    template: str
    pattern: re.Pattern[str]
    item: dict[str, Any]


@functools.cache
def spec() -> dict[str, Any]:
    document = json.loads(SPEC_FILE.read_text())
    # Discord takes a snowflake as a JSON integer as well as a string (discord.py sends message and
    # attachment ids as integers); what it sends back is always a string.
    schemas = document["components"]["schemas"]
    schemas["SnowflakeType"] = {"anyOf": [schemas["SnowflakeType"], {"type": "integer", "minimum": 0}]}
    return document


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(BASE, Resource.from_contents(spec(), default_specification=DRAFT202012))


@functools.cache
def routes() -> list[Route]:
    found = []
    for template, item in spec()["paths"].items():
        regex = re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", re.escape(template))
        found.append(Route(template, re.compile(f"^{regex}$"), item))
    # Literal segments win over parameters (/messages/@original over /messages/{message_id}).
    return sorted(found, key=lambda r: r.template.count("{"))


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(_absolute(schema), registry=_registry())


def _absolute(schema: Any) -> Any:
    """The schema with its local references made to point into the whole document."""
    if isinstance(schema, dict):
        return {
            k: (BASE + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _absolute(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _error_tree(errors: list[ValidationError]) -> dict[str, Any]:
    """Discord's nested `errors` object: field path -> {"_errors": [{"code", "message"}]}."""
    tree: dict[str, Any] = {}
    for error in errors:
        node = tree
        for part in error.absolute_path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": "BASE_TYPE_INVALID", "message": error.message[:200]})
    return tree


def check(
    method: str, path: str, query: dict[str, str], body: Any, files: dict[str, bytes], multipart: bool
) -> tuple[str, dict[str, Any]] | None:
    """None when Discord would accept the request; else (what is wrong, Discord's 400 body)."""
    path = path.split("?", 1)[0].removeprefix("/api/v10").removeprefix("/api/v9")
    route = next((r for r in routes() if r.pattern.match(path)), None)
    if route is None:
        return f"{method} {path}: no such route", {"message": "404: Not Found", "code": 0}
    operation = route.item.get(method.lower())
    if operation is None:
        return f"{method} {route.template}: method not allowed", {
            "message": "405: Method Not Allowed",
            "code": 0,
        }
    problems: list[str] = []
    errors: list[ValidationError] = []
    parameters = [_resolve(p) for p in route.item.get("parameters", []) + operation.get("parameters", [])]
    matched = route.pattern.match(path)
    assert matched is not None  # the route was chosen by this pattern
    values = dict(zip(re.findall(r"\{([a-z_]+)\}", route.template), matched.groups(), strict=True))
    for parameter in parameters:
        where, name = parameter["in"], parameter["name"]
        value = values.get(name) if where == "path" else query.get(name) if where == "query" else None
        if value is None:
            if parameter.get("required") and where in ("path", "query"):
                problems.append(f"{where} parameter {name} is required")
            continue
        schema = parameter.get("schema", {})
        value_errors = list(_validator(schema).iter_errors(_coerce(value, schema)))
        problems += [f"{where} parameter {name}: {e.message[:120]}" for e in value_errors]
    for name in query:
        if not any(p["in"] == "query" and p["name"] == name for p in parameters):
            problems.append(f"unknown query parameter {name}")
    content = operation.get("requestBody", {}).get("content", {})
    if body is not None or files:
        kind = "multipart/form-data" if multipart else "application/json"
        schema = content.get(kind, {}).get("schema")
        if schema is None:
            problems.append(f"{kind} body not accepted here")
        else:
            document = dict(body or {}) if multipart else body
            if multipart:
                for name in files:
                    if not re.fullmatch(r"files\[\d+\]", name):
                        problems.append(f"multipart part {name!r} is not files[n]")
            errors = list(_validator(schema).iter_errors(document))
    elif operation.get("requestBody", {}).get("required"):
        problems.append("a request body is required")
    if not problems and not errors:
        return None
    summary = "; ".join(problems + [f"body {_where(e)}: {_what(e)}" for e in errors])
    return f"{method} {route.template}: {summary}", {
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": _error_tree(errors) or {"_errors": [{"code": "INVALID", "message": p} for p in problems]},
    }


def _where(error: ValidationError) -> str:
    return "/".join(map(str, error.absolute_path)) or "(root)"


def _what(error: ValidationError) -> str:
    if len(repr(error.instance)) > 60:  # a long value would drown the message
        return f"{type(error.instance).__name__} fails {error.validator} {error.validator_value!r:.60}"
    return error.message[:160]


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    """A path or query string as the type its schema names (numbers and booleans arrive as text)."""
    kind = _resolve(schema).get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "integer" in kinds and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "boolean" in kinds and value in ("true", "false", "True", "False", "1", "0"):
        return value in ("true", "True", "1")  # Discord reads 1/0 as booleans (discord.py sends them)
    return value
