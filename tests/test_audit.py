"""plugind.audit: JSON lines, file mode, concurrency, filters, errors."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import datetime

import pytest

from plugind.audit import EVENTS, AuditLog


def test_append_writes_one_json_line_per_event(tmp_path):
    path = tmp_path / "state" / "deep" / "audit.log"
    log = AuditLog(path)
    entry = log.append("load", plugin="hello", version="1.2.0", trust="trusted")
    log.append("refused", plugin="evil", reason="untrusted")
    log.append("unload", plugin="hello", reason="operator")
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert first == entry
    assert first["event"] == "load" and first["plugin"] == "hello" and first["version"] == "1.2.0"
    assert first["time"].endswith("Z")
    datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert [json.loads(line)["event"] for line in lines] == ["load", "refused", "unload"]


def test_file_is_private_and_parent_created(tmp_path):
    path = tmp_path / "new" / "audit.log"
    AuditLog(path).append("crash", plugin="p", exit_code=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_wider_existing_file_is_narrowed(tmp_path):
    path = tmp_path / "audit.log"
    path.write_text("")
    os.chmod(path, 0o644)
    AuditLog(path).append("restart", plugin="p")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_appends_never_interleave(tmp_path):
    log = AuditLog(tmp_path / "audit.log")

    def writer(n: int) -> None:
        for i in range(50):
            log.append("violation", plugin=f"p{n}", seq=i, blob="x" * 2000)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert len(entries) == 200
    for n in range(4):
        assert [e["seq"] for e in entries if e["plugin"] == f"p{n}"] == list(range(50))


def test_tail_filters_and_limits(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(10):
        log.append("load", plugin=f"p{i % 2}", n=i)
        log.append("violation", plugin=f"p{i % 2}", n=i)
    assert [e["n"] for e in log.tail(3)] == [8, 9, 9]
    assert [e["n"] for e in log.tail(limit=2, event="load")] == [8, 9]
    assert [e["n"] for e in log.tail(event="violation", plugin="p1")] == [1, 3, 5, 7, 9]
    assert log.tail(plugin="nobody") == []
    assert AuditLog(tmp_path / "missing.log").tail() == []


def test_tail_skips_a_torn_line(tmp_path, caplog):
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append("load", plugin="a")
    with open(path, "a") as fh:
        fh.write('{"event": "lo')  # a crash mid-write
        fh.write("\n")
    log.append("unload", plugin="a")
    with caplog.at_level("WARNING", logger="plugind.audit"):
        assert [e["event"] for e in log.tail()] == ["load", "unload"]
    assert "a line is not JSON, skipped" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda log: log.append("deleted_everything"), "unknown audit event 'deleted_everything'"),
        (lambda log: log.append("load", plugin="p", event="x", time=1),
         r"audit fields may not be named \['event', 'time'\]"),
        (lambda log: log.tail(0), "limit must be between 1 and 10000, got 0"),
        (lambda log: log.tail(10_001), "limit must be between 1 and 10000, got 10001"),
        (lambda log: log.tail(event="nope"), "unknown audit event 'nope'"),
    ],
    ids=["unknown-event", "reserved-field", "limit-0", "limit-big", "tail-unknown-event"],
)
def test_errors(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(AuditLog(tmp_path / "audit.log"))


def test_an_unwritable_path_raises_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError):
        AuditLog(blocker / "audit.log").append("load", plugin="p")


def test_tail_of_a_long_trail_crosses_read_blocks(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(3000):  # ~250 KiB: several 64 KiB blocks, lines split across block edges
        log.append("violation", plugin=f"p{i % 3}", n=i, pad="y" * (i % 50))
    assert [e["n"] for e in log.tail(5)] == [2995, 2996, 2997, 2998, 2999]
    got = log.tail(10_000, plugin="p1")
    assert [e["n"] for e in got] == list(range(1, 3000, 3))
    assert [e["n"] for e in log.tail(1)] == [2999]


def test_oversized_entry_is_truncated_not_unbounded(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    log.append("violation", plugin="p", blob="x" * 100_000)
    (entry,) = log.tail()
    assert entry["truncated"] is True and "blob" not in entry


def test_events_are_the_documented_set():
    assert {"load", "unload", "refused", "violation", "auto_unload", "crash", "restart", "upgrade",
            "upgrade_failed", "state"} == EVENTS


def test_fields_are_redacted_as_the_daemon_log_is(tmp_path):
    secret = "ab" * 32
    log = AuditLog(tmp_path / "audit.log")
    entry = log.append("refused", plugin="leaky", error=f"on_load raised: api key {secret} refused",
                       nested={"why": [f"token={secret}"]}, digest="cd" * 64)
    text = (tmp_path / "audit.log").read_text()
    assert secret not in text
    assert entry["error"] == "on_load raised: api key [REDACTED] refused"
    assert entry["nested"] == {"why": ["token=[REDACTED]"]}
    assert entry["digest"] == "cd" * 64  # a bundle digest is not a key: 128 hex digits, kept


def test_tail_redacts_lines_written_before_redaction_reached_the_trail(tmp_path):
    secret = "ef" * 32
    path = tmp_path / "audit.log"
    old = {"time": "2026-11-01T00:00:00.000Z", "event": "refused", "plugin": "old", "error": f"key {secret}"}
    path.write_text(json.dumps(old) + "\n")
    (entry,) = AuditLog(path).tail()
    assert entry["error"] == "key [REDACTED]"


def test_an_entry_after_a_line_cut_short_is_kept(tmp_path, caplog):
    # A write cut short (a full disk, a crash) leaves no newline: the next entry, acknowledged to its
    # caller, was glued to it and lost from every reader with it.
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append("load", plugin="a")
    with open(path, "a") as fh:
        fh.write('{"event": "unlo')  # no newline
    log.append("unload", plugin="a")
    with caplog.at_level("WARNING", logger="plugind.audit"):
        assert [e["event"] for e in log.tail()] == ["load", "unload"]
    assert path.read_bytes().endswith(b"\n") and path.read_text().count("\n") == 3


def test_a_plugin_name_holding_a_secret_is_redacted_on_disk(tmp_path, monkeypatch):
    # An API caller's plugin name is theirs to choose: one quoting the token reached the file.
    from plugind import logs

    token = "tok-" + "9" * 40
    monkeypatch.setattr(logs, "_current", logs.RedactSecrets([token]))
    path = tmp_path / "audit.log"
    entry = AuditLog(path).append("refused", plugin="x" + token, reason="invalid_name")
    assert token not in path.read_text() and token not in json.dumps(entry)
    assert "[REDACTED]" in path.read_text()
