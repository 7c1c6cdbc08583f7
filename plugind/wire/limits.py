"""Limits every value crossing a boundary obeys: nesting depth and, for JSON input, lone surrogates.

Both encoders refuse some values on their own, each at its own place: msgpack will not pack a
string holding a lone surrogate nor nest deeper than 1024 levels, Python's json decoder stops near
1000 levels, and the API's serializer at about 255. plugind holds every value to one limit below
all of them, MAX_DEPTH containers, so a value accepted at one boundary never fails at the next:
hook data and context values from REST, results and context values from plugins.

Depth counts containers: a scalar is 0 deep, `[1]` is 1, `{"a": [1]}` is 2.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 128

_NESTED = frozenset({dict, list, tuple})
# json.loads(bytes) makes a lone surrogate from a \uD800-\uDFFF escape, and from the raw bytes of
# one: it decodes UTF-8 with "surrogatepass" (ED A0-BF ..), and takes UTF-16 and UTF-32 too, whose
# bytes no search of the UTF-8 forms sees (those bodies are walked).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def too_deep(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """True if `value` nests more than `max_depth` containers (dict, list, tuple).

    Level by level and without recursion, so a value nested far past Python's recursion limit costs
    no more than its items; a single container of scalars is passed over at C speed.
    bench/limits.py prints what it costs next to decoding the same value.
    """
    kind, nested = type(value), _NESTED
    # The usual value, one container of scalars, costs one pass at C speed and no list.
    if kind is dict:
        if nested.isdisjoint(map(type, value.values())):
            return max_depth < 1
    elif kind is list or kind is tuple:
        if nested.isdisjoint(map(type, value)):
            return max_depth < 1
    else:
        return False
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        below: list[Any] = []
        append = below.append
        for container in level:  # a plain loop: cheaper than a generator for small containers
            for item in (container.values() if type(container) is dict else container):
                if type(item) in nested:
                    append(item)
        level = below
    return False


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def lone_surrogate(value: Any) -> bool:
    """True if a string anywhere in `value` (map keys included) holds a lone surrogate: JSON can
    escape one (`"\\ud800"`), but neither UTF-8 nor msgpack can carry it."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if _has_surrogate(item):
                return True
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
    return False


def _utf8(raw: bytes) -> bool:
    # What json.loads decodes `raw` as is UTF-8 (no BOM): the encoding the search above reads.
    return json.detect_encoding(raw) == "utf-8"


def depth_message(what: str, max_depth: int = MAX_DEPTH) -> str:
    """The one wording of the depth refusal, for every boundary."""
    return f"{what} is nested deeper than {max_depth} levels (the limit for any value)"


def json_problem(raw: bytes, value: Any, what: str, max_depth: int = MAX_DEPTH) -> str | None:
    """Why `value`, decoded from the JSON body `raw`, may not cross into plugind, or None.

    The raw body is looked at first: a body with no more brackets than `max_depth` cannot hold a
    deeper value, and a UTF-8 one without a surrogate (escaped, or its raw bytes) no lone surrogate,
    so the usual request costs two counts and one search at C speed, not a walk through the decoded
    value.
    """
    if raw.count(b"[") + raw.count(b"{") > max_depth and too_deep(value, max_depth):
        return depth_message(what, max_depth)
    if (_SURROGATE.search(raw) is not None or not _utf8(raw)) and lone_surrogate(value):
        return (f"{what} holds a string with a lone surrogate (an unpaired U+D800-U+DFFF), "
                "which UTF-8 and msgpack cannot carry")
    return None


__all__ = ["MAX_DEPTH", "depth_message", "json_problem", "lone_surrogate", "too_deep"]
