"""Benchmark: /health from fresh connections while 20,000 slow clients attack the API listener.

    .venv/bin/python bench/slowclients.py [--clients 20000] [--seconds 10] [--daemon-nofile 16384]
                                          [--no-edge]

Starts `plugind serve` (the integration tests' workspace) with a probe listener and its fd limit
set to `--daemon-nofile`; the clients are held by worker processes (9,000 each, within their own
fd limit). First it probes GET /health from a fresh connection each time (a new TCP connection,
`Connection: close`, 3 s timeout like the DaemonSet's probes), on the API port and on the probe
listener (a thread each), with the daemon idle: the floor, measured in the same run. Then it
opens `--clients` connections from 200 loopback source addresses (127.1.0.x: many clients, so
the per-address cap is not what stops them), each sending an unfinished request head and a byte
every 2 s, and re-opens every connection the daemon closes (refused over the cap, or 408 at the
head deadline) a second later; meanwhile the same probes run for `--seconds`. Prints
p50/p99/failures of each next to the floor, and what the daemon did with the clients.

`--no-edge` turns the edge's limits off (no connection caps, no head/body deadlines): what the
daemon did before them. Timings on a shared machine are noisy: run it 2-3 times, take the median.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import multiprocessing as mp
import re
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

from conftest import free_port, reap, start  # noqa: E402
from kit import Workspace  # noqa: E402

PROBE_TIMEOUT_S = 3.0
SOURCES = [f"127.1.0.{i}" for i in range(1, 201)]
REOPEN_AFTER_S = 1.0
HEAD = b"GET /api/plugins HTTP/1.1\r\nHost: plugind\r\n"


def fresh_get(port: int, path: str = "/health") -> tuple[float, str | None]:
    """(seconds, None) for a 200 on a new connection, else (seconds, what went wrong)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as s:
            s.settimeout(max(0.01, PROBE_TIMEOUT_S - (time.perf_counter() - t0)))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    except OSError as exc:
        return time.perf_counter() - t0, type(exc).__name__
    took = time.perf_counter() - t0
    status = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/1.") else b"no answer"
    return took, None if status == b"200" else f"status {status.decode(errors='replace')}"


class Prober:
    """Fresh-connection probes of each port, from a thread per port (a slow answer on one does not
    delay the other), every `interval` s until stopped."""

    def __init__(self, ports: dict[str, int], interval: float = 0.05) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.results: dict[str, list[tuple[float, str | None]]] = {name: [] for name in ports}
        self.threads = [threading.Thread(target=self._run, args=(name, port), daemon=True)
                        for name, port in ports.items()]

    def _run(self, name: str, port: int) -> None:
        while not self.stop.is_set():
            self.results[name].append(fresh_get(port))
            self.stop.wait(self.interval)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()


