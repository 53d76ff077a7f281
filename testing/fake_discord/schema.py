"""Discord's OpenAPI description, as the fake's check on every body it receives and sends.

The description (`testing/discord_api_spec/openapi.json`, Discord's own, MIT) gives each
route's request schema and its response schema per status. `request_errors` turns
jsonschema's findings into Discord's per-field error tree (`{"embeds": {"0": {"title":
{"_errors": [...]}}}}`), following a union (`anyOf` of callback or component kinds) into
the one branch whose `type` matches, so the error names the field, not the union.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

JSONDict = dict[str, Any]

SPEC_PATH = Path(__file__).resolve().parent.parent / "discord_api_spec" / "openapi.json"
_BASE = "urn:discord-openapi"
_LENIENT = "urn:discord-openapi-requests"


@dataclass(frozen=True)
class _Operation:
    path: str
    method: str
    pattern: re.Pattern[str]
    literals: int


class Spec:
    """The loaded description: which operation a request is, and validators for its bodies."""

    def __init__(self, document: JSONDict) -> None:
        self.document = document
        # Discord reads a snowflake in a request from a JSON number too (discord.py sends
        # ints); what it answers always carries strings, so answers are checked strictly.
        schemas = document["components"]["schemas"]
        snowflake = {"anyOf": [schemas["SnowflakeType"], {"type": "integer", "minimum": 0}]}
        lenient = {**document, "components": {
            **document["components"], "schemas": {**schemas, "SnowflakeType": snowflake},
        }}
        self._registry: Registry[Any] = Registry().with_resources([
            (_BASE, DRAFT202012.create_resource(document)),
            (_LENIENT, DRAFT202012.create_resource(lenient)),
        ])
        self._operations: list[_Operation] = []
        for path, item in document["paths"].items():
            parts = path.strip("/").split("/")
            regex = "/".join(
                "[^/]+" if p.startswith("{") else re.escape(p) for p in parts
            )
            literals = sum(not p.startswith("{") for p in parts)
            for method in item:
                if method in ("get", "post", "put", "patch", "delete"):
                    self._operations.append(
                        _Operation(path, method, re.compile(f"/{regex}"), literals)
                    )
        self._validators: dict[str, Draft202012Validator] = {}

    def operation(self, method: str, path: str) -> _Operation | None:
        """The operation a concrete request path is (the most literal match wins)."""
        found = [
            op for op in self._operations
            if op.method == method.lower() and op.pattern.fullmatch(path)
        ]
        return max(found, key=lambda op: op.literals, default=None)

    def _validator(self, pointer: str, base: str = _BASE) -> Draft202012Validator:
        key = f"{base}#{pointer}"
        validator = self._validators.get(key)
        if validator is None:
            validator = Draft202012Validator({"$ref": key}, registry=self._registry)
            self._validators[key] = validator
        return validator

    def request_validator(self, op: _Operation) -> Draft202012Validator | None:
        body = self.document["paths"][op.path][op.method].get("requestBody")
        if body is None or "application/json" not in body.get("content", {}):
            return None
        return self._validator(
            f"/paths/{_escape(op.path)}/{op.method}/requestBody/content/application~1json/schema",
            _LENIENT,
        )

    def response_validator(self, op: _Operation, status: int) -> Draft202012Validator | None:
        responses = self.document["paths"][op.path][op.method].get("responses", {})
        answer = responses.get(str(status))
        if answer is None or "application/json" not in answer.get("content", {}):
            return None
        return self._validator(
            f"/paths/{_escape(op.path)}/{op.method}/responses/{status}"
            "/content/application~1json/schema"
        )

    def schema_validator(self, name: str) -> Draft202012Validator:
        """A validator for one named schema (`UserResponse`, `GuildResponse`, ...)."""
        return self._validator(f"/components/schemas/{name}")

    def allowed_statuses(self, op: _Operation) -> set[int]:
        responses = self.document["paths"][op.path][op.method].get("responses", {})
        return {int(s) for s in responses if s.isdigit()}


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


@functools.cache
def spec() -> Spec:
    """The description, loaded once per process (about 1 MB of JSON)."""
    return Spec(json.loads(SPEC_PATH.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- errors as Discord words them


def field_error(code: str, message: str) -> JSONDict:
    return {"_errors": [{"code": code, "message": message}]}


def put_error(tree: JSONDict, path: Iterable[str | int], code: str, message: str) -> None:
    """Add one error at `path` in Discord's error tree (list indices become string keys)."""
    node = tree
    for key in path:
        node = node.setdefault(str(key), {})
    errors = node.setdefault("_errors", [])
    if not any(e["code"] == code for e in errors):
        errors.append({"code": code, "message": message})


def merge_errors(into: JSONDict, other: Mapping[str, Any]) -> JSONDict:
    for key, value in other.items():
        if key == "_errors":
            for err in value:
                if not any(e["code"] == err["code"] for e in into.setdefault("_errors", [])):
                    into["_errors"].append(err)
        else:
            merge_errors(into.setdefault(key, {}), value)
    return into


def _describe(error: ValidationError) -> tuple[str, str]:
    v, arg = error.validator, error.validator_value
    if v in ("maxLength", "maxItems"):
        return "BASE_TYPE_MAX_LENGTH", f"Must be {arg} or fewer in length."
    if v in ("minLength", "minItems"):
        return "BASE_TYPE_MIN_LENGTH", f"Must be {arg} or more in length."
    if v == "required":
        return "BASE_TYPE_REQUIRED", "This field is required"
    if v in ("enum", "const"):
        return "BASE_TYPE_CHOICES", f"Value must be one of {arg}."
    if v in ("maximum", "minimum"):
        return "NUMBER_TYPE_MAX" if v == "maximum" else "NUMBER_TYPE_MIN", error.message
    return "BASE_TYPE_INVALID", error.message


def _leaves(error: ValidationError) -> list[ValidationError]:
    """Follow a union into the branch whose discriminant (`type`) matches the instance."""
    if not error.context or error.validator not in ("anyOf", "oneOf"):
        return [error]
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(int(sub.schema_path[0]), []).append(sub)
    n_branches = len(error.validator_value)
    fitting = [
        i for i in range(n_branches)
        if not any(
            list(e.relative_path) == ["type"] and e.validator in ("enum", "const", "type")
            for e in branches.get(i, [])
        )
    ]
    if len(fitting) != 1 or fitting[0] not in branches:
        return [error]
    found: list[ValidationError] = []
    for sub in branches[fitting[0]]:
        found.extend(_leaves(sub))
    return found


def schema_errors(validator: Draft202012Validator, instance: Any) -> JSONDict:
    """Discord's error tree for `instance`, empty when it is valid."""
    tree: JSONDict = {}
    for error in validator.iter_errors(instance):
        for leaf in _leaves(error):
            code, message = _describe(leaf)
            if leaf.validator == "required" and isinstance(leaf.validator_value, list):
                missing = leaf.message.split("'")[1] if "'" in leaf.message else ""
                put_error(tree, [*leaf.absolute_path, missing] if missing else
                          list(leaf.absolute_path), code, message)
            else:
                put_error(tree, list(leaf.absolute_path), code, message)
    return tree
