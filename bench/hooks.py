"""Hook round trip and cold start through a real Supervisor to a real plugin child.

Prints p50/p99 latency and calls/s for a small dict and a 64 KiB payload next to a raw Python
socketpair ping-pong floor measured in the same run, and plugin cold start (spawn request to hello)
next to `python -c pass`. Targets: round trip within 2x the floor; >= 8,000 calls/s per plugin for
small payloads (pipelining allowed); ready in under 20 ms.

    .venv/bin/python bench/hooks.py [--calls N] [--sandbox] [--pin] [--loop asyncio|uvloop]

--pin puts the host side on CPU 0 and the other end (floor echo processes and the plugin) on CPU 1,
for the floor and for plugind alike: the "across CPUs" figure. Without it the scheduler decides.
--loop picks the host side's event loop (supervisor and the bare-loop floor alike): by default the
daemon's own (`plugind.daemon.event_loop_factory`: uvloop when installed), or `asyncio` / `uvloop`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from plugind.config import Settings
from plugind.daemon import event_loop_factory
from plugind.host.launcher import Launcher
from plugind.host.supervisor import Supervisor

PLUGIN = """
from plugind.sdk import Plugin
plugin = Plugin()

@plugin.hook("echo")
def echo(data, ctx):
    return data
"""

PIN: tuple[set[int], set[int]] | None = None  # (host CPUs, far-end CPUs) when --pin
LOOP = "asyncio"  # the host side's event loop, for the report


def pin_far_end(pid: int) -> None:
    if PIN is not None:
        os.sched_setaffinity(pid, PIN[1])


SMALL = {"method": "GET", "path": "/api/items", "headers": {"x-user": "bob"}, "n": 1}
BIG = {"body": b"x" * (64 * 1024)}


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:])
        if r == 0:
            raise EOFError
        got += r
    return bytes(buf)


class Floor:
    """Raw socketpair ping-pong with a forked echo process: the best Python can do."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sock, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            pin_far_end(0)
            # Keep only our end: an inherited copy of another floor's socket would hide its EOF.
            os.closerange(3, theirs.fileno())
            os.closerange(theirs.fileno() + 1, 4096)
            try:
                while True:
                    theirs.sendall(recv_exact(theirs, size))
            except (OSError, EOFError):
                os._exit(0)
        theirs.close()
        self.payload = b"p" * size

    def measure(self, rounds: int) -> list[float]:
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            self.sock.sendall(self.payload)
            recv_exact(self.sock, self.size)
            samples.append(time.perf_counter() - t0)
        return samples

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


