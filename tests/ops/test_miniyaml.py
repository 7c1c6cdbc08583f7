"""tests/ops/miniyaml: the YAML subset reader the manifest tests rely on."""

from __future__ import annotations

import pytest

from ops.miniyaml import load, load_all


def test_subset():
    text = """
# comment
a: 1
b: "two # not a comment"
c: 'it''s'
d: true
e:
  - x
  - y: 1
    z: [1, "2"]
  -
    w: null
f:
- 3.5
g: |
  line one
    indented
  # kept
h: {}
"""
    assert load(text) == {
        "a": 1,
        "b": "two # not a comment",
        "c": "it's",
        "d": True,
        "e": ["x", {"y": 1, "z": [1, "2"]}, {"w": None}],
        "f": [3.5],
        "g": "line one\n  indented\n# kept\n",
        "h": {},
    }


def test_documents():
    assert load_all("a: 1\n---\nb: 2\n---\n") == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &anchor 1", "line 1: YAML feature outside the subset: &anchor 1"),
        ("a: 1\n   b: 2", "line 2: unexpected indentation"),
        ("a: 1\na: 2", "line 2: duplicate key 'a'"),
        ("just words", "line 1: expected 'key: value', got 'just words'"),
        ("a: [1, 2", r"line 1: flow collection outside the subset: \[1, 2"),
    ],
    ids=["anchor", "indent", "duplicate", "no-colon", "bad-flow"],
)
def test_outside_the_subset_fails_loudly(text, message):
    with pytest.raises(ValueError, match=message):
        load(text)
