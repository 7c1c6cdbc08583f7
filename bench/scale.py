"""Scale: N sandboxed plugins on one real daemon (default 1,000), and what the daemon is like then.

    .venv/bin/python bench/scale.py [--count 1000] [--clients 4] [--time-limit 300]
                                    [--min-free-mb 4096] [--no-sandbox]

Starts `plugind serve` (the integration tests' workspace: real signed and trusted bundles) with
`auto_load = false` and N echo plugins, plugin i handling hook `h{i}` only, and then:

1. starts a second, reference daemon with 1 plugin loaded (the 1-plugin figures come from it,
   measured at the end in blocks interleaved with the N-plugin ones, so that a burst of load
   elsewhere on a shared machine hits both alike);
2. loads the rest through `POST /api/plugins/load` from `--clients` keep-alive clients at once,
   stopping at the first refused load, at `--time-limit` seconds, or when the machine's
   MemAvailable falls under `--min-free-mb` (the machine is shared: the first resource to run out
   is then reported as memory, with the figures);
3. with all loaded and each called once: `/metrics` render time (p50 of 20), `/health` p50/p99
   (500 probes), hook
   latency to one plugin (the first and the last loaded) next to the 1-plugin figure;
4. daemon RSS (and of its fork-servers), per-plugin USS (median of 20 plugins), pids, fds and
   cgroups in use next to their limits, and the first resource to run out, if one did;
5. the CPU a load costs (the daemon, its fork-servers, the plugin itself) and the daemon's CPU when
   idle with N plugins loaded (heartbeats, the resource monitor), with its threads;
6. (unless --no-restart) stops the daemon and starts it again: how long it takes to restore every
   plugin of its state file, from exec to `/ready`.

Every hook figure is taken warm (100 calls to the reference plugin first; the N plugins were each
called once).

Needs root for the sandbox. Cleans up: the daemon unloads every plugin when it stops, every process
it started is reaped, and its cgroup parent is removed. Targets (issue 10): all loaded < 15 s,
/metrics < 50 ms, /health p99 < 20 ms, hook calls within 1.2x the 1-plugin figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # cgroup_host, which the integration conftest imports
sys.path.insert(0, str(REPO / "tests" / "integration"))  # first: its conftest, not the tests' own

import httpx  # noqa: E402
import psutil  # noqa: E402
from conftest import reap, start  # noqa: E402
from kit import Workspace, plugin_source  # noqa: E402
from lean import LeanClient  # noqa: E402
from procfs import cpu_ns, fresh_page_us, meminfo_kib, minor_faults  # noqa: E402

SMALL = {"method": "GET", "path": "/api/items", "headers": {"x-user": "bob"}, "n": 1}


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def machine_cpu() -> dict[str, int]:
    """The machine's CPU time so far by kind (clock ticks, all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return {"user": user + nice, "system": system + irq + softirq + steal, "idle": idle,
            "iowait": iowait}


def mem_available_mb() -> float:
    kib = meminfo_kib().get("MemAvailable")
    return float("inf") if kib is None else kib / 1024


def hook_latency(client: httpx.Client, hook: str, n: int = 300) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = client.post(f"/api/hooks/{hook}/execute", json={"data": SMALL})
        out.append(time.perf_counter() - t0)
        assert reply.status_code == 200 and reply.json()["success"], reply.text
    return out


def timed_get(client: httpx.Client, path: str, n: int) -> tuple[list[float], int]:
    out, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        reply = client.get(path)
        out.append(time.perf_counter() - t0)
        assert reply.status_code == 200, reply.text
        size = len(reply.content)
    return out, size


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of every live thread of `proc` (procfs.cpu_ns: schedstat); 0 once it is gone."""
    try:
        return cpu_ns(proc.pid) / 1e9
    except FileNotFoundError:
        return 0.0


FRESH_MB = 64


def memory_cgroups() -> int | None:
    """Memory cgroups on the machine (/proc/cgroups), or None when it does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cgroups").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "memory":
                return int(fields[2])
    return None


