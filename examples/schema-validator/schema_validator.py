"""schema-validator: rejects `on_request` payloads whose `body` misses required fields.

The schema is a map field -> type name ("str", "int", "float", "bool", "list", "map", "any") read
from the context key `schema-validator.schema`. Raising makes `chain` skip this plugin (and report
the failure) and `until_error` stop, so put it first (high priority) in front of handlers that
trust the body.
"""

from __future__ import annotations

from typing import Any

from plugind.sdk import Plugin

plugin = Plugin()
SCHEMA_KEY = "schema-validator.schema"
DEFAULT_SCHEMA = {"user": "str", "action": "str"}
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "map": (dict,),
}


class ValidationFailed(ValueError):
    """The payload does not match the schema."""


@plugin.on_load
def setup(ctx: Any) -> None:
    if ctx.get(SCHEMA_KEY) is None:
        ctx.set(SCHEMA_KEY, DEFAULT_SCHEMA)


def problems(body: Any, schema: dict[str, str]) -> list[str]:
    """Everything wrong with `body` under `schema` (empty when it is valid)."""
    if not isinstance(body, dict):
        return [f"body must be a map, got {type(body).__name__}"]
    found = []
    for field, type_name in sorted(schema.items()):
        if field not in body:
            found.append(f"missing field {field!r}")
            continue
        allowed = _TYPES.get(type_name)
        value = body[field]
        # bool is an int in Python; a schema asking for int does not mean true/false.
        if allowed is not None and (
            not isinstance(value, allowed) or (type_name in ("int", "float") and isinstance(value, bool))
        ):
            found.append(f"field {field!r} must be {type_name}, got {type(value).__name__}")
    return found


@plugin.hook("on_request", priority=100)
def validate(data: Any, ctx: Any) -> Any:
    schema = ctx.get(SCHEMA_KEY) or DEFAULT_SCHEMA
    body = data.get("body") if isinstance(data, dict) else None
    found = problems(body, schema)
    if found:
        raise ValidationFailed("; ".join(found))
    return data