async def round_trips(sup: Supervisor, data: object, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await sup.invoke("echo", data, 5.0)
        samples.append(time.perf_counter() - t0)
    return samples


async def pipelined(sup: Supervisor, data: object, calls: int, in_flight: int) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            await sup.invoke("echo", data, 5.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    return (calls // in_flight * in_flight) / (time.perf_counter() - t0)


class _Echo(asyncio.BufferedProtocol):
    # Buffered, like the supervisor's connection: data_received would cost the floor a 256 KiB
    # allocation per read on asyncio's selector loop (recv(256 KiB)), ~12 us here.
    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None
        self.want = 0
        self.buf = memoryview(bytearray(256 * 1024))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.want -= nbytes
        if self.want <= 0 and self.fut is not None:
            self.fut.set_result(None)


async def asyncio_floor(transport: asyncio.Transport, proto: _Echo, floor: Floor, rounds: int) -> list[float]:
    """The same ping-pong with the host side on a bare Protocol of the same loop: no framing, no msgpack."""
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        proto.fut, proto.want = loop.create_future(), floor.size
        transport.write(floor.payload)
        await proto.fut
        samples.append(time.perf_counter() - t0)
    return samples


async def compare(sup: Supervisor, data: object, size: int, rounds: int) -> tuple[list[float], ...]:
    """Alternate blocks of floor and supervisor round trips, so all see the same machine load."""
    floor, aio = Floor(size), Floor(size)
    transport, proto = await asyncio.get_running_loop().create_unix_connection(_Echo, sock=aio.sock)
    ours: list[float] = []
    raw: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(10):
            raw += floor.measure(rounds // 10)
            bare += await asyncio_floor(transport, proto, aio, rounds // 10)
            ours += await round_trips(sup, data, rounds // 10)
    finally:
        transport.close()
        await asyncio.sleep(0)  # let the transport actually close its socket
        floor.close()
        aio.close()
    return ours, raw, bare


def report(label: str, samples: list[float], floor_samples: list[float], bare: list[float]) -> None:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    f50, f99 = pct(floor_samples, 0.5), pct(floor_samples, 0.99)
    a50 = pct(bare, 0.5)
    print(f"{label:<18} p50 {p50 * 1e6:6.1f} us p99 {p99 * 1e6:7.1f} us "
          f"{1 / statistics.mean(samples):7.0f} calls/s seq | raw floor p50 {f50 * 1e6:5.1f} us "
          f"p99 {f99 * 1e6:6.1f} us ratio {p50 / f50:4.2f}x (target <= 2x) | bare-{LOOP} floor "
          f"p50 {a50 * 1e6:5.1f} us ratio {p50 / a50:4.2f}x")


async def main(calls: int, sandbox: bool) -> None:
    settings = Settings()
    settings.sandboxing.enabled = sandbox
    launcher = Launcher()
    await launcher.start()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "bench"
        tree.mkdir()
        (tree / "bench.py").write_text(PLUGIN)
        manifest = SimpleNamespace(name="bench", version="1.0", entrypoint="bench:plugin", api=1,
                                   requires=SimpleNamespace(network=(), memory_mb=None))
        print(f"sandbox: {'on (needs root)' if sandbox else 'off (plain fork)'}")
        try:
            # Cold start: spawn request -> hello received, through the fork-server.
            starts = []
            for _ in range(20):
                sup = Supervisor("bench", tree, manifest, settings, launcher, None)
                t0 = time.perf_counter()
                await sup.start()
                starts.append(time.perf_counter() - t0)
                await sup.stop()
            fresh = []
            for _ in range(10):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", "pass"], check=True)
                fresh.append(time.perf_counter() - t0)
            s50, f50 = pct(starts, 0.5), pct(fresh, 0.5)
            print(f"{'cold start':<22} p50 {s50 * 1e3:8.2f} ms  p99 {pct(starts, 0.99) * 1e3:8.2f} ms   "
                  f"python -c pass p50 {f50 * 1e3:6.2f} ms   ratio {s50 / f50:4.2f}x  (target < 20 ms)")

            sup = Supervisor("bench", tree, manifest, settings, launcher, None)
            await sup.start()
            assert sup.pid is not None
            pin_far_end(sup.pid)
            await round_trips(sup, SMALL, 500)  # warm-up
            report("round trip small", *await compare(sup, SMALL, 64, calls))
            report("round trip 64 KiB", *await compare(sup, BIG, 64 * 1024, max(calls // 5, 200)))
            for in_flight in (1, 8, 32):
                rate = await pipelined(sup, SMALL, calls, in_flight)
                print(f"{'throughput small':<22} {in_flight:3d} in flight: {rate:9.0f} calls/s  "
                      f"(target >= 8000)")
            rate = await pipelined(sup, BIG, max(calls // 10, 200), 8)
            print(f"{'throughput 64 KiB':<22}   8 in flight: {rate:9.0f} calls/s")
            await sup.stop()
        finally:
            await launcher.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--sandbox", action="store_true", help="spawn through the full sandbox")
    parser.add_argument("--pin", action="store_true", help="host on CPU 0, plugin and floor echo on CPU 1")
    parser.add_argument("--loop", choices=("daemon", "asyncio", "uvloop"), default="daemon",
                        help="the host side's event loop (default: the one the daemon uses)")
    args = parser.parse_args()
    factory = event_loop_factory() if args.loop != "asyncio" else None
    if args.loop == "uvloop" and factory is None:
        parser.error("--loop uvloop needs the uvloop package")
    LOOP = "asyncio" if factory is None else factory.__module__.split(".")[0]
    print(f"loop: {LOOP}")
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs two CPUs")
        PIN = ({cpus[0]}, {cpus[1]})
        os.sched_setaffinity(0, PIN[0])
        print(f"pinned: host on CPU {cpus[0]}, plugin and floor echo on CPU {cpus[1]}")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.calls, args.sandbox))
