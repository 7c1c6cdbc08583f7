"""A small YAML reader for the subset our manifests use (PyYAML is not a dependency).

Supported: `---` documents, comments, block mappings and sequences (also `- key: value` items),
plain / single / double quoted scalars, int, float, bool, null, `|` and `|-` literal blocks, and
JSON-style flow collections (`["a", "b"]`, `{}`). Anything else raises ValueError with the line
number, so a manifest that drifts out of the subset fails loudly instead of parsing wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Any

_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?\d+\.\d+$")


class _Line:
    def __init__(self, number: int, indent: int, text: str) -> None:
        self.number, self.indent, self.text = number, indent, text


def _strip_comment(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(raw: str, number: int) -> Any:
    raw = raw.strip()
    if raw == "" or raw in ("null", "~"):
        return None
    if raw[0] == '"':
        return json.loads(raw)
    if raw[0] == "'":
        if not raw.endswith("'"):
            raise ValueError(f"line {number}: unterminated quote")
        return raw[1:-1].replace("''", "'")
    if raw[0] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: flow collection outside the subset: {raw}") from exc
    if raw in ("true", "false"):
        return raw == "true"
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    if raw[0] in "&*!%@`|>":
        raise ValueError(f"line {number}: YAML feature outside the subset: {raw}")
    return raw


def _split_key(text: str, number: int) -> tuple[str, str]:
    if text.startswith('"'):
        end = text.index('"', 1)
        key, rest = json.loads(text[: end + 1]), text[end + 1 :]
    else:
        idx = text.find(": ")
        if idx < 0 and text.endswith(":"):
            idx = len(text) - 1
        if idx < 0:
            raise ValueError(f"line {number}: expected 'key: value', got {text!r}")
        key, rest = text[:idx], text[idx:]
    if not rest.startswith(":"):
        raise ValueError(f"line {number}: expected ':' after key {key!r}")
    return key, rest[1:].strip()


class _Parser:
    def __init__(self, lines: list[str]) -> None:
        self.raw = lines
        self.lines: list[_Line] = []
        for number, line in enumerate(lines, 1):
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise ValueError(f"line {number}: tab in indentation")
            text = _strip_comment(line)
            if text.strip():
                self.lines.append(_Line(number, len(text) - len(text.lstrip()), text.strip()))
        self.pos = 0

    def parse(self) -> Any:
        if not self.lines:
            return None
        value = self._block(self.lines[0].indent)
        if self.pos != len(self.lines):
            line = self.lines[self.pos]
            raise ValueError(f"line {line.number}: unexpected indentation")
        return value

    def _block(self, indent: int) -> Any:
        line = self.lines[self.pos]
        if line.text.startswith("- ") or line.text == "-":
            return self._sequence(indent)
        return self._mapping(indent)

    def _literal(self, after: _Line, parent_indent: int, keep_newline: bool) -> str:
        # Literal blocks keep comments and blank lines: read the raw text, not the cleaned lines.
        start = after.number  # 1-based number of the line with `|`: the block starts on the next
        body: list[str] = []
        block_indent = None
        idx = start
        while idx < len(self.raw):
            raw = self.raw[idx]
            if raw.strip():
                ind = len(raw) - len(raw.lstrip())
                if ind <= parent_indent:
                    break
                block_indent = ind if block_indent is None else block_indent
                body.append(raw[block_indent:])
            else:
                body.append("")
            idx += 1
        while body and body[-1] == "":
            body.pop()
        # Skip the cleaned lines that belong to the block.
        while self.pos < len(self.lines) and self.lines[self.pos].number <= idx:
            self.pos += 1
        text = "\n".join(body)
        return text + "\n" if keep_newline else text

    def _value_after(self, line: _Line, rest: str, indent: int) -> Any:
        if rest in ("|", "|-"):
            return self._literal(line, indent, keep_newline=rest == "|")
        if rest:
            return _scalar(rest, line.number)
        if self.pos < len(self.lines):
            nxt = self.lines[self.pos]
            if nxt.indent > indent or (nxt.indent == indent and nxt.text.startswith("- ")):
                return self._block(nxt.indent)
        return None

    def _mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.indent < indent:
                break
            if line.indent > indent:
                raise ValueError(f"line {line.number}: unexpected indentation")
            if line.text.startswith("- "):
                break
            key, rest = _split_key(line.text, line.number)
            if key in out:
                raise ValueError(f"line {line.number}: duplicate key {key!r}")
            self.pos += 1
            out[key] = self._value_after(line, rest, indent)
        return out

    def _sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.indent != indent or not (line.text.startswith("- ") or line.text == "-"):
                if line.indent > indent:
                    raise ValueError(f"line {line.number}: unexpected indentation")
                break
            item = line.text[2:].strip() if line.text != "-" else ""
            item_indent = indent + 2
            if item and (": " in item or item.endswith(":")) and item[0] not in "\"'[{":
                # A mapping that starts on the dash line: re-read it as a line of its own.
                self.lines[self.pos] = _Line(line.number, item_indent, item)
                out.append(self._mapping(item_indent))
            else:
                self.pos += 1
                out.append(self._value_after(line, item, indent) if item else self._block(item_indent))
        return out


def load_all(text: str) -> list[Any]:
    """Every document of `text` (split on `---` lines). Raises ValueError outside the subset."""
    docs: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "---":
            docs.append([])
        else:
            docs[-1].append(line)
    out = []
    for doc in docs:
        value = _Parser(doc).parse()
        if value is not None:
            out.append(value)
    return out


def load(text: str) -> Any:
    """The single document of `text`. Raises ValueError if there is not exactly one."""
    docs = load_all(text)
    if len(docs) != 1:
        raise ValueError(f"expected one YAML document, found {len(docs)}")
    return docs[0]