# The kernel numbers memory cgroups with 16-bit ids (MEM_CGROUP_ID_MAX): at most 65,535 at once,
# dying ones included, on cgroup v1 and v2 alike.
MEMCG_ID_MAX = 65535


def count_cgroups(pids: set[int]) -> int:
    """Distinct cgroups (v2 paths, or v1 lines) the plugins `pids` are in."""
    groups = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            groups.add(Path(f"/proc/{pid}/cgroup").read_text())
    return len(groups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="plugins to load (default 1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent load clients (default 4)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="stop loading after this (s)")
    parser.add_argument("--min-free-mb", type=float, default=4096.0,
                        help="stop loading when MemAvailable falls under this (MiB; default 4096)")
    parser.add_argument("--no-sandbox", action="store_true", help="plain fork (no root needed)")
    parser.add_argument("--no-restart", action="store_true",
                        help="skip the restart at the end (how long restoring the plugins takes)")
    parser.add_argument("--config", default="", help="more TOML for the daemon's config, e.g. "
                        "'[monitoring]\\ncheck_interval_secs = 60' (to tell what costs at scale)")
    args = parser.parse_args()
    sandbox = not args.no_sandbox
    if sandbox and os.geteuid() != 0:
        print("scale: skipped: the sandboxed run needs root (or pass --no-sandbox)")
        return 0

    with tempfile.TemporaryDirectory(prefix="plugind-bench-scale-") as tmp:
        ws = Workspace(Path(tmp), sandboxing=sandbox, auto_load=False)
        parent = f"/plugind-bench-scale-{os.getpid()}"
        if sandbox:
            ws.extra_config = f'[sandboxing.cgroups]\nparent = "{parent}"\n'
        ws.extra_config += args.config.replace("\\n", "\n") + "\n"
        names = [f"s{i:04d}" for i in range(args.count)]
        t0 = time.perf_counter()
        ws.add_many([plugin_source(name, {f"h{i}": (0, "return data")}) for i, name in enumerate(names)])
        print(f"{args.count} signed bundles made in {time.perf_counter() - t0:.1f} s "
              f"(sandbox {'on' if sandbox else 'off'}; CPUs {sorted(os.sched_getaffinity(0))}; "
              f"the machine may be shared)")
        ref_ws = Workspace(Path(tmp) / "reference", sandboxing=sandbox, auto_load=False)
        ref_parent = f"/plugind-bench-scale-ref-{os.getpid()}"
        if sandbox:
            ref_ws.extra_config = f'[sandboxing.cgroups]\nparent = "{ref_parent}"\n'
        ref_ws.extra_config += args.config.replace("\\n", "\n") + "\n"
        ref_ws.add(plugin_source(names[0], {"h0": (0, "return data")}))
        ref = start(ref_ws)
        try:
            daemon = start(ws)
        except BaseException:
            reap(ref)
            raise
        for d in (ref, daemon):
            # Drain sd_notify: a full socket nobody reads blocks the daemon's sendto (STATUS= per load).
            d.notify.settimeout(None)
            threading.Thread(target=drain, args=(d.notify,), daemon=True).start()
        stop_reason: str | None = None
        loaded: list[str] = []
        try:
            with ref.client() as client:
                reply = client.post("/api/plugins/load", json={"plugin_name": names[0]})
                assert reply.status_code == 200, reply.text
                hook_latency(client, "h0", 100)  # warm-up, as the N-plugin figures are taken warm
            with daemon.client() as client:
                reply = client.post("/api/plugins/load", json={"plugin_name": names[0]})
                assert reply.status_code == 200, reply.text
                loaded.append(names[0])

            todo = iter(names[1:])
            lock = threading.Lock()
            mem_start = mem_available_mb()
            dproc = psutil.Process(daemon.proc.pid)
            servers = dproc.children()  # the fork-servers (the plugins are their children)
            fresh0 = fresh_page_us(FRESH_MB)
            cpu_daemon0 = cpu_seconds(dproc)
            cpu_servers0 = sum(cpu_seconds(k) for k in servers)
            faults_servers0 = sum(minor_faults(k.pid) for k in servers)
            mem0 = meminfo_kib()
            stamps: list[float] = []  # when each load was answered
            stat0, self0 = machine_cpu(), resource.getrusage(resource.RUSAGE_SELF)
            t_load = time.perf_counter()
            deadline = time.monotonic() + args.time_limit

            def loader() -> None:
                nonlocal stop_reason
                c = LeanClient(daemon.port)  # http.client: ~0.2 ms of CPU per request, httpx ~0.8
                try:
                    while True:
                        with lock:
                            if stop_reason is not None:
                                return
                            name = next(todo, None)
                        if name is None:
                            return
                        if time.monotonic() > deadline:
                            with lock:
                                stop_reason = stop_reason or f"time limit ({args.time_limit:g} s)"
                            return
                        if mem_available_mb() < args.min_free_mb:
                            with lock:
                                stop_reason = stop_reason or (
                                    f"memory: MemAvailable under {args.min_free_mb:.0f} MiB "
                                    f"(the safety floor for a shared machine)")
                            return
                        status, body = c.post("/api/plugins/load", {"plugin_name": name})
                        with lock:
                            if status == 200:
                                loaded.append(name)
                                stamps.append(time.perf_counter())
                            elif stop_reason is None:
                                stop_reason = f"load of {name} refused: {status} {str(body)[:300]}"
                finally:
                    c.close()

            threads = [threading.Thread(target=loader) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            load_s = time.perf_counter() - t_load
            stat1, self1 = machine_cpu(), resource.getrusage(resource.RUSAGE_SELF)
            n = len(loaded)
            cpu_daemon = cpu_seconds(dproc) - cpu_daemon0
            cpu_servers = sum(cpu_seconds(k) for k in servers) - cpu_servers0
            faults_servers = sum(minor_faults(k.pid) for k in servers) - faults_servers0
            mem1 = meminfo_kib()
            print(f"loaded {n} of {args.count} in {load_s:.2f} s ({args.clients} clients; "
                  f"{load_s / max(n - 1, 1) * 1e3:.1f} ms per plugin)  target < 15 s for 1,000: "
                  f"{'met' if n == 1000 and load_s < 15 else ('MISSED' if n >= 1000 else 'n/a')}")
            if stop_reason:
                print(f"stopped loading: {stop_reason}")
            plugin_procs = [k for k in dproc.children(recursive=True) if k not in servers]
            cpu_plugins = sum(cpu_seconds(k) for k in plugin_procs)
            per = max(n - 1, 1)
            print(f"CPU per load: daemon {cpu_daemon / per * 1e3:.1f} ms, fork-servers "
                  f"{cpu_servers / per * 1e3:.1f} ms ({len(servers)} of them), the plugin "
                  f"{cpu_plugins / max(len(plugin_procs), 1) * 1e3:.1f} ms (schedstat)")
            # The pages a load takes: each is a fault (a copy-on-write copy or a fresh zeroed page),
            # and what a fresh page costs is the machine's (in a VM, the host's) affair.
            faults = sorted(minor_faults(k.pid) for k in plugin_procs) or [0]
            grown = {k: (mem1.get(k, 0) - mem0.get(k, 0)) / per for k in
                     ("AnonPages", "Slab", "PageTables", "KernelStack")}
            print(f"pages per load: the plugin {faults[len(faults) // 2]} minor faults (median), the "
                  f"fork-servers {faults_servers / per:.0f}; the machine's memory grew per plugin by "
                  + ", ".join(f"{k} {v:.0f}" for k, v in grown.items()) + " KiB")
            if len(stamps) >= 40:
                tenth = len(stamps) // 10
                rates = [(stamps[i + tenth - 1] - (stamps[i - 1] if i else t_load)) / tenth * 1e3
                         for i in range(0, tenth * 10, tenth)]
                print("ms per load by tenth of the run: " + " ".join(f"{r:.1f}" for r in rates))
            fresh1 = fresh_page_us(FRESH_MB)
            print(f"a fresh page ({FRESH_MB} MiB touched) before loading {fresh0:.2f} us, after "
                  f"{fresh1:.2f} us ({fresh1 / max(fresh0, 1e-9):.1f}x)")
            # What bounds the load time on a small machine: how busy all of it was meanwhile, and
            # what the loading clients (this process) took of it.
            busy = {k: (stat1[k] - stat0[k]) for k in stat0}
            total = sum(busy.values()) or 1
            clients = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
            print(f"the machine while loading: {100 * (total - busy['idle'] - busy['iowait']) / total:.0f}% "
                  f"busy ({100 * busy['user'] / total:.0f}% user, {100 * busy['system'] / total:.0f}% "
                  f"system, {100 * busy['iowait'] / total:.0f}% iowait) of {os.cpu_count()} CPUs; the "
                  f"loading clients (this process) {clients / per * 1e3:.1f} ms CPU per load")

            with daemon.client() as client, ref.client() as ref_client:
                # Every plugin answers once: each has its hook series in /metrics, as in use.
                t_all = time.perf_counter()
                for name in loaded:
                    hook_latency(client, f"h{names.index(name)}", 1)
                print(f"every loaded plugin called once in {time.perf_counter() - t_all:.2f} s")
                last_hook = f"h{names.index(loaded[-1])}"
                one: list[float] = []
                first: list[float] = []
                last: list[float] = []
                one_health: list[float] = []
                health_t: list[float] = []
                one_metrics: list[float] = []
                metrics_t: list[float] = []
                one_size = size = 0
                for _ in range(5):  # interleaved blocks: a burst of load elsewhere hits both alike
                    one += hook_latency(ref_client, "h0", 60)
                    first += hook_latency(client, "h0", 60)
                    last += hook_latency(client, last_hook, 60)
                    t, one_size = timed_get(ref_client, "/metrics", 4)
                    one_metrics += t
                    t, size = timed_get(client, "/metrics", 4)
                    metrics_t += t
                    one_health += timed_get(ref_client, "/health", 100)[0]
                    health_t += timed_get(client, "/health", 100)[0]
                listing = client.get("/api/plugins").json()
            base = statistics.median(one)
            print(f"{'':<30} {'1 plugin':>12} {f'{n} plugins':>14}")
            print(f"{'/metrics render p50':<30} {pct(one_metrics, 0.5) * 1e3:9.2f} ms "
                  f"{pct(metrics_t, 0.5) * 1e3:11.2f} ms  ({one_size / 1e3:.0f} kB -> {size / 1e3:.0f} kB)"
                  f"  target < 50 ms: {'met' if pct(metrics_t, 0.5) < 0.05 else 'MISSED'}")
            print(f"{'/health p50':<30} {pct(one_health, 0.5) * 1e3:9.2f} ms "
                  f"{pct(health_t, 0.5) * 1e3:11.2f} ms")
            print(f"{'/health p99':<30} {pct(one_health, 0.99) * 1e3:9.2f} ms "
                  f"{pct(health_t, 0.99) * 1e3:11.2f} ms  target < 20 ms: "
                  f"{'met' if pct(health_t, 0.99) < 0.02 else 'MISSED'}")
            for label, samples in (("hook h0 (first loaded) p50", first),
                                   (f"hook {last_hook} (last loaded) p50", last)):
                ratio = statistics.median(samples) / base
                print(f"{label:<30} {base * 1e6:9.0f} us {statistics.median(samples) * 1e6:11.0f} us  "
                      f"{ratio:.2f}x  target <= 1.2x: {'met' if ratio <= 1.2 else 'MISSED'}")

            proc = psutil.Process(daemon.proc.pid)
            c0, t0 = cpu_seconds(proc), time.perf_counter()
            time.sleep(5.0)
            idle = (cpu_seconds(proc) - c0) / (time.perf_counter() - t0)
            print(f"daemon CPU idle with {n} plugins: {idle * 100:.1f} % of a CPU "
                  f"({proc.num_threads()} threads; heartbeats and the resource monitor)")
            rss = proc.memory_info().rss
            kids = proc.children(recursive=True)
            plugin_pids = {p["pid"] for p in listing if p.get("pid")}
            daemon.seen_pids.update(plugin_pids)
            others = [k for k in kids if k.pid not in plugin_pids]
            uss = []
            for p in list(plugin_pids)[:20]:
                with contextlib.suppress(psutil.Error, OSError):
                    uss.append(psutil.Process(p).memory_full_info().uss)
            fds = proc.num_fds()
            soft_fds = psutil.Process(daemon.proc.pid).rlimit(psutil.RLIMIT_NOFILE)[0]
            tasks = len(list(Path("/proc").glob("[0-9]*")))
            pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
            print(f"daemon RSS {rss / 2**20:.0f} MiB ({rss / max(n, 1) / 1024:.0f} KiB per plugin); "
                  f"its other children (fork-servers): "
                  f"{', '.join(f'{k.memory_info().rss / 2**20:.0f} MiB' for k in others) or 'none'}")
            if uss:
                print(f"per-plugin USS median {statistics.median(uss) / 2**20:.1f} MiB "
                      f"(of {len(uss)}); {n} plugins ~ {statistics.median(uss) * n / 2**30:.2f} GiB; "
                      f"MemAvailable {mem_start:.0f} -> {mem_available_mb():.0f} MiB")
            print(f"daemon fds {fds} of {soft_fds}; processes on the machine {tasks} of pid_max {pid_max}"
                  + (f"; plugin cgroups {count_cgroups(plugin_pids)}" if sandbox else ""))
            per_plugin_mb = (mem_start - mem_available_mb()) / max(n - 1, 1)
            left = {
                "memory": mem_available_mb() / per_plugin_mb if per_plugin_mb > 0 else float("inf"),
                "daemon fds": (soft_fds - fds) / max(fds / max(n, 1), 1e-9),
                "pids": (pid_max - tasks),
            }
            memcgs = memory_cgroups()
            if sandbox and memcgs is not None:
                left["memory cgroups"] = MEMCG_ID_MAX - memcgs
                print(f"memory cgroups on the machine {memcgs} of {MEMCG_ID_MAX} (kernel id space)")
            first_out = min(left, key=lambda k: left[k])
            print("room for more plugins by resource: "
                  + ", ".join(f"{k} ~{v:.0f}" for k, v in left.items())
                  + f"; the first to run out: {first_out}"
                  + (f" (it did: {stop_reason})" if stop_reason else ""))
            assert daemon.stop(timeout=max(60.0, n * 0.1)) == 0, "the daemon did not stop cleanly"
            assert ref.stop() == 0, "the reference daemon did not stop cleanly"
            if not args.no_restart:
                # A restart restores the state file's plugins: from exec to /ready (scan included).
                reap(daemon)
                t_restart = time.perf_counter()
                daemon = start(ws, wait_ready=False)
                daemon.notify.settimeout(None)
                threading.Thread(target=drain, args=(daemon.notify,), daemon=True).start()
                restored = 0
                with daemon.client() as client:
                    while time.perf_counter() - t_restart < args.time_limit:
                        with contextlib.suppress(httpx.HTTPError):
                            reply = client.get("/ready")
                            if reply.status_code == 200 and reply.json().get("status") == "ready":
                                restored = client.get("/health").json()["plugins_loaded"]
                                break
                        time.sleep(0.05)
                restart_s = time.perf_counter() - t_restart
                print(f"restart: {restored} of {n} plugins restored and ready in {restart_s:.2f} s "
                      f"(exec to /ready, the scan of {args.count} bundles included)")
                kids = psutil.Process(daemon.proc.pid).children(recursive=True)
                daemon.seen_pids.update(k.pid for k in kids)
                assert daemon.stop(timeout=max(60.0, n * 0.1)) == 0, "the restarted daemon did not stop"
        finally:
            reap(daemon)
            reap(ref)
            if sandbox:
                from plugind.sandbox.cgroups import remove_tree

                remove_tree(parent)
                remove_tree(ref_parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