class Attack:
    """`clients` slow connections held open (re-opened when the daemon closes one) until stopped,
    from one process (its own fd limit) per `PER_PROCESS` clients."""

    PER_PROCESS = 9000

    def __init__(self, port: int, clients: int) -> None:
        ctx = mp.get_context("fork")
        self.stop = ctx.Event()
        n = max(1, -(-clients // self.PER_PROCESS))
        self.stats = [ctx.Array("q", 5) for _ in range(n)]  # opened, closed, answered, failed, held
        self.ready = [ctx.Event() for _ in range(n)]
        share = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
        self.procs = [
            ctx.Process(target=_attack, args=(port, share[i], i * self.PER_PROCESS, self.stop,
                                              self.ready[i], self.stats[i]), daemon=True)
            for i in range(n)
        ]

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def wait_ready(self, timeout: float) -> None:
        for event in self.ready:
            event.wait(timeout)

    def total(self, field: int) -> int:
        return sum(int(s[field]) for s in self.stats)

    def finish(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(60)
            if p.is_alive():
                p.kill()


def _attack(port: int, clients: int, first: int, stop: Any, ready: Any, stats: Any) -> None:
    need = clients + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, need)), hard))
    sel = selectors.DefaultSelector()

    def open_one(i: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((SOURCES[i % len(SOURCES)], 0))
            err = s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            stats[3] += 1
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            stats[3] += 1
            return
        stats[0] += 1
        sel.register(s, selectors.EVENT_WRITE, [i, False])

    for i in range(first, first + clients):
        open_one(i)
    later: deque[tuple[float, int]] = deque()  # (when, client) to re-open
    next_drip = time.monotonic() + 2.0
    while not stop.is_set():
        while later and later[0][0] <= time.monotonic():
            open_one(later.popleft()[1])
        for key, _ev in sel.select(timeout=0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            i, connected = key.data
            if not connected:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    sel.unregister(s)
                    s.close()
                    stats[3] += 1
                    later.append((time.monotonic() + REOPEN_AFTER_S, i))
                    continue
                with contextlib.suppress(OSError):
                    s.send(HEAD)
                key.data[1] = True
                sel.modify(s, selectors.EVENT_READ, key.data)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                stats[2] += 1  # a 503 or 408; the close follows
                continue
            sel.unregister(s)
            s.close()
            stats[1] += 1
            later.append((time.monotonic() + REOPEN_AFTER_S, i))  # as a client told Retry-After: 1 would
        now = time.monotonic()
        if now >= next_drip:
            next_drip = now + 2.0
            held = 0
            for key in list(sel.get_map().values()):
                if key.data[1]:
                    held += 1
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b"X")  # type: ignore[union-attr]
            stats[4] = held
            ready.set()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(label: str, results: list[tuple[float, str | None]]) -> str:
    ok = [t for t, err in results if err is None]
    failed = [err for _t, err in results if err is not None]
    kinds = sorted({e for e in failed if e})
    times = ok or [float("nan")]
    return (f"{label}: n={len(results):4d}  p50 {statistics.median(times) * 1e3:8.2f} ms  "
            f"p99 {pct(times, 0.99) * 1e3:8.2f} ms  failures {len(failed):4d} "
            f"({100 * len(failed) / max(1, len(results)):.0f}%){'  ' + ', '.join(kinds) if kinds else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--daemon-nofile", type=int, default=16384)
    parser.add_argument("--no-edge", action="store_true", help="the edge's limits off (the old daemon)")
    args = parser.parse_args()

    # Worker processes hold the clients (up to their hard fd limit each); the daemon gets
    # --daemon-nofile (at most this process's hard limit).
    def daemon_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.daemon_nofile, args.daemon_nofile))

    probe_port = free_port()
    env = {"PLUGIND_API__PROBE_LISTEN": f"127.0.0.1:{probe_port}"}
    if args.no_edge:
        env |= {"PLUGIND_API__MAX_CONNECTIONS": "0", "PLUGIND_API__MAX_CONNECTIONS_PER_CLIENT": "0",
                "PLUGIND_API__HEADER_TIMEOUT_SECS": "0", "PLUGIND_API__BODY_TIMEOUT_SECS": "0"}
    with tempfile.TemporaryDirectory(prefix="plugind-bench-slow-") as tmp:
        ws = Workspace(Path(tmp))
        daemon = start(ws, env=env, preexec_fn=daemon_limits)
        try:
            ports = {"api  ": daemon.port, "probe": probe_port}
            floor = Prober(ports)
            floor.start()
            time.sleep(min(5.0, args.seconds))
            floor.stop.set()
            floor.join()

            attack = Attack(daemon.port, args.clients)
            attack.start()
            attack.wait_ready(120)  # every client connected (or refused) once
            loaded = Prober(ports)
            loaded.start()
            time.sleep(args.seconds)
            loaded.stop.set()
            loaded.join()
            held = attack.total(4)
            attack.finish()
            metrics = ""
            for _ in range(50):  # the attack's connections are going away
                _took, err = fresh_get(daemon.port, "/metrics")
                if err is None:
                    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        while chunk := s.recv(65536):
                            metrics += chunk.decode(errors="replace")
                    break
                time.sleep(0.2)
            daemon_alive = daemon.proc.poll() is None
        finally:
            reap(daemon)

    edge = "off (--no-edge)" if args.no_edge else "on (defaults)"
    print(f"{args.clients} slow clients, daemon RLIMIT_NOFILE {args.daemon_nofile}, edge {edge}, "
          f"2 CPUs shared; fresh-connection GET /health every 50 ms, {PROBE_TIMEOUT_S:g} s timeout")
    for name in ports:
        print(line(f"idle     {name}", floor.results[name]))
        print(line(f"attacked {name}", loaded.results[name]))
        ok_idle = [t for t, e in floor.results[name] if e is None]
        ok_load = [t for t, e in loaded.results[name] if e is None]
        if ok_idle and ok_load:
            p50 = statistics.median(ok_load) / statistics.median(ok_idle)
            print(f"  attacked/idle ratio {name.strip()}: p50 {p50:.2f}x"
                  f"  p99 {pct(ok_load, 0.99) / pct(ok_idle, 0.99):.2f}x")
    print(f"clients: {attack.total(0)} connections opened, {held} connected at the last drip, "
          f"{attack.total(1)} closed by the daemon ({attack.total(2)} answered first), "
          f"{attack.total(3)} failed to connect; daemon alive: {daemon_alive}")
    for name in ("plugind_http_connections_refused_total", "plugind_http_connections_timed_out_total",
                 "plugind_monitor_sweeps_total", "plugind_monitor_sample_errors_total"):
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", metrics, re.M):
            print(f"  {name}{m.group(1) or ''} {m.group(2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
