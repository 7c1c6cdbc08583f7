"""A FIFO, a directory or a device where a trust file belongs is refused at once, never waited on
(a FIFO opened for reading blocks until a writer comes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugind.errors import SignatureInvalid, TrustListError
from plugind.trust import init_trust_list
from plugind.trust.freshness import TrustListGuard
from plugind.trust.signature import read_signature_file
from plugind.trust.trustlist import load_trust_document


def bounded(call: Callable[[], Any]) -> BaseException | None:
    """What `call` raised (None: it returned), failing the test if it has not ended within 30 s (a
    thread blocked in open() cannot be stopped; a daemon thread does not hold the run up)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, "still waiting: the file was opened as if it would ever be readable"
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_signature_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    bundle = tmp_path / "hello-1.0.0.plugin"
    bundle.write_bytes(b"x")
    sig = tmp_path / "hello-1.0.0.plugin.sig"
    os.mkfifo(sig) if kind == "fifo" else sig.mkdir()
    exc = bounded(lambda: read_signature_file(bundle))
    assert isinstance(exc, SignatureInvalid), exc
    assert "hello-1.0.0.plugin.sig: not a signature file (not a regular file)" in str(exc)


def test_a_trust_list_that_is_a_fifo(tmp_path: Path, trust_key: bytes) -> None:
    path = tmp_path / "trust.list"
    os.mkfifo(path)
    exc = bounded(lambda: load_trust_document(path, trust_key))
    assert isinstance(exc, TrustListError), exc
    assert str(exc) == f"{path}: cannot read the trust list: not a regular file"


def test_a_trust_state_file_that_is_a_fifo(tmp_path: Path, trust_key: bytes) -> None:
    path, state = tmp_path / "trust.list", tmp_path / "state.json"
    init_trust_list(path, trust_key)
    os.mkfifo(state)
    exc = bounded(lambda: TrustListGuard(state).check(load_trust_document(path, trust_key), path))
    assert isinstance(exc, TrustListError), exc
    assert str(exc) == f"{state}: cannot read the trust state file: not a regular file"
